"""The paper's recipes: each family's training settings and the data-set columns of its tables.

The config files (``configs/*.py``) are these functions under a file name with the command and the
published figures in their docstrings; library code (benchmarks, tools) calls them directly.

A data-set argument names one column of the paper's tables:

  c10, c100    CIFAR without augmentation (dropout 0.2 after each conv, for networks that have it)
  c10+, c100+  CIFAR with the standard augmentation (crop + flip), no dropout
  svhn         SVHN (train split only, as in the paper's code), pixels / 255, 40 epochs, dropout 0.2
  cifar10, cifar100   the same as c10+, c100+

The CIFAR/SVHN recipes take ``MODEL,DATASET`` (``parse_model_dataset``); the model lists come from
the zoo (a family's CIFAR networks).
"""

from __future__ import annotations

from dnjax import defaults, models

ALIASES = {"cifar10": "c10+", "cifar100": "c100+"}
DATASETS = ("c10", "c10+", "c100", "c100+", "svhn")


def parse(arg):
    arg = ALIASES.get(arg, arg or "c10+")
    if arg not in DATASETS:
        raise ValueError(
            f"config argument {arg!r} is not a data set; use one of {list(DATASETS) + list(ALIASES)}"
        )
    return arg


def parse_model_dataset(arg, default_model, allowed_models, default_dataset="c10+"):
    """Splits a ``MODEL,DATASET`` config argument; either half may be left out.

    ``configs/cifar_densenet.py:densenet40_k12,c100`` names a zoo network and a data-set column;
    ``:c100+`` or ``:densenet40_k12`` keep the config's default for the other half. A comma joins
    them because ml_collections splits the config flag at its first colon only, and a comma is
    harmless in shell commands, directory names and SLURM scripts.
    """
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    model, dataset = default_model, default_dataset
    seen = set()
    for part in parts:
        kind = "model" if part in allowed_models else "dataset"
        if kind in seen:
            raise ValueError(f"config argument {arg!r} names two {kind}s; expected MODEL,DATASET, "
                             f"e.g. {default_model},c100+")
        seen.add(kind)
        if kind == "model":
            model = part
        else:
            try:
                dataset = parse(part)
            except ValueError:
                raise ValueError(
                    f"config argument {arg!r}: {part!r} is neither a model of this config "
                    f"({', '.join(allowed_models)}) nor a data set "
                    f"({', '.join(DATASETS + tuple(ALIASES))})"
                ) from None
    return model, dataset


def apply_dataset(c, arg):
    """Sets data, augmentation, dropout (for networks that have it) and epochs for data-set
    column ``arg``."""
    arg = parse(arg)
    dropout = "dropout_rate" in c.model
    if arg == "svhn":
        c.data.dataset = "svhn_cropped"
        c.data.normalization = "scale"
        c.data.augment = False
        if dropout:
            c.model.dropout_rate = 0.2
        c.num_epochs = 40.0
        return c
    c.data.dataset = "cifar100" if arg.startswith("c100") else "cifar10"
    c.data.normalization = "mean_std"
    augmented = arg.endswith("+")
    c.data.augment = augmented
    if dropout:
        c.model.dropout_rate = 0.0 if augmented else 0.2
    return c


def cifar_models(family: str) -> tuple[str, ...]:
    """The zoo's CIFAR networks of ``family`` a config file accepts (published ones and builders)."""
    return models.names(family, models.CIFAR_INPUT, roles=("paper", "builder"))


DENSENET_MODELS = cifar_models("densenet")
RESNET_MODELS = cifar_models("resnet")
VGG_MODELS = cifar_models("vgg")
IMAGENET_MODELS = models.names(input_shape=models.IMAGENET_INPUT, roles=("paper",))
RESNET_WARMUP_MODELS = ("resnet110", "preact_resnet110")


def cifar_densenet(arg="densenet_bc100_k12,c10+"):
    """DenseNets on CIFAR/SVHN: batch 64, 300 epochs, Nesterov SGD, learning rate 0.1 /10 at 50%
    and 75%, weight decay 1e-4 (``configs/cifar_densenet.py``)."""
    model, dataset = parse_model_dataset(arg, "densenet_bc100_k12", DENSENET_MODELS)
    c = defaults.get_config(model)
    c.batch_size = 64
    c.num_epochs = 300.0
    apply_dataset(c, dataset)
    return c


def cifar_resnet(arg="preact_resnet164,c10+"):
    """He et al.'s CIFAR ResNet recipe: batch 128, 164 epochs, momentum 0.9 without Nesterov,
    ResNet-110 warmed up for one epoch (``configs/cifar_resnet.py``)."""
    model, dataset = parse_model_dataset(arg, "preact_resnet164", RESNET_MODELS)
    c = defaults.get_config(model)
    apply_dataset(c, dataset)
    c.batch_size = 128
    c.num_epochs = 164.0  # 64k iterations at batch 128 on 50k images
    c.optim.nesterov = False
    if model in RESNET_WARMUP_MODELS:
        c.optim.warmup_epochs = 1.0
        c.optim.warmup_factor = 0.1
    return c


def cifar_vgg(arg="vgg16,c10+"):
    """VGG with BatchNorm on the DenseNets' recipe (``configs/cifar_vgg.py``)."""
    model, dataset = parse_model_dataset(arg, "vgg16", VGG_MODELS)
    c = defaults.get_config(model)
    c.batch_size = 64
    c.num_epochs = 300.0
    apply_dataset(c, dataset)
    return c


def imagenet(arg="densenet121"):
    """ImageNet: 90 epochs, batch 256, learning rate 0.1 /10 at epochs 30 and 60, Nesterov,
    bfloat16 compute, streamed through grain (``configs/imagenet.py``)."""
    model = (arg or "densenet121").strip()
    if model not in IMAGENET_MODELS:
        raise ValueError(f"config argument {arg!r} is not an ImageNet network; use one of {', '.join(IMAGENET_MODELS)}")
    c = defaults.get_config(model)
    c.data.dataset = "imagenet2012"
    c.data.image_size = models.IMAGENET_INPUT[0]
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 90.0
    c.optim.decay_at = (1 / 3, 2 / 3)
    c.dtype = "bfloat16"
    c.log_every_steps = 100
    return c


def finetune_densenet121(init_from=None):
    """DenseNet-121 fine-tuned from converted ImageNet weights (``init_from``, a workdir written by
    ``python -m dnjax.convert``) to CIFAR-100 at 224 x 224: C100+ augmentation, then a bilinear
    enlargement on the device and ImageNet's normalisation; 15 epochs at batch 128, SGD with
    Nesterov momentum, learning rate 0.01 after one epoch of warm-up, cosine decay
    (``configs/finetune_densenet121.py``)."""
    c = defaults.get_config("densenet121")
    c.init_from = init_from or None
    c.data.dataset = "cifar100"
    c.data.normalization = "imagenet"
    c.data.augment = True
    c.data.pad = 4
    c.data.flip = True
    c.data.resize = 224
    c.batch_size = 128
    c.eval_batch_size = 200
    c.num_epochs = 15.0
    c.optim.learning_rate = 0.01
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 1.0
    c.optim.warmup_factor = 0.1
    c.optim.weight_decay = 1e-4
    c.eval_every_epochs = 1.0
    c.log_every_steps = 50
    return c
