"""Checks a run's config before anything is built, and derives what follows from it.

Every check names the field and what would be valid, so a typo on the command line fails in the
first second with a one-line message rather than minutes later inside a trace.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from dnjax import models, profiling, storage
from dnjax.data.choices import DATASETS, NORMALIZATIONS, STREAMED_DATASETS
from dnjax.models.common import DTYPES

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("piecewise", "cosine", "constant")
MAX_STEPS = 2**31 - 1


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field."""


def _fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"config.{field}={value!r} is invalid: {valid}")


def _number(field: str, value: Any, *, low: float, high: float = math.inf, low_open=False, high_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(field, value, "it must be a finite number")
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        _fail(field, value, f"it must be in {lo}{low}, {high}{hi}")


def _integer(field: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(field, value, f"it must be an integer >= {low}")


def _choice(field: str, value: Any, choices) -> None:
    if value not in choices:
        _fail(field, value, f"valid values are {list(choices)}")


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model fields the config sets (those left at None keep the zoo's defaults)."""
    fields = config.model.to_dict()
    fields.pop("name")
    return {k: v for k, v in fields.items() if v is not None}


def build_model(config: ml_collections.ConfigDict, num_classes: int, image_shape: Sequence[int] | None = None):
    """The config's network (``models.get_model``), and with ``image_shape`` its initialisation
    traced on one such image (``models.check_input``). The models check their own fields; their
    ValueError becomes a ConfigError naming the config's model fields."""
    try:
        model = models.get_model(
            config.model.name, num_classes=num_classes, dtype=config.dtype, **model_overrides(config)
        )
    except ValueError as e:
        raise ConfigError(f"config.model: {e}") from None
    if image_shape is not None:
        try:
            models.check_input(model, image_shape)
        except ValueError as e:
            fields = ", ".join(f"model.{k}={v!r}" for k, v in model_overrides(config).items())
            raise ConfigError(f"config.model.name={config.model.name!r} ({fields or 'the zoo defaults'}) {e}") from None
    return model


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first bad field."""
    if config.model.name not in models.ZOO:
        _fail("model.name", config.model.name, f"valid names are {sorted(models.ZOO)}")
    valid = sorted(models.field_types(config.model.name))
    for k in model_overrides(config):
        if k not in valid:
            _fail(f"model.{k}", config.model[k], f"model {config.model.name!r} has no field {k!r}; "
                  f"its fields are {valid}")
    d = config.data
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.normalization", d.normalization, NORMALIZATIONS)
    if d.dataset == "npz" and (not d.npz_train or not d.npz_test):
        _fail("data.npz_train/npz_test", (d.npz_train, d.npz_test),
              "the npz data set needs both files: --config.data.npz_train=PATH --config.data.npz_test=PATH")
    npz_label = d.get("npz_label")  # None: the array 'label'
    if d.dataset == "npz" and npz_label is not None and (not isinstance(npz_label, str) or not npz_label):
        _fail("data.npz_label", npz_label, "it must name an array of the npz files, e.g. 'label'")
    if d.dataset not in ("npz", "digits") and d.get("data_dir") and storage.is_remote(d.data_dir):
        from dnjax.data.tfds import remote_data_dir_message

        raise ConfigError(remote_data_dir_message(d.data_dir))
    _integer("data.pad", d.pad, low=0)
    _integer("data.workers", d.workers, low=0)
    _integer("data.image_size", d.image_size, low=1)
    for f in ("train_limit", "test_limit", "num_classes", "resize"):
        if d[f] is not None:
            _integer(f"data.{f}", d[f], low=1)
    init_from = config.get("init_from")
    if init_from is not None:
        try:
            storage.check_available(init_from, "config.init_from")
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
    if init_from is not None and not storage.path(init_from).is_dir():
        _fail("init_from", init_from, "it must be the workdir of a run or of a converted checkpoint "
              "(python -m dnjax.convert)")
    if d.get("train_fraction") is not None:
        _number("data.train_fraction", d.train_fraction, low=0, high=1, low_open=True)
        if d.dataset in STREAMED_DATASETS:
            _fail("data.train_fraction", d.train_fraction,
                  f"subsets are drawn from data sets held in memory, not from the streamed {d.dataset!r}")
    if d.get("subset_seed") is not None:
        _integer("data.subset_seed", d.subset_seed, low=0)
    _integer("seed", config.seed, low=0)
    _integer("batch_size", config.batch_size, low=1)
    _integer("eval_batch_size", config.eval_batch_size, low=1)
    _number("num_epochs", config.num_epochs, low=0, low_open=True)
    _integer("num_train_steps", config.num_train_steps, low=-1)
    _integer("halt_after_steps", config.halt_after_steps, low=-1)
    if config.num_train_steps == 0:
        _fail("num_train_steps", 0, "use -1 (derive from num_epochs) or a positive number")
    o = config.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("optim.schedule", o.schedule, SCHEDULES)
    _number("optim.learning_rate", o.learning_rate, low=0, low_open=True)
    _number("optim.momentum", o.momentum, low=0, high=1, high_open=True)
    _number("optim.weight_decay", o.weight_decay, low=0)
    _number("optim.decay_factor", o.decay_factor, low=0, high=1, low_open=True)
    _number("optim.warmup_epochs", o.warmup_epochs, low=0)
    _number("optim.warmup_factor", o.warmup_factor, low=0, high=1)
    if not isinstance(o.decay_at, (tuple, list)) or any(
        isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in o.decay_at
    ) or list(o.decay_at) != sorted(o.decay_at):
        _fail("optim.decay_at", o.decay_at, "give increasing fractions of training in (0, 1), e.g. (0.5, 0.75)")
    _choice("dtype", config.dtype, DTYPES)
    _number("eval_every_epochs", config.eval_every_epochs, low=0, low_open=True)
    _number("checkpoint_every_epochs", config.checkpoint_every_epochs, low=0, low_open=True)
    _integer("log_every_steps", config.log_every_steps, low=1)
    _integer("keep_checkpoints", config.keep_checkpoints, low=1)
    try:
        profiling.parse_steps(config.get("profile_steps", ""))
    except ValueError as e:
        _fail("profile_steps", config.profile_steps, str(e))
    # Build the model once so that model-field errors surface now, not inside a trace.
    build_model(config, d.num_classes or 10)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Step counts derived from the config and the data set size."""

    steps_per_epoch: int
    total_steps: int
    eval_every: int
    checkpoint_every: int
    warmup_steps: int
    boundaries: tuple[int, ...]


def derive(config: ml_collections.ConfigDict, num_train: int) -> Schedule:
    if num_train < config.batch_size:
        limit = config.data.train_limit
        raise ConfigError(
            f"config.batch_size={config.batch_size} is larger than the training split "
            f"({num_train} images"
            + (f", cut to that by config.data.train_limit={limit}" if limit is not None else "")
            + "); lower it or use more data"
        )
    spe = num_train // config.batch_size
    total = config.num_train_steps if config.num_train_steps > 0 else max(1, round(config.num_epochs * spe))
    # Steps are int32 inside the jitted step and the learning-rate schedule.
    if total > MAX_STEPS:
        field = "num_train_steps" if config.num_train_steps > 0 else "num_epochs"
        _fail(field, config[field], f"it gives {total} steps, more than the {MAX_STEPS} a run can count")
    warmup = round(config.optim.warmup_epochs * spe)
    if warmup > MAX_STEPS:
        _fail("optim.warmup_epochs", config.optim.warmup_epochs,
              f"it gives {warmup} warm-up steps, more than the {MAX_STEPS} a run can count")
    every = lambda epochs: max(1, round(epochs * spe))
    return Schedule(
        steps_per_epoch=spe,
        total_steps=total,
        eval_every=every(config.eval_every_epochs),
        checkpoint_every=every(config.checkpoint_every_epochs),
        warmup_steps=warmup,
        boundaries=tuple(round(f * total) for f in config.optim.decay_at),
    )


# --------------------------------------------------------------------------------------------
# Command-line overrides and saved configs


def _missing_path(config: ml_collections.ConfigDict, path: str) -> str | None:
    """The first part of the dotted ``path`` that ``config`` does not have, as a dotted prefix."""
    node: Any = config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return ".".join(parts[: i + 1])
        node = node[part]
    return None


def unknown_field_message(config: ml_collections.ConfigDict, path: str) -> str:
    """A one-line message for ``--config.<path>`` naming a field ``config`` does not have."""
    missing = _missing_path(config, path)
    if missing is None:
        return f"config.{path} cannot be set"
    if missing.startswith("model.") and missing.count(".") == 1:
        name, field = config.model.name, missing.split(".")[1]
        have = [n for n in models.ZOO if field in models.field_types(n)]
        same = [n for n in have if models.ZOO[n].family == models.ZOO[name].family]
        shown = (same or have)[:4]
        hint = (f"networks that have it: {', '.join(shown)}{', ...' if len(same or have) > 4 else ''} "
                "(choose one in the config file's argument)" if have else "no network of the zoo has it")
        return (f"config.{missing} does not exist: model {name!r} has the fields "
                f"{sorted(models.field_types(name))}; {hint}")
    parent = missing.rpartition(".")[0]
    node = _get(config, parent) if parent else config
    return f"config.{missing} does not exist; config{'.' + parent if parent else ''} has {sorted(node.keys())}"


def _get(config, dotted: str):
    node = config
    for part in dotted.split(".") if dotted else ():
        node = node[part]
    return node


def _network_field(path: str, fields) -> str | None:
    """FIELD where ``path`` is ``model.FIELD`` and FIELD is one of the chosen network's ``fields``
    (``models.field_types``): a field a config file may leave out of ``config.model``."""
    field = path.removeprefix("model.")
    return field if path.startswith("model.") and field in fields else None


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str], flag: str = "config") -> None:
    """ConfigError for the first ``--<flag>.<path>=...`` of ``argv`` naming a field that
    ``config`` (the config file's, before overrides) does not have and that is not a field of the
    chosen network."""
    overrides = _flag_overrides(argv, flag)
    name = dict(overrides).get("model.name") or config.model.name
    fields = models.field_types(name) if name in models.ZOO else {}
    for path, _ in overrides:
        if _missing_path(config, path) is not None and _network_field(path, fields) is None:
            raise ConfigError(unknown_field_message(config, path))


def make_importable(spec: str) -> None:
    """Config files build on each other (``from configs import default``). When a config file's
    folder is a package (it holds ``__init__.py``), the folder above it goes first on ``sys.path``,
    so that ``--config=/path/to/dnjax/configs/x.py`` works from any directory."""
    folder = Path(spec.partition(":")[0]).resolve().parent
    if (folder / "__init__.py").is_file() and str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def load_config_file(spec: str, overrides: Sequence[tuple[str, Any]] = ()) -> ml_collections.ConfigDict:
    """The config of ``--config=PATH[:ARG]``, loaded as config_flags loads it, with ``overrides``
    (dotted field, value) applied as the command line applies them (``apply_overrides``)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("dnjax_config_file", path)
    if module_spec is None or not Path(path).is_file():
        raise ConfigError(f"--config={spec}: {path} is not a config file")
    make_importable(spec)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    return apply_overrides(config, overrides) if overrides else config


def repository_config(name: str) -> str:
    """The path of ``configs/<name>`` in the repository this dnjax runs from (a checkout, as
    ``pip install -e .`` installs it), for tools whose default is one of the paper's recipes."""
    path = Path(__file__).resolve().parent.parent / "configs" / name
    if not path.is_file():
        raise ConfigError(f"configs/{name} is not beside this dnjax ({path.parent.parent}): run dnjax from "
                          f"its repository (pip install -e .) or pass --config=PATH/configs/{name}")
    return str(path)


def _parse_text(text: str, kind: type) -> Any:
    """A command-line value for a field of type ``kind``, read as config_flags reads it."""
    if kind is str:
        return text
    if kind is bool:
        if text.lower() in ("true", "1"):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise ValueError
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        raise ValueError from None
    return tuple(value) if kind is tuple and isinstance(value, list) else value


def _model_field_value(name: str, field: str, value: Any) -> Any:
    """``value`` (a command-line text or a Python value) as the type the network's field takes."""
    kind = models.field_types(name)[field]
    try:
        if isinstance(value, str) and kind is not str:
            value = _parse_text(value, kind)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"config.model.{field}={value!r} is invalid: model {name!r} takes "
                          f"{field} as {kind.__name__}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each (dotted field, value) of ``overrides`` set. A config file's
    ``config.model`` holds only the fields its recipe sets; any other field of the chosen network
    (``models.field_types``) can be set too, and is typed by the network. A field that does not
    exist, or a value of the wrong type, is a ConfigError naming it."""
    config = config.copy_and_resolve_references()
    overrides = list(overrides)
    # The network first: which model fields exist depends on it.
    overrides.sort(key=lambda kv: kv[0] != "model.name")
    for path, value in overrides:
        missing = _missing_path(config, path)
        if missing is None:
            *parents, leaf = path.split(".")
            try:
                _get(config, ".".join(parents))[leaf] = value
            except TypeError as e:
                raise ConfigError(f"config.{path}={value!r} is invalid: {e}") from None
            continue
        if config.model.name not in models.ZOO:
            _fail("model.name", config.model.name, f"valid names are {sorted(models.ZOO)}")
        field = _network_field(path, models.field_types(config.model.name))
        if field is None:
            raise ConfigError(unknown_field_message(config, path))
        config.model[field] = _model_field_value(config.model.name, field, value)
    return config


def _flag_overrides(argv: Sequence[str], flag: str) -> list[tuple[str, str | None]]:
    """(dotted field, text or None when the flag has no value) of each ``--<flag>.FIELD`` of argv."""
    out = []
    for i, arg in enumerate(argv):
        for prefix in (f"--{flag}.", f"--no{flag}."):
            if arg.startswith(prefix):
                body = arg[len(prefix):]
                if "=" in body:
                    out.append(tuple(body.split("=", 1)))
                elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    out.append((body, argv[i + 1]))
                else:
                    out.append((body, "false" if prefix.startswith("--no") else None))
    return out


def check_flag_overrides(file_config: ml_collections.ConfigDict, parsed: ml_collections.ConfigDict,
                         argv: Sequence[str], flag: str = "config") -> ml_collections.ConfigDict:
    """``parsed`` (the config file's config after config_flags applied the overrides of ``argv``,
    accepting new fields) with each field the file did not have checked: a field of the chosen
    network (``models.field_types``) is typed by it; any other is a ConfigError naming it."""
    if parsed.model.name not in models.ZOO:
        _fail("model.name", parsed.model.name, f"valid names are {sorted(models.ZOO)}")
    fields = models.field_types(parsed.model.name)
    for path, text in _flag_overrides(argv, flag):
        if _missing_path(file_config, path) is None:
            continue
        field = _network_field(path, fields)
        if field is None:
            raise ConfigError(unknown_field_message(file_config, path))
        value = "true" if text is None and fields[field] is bool else text
        parsed.model[field] = _model_field_value(parsed.model.name, field, value)
    return parsed


_FLAG_CONFIGS: dict[str, ml_collections.ConfigDict] = {}


def parse_flags(argv: list[str], flag: str = "config") -> list[str]:
    """absl's flag parsing for a command line with a config-file flag, defined with
    ``config_flags.DEFINE_config_file(flag, accept_new_attributes=True, lock_config=False)``: a
    config file's ``config.model`` holds only the fields its recipe sets, so config_flags is let
    to add fields, and ``check_flag_overrides`` then admits only the chosen network's fields
    among them. A field that does not exist, or a bad value of a model field, ends the program
    with status 2 and one line naming it (``flag_config`` gives the checked config)."""
    from absl import app, flags

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
    try:
        if spec is not None:
            make_importable(spec)
        rest = app.parse_flags_with_usage(argv)
        parsed = flags.FLAGS[flag].value
        if spec is not None and parsed is not None:
            _FLAG_CONFIGS[flag] = check_flag_overrides(load_config_file(spec), parsed, argv[1:], flag)
        return rest
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError) as e:
        # config_flags' own errors: a field under a parent that does not exist, or a value that
        # does not fit its field.
        message = f"error: a --{flag}.FIELD override does not fit the config ({type(e).__name__}: {e}); give each as --{flag}.FIELD=VALUE"
        if spec is not None:
            try:
                check_overrides(load_config_file(spec), argv[1:], flag)
            except ConfigError as known:
                message = f"error: {known}"
        print(message, file=sys.stderr)
        sys.exit(2)


def flag_config(holder, flag: str = "config") -> ml_collections.ConfigDict:
    """The config of a config-file flag parsed by ``parse_flags``."""
    return _FLAG_CONFIGS.get(flag, holder.value)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


# Fields that a config.json written by an earlier version of dnjax lacks, with the value that
# keeps that version's behaviour.
ADDED_FIELDS = {
    "halt_after_steps": -1, "profile_steps": "", "init_from": None, "data.workers": 0,
    "data.npz_label": "label", "data.resize": None, "data.train_fraction": None, "data.subset_seed": None,
}


def _tuples(d: dict) -> dict:
    return {k: _tuples(v) if isinstance(v, dict) else tuple(v) if isinstance(v, list) else v
            for k, v in d.items()}


def from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """A run's config from its ``config.json``, as it was saved (JSON lists read as tuples), with
    ``ADDED_FIELDS`` where the file predates them. Model fields saved as None (unset, as earlier
    versions wrote every field of the network's family) are dropped."""
    model = dict(saved.get("model", {}))
    if "name" not in model:
        raise ConfigError("config.json has no model.name: it is not the config of a dnjax run")
    model = {k: v for k, v in model.items() if k == "name" or v is not None}
    config = ml_collections.ConfigDict(_tuples(dict(saved, model=model)))
    for path, value in ADDED_FIELDS.items():
        if _missing_path(config, path) == path:  # its section is there, the field is not
            parent, _, leaf = path.rpartition(".")
            _get(config, parent)[leaf] = value
    return config


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir/config.json``."""
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} the workdir of a dnjax run?")
    return from_json(json.loads(path.read_text()))


# ---- Resuming with a changed config
#
# A rerun on a workdir that holds checkpoints continues that run. Its config is compared with the
# run's config.json: fields that decide only what is evaluated, logged, kept or shown may change;
# the run's length may change once it has finished (extending it); any other change (model, data,
# batch, optimizer, schedule, seed, dtype, and fields this list does not know) would silently
# continue the old trajectory under new settings, so it is refused unless accepted by name.
RESUME_FREE = (
    "eval_every_epochs", "eval_batch_size", "log_every_steps", "checkpoint_every_epochs",
    "keep_checkpoints", "progress_bar", "compilation_cache_dir", "profile_steps", "halt_after_steps",
    "mesh_axis", "data.workers", "init_from",  # init_from only matters to a run's first step
)
RESUME_EXTEND = ("num_epochs", "num_train_steps")


def config_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} for every field that differs (an absent field reads None)."""
    old = _flatten(saved)
    new = _flatten(json.loads(config.to_json_best_effort()))
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def resume_policy(changes: dict[str, tuple[Any, Any]], *, finished: bool,
                  accepted: Sequence[str] = ()) -> tuple[dict, dict]:
    """Splits ``changes`` into (allowed, refused). ``accepted``: fields the user accepts changing
    (``--accept_config_changes``), or ``("all",)``."""
    allowed, refused = {}, {}
    for field, change in changes.items():
        ok = (field in RESUME_FREE or (finished and field in RESUME_EXTEND)
              or "all" in accepted or field in accepted)
        (allowed if ok else refused)[field] = change
    return allowed, refused


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
