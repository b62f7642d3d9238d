"""The studies: named lists of runs (a config plus overrides), and the budgets that shrink them.

A run is one ``python -m dnjax.main`` invocation; its workdir is ``ROOT/<run name>``. A study
names its runs explicitly, so the runner, the printed command lines and the report agree on what
belongs to it. Budgets turn a study's full-length runs into cheaper ones:

  full            the paper's recipes as they are (the default)
  smoke           every run on a tiny network of its family, on scikit-learn's 8x8 digits, for
                  8 steps: checks that a study runs end to end, in seconds per run
  cifar10-sample  one small member of each family (DenseNet-BC L=16, k=12 for DenseNet-BC-100;
                  the 11-layer bottleneck ResNet for ResNet-164), 2 epochs on a 10,000-image
                  CIFAR-10 sample, tested on 2,000 test images, seeds 0 and 1 where the study has
                  several: a real result that two shared CPU cores produce in about an hour. The
                  sample is a class-balanced 20% of TensorFlow Datasets' cifar10 training split
                  (1,000 images a class, drawn with subset seed 0) and the first 2,000 of its test
                  split; ``--data_dir=DIR`` reads DIR/train_10k.npz and DIR/test_10k.npz instead
  cifar100-cpu    the real CIFAR-100 (TensorFlow Datasets' cifar100, or with ``--data_dir=DIR``
                  DIR/train_part1.npz, train_part2.npz and test.npz: all 50,000 training images, the
                  whole 10,000-image test set every half epoch) with the paper's C100+ recipe for every network (crop +
                  flip, mean/std normalisation, Nesterov SGD, batch 64, learning rate /10 at 50%
                  and 75%), shortened to 2 epochs, on networks two CPU cores train at 5 to 13
                  minutes an epoch: DenseNet-BC L=22, k=12 (78K parameters) for the DenseNet-BCs
                  and pre-activation ResNet-8 (81K) for the ResNets, seed 0
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Callable, Sequence

from dnjax import published

REPO = Path(__file__).resolve().parents[1]

DENSENET_CONFIG = "configs/cifar_densenet.py"
RESNET_CONFIG = "configs/cifar_resnet.py"
VGG_CONFIG = "configs/cifar_vgg.py"

DATASET_NAMES = {"c10": "C10", "c10+": "C10+", "c100": "C100", "c100+": "C100+", "svhn": "SVHN"}

# Human names of the networks, for tables and legends.
LABELS = {
    "densenet40_k12": "DenseNet (L=40, k=12)",
    "densenet100_k12": "DenseNet (L=100, k=12)",
    "densenet100_k24": "DenseNet (L=100, k=24)",
    "densenet_bc100_k12": "DenseNet-BC (L=100, k=12)",
    "densenet_bc250_k24": "DenseNet-BC (L=250, k=24)",
    "densenet_bc190_k40": "DenseNet-BC (L=190, k=40)",
    "resnet56": "ResNet-56",
    "resnet110": "ResNet-110",
    "preact_resnet110": "pre-act. ResNet-110",
    "resnet164": "ResNet-164",
    "preact_resnet164": "pre-act. ResNet-164",
    "resnet1001": "ResNet-1001",
    "preact_resnet1001": "pre-act. ResNet-1001",
    "vgg16": "VGG-16 (BN)",
}


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """One training run of a study.

    ``overrides`` are ``--config.<key>=<value>`` pairs (model fields included, as ``model.depth``).
    ``group`` joins runs that differ only in the seed; ``family`` and ``variant`` place the run in
    the plots (a line per family, pre vs post for the activation study). ``paper`` is the published
    error this exact run should reproduce, None where there is none (or the budget changed the run).
    """

    name: str
    config: str
    dataset: str
    label: str
    family: str
    overrides: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    group: str = ""
    variant: str = ""
    paper: float | None = None
    stands_for: str = ""
    # The published figure of the full-size network a shortened run stands in for, drawn as a
    # labelled reference line (not compared with the run: the budgets change network and schedule).
    reference: float | None = None
    # The share of every class's training images the run trains on (data.train_fraction, drawn
    # with data.subset_seed = the run's seed); None: the whole training split.
    train_fraction: float | None = None

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", self.name)

    @property
    def model(self) -> str:
        for k, v in self.overrides:
            if k == "model.name":
                return v
        arg = self.config.split(":", 1)[1] if ":" in self.config else ""
        return arg.split(",")[0]

    def args(self, workdir: str | Path) -> list[str]:
        """The arguments of ``python -m dnjax.main`` for this run."""
        out = [f"--config={self.config}", f"--workdir={workdir}"]
        out += [f"--config.{k}={flag_value(v)}" for k, v in self.overrides]
        out.append(f"--config.seed={self.seed}")
        return out


def flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    return str(v)


@dataclasses.dataclass(frozen=True)
class Study:
    """``stand_ins`` replaces, for this study, the table a reduced budget draws its stand-ins from
    (budget name -> table). ``finish(run, budget name, any_seed)`` completes a run after the budget
    has shrunk it (the settings only this study has), or drops it by returning None; ``any_seed``
    says that the seeds were chosen on the command line (``--seeds``), so that no seed is dropped."""

    name: str
    description: str
    runs: tuple[StudyRun, ...]
    plots: tuple[str, ...] = ("curves", "efficiency")
    stand_ins: dict[str, dict[str, tuple[str, dict[str, Any], str, str]]] = dataclasses.field(default_factory=dict)
    finish: Callable[[StudyRun, str, bool], StudyRun | None] | None = None


# ------------------------------------------------------------------------------------------------
# Building blocks


def _config(model: str, dataset: str) -> str:
    from dnjax import models  # the zoo knows each network's family

    path = {"densenet": DENSENET_CONFIG, "resnet": RESNET_CONFIG, "vgg": VGG_CONFIG}[models.family(model)]
    return f"{path}:{model},{dataset}"


# The plots' name of each kind of network the zoo tells apart (models.VARIANTS).
FAMILY_LABELS = {
    "densenet": "DenseNet", "densenet_b": "DenseNet-B", "densenet_c": "DenseNet-C", "densenet_bc": "DenseNet-BC",
    "resnet": "ResNet", "preact_resnet": "pre-act. ResNet", "vgg": "VGG",
}


def _family(model: str, activation: str | None = None) -> str:
    """The line a run of zoo network ``model`` is drawn on: the kind of network the zoo says it is,
    and for a DenseNet whose layers ``activation`` turns to post-activation, that."""
    from dnjax import models

    label = FAMILY_LABELS[models.variant(model)]
    if activation == "post" and models.family(model) == "densenet":
        label += " (post-act.)"
    return label


def paper_run(model: str, dataset: str, *, name: str | None = None, activation: str | None = None,
              seed: int = 0, group: str | None = None, variant: str = "") -> StudyRun:
    """A run of a published configuration, with the figure it should reproduce."""
    overrides: tuple[tuple[str, Any], ...] = ()
    label = LABELS.get(model, model)
    if activation is not None and model.startswith("densenet"):
        overrides = (("model.activation", activation),)
        if activation == "post":
            label += ", post-act."
    return StudyRun(
        name=name or f"{model}_{dataset}",
        config=_config(model, dataset),
        dataset=DATASET_NAMES[dataset],
        label=label,
        family=_family(model, activation),
        overrides=overrides,
        seed=seed,
        group=group or "",
        variant=variant,
        paper=published.error(model, dataset, activation),
    )


# ------------------------------------------------------------------------------------------------
# The studies

TABLE2_DENSENETS = (
    "densenet40_k12", "densenet100_k12", "densenet100_k24",
    "densenet_bc100_k12", "densenet_bc250_k24", "densenet_bc190_k40",
)
TABLE2_DATASETS = ("c10", "c10+", "c100", "c100+", "svhn")
RESNET_BASELINES = ("resnet110", "resnet164", "preact_resnet164", "resnet1001", "preact_resnet1001")


def _table2() -> Study:
    runs = [
        paper_run(m, d)
        for m in TABLE2_DENSENETS
        for d in TABLE2_DATASETS
        if published.error(m, d) is not None
    ]
    runs += [
        paper_run(m, d) for m in RESNET_BASELINES for d in ("c10+", "c100+")
        if published.error(m, d) is not None
    ]
    runs.append(paper_run("vgg16", "c10+"))
    return Study(
        "table2",
        "Every published CIFAR/SVHN row of the paper's Table 2 (the six DenseNets on C10, C10+, "
        "C100, C100+ and SVHN), the ResNet baselines (ResNet-110; ResNet-164 and ResNet-1001, "
        "original and pre-activation) and VGG-16 with BatchNorm.",
        tuple(runs),
    )


def _resnet_vs_densenet() -> Study:
    models = (
        "densenet_bc100_k12", "densenet_bc250_k24", "densenet_bc190_k40",
        "preact_resnet164", "preact_resnet1001",
    )
    return Study(
        "resnet_vs_densenet",
        "CIFAR-100+: DenseNet-BC (L=100, k=12) against pre-activation ResNet-164 and ResNet-1001, "
        "with the larger DenseNet-BCs of the paper's parameter-efficiency comparison (Figure 4): "
        "test error against parameters and against MACs per image.",
        tuple(paper_run(m, "c100+") for m in models),
    )


PRE_POST_SEEDS = (0, 1, 2)


def _pre_vs_post_activation() -> Study:
    runs = []
    for dataset in ("c10+", "c100+"):
        for variant in ("pre", "post"):
            for seed in PRE_POST_SEEDS:
                group = f"densenet_bc100_k12_{variant}_{dataset}"
                runs.append(paper_run("densenet_bc100_k12", dataset, activation=variant, seed=seed,
                                      name=f"{group}_s{seed}", group=group, variant=variant))
        for variant in ("pre", "post"):
            model = "preact_resnet164" if variant == "pre" else "resnet164"
            for seed in PRE_POST_SEEDS:
                group = f"resnet164_{variant}_{dataset}"
                runs.append(paper_run(model, dataset, seed=seed, name=f"{group}_s{seed}",
                                      group=group, variant=variant))
    return Study(
        "pre_vs_post_activation",
        "DenseNet-BC (L=100, k=12) and ResNet-164, each with pre-activation (BN-ReLU-Conv) and "
        f"post-activation (Conv-BN-ReLU) layers, on C10+ and C100+, seeds {PRE_POST_SEEDS}.",
        tuple(runs),
        plots=("curves", "activation"),
    )


def _data_efficiency() -> Study:
    runs = []
    for fraction in DATA_FRACTIONS:  # both families of a subset in turn: a cut-short study stays paired
        for model in DATA_MODELS:
            for seed in DATA_SEEDS["full"]:
                pct = f"{fraction * 100:g}pct"
                group = f"{model}_c100+_{pct}"
                run = paper_run(model, "c100+", seed=seed, name=f"{group}_s{seed}", group=group, variant=pct)
                # The whole set with the DenseNet recipe is the published run (for the DenseNet-BC).
                runs.append(dataclasses.replace(run, paper=run.paper if fraction == 1.0 else None,
                                                train_fraction=fraction))
    return Study(
        "data_efficiency",
        "C100+: DenseNet-BC (L=100, k=12; 0.8M parameters) against ResNet-56 (0.86M) trained on nested, "
        f"class-balanced subsets ({', '.join(f'{f:.0%}' for f in DATA_FRACTIONS)}) of the training set, "
        "with the DenseNet recipe for both and the same number of steps for every subset (that of the "
        "whole training set): test error against training-set size. Reduced budgets train the "
        "equal-sized stand-ins, seed 0; at cifar10-sample every run takes "
        f"{data_efficiency_steps('cifar10-sample')} steps of batch 64, one epoch of the whole sample.",
        tuple(runs),
        plots=("data_efficiency",),
        stand_ins={"cifar10-sample": DATA_STAND_INS, "cifar100-cpu": DATA_STAND_INS},
        finish=_finish_data_efficiency,
    )




# ------------------------------------------------------------------------------------------------
# Budgets

def _tiny_model(run: StudyRun) -> str:
    """The zoo's tiny network of the same family and kind (models.variant) as the run's network
    with the run's model fields."""
    from dnjax import models

    fields = {k.removeprefix("model."): v for k, v in run.overrides if k.startswith("model.") and k != "model.name"}
    kind = models.variant(run.model, **fields)
    for tiny in models.names(models.family(run.model), roles=("tiny",)):
        if models.variant(tiny) == kind:
            return tiny
    raise ValueError(f"run {run.name}: no tiny stand-in for model {run.model!r} (a {FAMILY_LABELS[kind]})")


