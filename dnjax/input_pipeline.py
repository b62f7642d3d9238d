"""Data: in-memory splits for the small data sets, a streamed grain loader for ImageNet.

Small data sets (scikit-learn's 8x8 digits, npz files, CIFAR-10/100, SVHN) are read once into host
memory as uint8 NHWC arrays with int32 labels (:func:`load_in_memory`); the trainer puts them on the
accelerators and does normalisation and augmentation there (:func:`normalize`, :func:`augment`,
both jit-able). The order of the training examples is a pure function of (seed, step)
(:func:`train_batch_indices`), so a resumed run continues with exactly the batch it would have seen.

ImageNet is streamed: :func:`make_imagenet_loader` builds a checkpointable grain loader over
``tfds.data_source('imagenet2012')`` in which every process reads only its own shard.

tfds data sets are read through ``tfds.data_source`` (random access, no TensorFlow), which needs
them prepared in the ``array_record`` format. Every problem with the data (an unprepared data set,
a missing file, labels out of range, ...) raises :class:`DataError` before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

IN_MEMORY_DATASETS = ("digits", "npz", "cifar10", "cifar100", "svhn_cropped")
STREAMED_DATASETS = ("imagenet2012",)
DATASETS = IN_MEMORY_DATASETS + STREAMED_DATASETS
NORMALIZATIONS = ("mean_std", "scale", "imagenet")

# Classes of the tfds data sets (their `label` feature).
TFDS_NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn_cropped": 10, "imagenet2012": 1000}
# Split names of the tfds data sets: (train, test).
TFDS_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "svhn_cropped": ("train", "test"),
    "imagenet2012": ("train", "validation"),
}

# Per-channel normalisation constants of the CIFAR recipe, 0..255 scale (spec, "Training recipes").
CIFAR_MEAN_STD = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
}

# ImageNet constants on the 0..1 scale, and the PCA of its RGB pixels for the lighting noise
# (the eigen-decomposition published with AlexNet and used by fb.resnet.torch).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    np.float32,
)
COLOR_JITTER = 0.4
LIGHTING_STD = 0.1
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3.0 / 4.0, 4.0 / 3.0)

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

_TFDS_READ_CHUNK = 1024


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


def _field(data_config: Any, name: str, default: Any = None) -> Any:
    """A config field, or ``default`` where the config does not define it."""
    try:
        value = data_config[name]
    except (KeyError, AttributeError, TypeError):
        value = getattr(data_config, name, default)
    return default if value is None else value


# --------------------------------------------------------------------------------------------
# In-memory data sets


def load_in_memory(data_config) -> tuple[Split, Split, DatasetInfo]:
    """Reads the configured data set into host memory and validates it.

    Returns the training split, the test split and a :class:`DatasetInfo`. Raises
    :class:`DataError` for anything that would make training fail or silently wrong.
    """
    name = _field(data_config, "dataset")
    if name not in DATASETS:
        raise DataError(f"data.dataset={name!r} is not a known data set; choose one of {DATASETS}.")
    if name in STREAMED_DATASETS:
        raise DataError(
            f"data.dataset={name!r} does not fit in memory; it is streamed with "
            "dnjax.input_pipeline.make_imagenet_loader."
        )
    normalization = _field(data_config, "normalization", "mean_std")
    if normalization not in NORMALIZATIONS:
        raise DataError(
            f"data.normalization={normalization!r} is not known; choose one of {NORMALIZATIONS}."
        )
    train_limit = _limit(data_config, "train_limit")
    test_limit = _limit(data_config, "test_limit")

    if name == "digits":
        train, test = _load_digits()
        sources = ("scikit-learn digits (train part)", "scikit-learn digits (test part)")
        fixed_classes = 10
    elif name == "npz":
        label_key = _field(data_config, "npz_label", "label")
        if not isinstance(label_key, str) or not label_key:
            raise DataError(f"data.npz_label={label_key!r} must name an array of the npz files, e.g. 'label'.")
        train_spec = _field(data_config, "npz_train")
        test_spec = _field(data_config, "npz_test")
        for field, spec in (("npz_train", train_spec), ("npz_test", test_spec)):
            if not spec:
                raise DataError(
                    f"data.dataset='npz' needs data.{field}: the path of an .npz file, several "
                    "paths separated by commas, or a glob."
                )
        npz_parts = {
            "npz_train": _load_npz_parts(train_spec, "npz_train", label_key, train_limit),
            "npz_test": _load_npz_parts(test_spec, "npz_test", label_key, test_limit),
        }
        train = _concat_parts(npz_parts["npz_train"])
        test = _concat_parts(npz_parts["npz_test"])
        sources = tuple(_describe_parts(npz_parts[f]) for f in ("npz_train", "npz_test"))
        fixed_classes = None
    else:
        data_dir = _field(data_config, "data_dir")
        train_name, test_name = TFDS_SPLITS[name]
        train = _load_tfds_split(name, train_name, data_dir, train_limit)
        test = _load_tfds_split(name, test_name, data_dir, test_limit)
        sources = (f"tfds {name}[{train_name}]", f"tfds {name}[{test_name}]")
        fixed_classes = TFDS_NUM_CLASSES[name]

    train = _apply_limit(train, train_limit)
    test = _apply_limit(test, test_limit)
    _validate_split(train, sources[0])
    _validate_split(test, sources[1])
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"The training images ({sources[0]}) are {train.images.shape[1:]} (H, W, C) but the "
            f"test images ({sources[1]}) are {test.images.shape[1:]}; both splits must have the "
            "same image shape."
        )

    pad = _field(data_config, "pad", 0)
    height, width = train.images.shape[1:3]
    if _field(data_config, "augment", False) and isinstance(pad, int) and pad > min(height, width):
        raise DataError(
            f"data.pad={pad} is larger than the {height}x{width} images: the random crops would "
            f"be mostly padding. Use at most {min(height, width)} (the CIFAR recipe pads 32x32 "
            "images by 4)."
        )

    num_classes = _num_classes(data_config, fixed_classes, train, name)
    if name == "npz":  # name the part (file and array) that holds a bad label
        for field, parts in npz_parts.items():
            for part in parts:
                _check_label_range(part.labels, num_classes, f"data.{field}: {part.path} (array {part.label_key!r})")
    else:
        for split, source in ((train, sources[0]), (test, sources[1])):
            _check_label_range(split.labels, num_classes, source)

    if normalization == "scale":
        channels = train.images.shape[-1]
        mean, std = (0.0,) * channels, (255.0,) * channels
    elif normalization == "imagenet":  # what ImageNet weights were trained with
        if train.images.shape[-1] != 3:
            raise DataError(f"data.normalization='imagenet' needs RGB images; {sources[0]} has "
                            f"{train.images.shape[-1]} channel(s)")
        mean = tuple(255.0 * m for m in IMAGENET_MEAN)
        std = tuple(255.0 * s for s in IMAGENET_STD)
    elif name in CIFAR_MEAN_STD:
        mean, std = CIFAR_MEAN_STD[name]
    else:
        mean, std = channel_mean_std(train.images)

    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        image_shape=tuple(int(d) for d in train.images.shape[1:]),
        num_train=len(train),
        num_test=len(test),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    log.info(
        "data %s: %d train / %d test images of %s, %d classes",
        name, info.num_train, info.num_test, info.image_shape, info.num_classes,
    )
    return train, test, info


def _limit(data_config, field: str) -> int | None:
    limit = _field(data_config, field)
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise DataError(f"data.{field}={limit!r} must be a positive integer or None.")
    return int(limit)


def _apply_limit(split: Split, limit: int | None) -> Split:
    if limit is None or limit >= len(split):
        return split
    return Split(images=split.images[:limit], labels=split.labels[:limit])


def _num_classes(data_config, fixed: int | None, train: Split, name: str) -> int:
    configured = _field(data_config, "num_classes")
    if configured is not None:
        if isinstance(configured, bool) or not isinstance(configured, (int, np.integer)):
            raise DataError(f"data.num_classes={configured!r} must be an integer or None.")
        configured = int(configured)
        if configured < 1:
            raise DataError(f"data.num_classes={configured} must be at least 1.")
        if fixed is not None and configured != fixed:
            raise DataError(
                f"data.num_classes={configured} but {name} has {fixed} classes; leave "
                "data.num_classes at None to take it from the data set."
            )
        return configured
    if fixed is not None:
        return fixed
    return int(train.labels.max()) + 1


def _validate_split(split: Split, source: str) -> None:
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


def _check_label_range(labels: np.ndarray, num_classes: int, source: str) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{source}: {int(bad.sum())} labels outside [0, {num_classes}) (for example "
            f"labels[{first}] = {int(labels[first])}; the labels span {int(labels.min())}.."
            f"{int(labels.max())}). Fix the labels or set data.num_classes."
        )


def _as_labels(labels: np.ndarray, source: str) -> np.ndarray:
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


def channel_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 NHWC images (0..255 scale)."""
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].reshape(-1, channels).astype(np.float64)
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # a constant channel: leave its scale alone
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _load_digits() -> tuple[Split, Split]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16): a seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_FRACTION, stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return Split(x_train, y_train), Split(x_test, y_test)


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
        if os.path.realpath(p) in seen:
            raise DataError(f"data.{field}: {p} is named twice in {spec!r}; each part may appear once.")
        seen.add(os.path.realpath(p))
    return paths


