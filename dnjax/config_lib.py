"""A run's config: read from a config file and ``--config.FIELD=VALUE`` overrides, checked before
anything is built, completed with every field of its network, saved and read back.

The knobs and what a valid value of each is are declared in :mod:`dnjax.knobs`; the network's
fields are its module's (:func:`dnjax.models.field_types`). Every mistake is a
:class:`ConfigError` of one line that names the field and what would be valid, so a typo fails in
the first second rather than minutes later inside a trace.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from dnjax import knobs, models, storage
from dnjax.data.choices import STREAMED_DATASETS

MAX_STEPS = 2**31 - 1


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field."""


def _fail(field: str, value: Any, valid: str) -> None:
    raise ConfigError(f"config.{field}={value!r} is invalid: {valid}")


def _close(word: str, candidates) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def value_at(config, dotted: str):
    node = config
    for part in dotted.split(".") if dotted else ():
        node = node[part]
    return node


# --------------------------------------------------------------------------------------------
# Fields and their values


def field_kind(config: ml_collections.ConfigDict, path: str) -> tuple[type, bool]:
    """(type, whether None is valid) of the dotted field ``path``: a knob, or a field of the
    config's network; ConfigError naming it (with the closest name) when there is no such field."""
    if path in knobs.KNOBS:
        return knobs.KNOBS[path].kind, knobs.KNOBS[path].optional
    if path == "model.name":
        return str, False
    if path.startswith("model."):
        name, field = _model_name(config), path.removeprefix("model.")
        types = models.field_types(name)
        if field in types:
            return types[field], True
        have = [n for n in models.ZOO if field in models.field_types(n)]
        same = [n for n in have if models.family(n) == models.family(name)] or have
        hint = (f"networks that have it: {', '.join(same[:4])}{', ...' if len(same) > 4 else ''} (choose one in "
                "the config file's argument)" if have else "no network of the zoo has it" + _close(field, types))
        raise ConfigError(f"config.{path} does not exist: model {name!r} has the fields {sorted(types)}; {hint}")
    parent, _, leaf = path.rpartition(".")
    names = sorted({p.removeprefix(parent + ".").split(".")[0] for p in (*knobs.KNOBS, "model.name")
                    if p.startswith(parent + ".") or not parent})
    if not names:
        return field_kind(config, parent)  # raises for the missing section
    if leaf in names:
        raise ConfigError(f"config.{path} is a section: set its fields, e.g. --config.{path}.FIELD=VALUE")
    raise ConfigError(f"config.{path} does not exist{_close(leaf, names)}; config{'.' + parent if parent else ''} "
                      f"has {names}")


def _model_name(config) -> str:
    name = config.model.name
    if name not in models.ZOO:
        _fail("model.name", name, f"no such network{_close(name, models.ZOO)}; python -m dnjax.models lists them")
    return name


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               tuple: "a tuple, e.g. (16, 32)"}


def typed(path: str, kind: type, optional: bool, value: Any, *, text: bool = True) -> Any:
    """``value`` as field ``path`` takes it; with ``text``, a string for a field of another type is
    read as a Python literal, as the command line gives it (``true``/``false`` for bools, ``None``
    where the field may be unset)."""
    try:
        if text and isinstance(value, str) and kind is not str:
            if kind is bool and value.lower() in ("true", "false", "1", "0"):
                value = value.lower() in ("true", "1")
            else:
                value = ast.literal_eval(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is tuple and isinstance(value, list):
            value = tuple(value)
        ok = (value is None and optional) or (isinstance(value, kind) and not (
            kind in (int, float) and isinstance(value, bool)))
    except (SyntaxError, ValueError):
        ok = False
    if not ok:
        _fail(path, value, f"it takes {_KIND_NAMES[kind]}{' or None' if optional else ''}")
    return value


def override(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, Any]]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with each (dotted field, value) of ``overrides`` set, the one way every
    override is parsed and checked (command line, studies, tools). The network's name goes first:
    which model fields exist depends on it."""
    config = ml_collections.ConfigDict(config.to_dict())
    for path, value in sorted(overrides, key=lambda kv: kv[0] != "model.name"):
        kind, optional = field_kind(config, path)
        knobs.set_path(config, path, typed(path, kind, optional, value))
        if path == "model.name":
            _model_name(config)
    return config


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The model fields the config sets (those left at None keep the zoo's defaults)."""
    return {k: v for k, v in config.model.to_dict().items() if k != "name" and v is not None}


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of (valid) ``config`` whose ``config.model`` holds every field of its network, so
    that the workdir alone rebuilds it whatever the zoo's presets say later."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = dict(name=config.model.name, **models.built_fields(config.model.name, **model_overrides(config)))
    return config


def build_model(config: ml_collections.ConfigDict, num_classes: int, image_shape: Sequence[int] | None = None):
    """The config's network (``models.get_model``), and with ``image_shape`` its initialisation
    traced on one such image (``models.check_input``); the models' ValueError becomes a ConfigError."""
    fields = model_overrides(config)
    try:
        model = models.get_model(config.model.name, num_classes=num_classes, dtype=config.dtype, **fields)
        if image_shape is not None:
            models.check_input(model, image_shape)
    except ValueError as e:
        shown = ", ".join(f"model.{k}={v!r}" for k, v in fields.items()) or "the zoo defaults"
        raise ConfigError(f"config.model.name={config.model.name!r} ({shown}): {e}") from None
    return model