SMOKE_OVERRIDES: tuple[tuple[str, Any], ...] = (
    ("data.dataset", "digits"), ("data.pad", 1), ("data.flip", False),
    ("data.train_limit", 64), ("data.test_limit", 64),
    ("batch_size", 16), ("eval_batch_size", 32), ("num_epochs", 2.0),
    ("eval_every_epochs", 1.0), ("checkpoint_every_epochs", 1.0), ("log_every_steps", 2),
    ("progress_bar", False),
)


def _smoke(run: StudyRun) -> StudyRun | None:
    keep = tuple((k, v) for k, v in run.overrides if k == "model.activation")
    tiny = _tiny_model(run)
    post = ("model.activation", "post") in keep
    return dataclasses.replace(
        run,
        overrides=(("model.name", tiny),) + keep + SMOKE_OVERRIDES,
        label=tiny + (", post-act." if post else ""),
        dataset=f"{run.dataset} (digits)",
        paper=None,
        stands_for=run.label,
    )


# A zoo network -> (its stand-in on the CIFAR-10 sample: zoo name, fields, label, run-name stem).
SAMPLE_STAND_INS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "densenet_bc100_k12": ("densenet_cifar", dict(depth=16, growth_rate=12, bottleneck=True, compression=0.5),
                           "DenseNet-BC (L=16, k=12)", "densenet_bc16_k12"),
    "preact_resnet164": ("resnet_cifar_bottleneck", dict(depth=11, activation="pre"),
                         "pre-act. ResNet-11 (bottleneck)", "preact_resnet11"),
    "resnet164": ("resnet_cifar_bottleneck", dict(depth=11, activation="post"),
                  "ResNet-11 (bottleneck)", "resnet11"),
}
SAMPLE_EPOCHS = 2.0
SAMPLE_TEST_IMAGES = 2000
SAMPLE_SEEDS = (0, 1)  # used by studies with several seeds; the others have seed 0 only