def _load_npz_parts(spec: str, field: str, label_key: str, limit: int | None) -> list[NpzPart]:
    """Reads every part of an npz split and checks that they agree; ``limit`` keeps the first N
    images of the concatenation (later parts are then not read at all)."""
    parts: list[NpzPart] = []
    remaining = limit
    for path in npz_paths(spec, field):
        if remaining is not None and remaining <= 0:
            break
        part = _load_npz(path, field, label_key, remaining)
        _validate_split(Split(part.images, part.labels), f"data.{field}: {path}")
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


def _concat_parts(parts: list[NpzPart]) -> Split:
    if len(parts) == 1:
        return Split(parts[0].images, parts[0].labels)
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _describe_parts(parts: list[NpzPart]) -> str:
    if len(parts) == 1:
        return parts[0].path
    return f"{parts[0].path} (+{len(parts) - 1} more part{'s' if len(parts) > 2 else ''})"


def _load_npz(path: str, field: str, label_key: str = "label", limit: int | None = None) -> NpzPart:
    path = os.fspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise DataError(f"data.{field}: the file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
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
                   labels=_as_labels(labels, f"data.{field}: {path} (array {label_key!r})"))


# --------------------------------------------------------------------------------------------
# tfds data sets (tfds.data_source: array_record, random access, no TensorFlow)


