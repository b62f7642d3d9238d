"""npz data: ``data.npz_train``/``npz_test`` name a file, several separated by commas, or a glob;
the parts are concatenated in that order, each holding ``image`` (uint8 NHWC) and the label array
named by ``data.npz_label``."""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from dnjax import storage
from dnjax.data.base import DataError, Split, as_labels, validate_split


@dataclasses.dataclass(frozen=True)
class NpzPart:
    """One file of an npz split: its path, the label array used and the (possibly cut) arrays."""

    path: str
    label_key: str
    images: np.ndarray
    labels: np.ndarray


_GLOB_CHARS = set("*?[")


def npz_paths(spec: str, field: str) -> list[str]:
    """The files of ``data.<field>``: comma-separated paths, each of which may be a glob.

    Files are taken in the order given, a glob's matches in sorted order. A glob that matches
    nothing, a missing file or a file named twice is a :class:`DataError`.
    """
    import glob

    if not isinstance(spec, str):
        raise DataError(f"data.{field}={spec!r} must be a string: a path, paths separated by commas, or a glob.")
    items = [item.strip() for item in spec.split(",")]
    if not any(items) or not all(items):
        raise DataError(f"data.{field}={spec!r} has an empty path; separate the files with single commas.")
    paths: list[str] = []
    for item in items:
        if storage.is_remote(item):
            paths += _remote_paths(item, field)
            continue
        item = os.path.expanduser(item)
        if _GLOB_CHARS & set(item):
            matches = sorted(glob.glob(item))
            if not matches:
                raise DataError(f"data.{field}: the glob {item} matches no file.")
            paths += matches
        else:
            if not os.path.exists(item):
                raise DataError(f"data.{field}: the file {item} does not exist.")
            paths.append(item)
    seen = set()
    for p in paths:
        key = p if storage.is_remote(p) else os.path.realpath(p)
        if key in seen:
            raise DataError(f"data.{field}: {p} is named twice in {spec!r}; each part may appear once.")
        seen.add(key)
    return paths


def _remote_paths(item: str, field: str) -> list[str]:
    """An object-store item of ``data.<field>``: one object, or a glob in its last component."""
    try:
        storage.check_available(item, f"data.{field}")
    except storage.StorageError as e:
        raise DataError(str(e)) from None
    p = storage.path(item)
    if _GLOB_CHARS & set(item):
        if _GLOB_CHARS & set(os.fspath(p.parent)):
            raise DataError(f"data.{field}: in the object-store glob {item} only the file name may hold "
                            "wildcards (gs://bucket/dir/train_*.npz).")
        matches = sorted(str(m) for m in p.parent.glob(p.name))
        if not matches:
            raise DataError(f"data.{field}: the glob {item} matches no object.")
        return matches
    if not p.exists():
        raise DataError(f"data.{field}: the file {item} does not exist.")
    return [str(p)]


def load_parts(spec: str, field: str, label_key: str, limit: int | None) -> list[NpzPart]:
    """Reads every part of an npz split and checks that they agree; ``limit`` keeps the first N
    images of the concatenation (later parts are then not read at all)."""
    parts: list[NpzPart] = []
    remaining = limit
    for path in npz_paths(spec, field):
        if remaining is not None and remaining <= 0:
            break
        part = _load_npz(path, field, label_key, remaining)
        validate_split(Split(part.images, part.labels), f"data.{field}: {path}")
        if parts:
            first = parts[0]
            if part.images.shape[1:] != first.images.shape[1:] or part.images.dtype != first.images.dtype:
                raise DataError(
                    f"data.{field}: {path} (array 'image') holds {part.images.dtype} images of shape "
                    f"{part.images.shape[1:]} but {first.path} holds {first.images.dtype} images of shape "
                    f"{first.images.shape[1:]}; every part of a split must have the same image shape and dtype."
                )
        parts.append(part)
        if remaining is not None:
            remaining -= len(part.labels)
    return parts


def concat_parts(parts: list[NpzPart]) -> Split:
    if len(parts) == 1:
        return Split(parts[0].images, parts[0].labels)
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def describe_parts(parts: list[NpzPart]) -> str:
    if len(parts) == 1:
        return parts[0].path
    return f"{parts[0].path} (+{len(parts) - 1} more part{'s' if len(parts) > 2 else ''})"


def _load_npz(path: str, field: str, label_key: str = "label", limit: int | None = None) -> NpzPart:
    remote = storage.is_remote(path)
    path = os.fspath(path) if remote else os.fspath(os.path.expanduser(path))
    if not (storage.path(path).exists() if remote else os.path.exists(path)):
        raise DataError(f"data.{field}: the file {path} does not exist.")
    try:
        # An object is read whole (numpy seeks around in a zip file).
        source = io.BytesIO(storage.path(path).read_bytes()) if remote else path
        with np.load(source, allow_pickle=False) as f:
            keys = sorted(f.files)
            missing = [k for k in ("image", label_key) if k not in keys]
            if missing:
                raise DataError(
                    f"data.{field}: {path} has no array(s) {missing}; it holds {keys}. An npz data "
                    "file needs 'image' (uint8 [N, H, W, C]) and integer labels [N] in the array that "
                    f"data.npz_label names (now {label_key!r}): np.savez(path, image=images, label=labels)."
                )
            images = f["image"]
            labels = f[label_key]
    except DataError:
        raise
    except Exception as e:  # not a zip / npz file, or an array that needs pickle
        raise DataError(f"data.{field}: cannot read {path} as an .npz file: {e}") from e
    if limit is not None and images.ndim >= 1 and labels.ndim >= 1:
        images, labels = images[:limit], labels[:limit]
    return NpzPart(path=path, label_key=label_key, images=np.ascontiguousarray(images),
                   labels=as_labels(labels, f"data.{field}: {path} (array {label_key!r})"))