# Without --data_dir the sample is drawn from TensorFlow Datasets' cifar10: this share of every
# class of the training split (5,000 a class: 1,000 each, 10,000 in all), with this subset seed.
SAMPLE_FRACTION = 0.2
SAMPLE_SUBSET_SEED = 0


def sample_overrides(data_dir: Path | str | None) -> tuple[tuple[str, Any], ...]:
    """The data and schedule of the cifar10-sample budget: the npz sample in ``data_dir``, or
    without one the class-balanced subset of tfds cifar10 (SAMPLE_FRACTION, SAMPLE_SUBSET_SEED)."""
    if data_dir is None:
        data: tuple[tuple[str, Any], ...] = (
            ("data.dataset", "cifar10"), ("data.train_fraction", SAMPLE_FRACTION),
            ("data.subset_seed", SAMPLE_SUBSET_SEED))
    else:
        d = Path(data_dir)
        data = (("data.dataset", "npz"), ("data.npz_train", str(d / "train_10k.npz")),
                ("data.npz_test", str(d / "test_10k.npz")))
    return (
        *data, ("data.test_limit", SAMPLE_TEST_IMAGES),
        ("num_epochs", SAMPLE_EPOCHS), ("eval_every_epochs", 0.5), ("checkpoint_every_epochs", 1.0),
        ("log_every_steps", 20), ("progress_bar", False),
    )


