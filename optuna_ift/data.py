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
- Broken files are refused with an error that names them, before torchvision reads them: a
  truncated or corrupt ``.gz``; an IDX file whose magic number, header or size is wrong; a split
  whose images and labels files differ in count (a labels file of the other split copied in its
  place, say); a label out of range. CIFAR-10 files that fail torchvision's md5 check are named
  in its ``RuntimeError``; a batch that cannot be unpickled or is inconsistent, in a
  ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import numbers
import os
import pickle
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from optuna_ift._validation import ArgumentKindError, check_int
from optuna_ift.trainer import resolve_device

__all__ = [
    "DATASETS",
    "ClassificationData",
    "Corpus",
    "Split",
    "check_dataset",
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


def _check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentKindError(f"{name} must be a number in (0, 1), got "
                                f"{type(value).__name__} {value!r:.60}")
    if not 0.0 < value < 1.0:  # NaN too
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def check_dataset(value: Any, arg: str = "name") -> str:
    """The canonical name of a data set of :func:`load_dataset` (case and ``_`` versus ``-``
    do not matter); ``arg`` is the argument the caller took it as."""
    shown = ", ".join(map(repr, DATASETS))
    allowed = f"{arg} must be one of {shown}"
    if not isinstance(value, str):
        raise ArgumentKindError(f"{allowed}, got {type(value).__name__} {value!r:.60}")
    key = value.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"{allowed}, got {value!r:.60}")
    return key


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
    device = resolve_device(device, "device")
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

    def resplit(self, val_fraction: float, seed: int = 0) -> ClassificationData:
        """Return a copy whose train + validation images are split again at random,
        ``val_fraction`` of them (rounded, at least one) for validation; the test set is
        untouched.

        With many hyperparameters fitted on the validation set, a larger share of validation
        data pays (the paper's Section 5.6; the hybrid benchmark's recipe uses 0.5).
        """
        _check_fraction("val_fraction", val_fraction)
        check_int("seed", seed, 0)
        x = torch.cat([self.X_train, self.X_val])
        y = torch.cat([self.y_train, self.y_val])
        n_val = min(max(round(val_fraction * len(y)), 1), len(y) - 1)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        train, val = order[n_val:].to(y.device), order[:n_val].to(y.device)
        return dataclasses.replace(self, X_train=x[train], y_train=y[train], X_val=x[val],
                                   y_val=y[val])

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
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentKindError(f"{name} must be None or a positive integer, got "
                                f"{type(value).__name__} {value!r:.60}")
    if value < 1:
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


#: The IDX files torchvision's MNIST and FashionMNIST read, as (images, labels) of each split.
_IDX_SPLITS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)

#: Magic number and number of dimensions of the uint8 IDX files of each kind.
_IDX_KINDS = {"images": (0x00000803, 3), "labels": (0x00000801, 1)}


def _idx_shape(path: Path, shown: str, kind: str) -> tuple[int, ...]:
    """The dimensions in the header of the uint8 IDX file ``path``, after checking it.

    The magic number must be the one of ``kind`` (``"images"`` or ``"labels"``) and the file
    size must be exactly what its header describes. ``shown`` is the name errors give the file
    (the user's file, which may be the ``.gz`` that ``path`` was unpacked from).

    Raises:
        ValueError: Naming ``shown`` and what was expected, if a check fails.
    """
    expected_magic, ndim = _IDX_KINDS[kind]
    header_size = 4 + 4 * ndim
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(header_size)
    if len(header) < 4:
        raise ValueError(
            f"{shown}: has {size} bytes, too few for an IDX header; expected an IDX file of "
            f"uint8 {kind} (magic number 0x{expected_magic:08X}); the file is truncated or corrupt"
        )
    magic = int.from_bytes(header[:4], "big")
    if magic != expected_magic:
        other = {m: k for k, (m, _) in _IDX_KINDS.items()}.get(magic)
        hint = (
            f", the magic number of {other} files (is a file of the wrong kind in its place?)"
            if other
            else " (not an MNIST-style IDX file of uint8 values, or a corrupt one)"
        )
        raise ValueError(
            f"{shown}: IDX magic number is 0x{magic:08X}{hint}; expected 0x{expected_magic:08X}, "
            f"uint8 {kind} with {ndim} dimension{'s' if ndim > 1 else ''}"
        )
    if len(header) < header_size:
        raise ValueError(
            f"{shown}: has {size} bytes, fewer than the {header_size} bytes of the IDX header of "
            f"uint8 {kind}; the file is truncated"
        )
    dims = tuple(int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(1, ndim + 1))
    expected = header_size + math.prod(dims)
    if size != expected:
        off = abs(expected - size)
        how = f"{off} byte{'s' if off > 1 else ''} {'short' if size < expected else 'too many'}"
        raise ValueError(
            f"{shown}: file size ({size} bytes) does not match its IDX header, which describes "
            f"{' x '.join(map(str, dims))} uint8 {kind} ({expected} bytes with the header): "
            f"{how}; the file is truncated or corrupt"
        )
    return dims


