"""What every data source shares: the error type, a split in host memory, the facts the trainer
needs about a data set, and the checks that turn bad data into a one-line :class:`DataError`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


class DataError(ValueError):
    """The data cannot be used as configured; the message says what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Split:
    """One split held in host memory."""

    images: np.ndarray  # uint8, [N, H, W, C]
    labels: np.ndarray  # int32, [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a data set.

    ``mean`` and ``std`` are the per-channel constants :func:`normalize` applies, on the 0..255
    scale. The 'scale' normalisation (pixels / 255) is mean 0 and std 255.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """What the data package reads of a run's config: its ``config.data`` fields, taken from a
    validated config (``DataSpec.of(config.data)``; ``dnjax.knobs`` declares each field, its
    default and valid values). No field has a default here."""

    dataset: str
    data_dir: str | None
    npz_train: str | None
    npz_test: str | None
    npz_label: str
    num_classes: int | None
    normalization: str
    resize: int | None
    augment: bool
    pad: int
    flip: bool
    image_size: int
    workers: int
    train_limit: int | None
    test_limit: int | None
    train_fraction: float | None
    subset_seed: int | None

    @classmethod
    def of(cls, data_config: Any) -> "DataSpec":
        return cls(**{f.name: data_config[f.name] for f in dataclasses.fields(cls)})


def apply_limit(split: Split, limit: int | None) -> Split:
    """The first ``limit`` examples of a split (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(split):
        return split
    return Split(images=split.images[:limit], labels=split.labels[:limit])


def subset_indices(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The indices (ascending) of a class-balanced subset: ``round(fraction * n_c)`` images (at
    least one) of each class c with n_c images, drawn by a per-class permutation that depends only
    on ``seed`` and the labels. For one seed the subsets are nested: every class's images come
    from the front of the same permutation, so the 10% subset lies inside the 25% subset."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):  # ascending, so each class draws the same stream for any fraction
        members = np.flatnonzero(labels == c)
        order = rng.permutation(len(members))
        keep.append(members[order[: max(1, int(round(fraction * len(members))))]])
    return np.sort(np.concatenate(keep))


def apply_fraction(split: Split, spec: DataSpec) -> Split:
    """The training split cut to ``data.train_fraction`` of every class, drawn with
    ``data.subset_seed`` (None: 0; :func:`subset_indices`); the whole split when the fraction is None."""
    if spec.train_fraction is None:
        return split
    idx = subset_indices(split.labels, spec.train_fraction, spec.subset_seed or 0)
    return Split(images=split.images[idx], labels=split.labels[idx])


def validate_split(split: Split, source: str) -> None:
    """Raises DataError unless the split holds uint8 [N, H, W, C] images, N > 0, with one label each."""
    images, labels = split.images, split.labels
    if images.dtype != np.uint8:
        raise DataError(
            f"{source}: images are {images.dtype}, expected uint8 pixels 0..255; convert them "
            "with np.clip(x, 0, 255).astype(np.uint8) (multiply by 255 first if they are 0..1)."
        )
    if images.ndim != 4:
        hint = " (add a channel axis: x[..., None])" if images.ndim == 3 else ""
        raise DataError(
            f"{source}: images have shape {images.shape}, expected rank 4 [N, H, W, C]{hint}."
        )
    if images.shape[0] == 0:
        raise DataError(f"{source}: the split is empty (0 images).")
    if labels.ndim != 1:
        raise DataError(
            f"{source}: labels have shape {labels.shape}, expected [N] integer class ids "
            "(not one-hot)."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{source}: {images.shape[0]} images but {labels.shape[0]} labels; there must be one "
            "label per image."
        )
    if min(images.shape[1:]) == 0:
        raise DataError(f"{source}: images have an empty dimension, shape {images.shape}.")


def check_label_range(labels: np.ndarray, num_classes: int, source: str) -> None:
    """Raises DataError if a label lies outside [0, num_classes)."""
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{source}: {int(bad.sum())} labels outside [0, {num_classes}) (for example "
            f"labels[{first}] = {int(labels[first])}; the labels span {int(labels.min())}.."
            f"{int(labels.max())}). Fix the labels or set data.num_classes."
        )


def as_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """Class ids as int32; whole-number floats are accepted, anything else is a DataError."""
    labels = np.asarray(labels)
    integral = np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_
    whole_floats = (
        np.issubdtype(labels.dtype, np.floating)
        and bool(np.all(np.isfinite(labels)))
        and bool(np.all(labels == np.round(labels)))
    )
    if not (integral or whole_floats):
        raise DataError(f"{source}: labels are {labels.dtype}, expected integer class ids.")
    info = np.iinfo(np.int32)
    if labels.size and (labels.min() < info.min or labels.max() > info.max):
        raise DataError(f"{source}: labels do not fit in int32 (they span {labels.min()}..{labels.max()}).")
    return labels.astype(np.int32)