def _prepare_instructions(name: str, root: str) -> str:
    extra = {"svhn_cropped": " scipy"}.get(name, "")
    lines = [
        "Prepare it once, on a machine with network access (preparing needs TensorFlow, "
        "training does not):",
        f"    pip install tensorflow-cpu importlib_resources{extra}",
    ]
    if name == "imagenet2012":
        lines += [
            "    # ImageNet cannot be downloaded by tfds: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar in MANUAL_DIR first",
            f"    tfds build {name} --file_format=array_record --data_dir={root} "
            "--manual_dir=MANUAL_DIR",
        ]
    else:
        lines.append(f"    tfds build {name} --file_format=array_record --data_dir={root}")
    lines.append(
        f"then copy {os.path.join(root, name)} to the same place on the training machines "
        "(or point data.data_dir at the directory that holds it)."
    )
    return "\n".join(lines)


def _check_data_dir(data_dir) -> None:
    if data_dir is None:
        return
    path = os.fspath(data_dir)
    if "://" in path:  # gs://..., checked by tfds itself
        return
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataError(
            f"data.data_dir={path} does not exist. Point it at the tfds data directory that holds "
            "the prepared data set (the directory given as --data_dir to `tfds build`), or leave "
            "it at None for $TFDS_DATA_DIR or ~/tensorflow_datasets."
        )
    if not os.path.isdir(path):
        raise DataError(f"data.data_dir={path} is not a directory.")


def open_tfds_source(name: str, split: str, data_dir=None):
    """``tfds.data_source(name, split=split)``, or a :class:`DataError` that says how to prepare it.

    Never downloads or prepares anything: an unprepared data set fails at once.
    """
    import tensorflow_datasets as tfds

    _check_data_dir(data_dir)
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:
        explained = _tfds_error(name, data_dir, e)
        if explained is e:
            raise
        raise explained from e


