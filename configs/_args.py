"""Parses the ``MODEL,DATASET`` argument of the CIFAR/SVHN experiment configs.

``configs/cifar_densenet.py:densenet40_k12,c100`` names a zoo network and a data-set column of the
paper's tables; either half may be left out (``:c100+`` or ``:densenet40_k12``). A comma joins
them because ml_collections splits the config flag at its first colon only, and because a comma
is harmless in shell commands, directory names and SLURM scripts.
"""

from configs import recipes


def parse(arg, default_model, allowed_models, default_dataset="c10+"):
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
                dataset = recipes.parse(part)
            except ValueError:
                raise ValueError(
                    f"config argument {arg!r}: {part!r} is neither a model of this config "
                    f"({', '.join(allowed_models)}) nor a data set "
                    f"({', '.join(recipes.DATASETS + tuple(recipes.ALIASES))})"
                ) from None
    return model, dataset
