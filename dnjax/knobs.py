"""Every knob of a run, declared once: its default (the DenseNet paper's CIFAR recipe), what a
valid value is where its type is not enough, whether a resumed run may change it, and the value
that a ``config.json`` written before the knob existed stands for.

Adding a knob is one line here and the code that reads it: ``configs/default.py`` and every config
file start from :func:`defaults`, ``dnjax.config_lib`` checks and types the value (on the command
line too), resumes compare it, and older workdirs read :attr:`Knob.older`. The network's fields
are not knobs: they are the zoo module's own fields (``python -m dnjax.models --fields``), typed by
its annotations, and a run's ``config.json`` records every one of them.

    python -m dnjax.main --config=configs/default.py --workdir=runs/x --config.optim.weight_decay=5e-4

``python -m dnjax.knobs`` lists every knob with its default, what a resumed run may do with it and
what it is for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from dnjax.data.choices import DATASETS, NORMALIZATIONS
from dnjax.models.common import DTYPES
from dnjax.profiling import parse_steps

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("piecewise", "cosine", "constant")

# What a resumed run may change (``Knob.resume``): nothing that alters its trajectory ("fixed");
# anything that only decides what is evaluated, logged, kept or shown ("free"); its length, once
# it has finished ("extend").
RESUME = ("fixed", "free", "extend")
_SAME = object()


@dataclasses.dataclass(frozen=True)
class Knob:
    default: Any
    kind: type  # int, float, bool, str or tuple; None is valid where the default is None
    check: Callable[[Any], str | None] | None = None  # None, or what a valid value is
    resume: str = "fixed"
    older: Any = _SAME  # a config.json without this knob: the value it stands for (the default)
    doc: str = ""

    @property
    def optional(self) -> bool:
        return self.default is None

    @property
    def before(self) -> Any:
        return self.default if self.older is _SAME else self.older


def knob(default, check=None, *, kind: type | None = None, resume: str = "fixed", older=_SAME, doc: str = "") -> Knob:
    kind = kind or (tuple if isinstance(default, (tuple, list)) else type(default))
    assert resume in RESUME and kind in (int, float, bool, str, tuple), (default, kind, resume)
    return Knob(default, kind, check, resume, older, doc)


# ---- What a valid value is, for knobs whose type is not enough


def at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"it must be >= {low}"


def within(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False):
    def check(v):
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"it must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check


def one_of(choices) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"valid values are {list(choices)}"


def _fractions(v) -> str | None:
    ok = all(not isinstance(f, bool) and isinstance(f, (int, float)) and 0 < f < 1 for f in v)
    return None if ok and list(v) == sorted(v) else "give increasing fractions of training in (0, 1), e.g. (0.5, 0.75)"


def _steps(v) -> str | None:
    try:
        parse_steps(v)
    except ValueError as e:
        return str(e)
    return None


def _train_steps(v) -> str | None:
    return None if v >= 1 or v == -1 else "use -1 (derive from num_epochs) or a positive number"


positive = within(0, low_open=True)

KNOBS: dict[str, Knob] = {
    # ---- Data
    "data.dataset": knob("cifar10", one_of(DATASETS), doc="one of dnjax.data.choices.DATASETS"),
    "data.data_dir": knob(None, kind=str, doc="tfds data dir; default: $TFDS_DATA_DIR or ~/tensorflow_datasets"),
    "data.npz_train": knob(None, kind=str, doc="npz data (data.dataset='npz'): a file, several separated by "
                           "commas, or a glob (parts concatenated in that order), each with arrays 'image' "
                           "(uint8 NHWC) and the label array named by npz_label"),
    "data.npz_test": knob(None, kind=str, doc="the npz test split, as npz_train"),
    "data.npz_label": knob("label", doc="e.g. 'coarse_label' for CIFAR-100's 20 superclasses"),
    "data.num_classes": knob(None, at_least(1), kind=int, doc="None: from the data set"),
    "data.normalization": knob("mean_std", one_of(NORMALIZATIONS),
                               doc="mean_std (CIFAR) | scale (pixels / 255, SVHN) | imagenet (ImageNet's mean "
                               "and std, for ImageNet weights)"),
    "data.resize": knob(None, at_least(1), kind=int, doc="in-memory data: enlarge to resize x resize on the device"),
    "data.augment": knob(True, doc='the "+" of C10+: zero-pad random crop and horizontal flip'),
    "data.pad": knob(4, at_least(0), doc="pixels of zero padding before the random crop"),
    "data.flip": knob(True, doc="random horizontal flips (with augment)"),
    "data.image_size": knob(224, at_least(1), doc="ImageNet crop size"),
    "data.workers": knob(0, at_least(0), resume="free", doc="grain decoding processes per host for streamed "
                         "(ImageNet) data"),
    "data.train_limit": knob(None, at_least(1), kind=int, doc="use only the first N training images (smoke runs)"),
    "data.test_limit": knob(None, at_least(1), kind=int, doc="use only the first N test images"),
    "data.train_fraction": knob(None, within(0, 1, low_open=True), kind=float,
                                doc="train on this fraction of every class (None: all), drawn with subset_seed; "
                                "for one seed a smaller fraction's subset lies inside a larger one's"),
    "data.subset_seed": knob(None, at_least(0), kind=int, doc="the seed of train_fraction's subset (None: 0)"),
    # ---- Starting point
    "init_from": knob(None, kind=str, resume="free",
                      doc="a workdir (a converted one from python -m dnjax.convert, or any run's) whose newest "
                      "checkpoint's parameters and BatchNorm statistics start this run; the classifier is "
                      "reinitialised when the number of classes differs. A run that resumes ignores it"),
    # ---- Length and batches
    "seed": knob(0, at_least(0)),
    "batch_size": knob(64, at_least(1), doc="global, over all devices and processes"),
    "eval_batch_size": knob(500, at_least(1), resume="free"),
    "num_epochs": knob(300.0, positive, resume="extend"),
    "num_train_steps": knob(-1, _train_steps, resume="extend", doc="> 0 overrides num_epochs (smoke runs, tests)"),
    "halt_after_steps": knob(-1, at_least(-1), resume="free",
                             doc="> 0: checkpoint and stop when the run reaches this step; a rerun continues past "
                             "it. For jobs with a wall-clock limit that train a long schedule in slices"),
    # ---- Optimizer and learning-rate schedule
    "optim.name": knob("sgd", one_of(OPTIMIZERS)),
    "optim.learning_rate": knob(0.1, positive),
    "optim.momentum": knob(0.9, within(0, 1, high_open=True)),
    "optim.nesterov": knob(True),
    "optim.weight_decay": knob(1e-4, within(0), doc="coupled L2 on all parameters, as in Torch's SGD"),
    "optim.schedule": knob("piecewise", one_of(SCHEDULES)),
    "optim.decay_at": knob((0.5, 0.75), _fractions, doc="fractions of training for the piecewise schedule"),
    "optim.decay_factor": knob(0.1, within(0, 1, low_open=True)),
    "optim.warmup_epochs": knob(0.0, within(0)),
    "optim.warmup_factor": knob(0.1, within(0, 1), doc="warm-up starts at learning_rate * warmup_factor"),
    "dtype": knob("float32", one_of(DTYPES), doc="compute dtype: float32 | bfloat16 (parameters stay float32)"),
    # ---- What is evaluated, logged and kept
    "eval_every_epochs": knob(1.0, positive, resume="free"),
    "log_every_steps": knob(50, at_least(1), resume="free"),
    "checkpoint_every_epochs": knob(1.0, positive, resume="free"),
    "keep_checkpoints": knob(3, at_least(1), resume="free"),
    "progress_bar": knob(True, resume="free", doc="a tqdm bar; without it, a log line every log_every_steps"),
    # ---- Devices and tools
    "mesh_axis": knob("data", resume="free", doc="the name of the 1-D data-parallel mesh over every device"),
    "compilation_cache_dir": knob("~/.cache/dnjax/jax", resume="free", doc="'' disables JAX's persistent cache"),
    "profile_steps": knob("", _steps, resume="free",
                          doc="'A,B': a jax.profiler trace of steps A..B (inclusive) in "
                          "WORKDIR/tensorboard/plugins/profile/, for TensorBoard's profile plugin; '' traces nothing"),
}


def defaults(model: str = "densenet_bc100_k12") -> ml_collections.ConfigDict:
    """A config with every knob at its default and ``config.model`` naming ``model`` (its other
    fields keep the zoo entry's values until a config sets them)."""
    config = ml_collections.ConfigDict({"model": {"name": model}})
    for path, k in KNOBS.items():
        set_path(config, path, k.default)
    return config


def set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
    """Sets the dotted ``path`` of ``config``, creating its sections."""
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        if part not in node:
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[leaf] = value


def describe() -> list[str]:
    """A line per knob: ``path = default  [resume policy]  what it is for``."""
    width = max(len(p) for p in KNOBS)
    return [f"{path:<{width}} = {k.default!r:<20} [{k.resume}]{'  ' + k.doc if k.doc else ''}"
            for path, k in KNOBS.items()]


if __name__ == "__main__":
    print("\n".join(describe()))
