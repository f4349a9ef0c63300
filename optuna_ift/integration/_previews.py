"""Previews of a trial's learned tensors that ``optuna-dashboard`` can show.

The safetensors artifact of :func:`~optuna_ift.integration.save_learned` is exact but opaque:
the dashboard offers it as a download only. Beside it, each trial stores small files the
dashboard renders in the trial's *Artifacts* card (it previews PNG and JPEG images, audio,
video, and CSV/JSONL tables):

=========================  =========================================================  =========
kind                       what                                                        when
=========================  =========================================================  =========
``distilled_images``       a PNG grid of the learned images, labelled by class         DistilledData
``weight_decays``          a histogram of log10(decay), stacked by decayed weight      WeightDecay
``dropout_rates``          a histogram of the dropout rates, stacked by module         ConcreteDropout
``augmentation_samples``   a few images (top row) and augmented draws of them          AugmentationNet
``summary``                a CSV of name, shape, min, mean, max, std per tensor        always
=========================  =========================================================  =========

Design notes:

- A preview never costs a user the trial: each one is built and uploaded on its own, and one
  that fails (an odd shape, a full disk, a broken store) is logged as a warning and skipped.
  They are made after the safetensors artifact, so that one is stored first.
- Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
  through ``pyplot``: no global state, safe in Optuna's threads (``n_jobs > 1``), no display.
  Figure sizes are fixed (no ``bbox_inches="tight"``), so a preview's pixel size is known.
- Augmentation samples use their own seeded noise, passed to the net explicitly, so drawing
  them never advances the generator the training uses.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import FrozenTrial
from torch import Tensor, nn

from optuna_ift._validation import ArgumentKindError
from optuna_ift.hyperparams import (
    AugmentationNet,
    ConcreteDropout,
    DistilledData,
    HyperParameter,
    WeightDecay,
)
from optuna_ift.integration._compat import trial_id
from optuna_ift.trainer import HyperTrainer

__all__ = [
    "ATTR_PREVIEWS",
    "PREVIEW_FILENAMES",
    "PREVIEW_KINDS",
    "check_previews",
    "preview_files",
    "save_previews",
]

_logger = logging.getLogger(__name__)

#: ``{kind: artifact id}`` of the previews stored for a trial (set by :func:`save_previews`).
ATTR_PREVIEWS = "ift:preview_artifacts"

#: The file each kind of preview is stored as (the dashboard shows the name and picks the
#: viewer by its extension).
PREVIEW_FILENAMES: dict[str, str] = {
    "distilled_images": "distilled_images.png",
    "weight_decays": "weight_decays.png",
    "dropout_rates": "dropout_rates.png",
    "augmentation_samples": "augmentation_samples.png",
    "summary": "learned_tensors.csv",
}
#: Every kind of preview, in the order they are made.
PREVIEW_KINDS: tuple[str, ...] = tuple(PREVIEW_FILENAMES)

#: Columns of the ``summary`` CSV.
SUMMARY_COLUMNS = ("name", "family", "quantity", "shape", "numel", "min", "mean", "max", "std")

_DPI = 100
_HISTOGRAM_SIZE = (6.4, 4.0)  # inches: 640 x 400 pixels
_CELL = 1.0  # inches per image in a grid (100 pixels)
_MAX_COLUMNS = 10
_MAX_IMAGES = 100
_MAX_LEGEND = 10
_AUGMENT_IMAGES = 8
_AUGMENT_DRAWS = 3


# -- arguments ---------------------------------------------------------------------------------


def check_previews(previews: Any, name: str = "previews") -> tuple[str, ...]:
    """The preview kinds that ``previews`` asks for, in :data:`PREVIEW_KINDS` order.

    ``True`` asks for every kind (each is made when the model has what it shows), ``False``
    for none, and a collection of kinds (a list, tuple or set of names from
    :data:`PREVIEW_KINDS`) for those.

    Raises:
        ArgumentKindError: If ``previews`` is neither a bool nor a collection of strings.
        ValueError: If it names an unknown kind.
    """
    allowed = ", ".join(map(repr, PREVIEW_KINDS))
    numpy_bool = (type(previews).__module__ == "numpy"
                  and type(previews).__name__ in ("bool", "bool_"))
    if isinstance(previews, bool) or numpy_bool:
        return PREVIEW_KINDS if previews else ()
    if (isinstance(previews, (str, bytes)) or not isinstance(previews, Collection)
            or not all(isinstance(k, str) for k in previews)):
        raise ArgumentKindError(
            f"{name} must be True (every preview), False (none) or a list of preview kinds "
            f"from {allowed}, got {type(previews).__name__} {previews!r:.60}")
    unknown = sorted(set(previews) - set(PREVIEW_KINDS))
    if unknown:
        raise ValueError(f"{name} names unknown preview kinds {unknown}; the kinds are "
                         f"{allowed}")
    return tuple(k for k in PREVIEW_KINDS if k in set(previews))


# -- what the model holds ----------------------------------------------------------------------


def _modules(model: nn.Module, kind: type) -> list[tuple[str, Any]]:
    return [(name or type(m).__name__, m) for name, m in model.named_modules()
            if isinstance(m, kind)]


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _finite(values: Tensor) -> Tensor:
    values = values.flatten()
    return values[torch.isfinite(values)]


def _as_images(batch: Tensor, channels: int | None = None) -> Tensor | None:
    """``batch`` as ``(n, channels, height, width)`` images, or ``None`` when it is not one.

    Accepted: ``(n, c, h, w)``, ``(n, h, w)`` and flat ``(n, c * s * s)`` with a square side
    ``s`` (digits' 64 features are 8 x 8)."""
    if batch.ndim == 4:
        images = batch
    elif batch.ndim == 3:
        images = batch[:, None]
    elif batch.ndim == 2:
        for c in ((channels,) if channels else (1, 3)):
            side = math.isqrt(batch.shape[1] // c) if batch.shape[1] % c == 0 else 0
            if side > 1 and c * side * side == batch.shape[1]:
                images = batch.reshape(batch.shape[0], c, side, side)
                break
        else:
            return None
    else:
        return None
    if channels is not None and images.shape[1] != channels:
        return None
    if images.shape[1] not in (1, 3):
        return None
    return images


# -- drawing -----------------------------------------------------------------------------------


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path, format="png", dpi=_DPI)


def _show(images: Tensor, like: Tensor | None = None) -> list[Any]:
    """Images ``(n, c, h, w)`` as arrays for ``imshow``, each scaled to [0, 1] by its own range
    or by that of the matching image of ``like`` (then clipped), so changes stay visible."""
    shown = []
    reference = _cpu(images if like is None else like)
    for image, ref in zip(_cpu(images), reference):
        low, high = ref.min(), ref.max()
        image = ((image - low) / (high - low)).clamp(0, 1) if high > low else (
            torch.zeros_like(image))
        array = image.permute(1, 2, 0).numpy()
        shown.append(array[..., 0] if array.shape[-1] == 1 else array)
    return shown


def _grid(path: Path, rows: list[tuple[list[Any], list[str]]], title: str) -> None:
    """A grid of images: ``rows`` of (arrays, captions), at most ``_MAX_COLUMNS`` a row.

    The images are pasted into one mosaic drawn by a single ``imshow`` (one axes per image
    costs about ten times as much), each cell one ``_CELL`` inch square with a caption band
    above its image."""
    import numpy as np

    columns = max(len(images) for images, _ in rows)
    height = max(a.shape[0] for images, _ in rows for a in images)
    width = max(a.shape[1] for images, _ in rows for a in images)
    scale = max(1, math.ceil(48 / max(height, width)))  # nearest-neighbour upscale of tiny images
    height, width = height * scale, width * scale
    band, gap = math.ceil(0.3 * height), max(1, width // 10)
    cell_h, cell_w = band + height + gap, width + 2 * gap
    mosaic = np.ones((cell_h * len(rows), cell_w * columns, 3))
    for r, (images, _) in enumerate(rows):
        for c, array in enumerate(images):
            array = np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)
            if array.ndim == 2:
                array = np.repeat(array[..., None], 3, axis=2)
            top, left = r * cell_h + band, c * cell_w + gap
            mosaic[top:top + array.shape[0], left:left + array.shape[1]] = array
    figure = _figure((_CELL * columns, _CELL * len(rows) + 0.4))
    figure.suptitle(title, fontsize=9, y=1 - 0.12 / (_CELL * len(rows) + 0.4))
    ax = figure.add_axes((0, 0, 1, 1 - 0.4 / (_CELL * len(rows) + 0.4)))
    ax.set_axis_off()
    ax.imshow(mosaic, aspect="auto", interpolation="nearest",
              extent=(0, columns, len(rows), 0))
    for r, (_, captions) in enumerate(rows):
        for c, caption in enumerate(captions):
            ax.text(c + 0.5, r + band / cell_h / 2, caption, fontsize=7, ha="center",
                    va="center")
    _save(figure, path)


def _histogram(path: Path, groups: list[tuple[str, Tensor]], xlabel: str, title: str,
               value_range: tuple[float, float] | None = None) -> None:
    """A histogram of ``groups`` of values, stacked, with a legend of up to ``_MAX_LEGEND``."""
    groups = [(name, _finite(values)) for name, values in groups]
    dropped = sum(1 for _, v in groups if v.numel() == 0)
    groups = [(name, v) for name, v in groups if v.numel()]
    if not groups:
        raise ValueError("no finite value to draw")
    if len(groups) > _MAX_LEGEND:
        groups = [(f"all {len(groups)} tensors", torch.cat([v for _, v in groups]))]
    everything = torch.cat([v for _, v in groups])
    low, high = value_range or (float(everything.min()), float(everything.max()))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    figure = _figure(_HISTOGRAM_SIZE)
    ax = figure.add_subplot()
    bins = 50 if value_range else min(50, max(10, everything.numel() // 4))
    ax.hist([v.numpy() for _, v in groups], bins=bins,
            range=(low, high), stacked=True, label=[n for n, _ in groups])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    median = float(everything.median())
    ax.set_title(f"{title}: {everything.numel()} values, median {median:.3g}"
                 + (f" ({dropped} non-finite tensors left out)" if dropped else ""), fontsize=9)
    ax.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, path)


# -- the previews ------------------------------------------------------------------------------


def _distilled_images(model: nn.Module, path: Path, context: Mapping[str, Any]) -> bool:
    found = _modules(model, DistilledData)
    if not found:
        return False
    name, distilled = found[0]
    images = _as_images(distilled.images.detach())
    if images is None:
        raise ValueError(f"{name}.images of shape {tuple(distilled.images.shape)} are not "
                         "images (want (n, 1 or 3, h, w), (n, h, w) or flat squares)")
    n = min(images.shape[0], _MAX_IMAGES)
    if distilled.label_logits is not None:
        probs = distilled.label_logits.detach().softmax(dim=-1).to("cpu")
        confidence, classes = probs.max(dim=-1)
        captions = [f"{int(c)} (p={float(p):.2f})" for c, p in zip(classes, confidence)]
    else:
        captions = [f"class {int(c)}" for c in distilled.labels.to("cpu")]
    # One column per class when they fit, one row per example of a class.
    per_row = min(distilled.num_classes, _MAX_COLUMNS)
    order = (torch.arange(images.shape[0]).reshape(distilled.num_classes,
                                                   distilled.num_per_class).T.flatten()
             if distilled.num_classes <= _MAX_COLUMNS else torch.arange(images.shape[0]))[:n]
    shown = _show(images[order])
    labels = [captions[int(i)] for i in order]
    rows = [(shown[k:k + per_row], labels[k:k + per_row]) for k in range(0, n, per_row)]
    more = f", first {n} of {images.shape[0]}" if n < images.shape[0] else ""
    _grid(path, rows, f"distilled images ({name}{more})")
    return True


def _weight_decays(model: nn.Module, path: Path, context: Mapping[str, Any]) -> bool:
    found = _modules(model, WeightDecay)
    if not found:
        return False
    groups = [(f"{name}:{weight}" if len(found) > 1 else weight,
               torch.log10(_cpu(decay)).flatten())
              for name, module in found for weight, decay in module.decays().items()]
    modes = sorted({m.mode for _, m in found})
    _histogram(path, groups, "log10(weight decay)", f"weight decays ({', '.join(modes)})")
    return True


def _dropout_rates(model: nn.Module, path: Path, context: Mapping[str, Any]) -> bool:
    found = _modules(model, ConcreteDropout)
    if not found:
        return False
    groups = [(name, _cpu(module.rate).flatten()) for name, module in found]
    _histogram(path, groups, "dropout rate", "dropout rates", value_range=(0.0, 1.0))
    return True


def _sample_inputs(context: Mapping[str, Any], model: nn.Module,
                   channels: int) -> Tensor | None:
    """Up to ``_AUGMENT_IMAGES`` images with ``channels`` channels: from the trainer's
    in-memory ``eval_data`` (then its train and validation sets), else the distilled images."""
    candidates: list[Any] = list(context.get("data", ()))
    candidates += [m.images for _, m in _modules(model, DistilledData)]
    for data in candidates:
        if isinstance(data, Mapping):
            data = next(iter(data.values()), None)
        elif isinstance(data, (tuple, list)) and data:
            data = data[0]
        elif hasattr(data, "tensors") and isinstance(data.tensors, (tuple, list)):
            data = data.tensors[0]
        if isinstance(data, Tensor) and data.is_floating_point() and data.shape[0] > 0:
            images = _as_images(data[:_AUGMENT_IMAGES].detach(), channels)
            if images is not None:
                return images
    return None


@torch.no_grad()
def _augmentation_samples(model: nn.Module, path: Path, context: Mapping[str, Any]) -> bool:
    found = _modules(model, AugmentationNet)
    if not found:
        return False
    name, augment = found[0]
    images = _sample_inputs(context, model, augment.channels)
    if images is None:
        _logger.info("preview augmentation_samples: no in-memory %d-channel images to augment "
                     "(eval_data, train_data, val_data); skipped", augment.channels)
        return False
    device = next(augment.parameters()).device
    dtype = next(augment.parameters()).dtype
    x = images.to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    rows = [(_show(x), ["input"] * len(x))]
    for draw in range(_AUGMENT_DRAWS):
        noise = None
        if augment.noise:
            noise = torch.randn((x.shape[0], 1, *x.shape[2:]), generator=generator,
                                dtype=dtype).to(device)
        rows.append((_show(augment(x, noise=noise), like=x), [f"draw {draw + 1}"] * len(x)))
    _grid(path, rows, f"augmentation samples ({name}): inputs, then augmented draws")
    return True


def _stats(values: Tensor) -> list[str]:
    values = _cpu(values).flatten()
    if values.numel() == 0:
        return ["", "", "", ""]
    std = values.std(unbiased=False)
    return [f"{float(v):.6g}" for v in (values.min(), values.mean(), values.max(), std)]


def _summary(model: nn.Module, path: Path, context: Mapping[str, Any]) -> bool:
    """One row per learned tensor (as stored), then one per decayed weight (``decay``) and
    per dropout module (``rate``), the quantities the raw logs and logits stand for."""
    owners = {id(p): type(module).__name__ for module in model.modules()
              for p in module.parameters(recurse=False)}
    families = {id(p): type(m).__name__
                for m in model.modules()
                if isinstance(m, (WeightDecay, DistilledData, AugmentationNet, ConcreteDropout))
                for p in m.parameters()}
    rows: list[list[Any]] = []
    for name, p in model.named_parameters():
        if isinstance(p, HyperParameter):
            family = families.get(id(p), owners.get(id(p), ""))
            rows.append([name, family, "raw", "x".join(map(str, p.shape)) or "scalar",
                         p.numel(), *_stats(p)])
    for module_name, module in _modules(model, WeightDecay):
        for weight, decay in module.decays().items():
            rows.append([f"{module_name}:{weight}", "WeightDecay", "decay",
                         "x".join(map(str, decay.shape)) or "scalar", decay.numel(),
                         *_stats(decay)])
    for module_name, module in _modules(model, ConcreteDropout):
        rate = module.rate.detach()
        rows.append([module_name, "ConcreteDropout", "rate",
                     "x".join(map(str, rate.shape)) or "scalar", rate.numel(), *_stats(rate)])
    if not rows:
        return False
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return True


_BUILDERS: dict[str, Callable[[nn.Module, Path, Mapping[str, Any]], bool]] = {
    "distilled_images": _distilled_images,
    "weight_decays": _weight_decays,
    "dropout_rates": _dropout_rates,
    "augmentation_samples": _augmentation_samples,
    "summary": _summary,
}


def _model_and_data(trainer: Any) -> tuple[nn.Module, list[Any]]:
    if isinstance(trainer, HyperTrainer):
        data = list(trainer.eval_data.values()) + [trainer.train_data, trainer.val_data]
        return trainer.model, [d for d in data if d is not None]
    if isinstance(trainer, nn.Module):
        return trainer, []
    raise ArgumentKindError(f"trainer must be a HyperTrainer or a torch.nn.Module, got "
                            f"{type(trainer).__name__}")


def preview_files(
    trainer: Any,
    folder: str | os.PathLike[str],
    *,
    kinds: bool | Iterable[str] = True,
    data: Iterable[Any] = (),
) -> dict[str, Path]:
    """Write the previews of ``trainer``'s learned tensors into ``folder``.

    Each preview is made only when the model holds what it shows (a ``DistilledData`` for
    ``distilled_images``, ...). A preview that fails is logged as a warning and left out;
    nothing here raises for it.

    Args:
        trainer: A :class:`~optuna_ift.HyperTrainer` (its in-memory ``eval_data``,
            ``train_data`` and ``val_data`` give the images to augment) or the model itself.
        folder: An existing folder; files are named as in :data:`PREVIEW_FILENAMES`.
        kinds: As ``previews`` of :func:`~optuna_ift.integration.run_trainer`: ``True`` for
            every kind, or a collection of kinds.
        data: More in-memory data (tensors or tuples of tensors) to take images from.

    Returns:
        ``{kind: path}`` of the previews written.

    Raises:
        ArgumentKindError: If ``trainer`` is neither a trainer nor a model, or ``kinds`` is
            not a bool or a collection of kinds.
        ValueError: If ``kinds`` names an unknown kind.
    """
    wanted = check_previews(kinds, "kinds")
    model, found = _model_and_data(trainer)
    context = {"data": list(data) + found}
    folder = Path(folder)
    written: dict[str, Path] = {}
    for kind in wanted:
        path = folder / PREVIEW_FILENAMES[kind]
        try:
            if _BUILDERS[kind](model, path, context):
                written[kind] = path
        except Exception as error:  # a preview is never worth a trial
            _logger.warning("preview %s failed and is skipped: %s: %s", kind,
                            type(error).__name__, error, exc_info=_logger.isEnabledFor(
                                logging.DEBUG))
            path.unlink(missing_ok=True)
    return written


def save_previews(
    trial: optuna.Trial | FrozenTrial,
    trainer: Any,
    artifact_store: Any,
    *,
    storage: Any = None,
    kinds: bool | Iterable[str] = True,
) -> dict[str, str]:
    """Store the previews of ``trainer``'s learned tensors as artifacts of ``trial``.

    The files of :func:`preview_files` are uploaded one by one; the trial's user attribute
    ``ift:preview_artifacts`` maps each kind stored to its artifact id. A preview that cannot
    be made or uploaded is logged as a warning and skipped: this function never fails a trial
    for a preview (only for bad arguments).

    Args:
        trial: The trial (a :class:`~optuna.trial.FrozenTrial` needs ``storage``).
        trainer: The trainer, or the model itself.
        artifact_store: An Optuna artifact store, e.g. ``FileSystemArtifactStore(folder)``.
        storage: The study's storage, only for a ``FrozenTrial``.
        kinds: ``True`` for every kind, or a collection of kinds from :data:`PREVIEW_KINDS`.

    Returns:
        ``{kind: artifact id}`` of the previews stored.

    Raises:
        ArgumentKindError: If an argument is of the wrong kind.
        ValueError: If ``kinds`` names an unknown kind, or ``trial`` is a ``FrozenTrial``
            without ``storage``.
    """
    if not isinstance(trial, (optuna.Trial, FrozenTrial)):
        raise ArgumentKindError(f"trial must be an optuna.Trial or FrozenTrial, got "
                                f"{type(trial).__name__}")
    if storage is None and isinstance(trial, optuna.Trial):
        storage = trial.storage
    if storage is None:
        raise ValueError("storage is required when trial is a FrozenTrial")
    missing = [m for m in ("write", "open_reader", "remove")
               if not callable(getattr(artifact_store, m, None))]
    if missing:
        raise ArgumentKindError(
            "artifact_store must be an Optuna artifact store with the methods write, "
            "open_reader and remove, got "
            f"{type(artifact_store).__name__} (lacks {', '.join(missing)})")
    stored: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="optuna_ift_previews_") as folder:
        for kind, path in preview_files(trainer, folder, kinds=kinds).items():
            try:
                stored[kind] = upload_artifact(artifact_store=artifact_store,
                                               file_path=str(path), study_or_trial=trial,
                                               storage=storage)
            except Exception as error:  # noqa: BLE001 - a preview is never worth a trial
                _logger.warning("preview %s of trial %d could not be stored and is skipped: "
                                "%s: %s", kind, trial.number, type(error).__name__, error)
    if stored:
        try:
            if isinstance(trial, optuna.Trial):
                trial.set_user_attr(ATTR_PREVIEWS, stored)
            else:
                storage.set_trial_user_attr(trial_id(trial), ATTR_PREVIEWS, stored)
                trial.user_attrs[ATTR_PREVIEWS] = stored
        except Exception as error:  # noqa: BLE001 - nor is the attribute naming them
            _logger.warning("trial %d: could not record %s: %s: %s", trial.number,
                            ATTR_PREVIEWS, type(error).__name__, error)
    return stored