def _stand_in(run: StudyRun, table: dict[str, tuple[str, dict[str, Any], str, str]]) -> tuple[str, dict[str, Any], str, str]:
    """The (zoo name, fields, label, run-name stem) of the run's stand-in in a budget's table, with
    the run's activation override carried over and, in the activation study, the variant in the
    stem."""
    zoo, fields, label, stem = table[run.model]
    fields = dict(fields)
    activation = dict(run.overrides).get("model.activation")
    if activation is not None:
        fields["activation"] = activation
    if run.variant:  # one stem per network, the variant says which form (pre/post) or subset
        stem = f"{stem.removeprefix('preact_')}_{run.variant}"
    if activation == "post":
        label += ", post-act."
    return zoo, fields, label, stem


def _cifar10_sample(run: StudyRun, data_dir: Path | str | None, table=None, any_seed: bool = False) -> StudyRun | None:
    """A small member of the run's family (from ``table``, default SAMPLE_STAND_INS) on the
    CIFAR-10 sample, with the run's recipe (C10+: augmentation, no dropout). Runs with no
    stand-in, or whose stand-in another run already covers (C100+ becomes C10+ here), are left
    out. Only the seeds SAMPLE_SEEDS are kept, every seed with ``any_seed`` (``--seeds``)."""
    table = SAMPLE_STAND_INS if table is None else table
    if (not any_seed and run.seed not in SAMPLE_SEEDS) or run.model not in table:
        return None
    zoo, fields, label, stem = _stand_in(run, table)
    name = f"{stem}_c10sample"
    group = name
    if run.group != run.name:  # a study with several seeds keeps them apart
        name = f"{name}_s{run.seed}"
    config = run.config.split(":")[0] + f":{zoo},c10+"
    overrides = tuple((f"model.{k}", v) for k, v in fields.items()) + sample_overrides(data_dir)
    return dataclasses.replace(
        run, name=name, group=group, config=config, overrides=overrides, dataset="C10+ (10k sample)",
        label=label, paper=None, stands_for=run.label,
    )