def _tfds_error(name: str, data_dir, error: Exception) -> Exception:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        version_dir = os.fspath(builder.data_dir)
        root = os.fspath(builder.data_dir_root)
        prepared = builder.is_prepared()
        file_format = builder.info.file_format
        alternatives = list(getattr(builder.info, "alternative_file_formats", []) or [])
    except Exception:  # the builder itself is unusable: report the original error
        return error
    looked = f"data.data_dir={data_dir}" if data_dir is not None else (
        f"tfds's default data dir {root} (data.data_dir is None: $TFDS_DATA_DIR or "
        "~/tensorflow_datasets)"
    )
    if not prepared:
        return DataError(
            f"The tfds data set {name!r} is not prepared in {looked} (looked for "
            f"{version_dir}/dataset_info.json).\n"
            "dnjax reads tfds data sets with tfds.data_source, which needs the array_record file "
            "format.\n" + _prepare_instructions(name, root)
        )
    formats = [getattr(f, "value", str(f)) for f in [file_format, *alternatives] if f is not None]
    if "array_record" not in formats and "parquet" not in formats:
        return DataError(
            f"The tfds data set {name!r} in {version_dir} is prepared in the {formats} format only; "
            "dnjax reads it with tfds.data_source, which needs array_record. Convert it in place "
            "(needs TensorFlow: pip install tensorflow-cpu):\n"
            f"    tfds convert_format --dataset_version_dir={version_dir} "
            "--out_file_format=array_record\n"
            "or prepare a fresh copy in another directory:\n"
            + _prepare_instructions(name, "NEW_DATA_DIR")
        )
    return error


def _read_records(source, start: int, stop: int) -> list:
    """Records ``start..stop-1`` of a data source, in chunks through ``__getitems__`` where it works."""
    getitems = getattr(source, "__getitems__", None)
    out: list = []
    for lo in range(start, stop, _TFDS_READ_CHUNK):
        keys = list(range(lo, min(stop, lo + _TFDS_READ_CHUNK)))
        records = None
        if getitems is not None:
            try:
                records = getitems(keys)
            except TypeError:  # a data source without a working batched read
                getitems = None
        if records is None:
            records = [source[k] for k in keys]
        out.extend(records)
    return out


def _load_tfds_split(name: str, split: str, data_dir, limit: int | None) -> Split:
    source = open_tfds_source(name, split, data_dir)
    n = len(source)
    if limit is not None:
        n = min(n, limit)
    where = f"tfds {name}[{split}]"
    if n == 0:
        return Split(np.zeros((0, 1, 1, 1), np.uint8), np.zeros((0,), np.int32))
    images = None
    labels = np.empty((n,), np.int64)
    for lo in range(0, n, _TFDS_READ_CHUNK):
        hi = min(n, lo + _TFDS_READ_CHUNK)
        try:
            records = _read_records(source, lo, hi)
        except ImportError as e:
            raise DataError(
                f"{where}: decoding the images needs pillow (pip install pillow): {e}"
            ) from e
        for i, record in enumerate(records, start=lo):
            image = np.asarray(record["image"])
            if images is None:
                images = np.empty((n, *image.shape), np.uint8)
            if image.shape != images.shape[1:] or image.dtype != np.uint8:
                raise DataError(
                    f"{where}: example {i} is a {image.dtype} image of shape {image.shape}, the "
                    f"first was uint8 {images.shape[1:]}; in-memory data sets need one fixed shape."
                )
            images[i] = image
            labels[i] = int(record["label"])
    log.info("read %d examples of %s", n, where)
    return Split(images=images, labels=_as_labels(labels, where))


# --------------------------------------------------------------------------------------------
# On-device normalisation and augmentation


def normalize(images, mean, std) -> jax.Array:
    """``(images - mean) / std`` per channel, as float32. jit-able.

    ``mean`` and ``std`` are on the images' 0..255 scale (:class:`DatasetInfo`); the 'scale'
    normalisation is mean 0, std 255 (pixels / 255).
    """
    x = jnp.asarray(images).astype(jnp.float32)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (x - mean) / std


