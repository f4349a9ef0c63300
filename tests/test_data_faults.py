"""Broken data files are refused with an error that names them.

Every file here is generated into ``tmp_path`` in its real format (gzip'd or plain IDX files,
CIFAR pickles, Penn Treebank text), then broken the way a user's copy breaks: truncated, a file
of the other split copied over, a corrupt archive, bytes that are not UTF-8, an empty file.
Nothing reads a machine's data folder or the network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from optuna_ift.data import load_dataset, load_ptb

N_TRAIN, N_TEST, CLASSES = 200, 60, 10
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------------------------
# Fake MNIST-style folders
# --------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` (uint8) as an IDX file: magic number, one big-endian count per dimension, data."""
    if magic is None:
        magic = 0x00000803 if array.ndim == 3 else 0x00000801
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def labels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % CLASSES).astype(np.uint8)


def make_idx_folder(root: Path, folder: str = "MNIST", *, compress: bool = True) -> Path:
    """A torchvision-style ``root/<folder>/raw`` with the four IDX files; returns ``raw``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": labels(N_TRAIN, 1),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": labels(N_TEST, 2),
    }
    for name, array in arrays.items():
        write_idx_file(raw, name, idx_bytes(array), compress=compress)
    return raw


def write_idx_file(raw: Path, name: str, payload: bytes, *, compress: bool) -> Path:
    """Write ``payload`` as ``raw/name`` or, compressed, ``raw/name.gz``; return the path."""
    if compress:
        path = raw / f"{name}.gz"
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path = raw / name
        path.write_bytes(payload)
    return path


def read_idx_payload(raw: Path, name: str, *, compress: bool) -> bytes:
    if compress:
        with gzip.open(raw / f"{name}.gz", "rb") as f:
            return f.read()
    return (raw / name).read_bytes()


def shown(raw: Path, name: str, *, compress: bool) -> str:
    """How an error names the IDX file ``raw/name`` (its ``.gz`` when compressed), as a regex."""
    return re.escape(f"{raw / name}.gz (once unpacked)" if compress else str(raw / name))


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_sound_files_still_load(tmp_path, compress):
    make_idx_folder(tmp_path, compress=compress)
    data = load_dataset("mnist", root=tmp_path, normalize=False)
    assert len(data.y_train) + len(data.y_val) == N_TRAIN and len(data.y_test) == N_TEST


@pytest.mark.parametrize("compress", [True, False])
def test_labels_of_the_other_split_copied_over_the_training_labels_are_refused(
    tmp_path, compress
):
    # The user's fault: t10k-labels copied over train-labels. Before, 60 of the 200 training
    # images were silently paired with the test labels.
    raw = make_idx_folder(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    shutil.copyfile(
        raw / f"t10k-labels-idx1-ubyte{suffix}", raw / f"train-labels-idx1-ubyte{suffix}"
    )
    pattern = (
        f"{shown(raw, 'train-images-idx3-ubyte', compress=compress)}.* holds {N_TRAIN} images but "
        f"{shown(raw, 'train-labels-idx1-ubyte', compress=compress)}.* holds {N_TEST} labels"
    )
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


def test_training_labels_copied_over_the_test_labels_are_refused(tmp_path):
    raw = make_idx_folder(tmp_path, compress=False)
    shutil.copyfile(raw / "train-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte")
    with pytest.raises(ValueError, match=rf"{N_TEST} images but .*t10k-labels.* {N_TRAIN} labels"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    ("target", "source", "found", "expected"),
    [
        ("train-labels-idx1-ubyte", "train-images-idx3-ubyte", "0x00000803", "0x00000801"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "0x00000801", "0x00000803"),
    ],
)
def test_a_file_of_the_wrong_kind_is_refused_by_its_magic_number(
    tmp_path, compress, target, source, found, expected
):
    raw = make_idx_folder(tmp_path, compress=compress)
    suffix = ".gz" if compress else ""
    shutil.copyfile(raw / f"{source}{suffix}", raw / f"{target}{suffix}")
    pattern = f"{shown(raw, target, compress=compress)}: IDX magic number is {found}.*"
    pattern += f"expected {expected}"
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


def test_an_unknown_magic_number_is_refused(tmp_path):
    raw = make_idx_folder(tmp_path, compress=False)
    # int32 images (type code 0x0C): a valid IDX file, but not MNIST's uint8 images.
    images = np.zeros((N_TRAIN, 28, 28), dtype=np.uint8)
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(images, magic=0x00000C03))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: IDX magic number is "
                                         r"0x00000C03.*expected 0x00000803"):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
@pytest.mark.parametrize("change", [-50, -1, +5])
def test_an_idx_file_whose_size_does_not_match_its_header_is_refused(
    tmp_path, compress, name, change
):
    # Before: a reshape error from deep inside torchvision, naming no file.
    raw = make_idx_folder(tmp_path, compress=compress)
    payload = read_idx_payload(raw, name, compress=compress)
    broken = payload[:change] if change < 0 else payload + b"\0" * change
    write_idx_file(raw, name, broken, compress=compress)
    how = {-50: "50 bytes short", -1: "1 byte short", 5: "5 bytes too many"}[change]
    pattern = (
        f"{shown(raw, name, compress=compress)}.*file size \\({len(broken)} bytes\\) does not "
        f"match its IDX header.*{how}; the file is truncated or corrupt"
    )
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("keep", [0, 3, 10])
def test_an_idx_file_cut_inside_its_header_is_refused(tmp_path, keep):
    raw = make_idx_folder(tmp_path, compress=False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: has {keep} bytes.*truncated"):
        load_dataset("mnist", root=tmp_path)


def test_a_plain_file_beside_archives_is_named_as_it_is(tmp_path):
    # A mixed folder: three archives and one unpacked (truncated) file.
    raw = make_idx_folder(tmp_path, compress=True)
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "rb") as f:
        payload = f.read()
    (raw / "t10k-images-idx3-ubyte.gz").unlink()
    (raw / "t10k-images-idx3-ubyte").write_bytes(payload[:-784])
    pattern = re.escape(str(raw / "t10k-images-idx3-ubyte")) + r": file size"
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("fault", ["truncated", "not gzip", "bad crc"])
def test_a_broken_gz_archive_is_named(tmp_path, fault):
    # Before: EOFError / BadGzipFile from the gzip module, naming no file.
    raw = make_idx_folder(tmp_path, compress=True)
    path = raw / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    if fault == "truncated":
        data = data[: len(data) // 2]
    elif fault == "not gzip":
        data = b"this is not a gzip archive" + data[26:]
    else:  # the CRC-32 stored in the trailer (8 bytes from the end) no longer matches
        data = data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]
    path.write_bytes(data)
    pattern = re.escape(str(path)) + r": the gzip archive is truncated or corrupt"
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


@pytest.mark.parametrize("compress", [True, False])
def test_a_label_out_of_range_is_refused(tmp_path, compress):
    raw = make_idx_folder(tmp_path, compress=compress)
    bad = labels(N_TRAIN, 1)
    bad[17] = CLASSES
    write_idx_file(raw, "train-labels-idx1-ubyte", idx_bytes(bad), compress=compress)
    pattern = (
        f"{shown(raw, 'train-labels-idx1-ubyte', compress=compress)}: label 10 at position 17 "
        "is out of range; expected labels 0..9"
    )
    with pytest.raises(ValueError, match=pattern):
        load_dataset("mnist", root=tmp_path)


def test_fashion_mnist_is_checked_the_same(tmp_path):
    raw = make_idx_folder(tmp_path, folder="FashionMNIST")
    shutil.copyfile(raw / "t10k-labels-idx1-ubyte.gz", raw / "train-labels-idx1-ubyte.gz")
    pattern = rf"FashionMNIST[/\\]raw[/\\]train-images-idx3-ubyte\.gz.* holds {N_TRAIN} images"
    with pytest.raises(ValueError, match=pattern):
        load_dataset("fashion-mnist", root=tmp_path)
    path = raw / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": the gzip archive is truncated"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_files_fetched_by_download_are_checked(tmp_path, monkeypatch):
    # No network: torchvision's download step is replaced by one that writes (broken) files.
    import torchvision.datasets as tv

    def fake_download(self) -> None:
        raw = Path(self.raw_folder)
        if not raw.exists():
            make_idx_folder(Path(self.root), compress=False)
            shutil.copyfile(raw / "t10k-labels-idx1-ubyte", raw / "train-labels-idx1-ubyte")

    monkeypatch.setattr(tv.MNIST, "download", fake_download)
    with pytest.raises(ValueError, match=rf"{N_TRAIN} images but .*train-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path, download=True)


def test_legacy_processed_files_with_mismatched_counts_are_refused(tmp_path):
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    images = torch.zeros(N_TRAIN, 28, 28, dtype=torch.uint8)
    torch.save((images, torch.zeros(N_TRAIN - 1, dtype=torch.int64)), processed / "training.pt")
    torch.save((images[:N_TEST], torch.zeros(N_TEST, dtype=torch.int64)), processed / "test.pt")
    with pytest.raises(ValueError, match=rf"'mnist' training data .*MNIST.* holds {N_TRAIN} "
                                         rf"images and {N_TRAIN - 1} labels"):
        load_dataset("mnist", root=tmp_path)


def test_sound_legacy_files_are_read_without_checking_the_raw_ones(tmp_path):
    # torchvision reads processed/*.pt when they are there and never opens raw/: so a broken
    # raw file beside them must not be an error.
    raw = make_idx_folder(tmp_path, compress=False)
    (raw / "train-images-idx3-ubyte").write_bytes(b"broken")
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    images = torch.zeros(N_TRAIN, 28, 28, dtype=torch.uint8)
    targets = torch.as_tensor(labels(N_TRAIN, 1), dtype=torch.int64)
    torch.save((images, targets), processed / "training.pt")
    torch.save((images[:N_TEST], targets[:N_TEST]), processed / "test.pt")
    data = load_dataset("mnist", root=tmp_path)
    assert len(data.y_train) + len(data.y_val) == N_TRAIN


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "labels": labels(n, seed).astype(int).tolist(),
        "batch_label": "fake",
    }


def make_cifar(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(per_batch, seed=i))
    write_pickle(folder / "test_batch", cifar_batch(n_test, seed=99))
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(CLASSES)]})
    return folder


def write_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_with_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake CIFAR-10 files whose md5 sums replace the real ones, so torchvision's own md5
    check runs unchanged on them; returns the folder."""
    import torchvision.datasets as tv

    folder = make_cifar(tmp_path)
    train = [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    monkeypatch.setattr(tv.CIFAR10, "train_list", train)
    monkeypatch.setattr(tv.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    monkeypatch.setattr(tv.CIFAR10, "meta", meta)
    return folder


@pytest.fixture
def cifar_without_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake CIFAR-10 files with torchvision's md5 check reduced to "the file exists" (as in
    tests/test_data.py), so broken content reaches the unpickling; returns the folder."""
    from torchvision.datasets import cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    return make_cifar(tmp_path)


def test_cifar_sound_files_pass_the_real_md5_check(cifar_with_md5):
    data = load_dataset("cifar10", root=cifar_with_md5.parent)
    assert len(data.y_train) + len(data.y_val) == 100 and len(data.y_test) == 20


@pytest.mark.parametrize("filename", ["data_batch_3", "test_batch", "batches.meta"])
def test_cifar_file_failing_its_md5_check_is_named(cifar_with_md5, filename):
    path = cifar_with_md5 / filename
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RuntimeError, match="missing or corrupted") as info:
        load_dataset("cifar10", root=cifar_with_md5.parent)
    message = str(info.value)
    assert f"{path} ({path.stat().st_size} bytes) fails its md5 check" in message
    others = {"data_batch_1", "data_batch_3", "test_batch", "batches.meta"} - {filename}
    assert not any(other in message for other in others)  # only the broken file is named


def test_cifar_missing_file_is_named(cifar_with_md5):
    (cifar_with_md5 / "data_batch_5").unlink()
    missing = re.escape(f"{cifar_with_md5 / 'data_batch_5'} is missing")
    with pytest.raises(RuntimeError, match=missing):
        load_dataset("cifar10", root=cifar_with_md5.parent)


@pytest.mark.parametrize(
    ("filename", "fault", "match"),
    [
        ("data_batch_2", "truncated", "cannot be unpickled .*truncated or corrupt"),
        ("test_batch", "truncated", "cannot be unpickled .*truncated or corrupt"),
        ("batches.meta", "truncated", "cannot be unpickled .*truncated or corrupt"),
        ("data_batch_4", "not a dict", "is not a CIFAR batch"),
        ("data_batch_1", "one label short", "holds 20 images but 19 labels"),
        ("test_batch", "one label short", "holds 20 images but 19 labels"),
        ("data_batch_3", "label 10", r"holds labels outside 0\.\.9"),
        ("data_batch_5", "rows too short", r"holds data of dtype uint8 shaped \(20, 3000\)"),
    ],
)
def test_cifar_broken_batch_is_named(cifar_without_md5, filename, fault, match):
    # Before: EOFError / KeyError / numpy errors naming no file, or (a label short, a label out
    # of range) a silent load with images and labels out of step.
    path = cifar_without_md5 / filename
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:-50])
    elif fault == "not a dict":
        write_pickle(path, [1, 2, 3])
    else:
        batch = cifar_batch(20, seed=7)
        if fault == "one label short":
            batch["labels"] = batch["labels"][:-1]
        elif fault == "label 10":
            batch["labels"][3] = CLASSES
        else:
            batch["data"] = batch["data"][:, :3000]
        write_pickle(path, batch)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + match):
        load_dataset("cifar10", root=cifar_without_md5.parent)


# --------------------------------------------------------------------------------------------
# Penn Treebank text
# --------------------------------------------------------------------------------------------

CORPUS = {"train": "a b c\nb <unk> d a\n", "valid": "b c <unk>\nd\n", "test": "a x\n"}


def write_corpus(root: Path, **override: bytes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in CORPUS.items():
        (root / f"{name}.txt").write_bytes(override.get(name, text.encode()))
    return root


def test_ptb_sound_corpus_still_loads(tmp_path):
    corpus = load_ptb(write_corpus(tmp_path))
    assert corpus.vocab == ("a", "b", "c", "<eos>", "<unk>", "d")
    assert corpus.test.tolist() == [0, 4, 3]


@pytest.mark.parametrize("name", ["train", "valid", "test"])
def test_ptb_non_utf8_file_is_named_with_the_byte_position(tmp_path, name):
    # Before: UnicodeDecodeError, naming neither the file nor where in it.
    root = write_corpus(tmp_path, **{name: b"a b\nc \xff d\n"})
    path = re.escape(str(root / f"{name}.txt"))
    pattern = rf"{path}: not valid UTF-8: byte 0xff at byte offset 6 \(line 2\)"
    with pytest.raises(ValueError, match=pattern):
        load_ptb(root)


def test_ptb_byte_position_is_counted_from_the_start_of_the_file(tmp_path):
    # Far past the reader's first buffer, the offset is still the file's, not the buffer's.
    head = b"a b c\n" * 5000  # 30000 bytes, 5000 lines
    root = write_corpus(tmp_path, train=head + b"d \xe9t\xe9\n")
    pattern = r"train\.txt: not valid UTF-8: byte 0xe9 at byte offset 30002 \(line 5001\)"
    with pytest.raises(ValueError, match=pattern):
        load_ptb(root)


@pytest.mark.parametrize("name", ["train", "valid", "test"])
@pytest.mark.parametrize(("content", "what"), [(b"", "it is empty"), (b"\n \n\n", "only blank")])
def test_ptb_empty_file_is_named_itself(tmp_path, name, content, what):
    # Before: an empty train.txt was reported as an unknown word in valid.txt; an empty
    # valid.txt or test.txt loaded silently as a split of no words.
    root = write_corpus(tmp_path, **{name: content})
    pattern = re.escape(str(root / f"{name}.txt")) + rf" holds no words \({what}"
    with pytest.raises(ValueError, match=pattern):
        load_ptb(root)
