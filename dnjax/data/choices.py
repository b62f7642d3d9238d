"""The data sets and settings a run can choose, in one place (config checks, loaders, docs).

Class counts are the data sets' own; the networks' native class counts and input shapes live
with the zoo (``dnjax.models``).
"""

IN_MEMORY_DATASETS = ("digits", "npz", "cifar10", "cifar100", "svhn_cropped")
STREAMED_DATASETS = ("imagenet2012",)
DATASETS = IN_MEMORY_DATASETS + STREAMED_DATASETS
NORMALIZATIONS = ("mean_std", "scale", "imagenet")

# Classes of the data sets with a fixed label set (digits and the tfds sets' `label` feature); an
# npz data set has as many as its labels say (or data.num_classes).
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "svhn_cropped": 10, "imagenet2012": 1000}
TFDS_DATASETS = ("cifar10", "cifar100", "svhn_cropped", "imagenet2012")
# Split names of the tfds data sets: (train, test).
TFDS_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "svhn_cropped": ("train", "test"),
    "imagenet2012": ("train", "validation"),
}

# ImageNet's per-channel mean and std (pixels / 255): what ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Per-channel normalisation constants of the CIFAR recipe (the paper's code, fb.resnet.torch's
# CIFAR loader), 0..255 scale.
CIFAR_MEAN_STD = {
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
}


# Image shapes (H, W, C) of the data sets held in memory with a fixed shape; ImageNet is cropped
# to data.image_size, npz data has the shape of its files.
IMAGE_SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
                "svhn_cropped": (32, 32, 3)}
# Classes assumed for npz data before its labels are read (reports, benchmarks).
DEFAULT_NUM_CLASSES = 10


def num_classes(data_config) -> int:
    """The class count a config implies without reading data: data.num_classes, else the data
    set's own, else :data:`DEFAULT_NUM_CLASSES` (npz)."""
    return int(data_config.num_classes or NUM_CLASSES.get(data_config.dataset, DEFAULT_NUM_CLASSES))


def image_shape(data_config, npz_shape=None) -> tuple[int, ...]:
    """The image shape a config implies: ImageNet's crop, a fixed-shape data set's, or for npz
    ``npz_shape(path)`` of its first file (None: the CIFAR shape)."""
    d = data_config
    if d.dataset in STREAMED_DATASETS:
        return (d.image_size, d.image_size, 3)
    if d.dataset in IMAGE_SHAPES:
        return IMAGE_SHAPES[d.dataset]
    if npz_shape is not None and d.dataset == "npz" and d.npz_train:
        shape = npz_shape(str(d.npz_train))
        if shape is not None:
            return tuple(shape)
    return IMAGE_SHAPES["cifar10"]
