"""Datasets: small ones embedded in scikit-learn by default, so nothing downloads.

Every loader takes the seed of its split as an argument and returns tensors in the dtype and on
the device asked for.

Two families live here:

- regression: :func:`load_diabetes` gives a :class:`Split` (train and validation);
- language modelling: :func:`load_ptb` gives a :class:`Corpus` (token streams and vocabulary)
  read from a folder of ``train.txt``/``valid.txt``/``test.txt`` (Penn Treebank's layout);
- image classification: :func:`load_dataset` gives a :class:`ClassificationData` (train,
  validation and test) for scikit-learn's embedded ``"digits"`` and, through
  ``torchvision.datasets``, for ``"mnist"``, ``"fashion-mnist"`` and ``"cifar10"``.

Design notes for the image data:

- Images are float tensors shaped ``(n, C, H, W)``. Pixels are first scaled to ``[0, 1]`` and then,
  by default, standardised per channel with the mean and (population) deviation of the returned
  training images, so no validation or test statistics leak into training. The ``mean`` and
  ``std`` used travel with the data (``ClassificationData.unnormalize`` maps images back to
  ``[0, 1]`` for display); with ``normalize=False`` images stay in ``[0, 1]`` and the stored
  ``mean``/``std`` are 0 and 1, so the same formula works either way.
- Splits draw from three independent random streams spawned from ``seed`` (test, validation,
  training), so asking for a different ``n_train`` never changes the validation or test examples,
  and smaller subsets are prefixes of larger ones (per class when ``balanced=True``).
- torchvision is imported only inside the loaders that need it, so the package imports without
  it. Raw uint8 arrays (``.data``/``.targets``) are converted to tensors directly; images are never
  passed one at a time through transforms. Local ``MNIST/raw/*.gz`` archives are unpacked into a
  temporary folder, so a read-only data folder works and no network is needed.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "ClassificationData",
    "Corpus",
    "Split",
    "load_dataset",
    "load_diabetes",
    "load_ptb",
]

#: Names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")

_TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


@dataclass(frozen=True)
class Split:
    """A train/validation split of features and targets."""

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def load_diabetes(
    *,
    val_fraction: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> Split:
    """scikit-learn's diabetes regression data (442 patients, 10 features), split at random.

    Features and target are standardised with the training part's mean and deviation, so a
    weight decay means the same on every feature.

    Args:
        val_fraction: Share of the rows held out for validation, in (0, 1).
        seed: Seed of the random split.
        dtype: Dtype of the returned tensors.
        device: Device of the returned tensors.
    """
    from sklearn.datasets import load_diabetes as _sk_load

    _check_fraction("val_fraction", val_fraction)
    X, y = _sk_load(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = int(round(val_fraction * len(y)))
    val, train = order[:n_val], order[n_val:]
    mean, std = X[train].mean(0), X[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return Split(
        X_train=tensor((X[train] - mean) / std),
        y_train=tensor((y[train] - y_mean) / y_std),
        X_val=tensor((X[val] - mean) / std),
        y_val=tensor((y[val] - y_mean) / y_std),
    )


# --------------------------------------------------------------------------------------------
# Image classification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class ClassificationData:
    """Images and labels of a classification task, split into train, validation and test.

    Attributes:
        X_train: Training images, float, shaped ``(n_train, C, H, W)``.
        y_train: Training labels, int64 in ``[0, num_classes)``, shaped ``(n_train,)``.
        X_val: Validation images, shaped ``(n_val, C, H, W)``.
        y_val: Validation labels.
        X_test: Test images, shaped ``(n_test, C, H, W)``.
        y_test: Test labels.
        num_classes: Number of classes.
        shape: Shape ``(C, H, W)`` of one image.
        name: Name of the data set, one of :data:`DATASETS`.
        mean: Per-channel mean, shaped ``(C,)``, that was subtracted from the ``[0, 1]`` pixels
            (0 when the images were not normalised).
        std: Per-channel deviation, shaped ``(C,)``, that the centred pixels were divided by
            (1 when the images were not normalised).
        classes: A readable name per class.
    """

    X_train: Tensor
    y_train: Tensor
    X_val: Tensor
    y_val: Tensor
    X_test: Tensor
    y_test: Tensor
    num_classes: int
    shape: tuple[int, int, int]
    name: str
    mean: Tensor
    std: Tensor
    classes: tuple[str, ...] = ()

    def to(self, device: str | torch.device) -> ClassificationData:
        """Return a copy with every tensor on ``device``."""
        moved = {
            field.name: getattr(self, field.name).to(device)
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), Tensor)
        }
        return dataclasses.replace(self, **moved)

    def normalize(self, images: Tensor) -> Tensor:
        """Map images with pixels in ``[0, 1]`` to the scale of the stored data."""
        mean, std = self._stats_like(images)
        return (images - mean) / std

    def unnormalize(self, images: Tensor) -> Tensor:
        """Map images on the scale of the stored data back to pixels in ``[0, 1]`` (to show them).

        The result is not clipped: learned images (a distilled data set, say) may leave the range.
        """
        mean, std = self._stats_like(images)
        return images * std + mean

    def _stats_like(self, images: Tensor) -> tuple[Tensor, Tensor]:
        view = (-1, 1, 1)
        return (
            self.mean.to(images.device, images.dtype).view(view),
            self.std.to(images.device, images.dtype).view(view),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, shape={self.shape}, "
            f"num_classes={self.num_classes}, n_train={len(self.y_train)}, "
            f"n_val={len(self.y_val)}, n_test={len(self.y_test)}, "
            f"dtype={self.X_train.dtype}, device={self.X_train.device})"
        )


def _import_torchvision_datasets() -> Any:
    try:
        import torchvision.datasets as tv_datasets
    except ImportError as err:  # pragma: no cover - exercised only without torchvision
        raise ImportError(
            "MNIST, Fashion-MNIST and CIFAR-10 are read through torchvision, which is not "
            "installed; install it with: pip install 'optuna-ift[vision]' "
            "(the 'digits' data set needs no extra package)"
        ) from err
    return tv_datasets


def _check_count(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {value!r}")


def _take(
    labels: np.ndarray,
    pool: np.ndarray,
    n: int | None,
    *,
    rng: np.random.Generator,
    balanced: bool,
    num_classes: int,
    arg: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` indices from ``pool`` at random; return ``(chosen, rest)``.

    With ``n=None`` the whole pool is chosen (in random order). With ``balanced=True`` the same
    number of each class is chosen. Both ``chosen`` and ``rest`` keep the order of one random
    permutation of the pool, so a smaller draw is a prefix (per class) of a larger one.
    """
    order = pool[rng.permutation(len(pool))]
    if n is None:
        return order, order[:0]
    if not balanced:
        if n > len(order):
            raise ValueError(
                f"{arg} must be at most {len(order)} (the examples available), got {n}"
            )
        return order[:n], order[n:]
    if n % num_classes:
        raise ValueError(
            f"{arg} must be a multiple of num_classes ({num_classes}) when balanced=True, got {n}"
        )
    per_class = n // num_classes
    keep = np.zeros(len(order), dtype=bool)
    ordered_labels = labels[order]
    for c in range(num_classes):
        positions = np.flatnonzero(ordered_labels == c)
        if len(positions) < per_class:
            raise ValueError(
                f"{arg}={n} with balanced=True needs {per_class} examples of each class, but "
                f"class {c} has only {len(positions)} available"
            )
        keep[positions[:per_class]] = True
    return order[keep], order[~keep]