def _check_idx_split(
    images: Path, labels: Path, shown: dict[Path, str], num_classes: int
) -> None:
    """Check the images and labels IDX files of one split, alone and against each other.

    Raises:
        ValueError: Naming the file(s) at fault (as ``shown`` gives them) and what was expected.
    """
    n_images = _idx_shape(images, shown[images], "images")[0]
    n_labels = _idx_shape(labels, shown[labels], "labels")[0]
    if n_images != n_labels:
        raise ValueError(
            f"{shown[images]} holds {n_images} images but {shown[labels]} holds {n_labels} "
            "labels; the images and labels files of one split must hold the same number (is "
            "a file of the other split, or of another data set, in place of one of them?)"
        )
    values = np.fromfile(labels, dtype=np.uint8, offset=8)
    bad = np.flatnonzero(values >= num_classes)
    if len(bad):
        raise ValueError(
            f"{shown[labels]}: label {int(values[bad[0]])} at position {int(bad[0])} is out of "
            f"range; expected labels 0..{num_classes - 1}"
        )


def _check_idx_folder(folder: Path, shown: dict[str, str], num_classes: int) -> None:
    """Check every split's IDX files in ``folder``; ``shown`` maps a file name to its name in
    errors."""
    for images, labels in _IDX_SPLITS:
        paths = {folder / images: shown[images], folder / labels: shown[labels]}
        _check_idx_split(folder / images, folder / labels, paths, num_classes)


def _gunzip(source: Path, target: Path) -> None:
    """Unpack the gzip archive ``source`` into ``target``.

    Raises:
        ValueError: Naming ``source`` if it is truncated or corrupt (not gzip, bad CRC, cut off).
    """
    with open(target, "wb") as dst:
        try:
            with gzip.open(source, "rb") as src:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
        except (EOFError, gzip.BadGzipFile, zlib.error) as err:
            raise ValueError(
                f"{source}: the gzip archive is truncated or corrupt ({err}); replace it (delete "
                "it and pass download=True to fetch it again)"
            ) from err


def _read_idx_dataset(
    dataset_cls: Any, root: Path, *, download: bool, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """MNIST or Fashion-MNIST from ``root/<Class>/raw`` as uint8 ``(n, 1, 28, 28)`` and labels.

    torchvision reads only unpacked IDX files, and unpacks the ``.gz`` archives itself only when
    asked to download (and only into the data folder, after checking their md5 sums). Archives
    found locally are unpacked here instead, into a temporary folder that is removed after
    reading, so a read-only folder works and nothing is fetched.

    The IDX files are checked here before torchvision reads them (magic numbers, header against
    file size, image count against label count of each split, label range), so that a broken
    file is refused with an error that names it rather than loaded with wrong labels or failing
    deep inside torchvision.
    """
    raw = root / dataset_cls.__name__ / "raw"
    processed = root / dataset_cls.__name__ / "processed"
    files = _idx_files(dataset_cls)
    unpacked = all((raw / f).is_file() for f in files)
    legacy = all((processed / f).is_file() for f in ("training.pt", "test.pt"))
    archived = all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in files)
    num_classes = len(dataset_cls.classes)
    plain_names = {f: str(raw / f) for f in files}

    def read(data_root: Path, allow_download: bool) -> tuple[Tensor, ...]:
        out: list[Tensor] = []
        for train in (True, False):
            ds = dataset_cls(root=str(data_root), train=train, download=allow_download)
            out += [torch.as_tensor(ds.data).unsqueeze(1), torch.as_tensor(ds.targets).long()]
        return tuple(out)

    if unpacked or legacy:
        if not legacy:  # with processed/training.pt and test.pt, torchvision reads only those
            _check_idx_folder(raw, plain_names, num_classes)
        tensors = read(root, download)
    elif archived:
        with tempfile.TemporaryDirectory(prefix="optuna_ift_") as tmp:
            tmp_raw = Path(tmp) / dataset_cls.__name__ / "raw"
            tmp_raw.mkdir(parents=True)
            shown: dict[str, str] = {}
            for f in files:
                if (raw / f).is_file():
                    shown[f] = str(raw / f)
                    try:
                        os.symlink((raw / f).resolve(), tmp_raw / f)
                    except OSError:  # no symlinks (some Windows set-ups): copy instead
                        shutil.copyfile(raw / f, tmp_raw / f)
                else:
                    shown[f] = f"{raw / f}.gz (once unpacked)"
                    _gunzip(raw / f"{f}.gz", tmp_raw / f)
            _check_idx_folder(tmp_raw, shown, num_classes)
            tensors = read(Path(tmp), False)
    elif download:
        # torchvision fetches the archives (checking their md5 sums) and reads them at once.
        tensors = read(root, True)
        _check_idx_folder(raw, plain_names, num_classes)
    else:
        raise FileNotFoundError(
            f"{name!r} files not found: expected {', '.join(files)} (or the same with .gz) in "
            f"{raw}; pass download=True to fetch them, or set root to the folder that holds "
            f"{dataset_cls.__name__}/raw"
        )
    # The IDX files have been checked above; this is for torchvision's legacy processed/*.pt.
    for split, images, targets in (("training", *tensors[:2]), ("test", *tensors[2:])):
        if len(images) != len(targets) or (
            len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < num_classes
        ):
            raise ValueError(
                f"{name!r} {split} data read from {root / dataset_cls.__name__} holds "
                f"{len(images)} images and {len(targets)} labels; expected as many labels as "
                f"images, each in 0..{num_classes - 1}"
            )
    return (*tensors, tuple(str(c) for c in dataset_cls.classes))  # type: ignore[return-value]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _cifar_md5_problems(dataset_cls: Any, folder: Path) -> list[str]:
    """Each CIFAR file in ``folder`` that is missing or fails its md5 sum, described."""
    entries = [*dataset_cls.train_list, *dataset_cls.test_list]
    entries.append((dataset_cls.meta["filename"], dataset_cls.meta["md5"]))
    problems = []
    for filename, md5 in entries:
        path = folder / filename
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif _md5(path) != md5:
            problems.append(
                f"{path} ({path.stat().st_size} bytes) fails its md5 check: it is truncated or "
                "corrupt"
            )
    return problems