# --budget=cifar100-cpu: the real CIFAR-100 at a size two CPU cores train in about 90 minutes.
# The stand-ins have (almost) equal parameter counts: DenseNet-BC L=22, k=12 has 77,986 parameters
# with 100 classes and ResNet-8 (6n+2 with n=1, the smallest CIFAR ResNet: one basic unit per
# stage, 16-32-64 channels) has 81,140. A bottleneck ResNet would be the closer relative of
# ResNet-164, but its smallest member (9n+2 = 11 layers) has 151K parameters, twice as many.
C100_STAND_INS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "densenet_bc100_k12": ("densenet_cifar", dict(depth=22, growth_rate=12, bottleneck=True, compression=0.5),
                           "DenseNet-BC (L=22, k=12)", "densenet_bc22_k12"),
    "preact_resnet164": ("resnet_cifar", dict(depth=8, activation="pre"), "pre-act. ResNet-8", "preact_resnet8"),
    "resnet164": ("resnet_cifar", dict(depth=8, activation="post"), "ResNet-8", "resnet8"),
}
C100_EPOCHS = 2.0
# The DenseNet CIFAR recipe, set for every family where two families must take the same steps.
DENSENET_RECIPE: tuple[tuple[str, Any], ...] = (
    ("batch_size", 64), ("optim.learning_rate", 0.1), ("optim.nesterov", True),
    ("optim.weight_decay", 1e-4), ("optim.schedule", "piecewise"), ("optim.warmup_epochs", 0.0),
)
C100_EVAL_EVERY = 0.5
C100_SEEDS = (0,)


