"""ImageNet streamed by grain: each process reads its own shard of ``tfds.data_source``; decoding
and augmentation (random-resized crop, colour jitter, PCA lighting, flip) run on the hosts.

This module imports grain; only runs that stream ImageNet import it.
"""

from __future__ import annotations

import math
from typing import Any

import grain
import numpy as np

from dnjax.data.base import DataError, DatasetInfo, DataSpec
from dnjax.data.choices import IMAGENET_MEAN, IMAGENET_STD, NUM_CLASSES, STREAMED_DATASETS, TFDS_SPLITS
from dnjax.data.tfds import open_tfds_source

# ImageNet constants on the 0..1 scale, and the PCA of its RGB pixels for the lighting noise
# (the eigen-decomposition published with AlexNet and used by fb.resnet.torch).
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
    spec: DataSpec,
    *,
    split: str,
    global_batch: int,
    seed: int,
    process_index: int,
    process_count: int,
    train: bool = True,
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
    the next batch. ``spec.workers`` > 0 decodes in that many child processes; images are cropped to
    ``spec.image_size``.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if global_batch <= 0 or global_batch % process_count:
        raise DataError(
            f"The global batch ({global_batch}) must be a positive multiple of the number of "
            f"processes ({process_count})."
        )
    per_process = global_batch // process_count
    name = spec.dataset
    if name not in STREAMED_DATASETS:
        raise DataError(f"make_imagenet_loader streams {STREAMED_DATASETS}, not {name!r}.")
    source = open_tfds_source(name, split, spec.data_dir)
    n = len(source)
    limit = spec.train_limit if train else spec.test_limit
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
        operations = [_ImageNetTrain(spec.image_size), grain.transforms.Batch(per_process, drop_remainder=True)]
    else:
        padded = -(-n // global_batch) * global_batch
        records = _LabelledSource(_Truncated(source, n), padded)
        sampler = grain.samplers.IndexSampler(num_records=padded, shuffle=False, num_epochs=1)
        operations = [_ImageNetEval(spec.image_size), grain.transforms.Batch(per_process, drop_remainder=False)]
    return grain.DataLoader(
        data_source=records,
        sampler=sampler,
        operations=operations,
        worker_count=spec.workers,
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


def imagenet_info(spec: DataSpec) -> DatasetInfo:
    """The :class:`DatasetInfo` of the streamed data set, cropped to ``spec.image_size`` (mean and
    std on the 0..255 scale)."""
    name, data_dir, image_size = spec.dataset, spec.data_dir, spec.image_size
    train_split, test_split = TFDS_SPLITS[name]
    num_train = len(open_tfds_source(name, train_split, data_dir))
    num_test = len(open_tfds_source(name, test_split, data_dir))
    train_limit, test_limit = spec.train_limit, spec.test_limit
    return DatasetInfo(
        name=name,
        num_classes=NUM_CLASSES[name],
        image_shape=(image_size, image_size, 3),
        num_train=min(num_train, train_limit) if train_limit else num_train,
        num_test=min(num_test, test_limit) if test_limit else num_test,
        mean=tuple(255.0 * m for m in IMAGENET_MEAN),
        std=tuple(255.0 * s for s in IMAGENET_STD),
    )

