"""Data sets read whole into host memory (digits, npz, CIFAR-10/100, SVHN): :func:`load_in_memory`.

They are read once as uint8 NHWC arrays with int32 labels and checked; the trainer puts them on
the accelerators and does normalisation and augmentation there (:mod:`dnjax.data.augment`).
tfds sets are read through :mod:`dnjax.data.tfds`, imported only when one is asked for.
"""

from __future__ import annotations

import logging

import numpy as np

from dnjax.data import npz
from dnjax.data.base import (
    DataError,
    DatasetInfo,
    DataSpec,
    Split,
    apply_fraction,
    apply_limit,
    check_label_range,
    validate_split,
)
from dnjax.data.choices import (
    CIFAR_MEAN_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_CLASSES,
    STREAMED_DATASETS,
    TFDS_SPLITS,
)

log = logging.getLogger("dnjax")

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

def load_in_memory(spec: DataSpec) -> tuple[Split, Split, DatasetInfo]:
    """Reads the configured data set into host memory and validates it.

    Returns the training split, the test split and a :class:`DatasetInfo`. The spec's values are
    taken as given (``dnjax.config_lib.validate`` checks them); the data is checked here: a
    :class:`DataError` for anything in it that would make training fail or silently wrong.
    """
    name = spec.dataset
    if name in STREAMED_DATASETS:
        raise DataError(
            f"data.dataset={name!r} does not fit in memory; it is streamed with "
            "dnjax.data.imagenet.make_imagenet_loader."
        )
    normalization, train_limit, test_limit = spec.normalization, spec.train_limit, spec.test_limit

    if name == "digits":
        train, test = _load_digits()
        sources = ("scikit-learn digits (train part)", "scikit-learn digits (test part)")
        fixed_classes = NUM_CLASSES[name]
    elif name == "npz":
        npz_parts = {
            field: npz.load_parts(getattr(spec, field), field, spec.npz_label, limit)
            for field, limit in (("npz_train", train_limit), ("npz_test", test_limit))
        }
        train = npz.concat_parts(npz_parts["npz_train"])
        test = npz.concat_parts(npz_parts["npz_test"])
        sources = tuple(npz.describe_parts(npz_parts[f]) for f in ("npz_train", "npz_test"))
        fixed_classes = None
    else:
        from dnjax.data import tfds

        data_dir = spec.data_dir
        train_name, test_name = TFDS_SPLITS[name]
        train = tfds.load_split(name, train_name, data_dir, train_limit)
        test = tfds.load_split(name, test_name, data_dir, test_limit)
        sources = (f"tfds {name}[{train_name}]", f"tfds {name}[{test_name}]")
        fixed_classes = NUM_CLASSES[name]

    train = apply_limit(train, train_limit)
    test = apply_limit(test, test_limit)
    validate_split(train, sources[0])
    validate_split(test, sources[1])
    train = apply_fraction(train, spec)
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"The training images ({sources[0]}) are {train.images.shape[1:]} (H, W, C) but the "
            f"test images ({sources[1]}) are {test.images.shape[1:]}; both splits must have the "
            "same image shape."
        )

    pad = spec.pad
    height, width = train.images.shape[1:3]
    if spec.augment and pad > min(height, width):
        raise DataError(
            f"data.pad={pad} is larger than the {height}x{width} images: the random crops would "
            f"be mostly padding. Use at most {min(height, width)} (the CIFAR recipe pads 32x32 "
            "images by 4)."
        )

    num_classes = _num_classes(spec, fixed_classes, train, name)
    if name == "npz":  # name the part (file and array) that holds a bad label
        for field, parts in npz_parts.items():
            for part in parts:
                check_label_range(part.labels, num_classes, f"data.{field}: {part.path} (array {part.label_key!r})")
    else:
        for split, source in ((train, sources[0]), (test, sources[1])):
            check_label_range(split.labels, num_classes, source)

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


def _num_classes(spec: DataSpec, fixed: int | None, train: Split, name: str) -> int:
    """data.num_classes where it is set (it must agree with a data set's fixed class count), else
    the data set's own count, else one more than the largest training label (npz)."""
    configured = spec.num_classes
    if configured is not None:
        if fixed is not None and configured != fixed:
            raise DataError(
                f"data.num_classes={configured} but {name} has {fixed} classes; leave "
                "data.num_classes at None to take it from the data set."
            )
        return configured
    if fixed is not None:
        return fixed
    return int(train.labels.max()) + 1


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

