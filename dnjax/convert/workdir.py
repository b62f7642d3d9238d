"""Converted weights as a dnjax workdir: ``config.json`` and a step-0 checkpoint.

The workdir is what a run of that config would hold before its first step, with the converted
parameters and BatchNorm statistics in the train state (the optimizer state is freshly
initialised), so ``python -m dnjax.evaluate --workdir=DIR`` evaluates it, ``--config.init_from=DIR``
starts another run from it, and ``python -m dnjax.main`` with the same config and workdir trains on
from it.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from dnjax import storage
from dnjax.convert.torchvision import ConversionError, abstract_variables


def run_num_classes(config: ml_collections.ConfigDict) -> int:
    """The number of classes a run of ``config`` builds its classifier for, without the data."""
    from dnjax.data.choices import NUM_CLASSES

    if config.data.num_classes is not None:
        return int(config.data.num_classes)
    if config.data.dataset in NUM_CLASSES:
        return NUM_CLASSES[config.data.dataset]
    raise ConversionError(
        f"config.data.dataset={config.data.dataset!r} does not fix the number of classes: set "
        "--config.data.num_classes"
    )


def build_model(config: ml_collections.ConfigDict):
    from dnjax import config_lib

    try:
        config_lib.validate(config)
        return config_lib.build_model(config, run_num_classes(config))
    except config_lib.ConfigError as e:
        raise ConversionError(str(e)) from None


def check_out(out) -> None:
    try:
        storage.check_available(out, "--out")
    except storage.StorageError as e:
        raise ConversionError(str(e)) from None
    out = storage.path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"--out={out} exists and is not an empty directory; choose a new one")


def write_workdir(out, variables: dict[str, Any], config: ml_collections.ConfigDict,
                  *, converted_from: dict[str, Any] | None = None):
    """Writes ``config.json`` and a step-0 checkpoint of ``variables`` into the new directory ``out``.

    ``out`` must not exist or be empty. Locally everything is written into a temporary sibling that
    is renamed to ``out`` at the end, so a failure leaves nothing behind. On an object store (no
    rename) the checkpoint goes straight to ``out`` (orbax commits it last) and ``config.json``
    after it, and a failure deletes what was written.
    """
    from dnjax import config_lib, train
    from dnjax.runtime import checkpoints as checkpointing

    check_out(out)
    out = storage.path(out)
    model = build_model(config)
    params = jax.tree.map(jnp.asarray, variables["params"])
    batch_stats = jax.tree.map(jnp.asarray, variables.get("batch_stats", {}))
    want = checkpointing.param_shapes(abstract_variables(model)["params"])
    problems = checkpointing.compare_shapes(checkpointing.param_shapes(params), want)
    if problems:
        raise ConversionError(
            f"the variables do not fit config.model.name={config.model.name!r}: {len(problems)} "
            f"parameter(s) differ, e.g. {problems[0].replace('checkpoint', 'given')}"
        )

    # The optimizer state's structure does not depend on the step counts; any schedule will do.
    schedule = train.make_schedule(config, config_lib.derive(config, config.batch_size))
    tx = train.make_optimizer(config, schedule)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             batch_stats=batch_stats, opt_state=tx.init(params))
    meta = {
        "step": 0,
        "epoch": 0.0,
        "model": config.model.to_dict(),
        "num_classes": run_num_classes(config),
        "param_shapes": checkpointing.param_shapes(params),
    }
    if converted_from is not None:
        meta["converted_from"] = converted_from

    def save_into(directory) -> None:
        ckpts = checkpointing.Checkpoints(directory, keep=config.keep_checkpoints, async_save=False,
                                          training=True)
        try:
            ckpts.save(0, state, meta, force=True)
        finally:
            ckpts.close()
        storage.write_whole(directory / "config.json", config.to_json_best_effort(indent=2))

    if storage.is_remote(out):
        try:
            save_into(out)
        except BaseException:
            if out.exists():
                out.rmtree()
            raise
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = storage.path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_into(tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