def resize(images, size: int | None) -> jax.Array:
    """Bilinear resize of a batch [N, H, W, C] to size x size (``None``: unchanged). jit-able:
    small images are enlarged on the device, e.g. CIFAR to the 224 x 224 of ImageNet weights."""
    if size is None or tuple(images.shape[1:3]) == (size, size):
        return images
    n, _, _, c = images.shape
    return jax.image.resize(images, (n, size, size, c), "bilinear")


def augment(rng, images, *, pad: int, flip: bool) -> jax.Array:
    """Random crop after zero padding, and random horizontal flip, per example. jit-able.

    ``images`` are the normalised batch [N, H, W, C]: the zero padding then equals the mean
    pixel. Each example is padded by ``pad`` on every side and cropped back to H x W at a random
    offset; with ``flip`` each example is mirrored left-right with probability 1/2.
    ``pad=0, flip=False`` returns ``images`` unchanged.
    """
    images = jnp.asarray(images)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0 and not flip:
        return images
    n, h, w, c = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    out = images
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        out = jax.vmap(crop)(padded, offsets)
    if flip:
        mirrored = jax.random.bernoulli(flip_rng, 0.5, (n,))
        out = jnp.where(mirrored[:, None, None, None], out[:, :, ::-1, :], out)
    return out


# --------------------------------------------------------------------------------------------
# Order of the examples


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training examples in ``epoch``; depends only on (seed, epoch, n)."""
    if seed < 0 or epoch < 0 or n < 0:
        raise ValueError(f"seed, epoch and n must be >= 0, got {seed}, {epoch}, {n}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(n)])))
    dtype = np.int32 if n <= np.iinfo(np.int32).max else np.int64
    return rng.permutation(n).astype(dtype)


_PERMUTATION_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _cached_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (int(seed), int(epoch), int(n))
    perm = _PERMUTATION_CACHE.get(key)
    if perm is None:
        perm = epoch_permutation(*key)
        perm.setflags(write=False)
        if len(_PERMUTATION_CACHE) >= 2:
            _PERMUTATION_CACHE.clear()
        _PERMUTATION_CACHE[key] = perm
    return perm


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Full batches in one pass over ``n`` examples (the remainder of each epoch is dropped)."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    return n // global_batch


def train_batch_indices(seed: int, step: int, n: int, global_batch: int) -> np.ndarray:
    """Indices of the training examples of global step ``step`` (0-based).

    Epoch ``step // steps_per_epoch`` is ``epoch_permutation(seed, epoch, n)`` cut into
    ``n // global_batch`` batches; the remainder of each epoch is dropped. A pure function of its
    arguments, so a resumed run continues with exactly the next batch.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    per_epoch = steps_per_epoch(n, global_batch)
    if per_epoch == 0:
        raise DataError(
            f"The global batch ({global_batch}) is larger than the training set ({n} examples); "
            "lower batch_size or raise data.train_limit."
        )
    epoch, within = divmod(int(step), per_epoch)
    start = within * global_batch
    return _cached_permutation(seed, epoch, n)[start : start + global_batch]


def eval_batches(n: int, global_batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices int32 [global_batch], mask bool [global_batch]) covering ``range(n)`` once, in order.

    The last batch is padded with index 0 and mask False.
    """
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0, got {global_batch}")
    for start in range(0, n, global_batch):
        count = min(global_batch, n - start)
        indices = np.zeros((global_batch,), np.int32)
        indices[:count] = np.arange(start, start + count, dtype=np.int32)
        mask = np.zeros((global_batch,), np.bool_)
        mask[:count] = True
        yield indices, mask


# --------------------------------------------------------------------------------------------
# ImageNet, streamed with grain


def _pil_image(array: np.ndarray):
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(array.astype(np.uint8, copy=False))


def random_resized_crop_box(
    rng: np.random.Generator, height: int, width: int, area=CROP_AREA, aspect=CROP_ASPECT
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of an Inception-style random crop.

    The crop covers a fraction of the image area drawn uniformly from ``area`` with an aspect ratio
    (width / height) drawn log-uniformly from ``aspect``; after 10 misses, the largest centred crop
    whose aspect ratio lies in ``aspect``.
    """
    total = height * width
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(10):
        target = total * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < aspect[0]:
        w, h = width, int(round(width / aspect[0]))
    elif in_ratio > aspect[1]:
        h, w = height, int(round(height * aspect[1]))
    else:
        h, w = height, width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def color_jitter(rng: np.random.Generator, image: np.ndarray, strength: float = COLOR_JITTER) -> np.ndarray:
    """Brightness, contrast and saturation jitter in random order (float image, 0..1 scale).

    Each blends the image with a reference (black; the mean grey level; the grey image) with a
    factor drawn from [1 - strength, 1 + strength].
    """
    for op in rng.permutation(3):
        alpha = np.float32(1.0 + rng.uniform(-strength, strength))
        if op == 0:  # brightness
            image = image * alpha
        else:
            gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
            if op == 1:  # contrast
                image = image * alpha + np.float32(gray.mean()) * (1 - alpha)
            else:  # saturation
                image = image * alpha + gray[..., None] * (1 - alpha)
    return image.astype(np.float32, copy=False)