def cifar100_overrides(data_dir: Path | str | None) -> tuple[tuple[str, Any], ...]:
    """The data and schedule of the cifar100-cpu budget: tfds cifar100, or both training files in
    ``data_dir`` as one split; the whole test set, and the DenseNet C100+ recipe for every family
    (the ResNet config's batch of 128 and plain momentum are set back to it, so both families take
    the same steps)."""
    if data_dir is None:
        data: tuple[tuple[str, Any], ...] = (("data.dataset", "cifar100"),)
    else:
        d = Path(data_dir)
        data = (("data.dataset", "npz"),
                ("data.npz_train", f"{d / 'train_part1.npz'},{d / 'train_part2.npz'}"),
                ("data.npz_test", str(d / "test.npz")))
    return (
        *data, ("data.num_classes", 100),
        ("data.normalization", "mean_std"), ("data.augment", True),
        *DENSENET_RECIPE,
        ("num_epochs", C100_EPOCHS), ("eval_every_epochs", C100_EVAL_EVERY),
        ("checkpoint_every_epochs", C100_EVAL_EVERY), ("log_every_steps", 20), ("progress_bar", False),
    )


def _cifar100_cpu(run: StudyRun, data_dir: Path | str | None, table=None, any_seed: bool = False) -> StudyRun | None:
    """The run's family stand-in (from ``table``, default C100_STAND_INS) on the real CIFAR-100
    (C100+ runs only), with the published figure of the full-size network as its reference. Only
    the seeds C100_SEEDS are kept, every seed with ``any_seed`` (``--seeds``)."""
    table = C100_STAND_INS if table is None else table
    if (not any_seed and run.seed not in C100_SEEDS) or run.model not in table or run.dataset != DATASET_NAMES["c100+"]:
        return None
    zoo, fields, label, stem = _stand_in(run, table)
    name = group = f"{stem}_c100cpu"
    if any_seed:  # --seeds: kept apart (the budget's own runs are of seed 0 alone)
        name = f"{name}_s{run.seed}"
    config = run.config.split(":")[0] + f":{zoo},c100+"
    overrides = tuple((f"model.{k}", v) for k, v in fields.items()) + cifar100_overrides(data_dir)
    return dataclasses.replace(
        run, name=name, group=group, config=config, overrides=overrides, dataset="C100+ (2 epochs)",
        label=label, paper=None, stands_for=run.label, reference=run.paper,
    )


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    description: str
    transform: Callable[[StudyRun], StudyRun | None]


def budget(name: str, data_dir: Path | str | None = None, stand_ins: dict | None = None,
           any_seed: bool = False) -> Budget:
    """Budget ``name``; ``stand_ins`` (budget name -> table) replaces the stand-in tables of the
    reduced budgets (a study's own pairs); ``any_seed`` keeps runs of every seed (``--seeds``)
    where the budget keeps only some."""
    table = (stand_ins or {}).get(name)
    if name == "full":
        return Budget(name, "the paper's full recipes", lambda r: r)
    if name == "smoke":
        return Budget(name, "tiny networks, 8 steps on scikit-learn's 8x8 digits", _smoke)
    if name == "cifar10-sample":
        source = (f"a class-balanced {SAMPLE_FRACTION:.0%} of tfds cifar10's training split (subset seed "
                  f"{SAMPLE_SUBSET_SEED})" if data_dir is None else "the npz sample given with --data_dir")
        return Budget(
            name,
            f"one small member of each family, {SAMPLE_EPOCHS:g} epochs on 10,000 CIFAR-10 images ({source}) "
            f"with the C10+ recipe whatever the study's data set, tested on {SAMPLE_TEST_IMAGES} test "
            f"images, seeds {', '.join(map(str, SAMPLE_SEEDS))} where the study has several (or those --seeds names)",
            lambda r: _cifar10_sample(r, data_dir, table, any_seed),
        )
    if name == "cifar100-cpu":
        source = "tfds cifar100" if data_dir is None else "npz files given with --data_dir"
        return Budget(
            name,
            f"small networks of equal size, {C100_EPOCHS:g} epochs on the real CIFAR-100 ({source}) with the "
            f"C100+ recipe, the whole test set every {C100_EVAL_EVERY:g} epoch, seed 0 (or those --seeds names)",
            lambda r: _cifar100_cpu(r, data_dir, table, any_seed),
        )
    raise ValueError(f"budget {name!r} is unknown; valid budgets are {', '.join(BUDGETS)}")


