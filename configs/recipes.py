"""The paper's data-set settings, shared by the experiment configs.

A data-set argument names one column of the paper's tables:

  c10, c100    CIFAR without augmentation (dropout 0.2 after each conv)
  c10+, c100+  CIFAR with the standard augmentation (crop + flip), no dropout
  svhn         SVHN (train split only, as in the paper's code), pixels / 255, 40 epochs, dropout 0.2
  cifar10, cifar100   the same as c10+, c100+
"""

ALIASES = {"cifar10": "c10+", "cifar100": "c100+"}
DATASETS = ("c10", "c10+", "c100", "c100+", "svhn")


def parse(arg):
    arg = ALIASES.get(arg, arg or "c10+")
    if arg not in DATASETS:
        raise ValueError(
            f"config argument {arg!r} is not a data set; use one of {list(DATASETS) + list(ALIASES)}"
        )
    return arg


def apply_dataset(c, arg):
    """Sets data, augmentation, dropout and epochs for data-set column ``arg``."""
    arg = parse(arg)
    if arg == "svhn":
        c.data.dataset = "svhn_cropped"
        c.data.normalization = "scale"
        c.data.augment = False
        c.model.dropout_rate = 0.2
        c.num_epochs = 40.0
        return c
    c.data.dataset = "cifar100" if arg.startswith("c100") else "cifar10"
    c.data.normalization = "mean_std"
    augmented = arg.endswith("+")
    c.data.augment = augmented
    c.model.dropout_rate = 0.0 if augmented else 0.2
    return c
