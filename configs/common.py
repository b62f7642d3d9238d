"""What the CIFAR/SVHN config files share: their ``MODEL,DATASET`` argument and the data-set
columns of the paper's Table 2.

  c10, c100    CIFAR without augmentation (the paper adds dropout 0.2 after each convolution)
  c10+, c100+  CIFAR with the standard augmentation (zero-pad by 4, random crop, flip), no dropout
  svhn         SVHN (the train split only, as in the paper's code), pixels / 255, dropout 0.2
  cifar10, cifar100   the same as c10+, c100+
"""

from dnjax import models

ALIASES = {"cifar10": "c10+", "cifar100": "c100+"}
COLUMNS = ("c10", "c10+", "c100", "c100+", "svhn")


def cifar_models(family: str) -> tuple[str, ...]:
    """The zoo's CIFAR networks of ``family`` a config file accepts (published ones and builders)."""
    return models.names(family, models.CIFAR_INPUT, roles=("paper", "builder"))


def column(arg: str) -> str:
    """A data-set column of Table 2 (aliases resolved); ValueError naming the valid ones."""
    arg = ALIASES.get(arg, arg or "c10+")
    if arg not in COLUMNS:
        raise ValueError(f"config argument {arg!r} is not a data set; use one of {list(COLUMNS) + list(ALIASES)}")
    return arg


def parse_arg(arg: str, allowed_models, default_model: str, default_column: str = "c10+") -> tuple[str, str]:
    """Splits a ``MODEL,DATASET`` config argument; either half may be left out.

    ``configs/cifar_densenet.py:densenet40_k12,c100`` names a zoo network and a column; ``:c100+``
    or ``:densenet40_k12`` keep the config's default for the other half. A comma joins them
    because ml_collections splits the config flag at its first colon only, and a comma is harmless
    in shell commands, directory names and SLURM scripts.
    """
    model, col = default_model, default_column
    seen = set()
    for part in (p.strip() for p in (arg or "").split(",")):
        if not part:
            continue
        kind = "model" if part in allowed_models else "dataset"
        if kind in seen:
            raise ValueError(f"config argument {arg!r} names two {kind}s; expected MODEL,DATASET, "
                             f"e.g. {default_model},c100+")
        seen.add(kind)
        if kind == "model":
            model = part
            continue
        try:
            col = column(part)
        except ValueError:
            raise ValueError(
                f"config argument {arg!r}: {part!r} is neither a model of this config "
                f"({', '.join(allowed_models)}) nor a data set ({', '.join(COLUMNS + tuple(ALIASES))})"
            ) from None
    return model, column(col)


def dropout(col: str) -> float:
    """The paper's dropout rate after each convolution: 0.2 without augmentation, none with it."""
    return 0.0 if col.endswith("+") else 0.2


def set_data(c, col: str) -> None:
    """The data fields of column ``col``: data set, normalisation, augmentation."""
    if col == "svhn":
        c.data.dataset = "svhn_cropped"
        c.data.normalization = "scale"
        c.data.augment = False
        return
    c.data.dataset = "cifar100" if col.startswith("c100") else "cifar10"
    c.data.normalization = "mean_std"
    c.data.augment = col.endswith("+")