BUDGETS = ("full", "smoke", "cifar10-sample", "cifar100-cpu")


class StudyError(ValueError):
    """An unknown study, run or budget, or a root that belongs to something else."""


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise StudyError(f"study {name!r} is unknown; valid studies are {', '.join(STUDIES)}")
    return STUDIES[name]


def with_seeds(runs: Sequence[StudyRun], seeds: Sequence[int]) -> tuple[StudyRun, ...]:
    """Every setting (group) of ``runs`` once per seed, in the study's order: the group's first run
    with the seed set, named ``<group>_s<seed>``. A study's own seeds are replaced."""
    firsts: dict[str, StudyRun] = {}
    for r in runs:
        firsts.setdefault(r.group, r)
    return tuple(dataclasses.replace(r, seed=s, name=f"{g}_s{s}", group=g)
                 for g, r in firsts.items() for s in seeds)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ``"0-4"`` -> (0, 1, 2, 3, 4). Raises StudyError naming the flag."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, sep, hi = part.partition("-")
            seeds += range(int(lo), int(hi) + 1) if sep else [int(lo)]
    except ValueError:
        raise StudyError(f"--seeds={text!r}: expected non-negative integers, e.g. --seeds=0,1,2 or --seeds=0-4") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds={text!r}: expected distinct non-negative integers, e.g. --seeds=0,1,2")
    return tuple(seeds)


def study_runs(name: str, budget_name: str = "full", data_dir=None,
               only: list[str] | tuple[str, ...] = (), seeds: Sequence[int] | None = None) -> tuple[StudyRun, ...]:
    """The runs of study ``name`` under a budget (duplicates the budget creates dropped), or just
    the ones named in ``only`` (names or shell patterns, e.g. ``densenet*_c100+``); a name or
    pattern that matches no run raises StudyError listing the valid ones.
    ``seeds`` runs every setting of the study once per seed (:func:`with_seeds`), whatever seeds
    the study and the budget have of their own; the run names then end in ``_s<seed>``."""
    study = get_study(name)
    any_seed = bool(seeds)
    try:
        b = budget(budget_name, data_dir, study.stand_ins, any_seed)
    except ValueError as e:
        raise StudyError(str(e)) from None
    runs, seen = [], set()
    for run in (with_seeds(study.runs, seeds) if any_seed else study.runs):
        r = b.transform(run)
        if r is not None and study.finish is not None:
            r = study.finish(r, budget_name, any_seed)
        if r is None or r.name in seen:
            continue
        seen.add(r.name)
        runs.append(r)
    if only:
        names = [r.name for r in runs]
        unknown = [n for n in only if not fnmatch.filter(names, n)]
        if unknown:
            raise StudyError(
                f"run(s) {unknown} are not in study {name!r} (budget {budget_name}"
                f"{', seeds ' + ','.join(map(str, seeds)) if seeds else ''}); its runs are: " + ", ".join(names)
            )
        runs = [r for r in runs if any(fnmatch.fnmatchcase(r.name, n) for n in only)]
    return tuple(runs)


