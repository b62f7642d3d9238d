"""The paper's data-set settings, shared by the experiment configs.

A data-set argument names one column of the paper's tables:

  c10, c100    CIFAR without augmentation (dropout 0.2 after each conv)
  c10+, c100+  CIFAR with the standard augmentation (crop + flip), no dropout
  svhn         SVHN (train split only, as in the paper's code), pixels / 255, 40 epochs, dropout 0.2
  cifar10, cifar100   the same as c10+, c100+

The CIFAR/SVHN experiment configs take ``MODEL,DATASET`` (``parse_model_dataset``).
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