def _read_digits() -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """Digits as a training pool and an empty test set (digits has no official test split)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are integers 0..16; keep them as exact uint8 like the torchvision sets.
    images = torch.as_tensor(bunch.images.astype(np.uint8)).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels, images[:0], labels[:0], tuple(str(c) for c in bunch.target_names)


def _idx_files(dataset_cls: Any) -> list[str]:
    return [os.path.splitext(os.path.basename(url))[0] for url, _ in dataset_cls.resources]


def _read_idx_dataset(
    dataset_cls: Any, root: Path, *, download: bool, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """MNIST or Fashion-MNIST from ``root/<Class>/raw`` as uint8 ``(n, 1, 28, 28)`` and labels.

    torchvision reads only unpacked IDX files, and unpacks the ``.gz`` archives itself only when
    asked to download (and only into the data folder, after checking their md5 sums). Archives
    found locally are unpacked here instead, into a temporary folder that is removed after
    reading, so a read-only folder works and nothing is fetched.
    """
    raw = root / dataset_cls.__name__ / "raw"
    processed = root / dataset_cls.__name__ / "processed"
    files = _idx_files(dataset_cls)
    unpacked = all((raw / f).is_file() for f in files)
    legacy = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
    archived = all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in files)

    def read(data_root: Path, allow_download: bool) -> tuple[Tensor, ...]:
        out: list[Tensor] = []
        for train in (True, False):
            ds = dataset_cls(root=str(data_root), train=train, download=allow_download)
            out += [torch.as_tensor(ds.data).unsqueeze(1), torch.as_tensor(ds.targets).long()]
        return tuple(out)

    if unpacked or legacy:
        tensors = read(root, download)
    elif archived:
        with tempfile.TemporaryDirectory(prefix="optuna_ift_") as tmp:
            tmp_raw = Path(tmp) / dataset_cls.__name__ / "raw"
            tmp_raw.mkdir(parents=True)
            for f in files:
                if (raw / f).is_file():
                    try:
                        os.symlink((raw / f).resolve(), tmp_raw / f)
                    except OSError:  # no symlinks (some Windows set-ups): copy instead
                        shutil.copyfile(raw / f, tmp_raw / f)
                else:
                    with gzip.open(raw / f"{f}.gz", "rb") as src, open(tmp_raw / f, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=1 << 22)
            tensors = read(Path(tmp), False)
    elif download:
        tensors = read(root, True)
    else:
        raise FileNotFoundError(
            f"{name!r} files not found: expected {', '.join(files)} (or the same with .gz) in "
            f"{raw}; pass download=True to fetch them, or set root to the folder that holds "
            f"{dataset_cls.__name__}/raw"
        )
    return (*tensors, tuple(str(c) for c in dataset_cls.classes))  # type: ignore[return-value]


def _read_cifar10(
    dataset_cls: Any, root: Path, *, download: bool, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10 from ``root/cifar-10-batches-py`` as uint8 ``(n, 3, 32, 32)`` and labels."""
    folder = root / dataset_cls.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"{name!r} files not found: expected the folder {folder} (data_batch_1..5, test_batch, "
            f"batches.meta); pass download=True to fetch them, or set root to the folder that "
            f"holds {dataset_cls.base_folder}"
        )
    out: list[Tensor] = []
    classes: tuple[str, ...] = ()
    for train in (True, False):
        try:
            ds = dataset_cls(root=str(root), train=train, download=download)
        except RuntimeError as err:
            raise RuntimeError(
                f"{name!r} files in {folder} are missing or corrupted (torchvision's md5 check "
                f"failed: {err}); pass download=True to fetch them again"
            ) from err
        images = torch.as_tensor(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        out += [images, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)]
        classes = tuple(str(c) for c in ds.classes)
    return (*out, classes)  # type: ignore[return-value]


