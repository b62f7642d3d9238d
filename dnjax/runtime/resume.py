"""What a run starts from: its workdir's newest checkpoint, else ``config.init_from``'s weights,
else a fresh initialisation; and whether this config may continue the run in the workdir.

A rerun on a workdir that holds checkpoints continues that run. Its config is compared with the
run's ``config.json`` (``dnjax.config_lib.resume_policy``): fields that decide only what is
evaluated, logged, kept or shown may change; the run's length may change once it has finished;
any other change is refused unless accepted by name (``--accept_config_changes``). A finished
run whose last checkpoint reads back intact is left exactly as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Sequence

import jax

from dnjax import config_lib, logs
from dnjax.runtime import checkpoints as ckpt_lib
from dnjax.runtime.checkpoints import CheckpointError

log = logging.getLogger("dnjax")


def check_config(workdir, config, accepted: Sequence[str]) -> tuple[bool, dict[str, tuple[Any, Any]]]:
    """(whether the workdir's run had finished, the accepted config changes). Changes that would
    alter the trajectory raise :class:`CheckpointError` with a diff (status 3)."""
    saved_path = workdir / "config.json"
    finals = list(logs.records(workdir, "final"))
    steps = ckpt_lib.committed_steps(workdir)
    finished = bool(finals and steps and finals[-1]["step"] == steps[-1])
    if not saved_path.exists():
        log.warning("%s is missing: the resumed run's config cannot be compared with its own", saved_path)
        return finished, {}
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{saved_path} is unreadable ({e}); restore it, or use a "
                              "fresh --workdir. Nothing was changed.") from None
    changes = config_lib.config_changes(saved, config)
    allowed, refused = config_lib.resume_policy(changes, finished=finished, accepted=accepted)
    if refused:
        raise CheckpointError(
            f"--workdir={workdir} holds a run with a different config, and continuing it with "
            f"this one would change what it trains:\n{config_lib.format_changes(refused)}\n"
            "Use a fresh --workdir for this config, rerun with the saved one "
            f"({saved_path}), or accept the change on purpose with "
            f"--accept_config_changes={','.join(refused)}. Nothing in the workdir was changed."
        )
    if allowed:
        log.warning("Continuing %s with changed settings:\n%s", workdir, config_lib.format_changes(allowed))
    return finished, allowed


def final_record(workdir, total_steps: int) -> dict[str, Any] | None:
    """The log's final record of a run that already ended at step ``total_steps``."""
    final = [r for r in logs.records(workdir, "final") if r["step"] == total_steps]
    if not final or total_steps not in ckpt_lib.committed_steps(workdir):
        return None
    return final[-1]


@dataclasses.dataclass(frozen=True)
class InitialWeights:
    """What a run starts from when ``config.init_from`` names another run's workdir."""

    params: Any  # that run's parameters (numpy); those under ``reinitialised`` are not used
    batch_stats: Any  # that run's BatchNorm statistics (numpy)
    reinitialised: tuple[str, ...]  # top-level modules initialised afresh: ("head",) when the classes differ
    start_event: dict[str, Any]  # what this run's 'started' event records of them


def initial_weights(setup) -> InitialWeights:
    """``config.init_from``'s parameters and BatchNorm statistics for ``setup``'s model. The
    classifier (``head``) is reinitialised when the number of classes differs; any other
    difference stops the run (ConfigError, status 2) before anything is written."""
    src = setup.config.init_from
    try:
        params, batch_stats, meta = ckpt_lib.read_weights(src)
    except CheckpointError as e:
        raise config_lib.ConfigError(f"config.init_from={src!r}: {e}") from None
    abstract = jax.eval_shape(setup.init_variables)
    shapes = ckpt_lib.param_shapes
    problems = ckpt_lib.compare_shapes(
        {**shapes(params), **{f"[stats]{k}": v for k, v in shapes(batch_stats).items()}},
        {**shapes(abstract["params"]),
         **{f"[stats]{k}": v for k, v in shapes(abstract.get("batch_stats", {})).items()}})
    classes = meta.get("num_classes")
    head = [p for p in problems if p.startswith("['head']")]
    if len(head) < len(problems) or (head and classes == setup.info.num_classes):
        other = [p for p in problems if not p.startswith("['head']")] or head
        raise config_lib.ConfigError(
            f"config.init_from={src!r} holds a checkpoint of another model "
            f"({meta.get('model', {}).get('name', '?')}) than config.model "
            f"({setup.config.model.name}): {len(problems)} variable(s) differ, e.g. "
            f"{other[0].replace('config', 'this run')}. Nothing was written."
        )
    reinitialised = ("head",) if head else ()
    if head:
        log.warning("init_from %s: reinitialised the classifier %s (%s classes there, %d here)",
                    src, ", ".join(head), classes, setup.info.num_classes)
    return InitialWeights(params, batch_stats, reinitialised,
                          start_event={"init_from": str(src), "reinitialised": list(reinitialised)})


def restore_or_init(setup, ckpts: ckpt_lib.Checkpoints, initial: InitialWeights | None = None):
    """(state, resumed): the newest intact checkpoint, else a fresh state, started from
    ``initial`` (:func:`initial_weights`) when given."""
    restored = setup.restore(ckpts, items=setup.source.restore_items())
    if restored is None:
        state = setup.init_state()
        if initial is not None:
            params = dict(initial.params, **{k: state.params[k] for k in initial.reinitialised})
            # The optimizer state of SGD and AdamW at step 0 does not depend on the values.
            state = state.replace(params=jax.device_put(params, setup.replicated),
                                  batch_stats=jax.device_put(initial.batch_stats, setup.replicated))
        return state, False
    ckpts.complete_best(*restored)
    return restored[0], True