def pca_lighting(rng: np.random.Generator, image: np.ndarray, std: float = LIGHTING_STD) -> np.ndarray:
    """AlexNet-style lighting noise: adds ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std)."""
    alpha = rng.normal(0.0, std, size=3).astype(np.float32)
    return (image + IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL)).astype(np.float32)


def _normalize_imagenet(image: np.ndarray) -> np.ndarray:
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return ((image - mean) / std).astype(np.float32)


def imagenet_train_transform(rng: np.random.Generator, image: np.ndarray, image_size: int) -> np.ndarray:
    """Random-resized crop, colour jitter, PCA lighting, flip, normalisation: float32 [S, S, 3]."""
    from PIL import Image

    pil = _pil_image(image)
    top, left, h, w = random_resized_crop_box(rng, pil.height, pil.width)
    pil = pil.resize(
        (image_size, image_size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)
    )
    x = np.asarray(pil, np.float32) / 255.0
    x = color_jitter(rng, x)
    x = pca_lighting(rng, x)
    if rng.uniform() < 0.5:
        x = x[:, ::-1]
    return _normalize_imagenet(np.ascontiguousarray(x))


def imagenet_eval_transform(image: np.ndarray, image_size: int) -> np.ndarray:
    """torchvision's evaluation transform of its ImageNet weights, float32 [S, S, 3].

    The shorter side is resized to ``image_size * 256 / 224`` (256 for 224) and the longer one to
    ``int(256 * long / short)`` with PIL's bilinear filter (antialiased, as torchvision resizes
    PIL images), the centre S x S crop is taken at torchvision's rounded offsets, and the pixels
    / 255 are normalised with the ImageNet mean and std: pixel for pixel what
    ``torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.transforms()`` gives.
    """
    from PIL import Image

    pil = _pil_image(image)
    short = int(round(image_size * 256 / 224))
    w, h = pil.width, pil.height
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    pil = pil.crop((left, top, left + image_size, top + image_size))
    return _normalize_imagenet(np.asarray(pil, np.float32) / 255.0)


class _LabelledSource:
    """A tfds data source seen as {'image', 'label', 'mask'} records, padded to ``length``.

    Indices past the end of the data set return example 0 with mask False, so that every process
    gets the same number of full evaluation batches.
    """

    def __init__(self, source, length: int | None = None):
        self._source = source
        self._n = len(source)
        self._length = self._n if length is None else int(length)

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:  # grain checks it when restoring an iterator's state
        return f"LabelledSource({self._source!r}, length={self._length})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        valid = index < self._n
        record = self._source[index if valid else 0]
        return {
            "image": np.asarray(record["image"]),
            "label": np.int32(int(record["label"])),
            "mask": np.bool_(valid),
        }


class _ImageNetTrain(grain.transforms.RandomMap):
    def __init__(self, image_size: int):
        self.image_size = image_size

    def random_map(self, element, rng: np.random.Generator):
        return {
            "image": imagenet_train_transform(rng, element["image"], self.image_size),
            "label": element["label"],
            "mask": element["mask"],
        }