# ------------------------------------------------------------------------------------------------
# The data-efficiency study: its networks, subsets, seeds and step rule at every budget

DATA_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
# Seeds per budget; the seed also draws the subsets (data.subset_seed), so each seed has its own
# nested family of subsets.
DATA_SEEDS = {"full": (0, 1, 2), "smoke": (0, 1), "cifar10-sample": (0,), "cifar100-cpu": (0,)}
# DenseNet-BC (L=100, k=12) has 0.80M parameters, ResNet-56 0.86M. Their stand-ins at both
# reduced budgets are the equal-sized pair of the cifar100-cpu budget: DenseNet-BC (L=22, k=12),
# 72K parameters with 10 classes (78K with 100), and ResNet-8, 75K (81K).
DATA_MODELS = ("densenet_bc100_k12", "resnet56")
DATA_STAND_INS = {"densenet_bc100_k12": C100_STAND_INS["densenet_bc100_k12"],
                  "resnet56": C100_STAND_INS["resnet164"]}
# The step rule: every subset trains for the steps the whole training set takes at the budget
# (its epochs of the full split), so a smaller subset is seen for more epochs, not for less time.
# (training images, epochs, batch) of that full-data schedule per budget:
FULL_DATA_SCHEDULE = {
    "full": (50_000, 300.0, 64),
    "smoke": (dict(SMOKE_OVERRIDES)["data.train_limit"], dict(SMOKE_OVERRIDES)["num_epochs"],
              dict(SMOKE_OVERRIDES)["batch_size"]),
    # One epoch of the 10,000-image sample, not the budget's two: eight runs of 156 steps fit in
    # about 45 minutes of two shared CPU cores.
    "cifar10-sample": (10_000, 1.0, 64),
    "cifar100-cpu": (50_000, C100_EPOCHS, 64),
}


def data_efficiency_steps(budget_name: str) -> int:
    """The training steps of every run of the data-efficiency study at a budget."""
    images, epochs, batch = FULL_DATA_SCHEDULE[budget_name]
    return max(1, round(epochs * (images // batch)))


def _finish_data_efficiency(run: StudyRun, budget_name: str, any_seed: bool = False) -> StudyRun | None:
    """The subset (fraction, seed), the DenseNet recipe where the budget sets none, the equal step
    count, and evaluations and checkpoints every ``1 / fraction`` times the budget's interval in
    epochs (about the same steps as the whole-set run). The smoke budget draws its subsets from
    all of the digits' training part, so that the smallest still fills a batch. Where the budget
    itself draws a share of the training split (the cifar10-sample budget on tfds cifar10), the
    subset is that share of it, drawn with the run's seed."""
    if (not any_seed and run.seed not in DATA_SEEDS[budget_name]) or run.train_fraction is None:
        return None
    f = run.train_fraction
    given = dict(run.overrides)
    base = given.get("data.train_fraction", 1.0)
    kept = tuple((k, v) for k, v in run.overrides
                 if k not in ("data.train_limit", "num_epochs", "eval_every_epochs", "checkpoint_every_epochs",
                              "data.train_fraction", "data.subset_seed"))
    recipe = tuple((k, v) for k, v in DENSENET_RECIPE if k not in given)
    extra = (
        ("data.train_fraction", round(base * f, 10)), ("data.subset_seed", run.seed),
        ("num_train_steps", data_efficiency_steps(budget_name)),
        ("eval_every_epochs", given.get("eval_every_epochs", 1.0) / f),
        ("checkpoint_every_epochs", given.get("checkpoint_every_epochs", 1.0) / f),
    )
    return dataclasses.replace(run, overrides=kept + recipe + extra,
                               label=f"{run.label}, {f:.0%} of the training set")


STUDIES: dict[str, Study] = {s.name: s for s in (
    _table2(), _resnet_vs_densenet(), _pre_vs_post_activation(), _data_efficiency())}