def _cifar_file_problem(path: Path, *, meta_key: str | None, num_classes: int) -> str | None:
    """What is wrong with the CIFAR batch (or, with ``meta_key``, metadata) file ``path``, or
    ``None`` if nothing is."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except OSError as err:
        return f"cannot be read ({err})"
    except Exception as err:  # noqa: BLE001 - unpickling a broken file can fail in any way
        return f"cannot be unpickled ({type(err).__name__}: {err}); it is truncated or corrupt"
    if meta_key is not None:
        if not isinstance(entry, dict) or meta_key not in entry:
            return f"is not CIFAR metadata (a pickled dict with {meta_key!r})"
        return None
    if not isinstance(entry, dict) or "data" not in entry or not (
        "labels" in entry or "fine_labels" in entry
    ):
        return "is not a CIFAR batch (a pickled dict with 'data' and 'labels')"
    data = np.asarray(entry["data"])
    labels = np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        return (
            f"holds data of dtype {data.dtype} shaped {data.shape}; expected uint8 shaped "
            "(n, 3072), n images of 3 x 32 x 32 bytes"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        return f"holds {len(data)} images but {labels.size} labels; expected as many of each"
    if len(labels) and not (
        np.issubdtype(labels.dtype, np.integer) and 0 <= labels.min() <= labels.max() < num_classes
    ):
        return f"holds labels outside 0..{num_classes - 1}"
    return None


def _cifar_content_error(
    dataset_cls: Any, folder: Path, train: bool, name: str, num_classes: int
) -> ValueError | None:
    """A ``ValueError`` naming the first broken file of a CIFAR split (or the metadata), or
    ``None`` if every file looks sound."""
    batches = dataset_cls.train_list if train else dataset_cls.test_list
    checks: list[tuple[str, str | None]] = [(filename, None) for filename, _ in batches]
    checks.append((dataset_cls.meta["filename"], dataset_cls.meta["key"]))
    for filename, meta_key in checks:
        problem = _cifar_file_problem(
            folder / filename, meta_key=meta_key, num_classes=num_classes
        )
        if problem is not None:
            return ValueError(
                f"{folder / filename}: {problem}; replace the {name!r} files in {folder} "
                "(delete the folder and pass download=True to fetch them again)"
            )
    return None


def _read_cifar10(
    dataset_cls: Any, root: Path, *, download: bool, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10 from ``root/cifar-10-batches-py`` as uint8 ``(n, 3, 32, 32)`` and labels.

    torchvision checks each file against its md5 sum; when that fails, the files at fault are
    named. A file that passes the check but cannot be read, or whose images and labels do not
    match, is named too (in a ``ValueError``).
    """
    folder = root / dataset_cls.base_folder
    if not download and not folder.is_dir():
        raise FileNotFoundError(
            f"{name!r} files not found: expected the folder {folder} (data_batch_1..5, test_batch, "
            f"batches.meta); pass download=True to fetch them, or set root to the folder that "
            f"holds {dataset_cls.base_folder}"
        )
    num_classes = 10  # CIFAR-10's; used for diagnosis before its metadata is read
    out: list[Tensor] = []
    classes: tuple[str, ...] = ()
    for train in (True, False):
        try:
            ds = dataset_cls(root=str(root), train=train, download=download)
        except RuntimeError as err:
            problems = _cifar_md5_problems(dataset_cls, folder)
            detail = "; ".join(problems) if problems else f"torchvision's md5 check failed: {err}"
            raise RuntimeError(
                f"{name!r} files in {folder} are missing or corrupted ({detail}); pass "
                "download=True to fetch them again"
            ) from err
        except (
            EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError, AttributeError,
            IndexError,
        ) as err:
            error = _cifar_content_error(dataset_cls, folder, train, name, num_classes)
            if error is None:
                raise
            raise error from err
        images = torch.as_tensor(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)
        targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        classes = tuple(str(c) for c in ds.classes)
        if len(images) != len(targets) or (
            len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(classes)
        ):
            error = _cifar_content_error(dataset_cls, folder, train, name, len(classes))
            if error is None:  # pragma: no cover - every batch is sound but the whole is not
                split = "training" if train else "test"
                error = ValueError(
                    f"{name!r} {split} files in {folder} hold {len(images)} images and "
                    f"{len(targets)} labels; expected as many labels as images, each in "
                    f"0..{len(classes) - 1}"
                )
            raise error
        out += [images, targets]
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
        device: Device of the returned tensors (``"auto"``: CUDA when present), checked
            before anything is read.

    Returns:
        The images, labels and metadata; see :class:`ClassificationData`.

    Raises:
        TypeError: For an argument of the wrong kind (a ``name`` that is not a string, a
            string where a number or a dtype goes); see
            :class:`~optuna_ift._validation.ArgumentKindError`.
        ValueError: For an unknown ``name``, a missing ``root``, a device this machine lacks,
            or an argument out of range;
            and, naming the file, for a broken data file: a truncated or corrupt ``.gz``, an
            IDX file whose magic number or size does not match what its header says, images
            and labels files of one split that differ in count, a label out of range, a
            CIFAR-10 batch that cannot be unpickled or whose images and labels do not match.
        FileNotFoundError: If the files are not under ``root`` and ``download`` is ``False``.
        RuntimeError: If CIFAR-10 files fail torchvision's md5 check (the files are named).
        ImportError: If a torchvision data set is asked for and torchvision is not installed.
    """
    key = check_dataset(name)
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
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ArgumentKindError(f"seed must be a non-negative integer, got "
                                f"{type(seed).__name__} {seed!r:.60}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(dtype, torch.dtype):
        raise ArgumentKindError(f"dtype must be a floating torch.dtype (torch.float32, "
                                f"torch.float64, ...), got {type(dtype).__name__} {dtype!r:.60}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (torch.float32, torch.float64, "
                         f"...), got {dtype!r}")
    device = resolve_device(device, "device")

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
    return data if device == torch.device("cpu") else data.to(device)


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
    return check_int(name, value, 1)


def _read_words(path: Path) -> list[str]:
    """The words of ``path``, each line ending in :data:`EOS`.

    Raises:
        ValueError: Naming ``path`` if it is not UTF-8 text (with the byte offset and line of
            the first bad byte) or holds no word.
    """
    words: list[str] = []
    n_words = 0
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                line_words = line.split()
                n_words += len(line_words)
                words.extend(line_words)
                words.append(EOS)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {_utf8_problem(path.read_bytes())}; corpus files must be "
                         "UTF-8 text") from err
    if n_words == 0:
        what = "it is empty" if not words else "only blank lines"
        raise ValueError(f"{path} holds no words ({what}); each of train.txt, valid.txt and "
                         "test.txt needs at least one")
    return words


def _utf8_problem(data: bytes) -> str:
    """Where and why ``data`` is not UTF-8, in words."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return (f"not valid UTF-8: byte 0x{data[err.start]:02x} at byte offset {err.start} "
                f"(line {line}): {err.reason}")
    return "not valid UTF-8"  # pragma: no cover - the reader failed, so decoding fails too


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
        device: Device of the returned tensors (``"auto"``: CUDA when present), checked
            before anything is read.

    Raises:
        TypeError: If ``root`` is not a str or path, or ``max_train_tokens`` not an integer.
        FileNotFoundError: If one of the three files is missing.
        ValueError: For an out-of-range argument, a device this machine lacks or a word no
            vocabulary entry covers; and,
            naming the file, for a file that is not UTF-8 text or holds no word.
    """
    if not isinstance(root, (str, os.PathLike)):
        raise ArgumentKindError("root must be the folder that holds train.txt, valid.txt and "
                                f"test.txt (a str or path), got {type(root).__name__} "
                                f"{root!r:.60}")
    if max_train_tokens is not None:
        _check_positive_int("max_train_tokens", max_train_tokens)
    device = resolve_device(device, "device")
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