class _ImageNetEval(grain.transforms.Map):
    def __init__(self, image_size: int):
        self.image_size = image_size

    def map(self, element):
        return {
            "image": imagenet_eval_transform(element["image"], self.image_size),
            "label": element["label"],
            "mask": element["mask"],
        }


def make_imagenet_loader(
    data_config,
    *,
    split: str,
    global_batch: int,
    seed: int,
    process_index: int,
    process_count: int,
    image_size: int = 224,
    train: bool = True,
    worker_count: int = 0,
):
    """A grain DataLoader over ``tfds.data_source('imagenet2012', split=split)``.

    Every process reads only its own shard and gets batches of ``global_batch // process_count``
    examples: dicts with 'image' (float32 [B, S, S, 3], normalised), 'label' (int32 [B]) and
    'mask' (bool [B]). Training (``train=True``) shuffles with ``seed``, repeats forever, applies
    the random-resized crop / flip / colour jitter / lighting transforms and drops the remainder.
    Evaluation reads the split once in order: resize, centre crop; the split is padded (mask False)
    to a multiple of ``global_batch`` so every process yields the same number of full batches.

    ``iter(loader)`` gives a grain iterator with ``get_state()``/``set_state()`` (and
    ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``): a restored iterator continues at
    the next batch. ``worker_count`` > 0 decodes in that many child processes.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if global_batch <= 0 or global_batch % process_count:
        raise DataError(
            f"The global batch ({global_batch}) must be a positive multiple of the number of "
            f"processes ({process_count})."
        )
    per_process = global_batch // process_count
    name = _field(data_config, "dataset", "imagenet2012")
    if name not in STREAMED_DATASETS:
        raise DataError(f"make_imagenet_loader streams {STREAMED_DATASETS}, not {name!r}.")
    source = open_tfds_source(name, split, _field(data_config, "data_dir"))
    n = len(source)
    limit = _limit(data_config, "train_limit" if train else "test_limit")
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise DataError(f"tfds {name}[{split}] is empty.")
    shard = grain.sharding.ShardOptions(
        shard_index=process_index, shard_count=process_count, drop_remainder=True
    )
    if train:
        if n < global_batch:
            raise DataError(
                f"tfds {name}[{split}] has {n} examples, fewer than the global batch {global_batch}."
            )
        records = _LabelledSource(source, n)
        sampler = grain.samplers.IndexSampler(
            num_records=n, shuffle=True, num_epochs=None, seed=int(seed)
        )
        operations = [_ImageNetTrain(image_size), grain.transforms.Batch(per_process, drop_remainder=True)]
    else:
        padded = -(-n // global_batch) * global_batch
        records = _LabelledSource(_Truncated(source, n), padded)
        sampler = grain.samplers.IndexSampler(num_records=padded, shuffle=False, num_epochs=1)
        operations = [_ImageNetEval(image_size), grain.transforms.Batch(per_process, drop_remainder=False)]
    return grain.DataLoader(
        data_source=records,
        sampler=sampler,
        operations=operations,
        worker_count=worker_count,
        shard_options=shard,
    )


class _Truncated:
    """The first ``n`` records of a data source."""

    def __init__(self, source, n: int):
        self._source = source
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        return f"Truncated({self._source!r}, n={self._n})"

    def __getitem__(self, index: int):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]


def imagenet_info(data_config, *, image_size: int = 224) -> DatasetInfo:
    """The :class:`DatasetInfo` of the streamed data set (mean and std on the 0..255 scale)."""
    name = _field(data_config, "dataset", "imagenet2012")
    data_dir = _field(data_config, "data_dir")
    train_split, test_split = TFDS_SPLITS[name]
    num_train = len(open_tfds_source(name, train_split, data_dir))
    num_test = len(open_tfds_source(name, test_split, data_dir))
    train_limit = _limit(data_config, "train_limit")
    test_limit = _limit(data_config, "test_limit")
    return DatasetInfo(
        name=name,
        num_classes=TFDS_NUM_CLASSES[name],
        image_shape=(image_size, image_size, 3),
        num_train=min(num_train, train_limit) if train_limit else num_train,
        num_test=min(num_test, test_limit) if test_limit else num_test,
        mean=tuple(255.0 * m for m in IMAGENET_MEAN),
        std=tuple(255.0 * s for s in IMAGENET_STD),
    )
