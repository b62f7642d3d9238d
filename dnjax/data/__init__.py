"""Data for training and evaluation, one module per concern.

==================  ==========================================================================
``choices``         the data sets, normalisations and class counts a run can choose
``base``            :class:`DataError`, :class:`DataSpec`, :class:`Split`, :class:`DatasetInfo`, checks
``in_memory``       :func:`load_in_memory`: digits, npz, CIFAR-10/100, SVHN read into host memory
``npz``             npz splits from several files or globs, with a selectable label array
``tfds``            ``tfds.data_source`` reading and its "prepare it like this" messages
``augmentation``    on-device normalisation, random crop and flip (inside the jitted step)
``order``           training batches as a function of (seed, step); padded evaluation batches
``imagenet``        ImageNet streamed by grain (host-side decoding and augmentation)
``sources``         what the trainer reads: a device-resident or a streamed :class:`DataSource`
==================  ==========================================================================

tensorflow_datasets and grain are imported only by the code that reads tfds data or streams
ImageNet (``tfds``, ``imagenet``); a run on npz or digits data imports neither. The names of
``imagenet`` are available here too, imported on first use.
"""

from dnjax.data.augmentation import augment, normalize, resize
from dnjax.data.base import DataError, DatasetInfo, DataSpec, Split
from dnjax.data.choices import DATASETS, IN_MEMORY_DATASETS, NORMALIZATIONS, NUM_CLASSES, STREAMED_DATASETS
from dnjax.data.in_memory import channel_mean_std, load_in_memory
from dnjax.data.npz import npz_paths
from dnjax.data.order import epoch_permutation, eval_batches, steps_per_epoch, train_batch_indices

_LAZY = {  # name -> module, imported on first use (grain, tensorflow_datasets)
    **{n: "imagenet" for n in (
        "IMAGENET_MEAN", "IMAGENET_STD", "make_imagenet_loader", "imagenet_info",
        "imagenet_train_transform", "imagenet_eval_transform", "random_resized_crop_box",
        "color_jitter", "pca_lighting")},
    "open_tfds_source": "tfds",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dnjax.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dnjax.data' has no attribute {name!r}")


__all__ = [
    "DATASETS", "IN_MEMORY_DATASETS", "NORMALIZATIONS", "NUM_CLASSES", "STREAMED_DATASETS",
    "DataError", "DataSpec", "DatasetInfo", "Split", "augment", "channel_mean_std", "epoch_permutation",
    "eval_batches", "load_in_memory", "normalize", "npz_paths", "resize", "steps_per_epoch",
    "train_batch_indices", *_LAZY,
]
