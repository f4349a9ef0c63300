"""Data loaders: the embedded digits, and tiny fake MNIST / CIFAR-10 folders (torchvision layout).

Nothing here reads a machine's data folder or the network: the torchvision sets are written into
``tmp_path`` in their real file formats (gzip'd IDX files, CIFAR pickles).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from optuna_ift.data import (
    DATASETS,
    ClassificationData,
    Split,
    load_dataset,
    load_diabetes,
    load_ptb,
)

N_TRAIN, N_TEST, CLASSES = 200, 60, 10


# --------------------------------------------------------------------------------------------
# Fake data folders
# --------------------------------------------------------------------------------------------


def _fake_images(n: int, shape: tuple[int, ...], seed: int, offset: int) -> np.ndarray:
    """Random uint8 images whose first two pixels spell a unique id, ``offset + index``."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    ids = offset + np.arange(n)
    flat[:, 0], flat[:, 1] = ids % 256, ids // 256
    return images


def _fake_labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % CLASSES).astype(np.uint8)


def _ids(images: torch.Tensor, std: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Decode the ids of ``_fake_images`` from loaded (possibly normalised) images."""
    pixels = images.reshape(len(images), -1)[:, :2] * std[0] + mean[0]
    pixels = torch.round(pixels * 255).long()
    return pixels[:, 0] + 256 * pixels[:, 1]


def _write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    magic = 2051 if array.ndim == 3 else 2049  # uint8 images (3 dims) / uint8 labels (1 dim)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _make_mnist(root: Path, folder: str = "MNIST", *, compress: bool = True) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    truth = {
        "train_images": _fake_images(N_TRAIN, (28, 28), seed=1, offset=0),
        "train_labels": _fake_labels(N_TRAIN, seed=2),
        "test_images": _fake_images(N_TEST, (28, 28), seed=3, offset=N_TRAIN),
        "test_labels": _fake_labels(N_TEST, seed=4),
    }
    for prefix, part in (("train", "train"), ("t10k", "test")):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", truth[f"{part}_images"], compress=compress)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", truth[f"{part}_labels"], compress=compress)
    return truth


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    _make_mnist(tmp_path)
    return tmp_path


def _make_cifar(root: Path, per_batch: int = 40, n_test: int = 30) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n: int, seed: int) -> dict:
        # Rows hold the red, green and blue planes one after the other, as in the real files;
        # every pixel of plane c is 60 c + (label), so the channel order can be checked.
        labels = _fake_labels(n, seed).astype(int)
        planes = 60 * np.arange(3)[None, :, None] + labels[:, None, None]
        data = np.broadcast_to(planes, (n, 3, 1024)).reshape(n, 3072).astype(np.uint8)
        return {"data": data, "labels": labels.tolist(), "batch_label": "fake"}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per_batch, seed=int(rng.integers(1 << 30))), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test, seed=99), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(CLASSES)]}, f)


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # torchvision checks each CIFAR file against the md5 sum of the real one, which no fake can
    # match; only that check is replaced (by "the file exists"), everything else is torchvision's.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    _make_cifar(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------
# Digits (embedded, no root)
# --------------------------------------------------------------------------------------------


def test_digits_needs_no_root_and_holds_out_20_percent_twice():
    data = load_dataset("digits")
    assert isinstance(data, ClassificationData)
    assert (data.name, data.shape, data.num_classes) == ("digits", (1, 8, 8), 10)
    assert data.classes == tuple(str(i) for i in range(10))
    sizes = (len(data.y_train), len(data.y_val), len(data.y_test))
    assert sum(sizes) == 1797
    assert sizes == (1150, 288, 359)  # 20 % test, then 20 % of the rest for validation
    parts = ((data.X_train, data.y_train), (data.X_val, data.y_val), (data.X_test, data.y_test))
    for X, y in parts:
        assert X.dtype == torch.float32 and X.shape[1:] == (1, 8, 8)
        assert y.dtype == torch.int64 and y.shape == (len(X),)
        assert 0 <= int(y.min()) and int(y.max()) < 10
    # Normalised with the training images' own statistics.
    assert data.X_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data.X_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    assert data.mean.shape == data.std.shape == (1,)
    assert "n_train=1150" in repr(data)


def test_digits_without_normalisation_stays_in_unit_range_and_unnormalize_inverts():
    raw = load_dataset("digits", normalize=False, seed=3)
    assert float(raw.X_train.min()) == 0.0 and float(raw.X_train.max()) == 1.0
    assert torch.equal(raw.mean, torch.zeros(1)) and torch.equal(raw.std, torch.ones(1))
    # The pixels are 0..16 scaled by 1/16: exact multiples of 1/16.
    assert torch.equal(raw.X_val * 16, torch.round(raw.X_val * 16))
    scaled = load_dataset("digits", seed=3)
    assert torch.equal(scaled.y_train, raw.y_train)
    torch.testing.assert_close(scaled.unnormalize(scaled.X_test), raw.X_test)
    torch.testing.assert_close(scaled.normalize(raw.X_val), scaled.X_val)


def test_digits_is_deterministic_under_the_seed_and_differs_across_seeds():
    a, b, c = (load_dataset("digits", seed=s) for s in (5, 5, 6))
    for field in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    assert not torch.equal(a.y_train, c.y_train)
    assert not torch.equal(a.X_val, c.X_val)


def test_digits_fractions_sizes_and_dtype():
    data = load_dataset("digits", test_fraction=0.5, val_fraction=0.5, dtype=torch.float64)
    assert (len(data.y_test), len(data.y_val)) == (898, 450)
    assert data.X_train.dtype == torch.float64 and data.mean.dtype == torch.float64
    small = load_dataset("digits", n_train=30, n_val=20, n_test=10, balanced=True)
    assert (len(small.y_train), len(small.y_val), len(small.y_test)) == (30, 20, 10)
    for y, per_class in ((small.y_train, 3), (small.y_val, 2), (small.y_test, 1)):
        assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST through torchvision, from fake IDX files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("download", [False, True])
def test_mnist_reads_local_gz_files_without_writing_or_network(mnist_root, download):
    before = sorted(p.relative_to(mnist_root) for p in mnist_root.rglob("*"))
    data = load_dataset("mnist", root=mnist_root, download=download, normalize=False)
    assert sorted(p.relative_to(mnist_root) for p in mnist_root.rglob("*")) == before
    assert (data.name, data.shape, data.num_classes) == ("mnist", (1, 28, 28), 10)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (160, 40, N_TEST)
    assert data.X_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert 0.0 <= float(data.X_train.min()) and float(data.X_train.max()) <= 1.0


def test_mnist_images_and_labels_match_the_files_and_splits_are_disjoint(tmp_path):
    truth = _make_mnist(tmp_path)
    data = load_dataset("mnist", root=str(tmp_path), normalize=False)
    train_ids = _ids(data.X_train, data.std, data.mean)
    val_ids = _ids(data.X_val, data.std, data.mean)
    test_ids = _ids(data.X_test, data.std, data.mean)
    # Validation is carved from the official training set; the test set is the official one.
    assert set(train_ids.tolist()).isdisjoint(val_ids.tolist())
    assert sorted(train_ids.tolist() + val_ids.tolist()) == list(range(N_TRAIN))
    assert test_ids.tolist() == list(range(N_TRAIN, N_TRAIN + N_TEST))
    expected = torch.as_tensor(truth["train_images"][train_ids.numpy()], dtype=torch.float32)
    torch.testing.assert_close(data.X_train[:, 0], expected / 255)
    assert data.y_train.tolist() == truth["train_labels"][train_ids.numpy()].tolist()
    assert data.y_test.tolist() == truth["test_labels"].tolist()


def test_mnist_normalises_with_training_statistics(mnist_root):
    data = load_dataset("mnist", root=mnist_root)
    raw = load_dataset("mnist", root=mnist_root, normalize=False)
    assert data.mean.item() == pytest.approx(raw.X_train.mean().item(), rel=1e-5)
    assert data.std.item() == pytest.approx(raw.X_train.std(correction=0).item(), rel=1e-5)
    assert data.X_train.mean().item() == pytest.approx(0.0, abs=1e-5)
    torch.testing.assert_close(data.unnormalize(data.X_val), raw.X_val)


def test_mnist_reads_unpacked_files_the_same(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    _make_mnist(tmp_path / "gz")
    _make_mnist(tmp_path / "plain", compress=False)
    a = load_dataset("mnist", root=tmp_path / "gz", seed=2)
    b = load_dataset("mnist", root=tmp_path / "plain", seed=2)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)


def test_mnist_subsets_seeds_and_balance(mnist_root):
    a = load_dataset("mnist", root=mnist_root, n_train=20, n_val=30, n_test=10, seed=1)
    b = load_dataset("mnist", root=mnist_root, n_train=20, n_val=30, n_test=10, seed=1)
    c = load_dataset("mnist", root=mnist_root, n_train=20, n_val=30, n_test=10, seed=2)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (20, 30, 10)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(_ids(a.X_train, a.std, a.mean), _ids(c.X_train, c.std, c.mean))

    balanced = load_dataset(
        "mnist", root=mnist_root, n_train=50, n_val=40, n_test=20, balanced=True, seed=1
    )
    assert torch.bincount(balanced.y_train, minlength=10).tolist() == [5] * 10
    assert torch.bincount(balanced.y_val, minlength=10).tolist() == [4] * 10
    assert torch.bincount(balanced.y_test, minlength=10).tolist() == [2] * 10
    ids = lambda d, X: set(_ids(X, d.std, d.mean).tolist())  # noqa: E731
    assert ids(balanced, balanced.X_train).isdisjoint(ids(balanced, balanced.X_val))

    # A larger training subset keeps the smaller one and leaves validation and test alone.
    small = load_dataset("mnist", root=mnist_root, n_train=10, normalize=False, seed=4)
    large = load_dataset("mnist", root=mnist_root, n_train=30, normalize=False, seed=4)
    assert ids(small, small.X_train) <= ids(large, large.X_train)
    assert torch.equal(small.X_val, large.X_val) and torch.equal(small.X_test, large.X_test)


def test_fashion_mnist_uses_its_own_folder(tmp_path):
    _make_mnist(tmp_path, folder="FashionMNIST")
    data = load_dataset("Fashion_MNIST", root=tmp_path, n_train=10)
    assert (data.name, data.shape, len(data.y_train)) == ("fashion-mnist", (1, 28, 28), 10)
    assert data.classes[0] == "T-shirt/top"
    with pytest.raises(FileNotFoundError, match=r"MNIST[/\\]raw"):
        load_dataset("mnist", root=tmp_path)


# --------------------------------------------------------------------------------------------
# CIFAR-10 through torchvision, from fake pickles
# --------------------------------------------------------------------------------------------


def test_cifar10_shapes_channels_and_splits(cifar_root):
    data = load_dataset("cifar10", root=cifar_root, normalize=False, val_fraction=0.25)
    assert (data.name, data.shape, data.num_classes) == ("cifar10", (3, 32, 32), 10)
    assert data.classes == tuple(f"class{i}" for i in range(10))
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (150, 50, 30)
    assert data.mean.shape == data.std.shape == (3,)
    # Each pixel of channel c was written as 60 c + label: checks the HWC -> CHW conversion.
    for X, y in ((data.X_train, data.y_train), (data.X_test, data.y_test)):
        expected = (60 * torch.arange(3)[None, :] + y[:, None]).float() / 255
        torch.testing.assert_close(X.amin(dim=(2, 3)), expected)
        torch.testing.assert_close(X.amax(dim=(2, 3)), expected)
    normalised = load_dataset("cifar10", root=cifar_root, val_fraction=0.25)
    per_channel = normalised.X_train.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3), atol=1e-5, rtol=0)
    balanced = load_dataset("cifar10", root=cifar_root, n_train=30, balanced=True)
    assert torch.bincount(balanced.y_train, minlength=10).tolist() == [3] * 10


def test_cifar10_missing_or_corrupted_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", root=tmp_path)
    _make_cifar(tmp_path)  # without the patched check, the fake's md5 sums do not match
    with pytest.raises(RuntimeError, match="corrupted"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------------------------
# Devices, errors, and the package without torchvision
# --------------------------------------------------------------------------------------------


def test_to_moves_every_tensor_and_returns_a_copy():
    data = load_dataset("digits", n_train=10, n_val=10, n_test=10)
    moved = data.to("meta")
    assert moved is not data and data.X_train.device.type == "cpu"
    for name in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean", "std"):
        assert getattr(moved, name).device.type == "meta"
    assert (moved.name, moved.shape, moved.classes) == (data.name, data.shape, data.classes)
    with pytest.raises(AttributeError):
        data.name = "other"  # type: ignore[misc]


def test_resplit_moves_only_train_and_validation():
    data = load_dataset("digits", seed=2)
    half = data.resplit(0.5, seed=2)
    assert torch.equal(half.X_test, data.X_test) and torch.equal(half.y_test, data.y_test)
    n = len(data.y_train) + len(data.y_val)
    assert len(half.y_val) == round(0.5 * n) and len(half.y_train) == n - len(half.y_val)

    def rows(x, y):
        return sorted(zip(map(tuple, x.flatten(1).tolist()), y.tolist()))

    assert rows(torch.cat([half.X_train, half.X_val]), torch.cat([half.y_train, half.y_val])) \
        == rows(torch.cat([data.X_train, data.X_val]), torch.cat([data.y_train, data.y_val]))
    again = data.resplit(0.5, seed=2)
    assert torch.equal(again.X_val, half.X_val)  # the seed fixes it
    assert not torch.equal(data.resplit(0.5, seed=3).y_val, half.y_val)
    assert len(data.resplit(0.999).y_train) == 1 and len(data.resplit(1e-9).y_val) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_argument_puts_data_on_cuda():
    data = load_dataset("digits", device="cuda")
    assert data.X_train.is_cuda and data.y_test.is_cuda and data.std.is_cuda


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet"}, "name must be one of"),
        ({"name": "mnist"}, "root is required"),
        ({"name": "digits", "val_fraction": 0.0}, "val_fraction"),
        ({"name": "digits", "val_fraction": 1.0}, "val_fraction"),
        ({"name": "digits", "val_fraction": "half"}, "val_fraction"),
        ({"name": "digits", "test_fraction": 1.5}, "test_fraction"),
        ({"name": "digits", "val_fraction": 1e-4}, "val_fraction"),
        ({"name": "mnist", "root": ".", "test_fraction": 0.2}, "test_fraction applies only"),
        ({"name": "digits", "n_train": 0}, "n_train"),
        ({"name": "digits", "n_val": 2.5}, "n_val"),
        ({"name": "digits", "n_test": True}, "n_test"),
        ({"name": "digits", "n_train": 5000}, "n_train must be at most"),
        ({"name": "digits", "n_val": 1438}, "no examples for training"),
        ({"name": "digits", "n_train": 25, "balanced": True}, "multiple of num_classes"),
        ({"name": "digits", "n_train": 2000, "balanced": True}, "examples of each class"),
        ({"name": "digits", "seed": -1}, "seed"),
        ({"name": "digits", "dtype": torch.int64}, "dtype"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_missing_files_name_the_expected_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST[/\\]raw.*download=True"):
        load_dataset("mnist", root=tmp_path)
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10"}


def test_clear_import_error_without_torchvision(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'optuna-ift\[vision\]'"):
        load_dataset("mnist", root=tmp_path)
    assert len(load_dataset("digits").y_test) == 359  # digits needs no torchvision


def test_package_imports_without_torchvision():
    code = (
        "import sys; sys.modules['torchvision'] = None; "
        "import optuna_ift.data as d; print(len(d.load_dataset('digits', n_train=10).y_train))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "10"


def test_load_diabetes_is_unchanged():
    split = load_diabetes(val_fraction=0.5, seed=0)
    assert isinstance(split, Split)
    assert split.X_train.shape == (221, 10) and split.X_val.shape == (221, 10)
    assert split.X_train.dtype == torch.float64
    assert split.X_train.mean(0).abs().max().item() < 1e-12


# --- word-level corpora (Penn Treebank layout) -------------------------------------------------


def write_corpus(root: Path, *, valid: str = "b c <unk>\nd\n", test: str = "a x\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(" a b c \n b <unk> d a\n")
    (root / "valid.txt").write_text(valid)
    (root / "test.txt").write_text(test)
    return root


def test_ptb_tokens_vocabulary_and_eos(tmp_path):
    corpus = load_ptb(write_corpus(tmp_path))
    assert corpus.vocab == ("a", "b", "c", "<eos>", "<unk>", "d")
    assert corpus.vocab_size == 6
    assert corpus.train.tolist() == [0, 1, 2, 3, 1, 4, 5, 0, 3]
    assert corpus.valid.tolist() == [1, 2, 4, 3, 5, 3]
    assert corpus.test.tolist() == [0, 4, 3]  # "x" is not in the vocabulary: <unk>
    assert corpus.train.dtype == torch.int64
    assert "vocab_size=6" in repr(corpus)
    short = load_ptb(tmp_path, max_train_tokens=4)
    assert short.train.tolist() == [0, 1, 2, 3] and short.vocab == corpus.vocab


def test_ptb_sequences_are_consecutive_and_shifted(tmp_path):
    corpus = load_ptb(write_corpus(tmp_path))
    inputs, targets = corpus.sequences("train", 3)
    assert inputs.tolist() == [[0, 1, 2], [3, 1, 4]]  # the ragged tail is dropped
    assert targets.tolist() == [[1, 2, 3], [1, 4, 5]]
    inputs, targets = corpus.sequences("train", 2, max_sequences=1)
    assert inputs.tolist() == [[0, 1]] and targets.tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="too few"):
        corpus.sequences("test", 3)
    with pytest.raises(ValueError, match="split"):
        corpus.sequences("validation", 2)
    with pytest.raises(ValueError, match="seq_len"):
        corpus.sequences("train", 0)


def test_ptb_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_ptb(write_corpus(tmp_path / "a").parent / "missing")
    root = write_corpus(tmp_path / "b")
    (root / "test.txt").unlink()
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_ptb(root)
    with pytest.raises(ValueError, match="max_train_tokens"):
        load_ptb(write_corpus(tmp_path / "c"), max_train_tokens=0)
    with pytest.raises(ValueError, match="root"):
        load_ptb(None)
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.txt").write_text("a b\n")
    (root / "valid.txt").write_text("a\n")
    (root / "test.txt").write_text("zebra\n")
    with pytest.raises(ValueError, match="zebra"):
        load_ptb(root)