# --------------------------------------------------------------------------------------------
# Checks


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first bad field."""
    name = _model_name(config)
    given = _leaves(config.to_dict())
    for path, value in given.items():  # every field is a knob or the network's, of its type
        typed(path, *field_kind(config, path), value, text=False)
    for path, k in knobs.KNOBS.items():
        if path not in given:
            raise ConfigError(f"config.{path} is missing: start the config file from configs/default.py")
        if given[path] is not None and k.check is not None and (problem := k.check(given[path])):
            _fail(path, given[path], problem)
    d = config.data
    if d.dataset == "npz" and (not d.npz_train or not d.npz_test):
        _fail("data.npz_train/npz_test", (d.npz_train, d.npz_test),
              "the npz data set needs both files: --config.data.npz_train=PATH --config.data.npz_test=PATH")
    if d.dataset == "npz" and not d.npz_label:
        _fail("data.npz_label", d.npz_label, "it must name an array of the npz files, e.g. 'label'")
    if d.dataset != "npz" and (d.npz_train or d.npz_test):
        _fail("data.dataset", d.dataset, f"npz files are given (data.npz_train={d.npz_train!r}, data.npz_test="
              f"{d.npz_test!r}) but read only with --config.data.dataset=npz")
    if d.dataset not in ("npz", "digits") and d.data_dir and storage.is_remote(d.data_dir):
        from dnjax.data.tfds import remote_data_dir_message

        raise ConfigError(remote_data_dir_message(d.data_dir))
    if d.train_fraction is not None and d.dataset in STREAMED_DATASETS:
        _fail("data.train_fraction", d.train_fraction,
              f"subsets are drawn from data sets held in memory, not from the streamed {d.dataset!r}")
    if config.init_from is not None:
        try:
            storage.check_available(config.init_from, "config.init_from")
        except storage.StorageError as e:
            raise ConfigError(str(e)) from None
        if not storage.path(config.init_from).is_dir():
            _fail("init_from", config.init_from, "it must be the workdir of a run or of a converted checkpoint "
                  "(python -m dnjax.convert)")
    # Build the model once so that model-field errors surface now, not inside a trace.
    build_model(config, d.num_classes or models.num_classes(name))


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
            f"config.batch_size={config.batch_size} is larger than the training split ({num_train} images"
            + (f", cut to that by config.data.train_limit={limit}" if limit is not None else "")
            + "); lower it or use more data")
    spe = num_train // config.batch_size
    total = config.num_train_steps if config.num_train_steps > 0 else max(1, round(config.num_epochs * spe))
    warmup = round(config.optim.warmup_epochs * spe)
    for field, steps in (("num_train_steps" if config.num_train_steps > 0 else "num_epochs", total),
                         ("optim.warmup_epochs", warmup)):
        if steps > MAX_STEPS:  # steps are int32 inside the jitted step and the schedule
            _fail(field, value_at(config, field), f"it gives {steps} steps, more than the {MAX_STEPS} a run can count")
    every = lambda epochs: max(1, round(epochs * spe))
    return Schedule(steps_per_epoch=spe, total_steps=total, eval_every=every(config.eval_every_epochs),
                    checkpoint_every=every(config.checkpoint_every_epochs), warmup_steps=warmup,
                    boundaries=tuple(round(f * total) for f in config.optim.decay_at))


# --------------------------------------------------------------------------------------------
# Saved configs and resuming with a changed one


def from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """A run's config from its ``config.json`` (JSON lists read as tuples), with each knob that
    the file predates at the value it stood for (``Knob.older``). Model fields saved as None
    (unset, as earlier versions wrote every field of the network's family) are dropped."""
    if "name" not in saved.get("model", {}):
        raise ConfigError("config.json has no model.name: it is not the config of a dnjax run")
    leaves = {k: tuple(v) if isinstance(v, list) else v for k, v in _leaves(saved).items()
              if not (k.startswith("model.") and v is None)}
    config = ml_collections.ConfigDict({"model": {}})
    for path, k in knobs.KNOBS.items():
        knobs.set_path(config, path, leaves.get(path, k.before))
    for path, value in leaves.items():
        knobs.set_path(config, path, value)
    return config


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run saved in ``workdir/config.json``."""
    path = storage.path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} the workdir of a dnjax run?")
    return from_json(json.loads(path.read_text()))


def config_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} for every field that differs, both sides completed
    (older layouts read with today's knobs and the zoo's fields; an absent field reads None)."""
    def flat(c):
        try:
            c = complete(c)
        except (KeyError, ValueError):  # a network the zoo no longer has, or fields it no longer takes
            pass
        return _leaves(json.loads(c.to_json_best_effort()))
    old, new = flat(from_json(saved)), flat(config)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def resume_policy(changes: dict[str, tuple[Any, Any]], *, finished: bool,
                  accepted: Sequence[str] = ()) -> tuple[dict, dict]:
    """Splits ``changes`` into (allowed, refused): a knob declared free to change (``Knob.resume``),
    the run's length once it has finished, or a field ``accepted`` names (``"all"``: any)."""
    allowed, refused = {}, {}
    for field, change in changes.items():
        resume = knobs.KNOBS[field].resume if field in knobs.KNOBS else "fixed"
        ok = resume == "free" or (finished and resume == "extend") or "all" in accepted or field in accepted
        (allowed if ok else refused)[field] = change
    return allowed, refused


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