def load_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float | None = None,
    seed: int = 0,
    balanced: bool = False,
    normalize: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> ClassificationData:
    """An image classification data set, split into train, validation and test at random.

    ``"digits"`` is scikit-learn's embedded 8x8 digits (1797 images, pixel values 0..16), so it
    needs no ``root`` and nothing downloads: a ``test_fraction`` share is held out for testing,
    then ``val_fraction`` of the rest for validation (by default 64/16/20 per cent).
    ``"mnist"``, ``"fashion-mnist"`` (1x28x28) and ``"cifar10"`` (3x32x32) come through
    ``torchvision.datasets`` from ``root`` in torchvision's layout (``root/MNIST/raw``,
    ``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``): validation is carved from the
    official training set and the test set is the official one.

    Pixels are scaled to ``[0, 1]``; with ``normalize=True`` (the default) each channel is then
    standardised with the mean and deviation of the returned training images, which are stored in
    ``mean`` and ``std`` of the result.

    Args:
        name: One of ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` (case and
            ``_`` versus ``-`` do not matter).
        root: Folder that holds the torchvision files; required for every set but ``"digits"``.
        download: Let torchvision fetch missing files into ``root``. Archives already in
            ``root`` (``MNIST/raw/*.gz``) are read without it.
        n_train: Number of training examples, drawn at random from the training part; ``None``
            keeps all of it.
        n_val: Number of validation examples. When given it replaces ``val_fraction``: the
            validation set is drawn first from the training pool, the training set from the
            rest.
        n_test: Number of test examples, drawn from the test set; ``None`` keeps all of it.
        val_fraction: Share of the training pool held out for validation, in (0, 1); used
            when ``n_val`` is ``None``.
        test_fraction: ``"digits"`` only (the others have an official test set): share of the
            images held out for testing, in (0, 1); ``None`` means 0.2. Used when ``n_test`` is
            ``None``.
        seed: Seed of every random draw (a non-negative integer).
        balanced: Draw the same number of examples of each class for every split whose size is
            given (``n_train=50`` gives 5 per class on a ten-class set); sizes must then be
            multiples of the number of classes. Splits without a given size are unaffected.
        normalize: Standardise each channel with the training mean and deviation; ``False``
            leaves pixels in ``[0, 1]``.
        dtype: Floating dtype of the images (labels are always int64).
        device: Device of the returned tensors.

    Returns:
        The images, labels and metadata; see :class:`ClassificationData`.

    Raises:
        ValueError: For an unknown ``name``, a missing ``root``, or an argument out of range.
        FileNotFoundError: If the files are not under ``root`` and ``download`` is ``False``.
        ImportError: If a torchvision data set is asked for and torchvision is not installed.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key not in DATASETS:
        raise ValueError(f"name must be one of {', '.join(map(repr, DATASETS))}, got {name!r}")
    _check_fraction("val_fraction", val_fraction)
    if test_fraction is not None:
        if key != "digits":
            raise ValueError(
                f"test_fraction applies only to 'digits'; {key!r} has an official test set "
                "(use n_test to take a subset of it)"
            )
        _check_fraction("test_fraction", test_fraction)
    for arg, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_count(arg, value)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    if key == "digits":
        X_pool, y_pool, X_test_all, y_test_all, classes = _read_digits()
        max_value = 16.0
    else:
        if root is None:
            raise ValueError(
                f"root is required for {key!r}: pass the folder that holds (or will hold, with "
                "download=True) the torchvision files; only 'digits' needs no root"
            )
        tv_datasets = _import_torchvision_datasets()
        dataset_cls = getattr(tv_datasets, _TORCHVISION_CLASSES[key])
        reader = _read_cifar10 if key == "cifar10" else _read_idx_dataset
        X_pool, y_pool, X_test_all, y_test_all, classes = reader(
            dataset_cls, Path(root).expanduser(), download=download, name=key
        )
        max_value = 255.0
    num_classes = len(classes)

    rng_test, rng_val, rng_train = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(3)
    )
    y_pool_np = y_pool.numpy()
    pool = np.arange(len(y_pool_np))

    def take(
        labels: np.ndarray, pool: np.ndarray, n: int | None, *, asked: bool, **kw: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        # Sizes the user asked for honour ``balanced``; sizes derived from a fraction do not.
        return _take(
            labels, pool, n, balanced=balanced and asked, num_classes=num_classes, **kw
        )

    def held_out(fraction: float, arg: str, available: int) -> int:
        n_held = int(round(fraction * available))
        if not 1 <= n_held < available:
            raise ValueError(
                f"{arg}={fraction} holds out {n_held} of {available} examples; both parts "
                "need at least one"
            )
        return n_held

    if key == "digits":
        fraction = 0.2 if test_fraction is None else test_fraction
        asked = n_test is not None
        size = n_test if asked else held_out(fraction, "test_fraction", len(pool))
        test_idx, pool = take(y_pool_np, pool, size, asked=asked, rng=rng_test, arg="n_test")
        X_test_src, y_test_src = X_pool, y_pool
    else:
        test_idx = np.arange(len(y_test_all))  # the official test set, in its official order
        if n_test is not None:
            test_idx, _ = take(
                y_test_all.numpy(), test_idx, n_test, asked=True, rng=rng_test, arg="n_test"
            )
        X_test_src, y_test_src = X_test_all, y_test_all

    asked = n_val is not None
    size = n_val if asked else held_out(val_fraction, "val_fraction", len(pool))
    val_idx, pool = take(y_pool_np, pool, size, asked=asked, rng=rng_val, arg="n_val")
    if len(pool) == 0:
        raise ValueError(
            f"n_val={n_val} leaves no examples for training; ask for fewer validation examples"
        )
    train_idx, _ = take(y_pool_np, pool, n_train, asked=True, rng=rng_train, arg="n_train")

    def images(source: Tensor, idx: np.ndarray) -> Tensor:
        return source[torch.as_tensor(idx, dtype=torch.int64)].to(dtype) / max_value

    X_train = images(X_pool, train_idx)
    X_val = images(X_pool, val_idx)
    X_test = images(X_test_src, test_idx)
    channels = X_train.shape[1]
    if normalize:
        mean = X_train.mean(dim=(0, 2, 3))
        std = X_train.std(dim=(0, 2, 3), correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays put
        view = (1, channels, 1, 1)
        X_train, X_val, X_test = (
            (X - mean.view(view)) / std.view(view) for X in (X_train, X_val, X_test)
        )
    else:
        mean = torch.zeros(channels, dtype=dtype)
        std = torch.ones(channels, dtype=dtype)

    def labels(source: Tensor, idx: np.ndarray) -> Tensor:
        return source[torch.as_tensor(idx, dtype=torch.int64)].to(torch.int64)

    data = ClassificationData(
        X_train=X_train,
        y_train=labels(y_pool, train_idx),
        X_val=X_val,
        y_val=labels(y_pool, val_idx),
        X_test=X_test,
        y_test=labels(y_test_src, test_idx),
        num_classes=num_classes,
        shape=tuple(int(s) for s in X_train.shape[1:]),  # type: ignore[arg-type]
        name=key,
        mean=mean,
        std=std,
        classes=classes,
    )
    return data if torch.device(device) == torch.device("cpu") else data.to(device)


# --------------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------------

EOS = "<eos>"
_CORPUS_FILES = ("train", "valid", "test")


@dataclass(frozen=True, eq=False, repr=False)
class Corpus:
    """A word-level corpus: three token streams and their vocabulary.

    Attributes:
        train: Token ids of the training text, int64, shaped ``(n_tokens,)``; every line ends
            in ``<eos>``.
        valid: Token ids of the validation text.
        test: Token ids of the test text.
        vocab: The words, indexed by token id (built from the training text, in order of first
            appearance).
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: tuple[str, ...]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"Corpus(vocab_size={self.vocab_size}, train={self.train.numel()}, "
                f"valid={self.valid.numel()}, test={self.test.numel()} tokens)")

    def sequences(self, split: str, seq_len: int, *, max_sequences: int | None = None
                  ) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of ``split`` cut into consecutive, non-overlapping
        sequences: both shaped ``(n, seq_len)``, ``targets`` being ``inputs`` shifted by one
        token. The ragged tail is dropped; ``max_sequences`` keeps the first ones."""
        if split not in _CORPUS_FILES:
            raise ValueError(f"split must be one of {_CORPUS_FILES}, got {split!r}")
        seq_len = _check_positive_int("seq_len", seq_len)
        stream: Tensor = getattr(self, split)
        n = (stream.numel() - 1) // seq_len
        if max_sequences is not None:
            n = min(n, _check_positive_int("max_sequences", max_sequences))
        if n < 1:
            raise ValueError(f"{split} has {stream.numel()} tokens: too few for one sequence "
                             f"of seq_len={seq_len}")
        inputs = stream[: n * seq_len].reshape(n, seq_len)
        targets = stream[1: n * seq_len + 1].reshape(n, seq_len)
        return inputs, targets


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _read_words(path: Path) -> list[str]:
    words: list[str] = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            words.extend(line.split())
            words.append(EOS)
    return words


def load_ptb(
    root: str | os.PathLike[str],
    *,
    max_train_tokens: int | None = None,
    device: str | torch.device = "cpu",
) -> Corpus:
    """A word-level corpus from ``root/train.txt``, ``root/valid.txt`` and ``root/test.txt``.

    The layout is Penn Treebank's as preprocessed by Mikolov et al. (one sentence per line,
    words separated by spaces, rare words already ``<unk>``); any corpus in that layout works.
    Each line ends in an ``<eos>`` token. The vocabulary is the training text's; a validation
    or test word outside it becomes ``<unk>`` when the vocabulary has one, and is an error
    otherwise.

    Args:
        root: The folder of the three files.
        max_train_tokens: Keep only the first this many training tokens (the vocabulary is
            still built from the whole training text, so ids do not depend on it).
        device: Device of the returned tensors.

    Raises:
        FileNotFoundError: If one of the three files is missing.
        ValueError: For an out-of-range argument or a word no vocabulary entry covers.
    """
    if root is None:
        raise ValueError("root must be the folder that holds train.txt, valid.txt and test.txt")
    if max_train_tokens is not None:
        _check_positive_int("max_train_tokens", max_train_tokens)
    folder = Path(root)
    paths = {name: folder / f"{name}.txt" for name in _CORPUS_FILES}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"root={str(root)!r} lacks {', '.join(missing)}; a corpus "
                                "folder holds train.txt, valid.txt and test.txt")
    words = {name: _read_words(path) for name, path in paths.items()}
    index: dict[str, int] = {}
    for word in words["train"]:
        index.setdefault(word, len(index))
    unk = index.get("<unk>")

    def ids(name: str) -> Tensor:
        out = []
        for word in words[name]:
            token = index.get(word, unk)
            if token is None:
                raise ValueError(f"{paths[name]}: word {word!r} is not in the training "
                                 "vocabulary, which has no <unk> to stand for it")
            out.append(token)
        return torch.tensor(out, dtype=torch.int64, device=device)

    train = ids("train")
    if max_train_tokens is not None:
        train = train[:max_train_tokens]
    return Corpus(train=train, valid=ids("valid"), test=ids("test"), vocab=tuple(index))
