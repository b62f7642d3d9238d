"""Re-evaluates a run's checkpoint on the whole test split.

    python -m dnjax.evaluate --workdir=runs/bc100 [--which=best] [--step=N]

The run's own ``config.json`` rebuilds the model and data, so no config flag is needed.

Exit status: 0 evaluated, 2 no such workdir, config or checkpoint, 3 the workdir's store failed or
did not answer within ``--storage_timeout_seconds`` (one line naming the path).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from dnjax import logs
from dnjax.exits import ExitStatus, exit_bounded
from dnjax.storage import STORAGE_TIMEOUT_SECONDS

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
_WHICH = flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "A specific step instead of the newest.")
_JSON = flags.DEFINE_bool("json", False, "Print the metrics as one JSON object.")
_STORAGE_TIMEOUT = flags.DEFINE_float(
    "storage_timeout_seconds", STORAGE_TIMEOUT_SECONDS,
    "Reading the run's config and checkpoint: a read that has not ended this long after it began "
    "stops with status 3.")
flags.mark_flag_as_required("workdir")


def evaluate_workdir(workdir, which: str = "latest", step: int | None = None,
                     storage_timeout_seconds: float = STORAGE_TIMEOUT_SECONDS) -> dict:
    """Builds the run's setup (data, model, steps; no trainer, nothing written) and evaluates a
    checkpoint on the whole test split. Each read of the workdir has a deadline
    (:class:`dnjax.runtime.deadline.StorageDeadline`): a store that does not answer ends the
    process with status 3."""
    from dnjax import config_lib, storage, train
    from dnjax.runtime import checkpoints as checkpointing
    from dnjax.runtime.deadline import StorageDeadline

    deadline = StorageDeadline(workdir, storage_timeout_seconds)
    deadline.intact, deadline.then = (lambda: "Nothing was written"), "rerun the same command"
    try:
        with deadline.op(f"reading {workdir}"):
            storage.check_available(workdir, "--workdir")
            config = config_lib.load_run_config(workdir)
        setup = train.Setup(config)
        with deadline.op(f"reading the checkpoints of {workdir}"):
            ckpts = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
        try:
            with deadline.op(f"restoring the {which} checkpoint of {workdir}"):
                restored = setup.restore(ckpts, which=which, step=step)
            if restored is None:
                raise checkpointing.CheckpointError(f"No {which} checkpoint in {workdir}")
            state, meta = restored
            metrics = setup.evaluate(state)
        finally:
            ckpts.close()
    finally:
        deadline.close()
    metrics.update(step=meta["step"], epoch=meta.get("epoch"), which=which)
    return metrics


def main(argv):
    del argv
    logs.quiet_libraries(verbose=flags.FLAGS["verbosity"].present)
    from dnjax import storage

    try:
        m = evaluate_workdir(_WORKDIR.value, _WHICH.value, _STEP.value, _STORAGE_TIMEOUT.value)
    except storage.StorageFailure as e:
        print(f"error: {e}. Nothing was written; once the store answers again, rerun the same command.",
              file=sys.stderr)
        return ExitStatus.STORAGE
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    if _JSON.value:
        print(json.dumps(m))
    else:
        print(
            f"{_WORKDIR.value} ({m['which']} checkpoint, step {m['step']}): test error "
            f"{m['test_error']:.2f}%, top-5 error {m['test_top5_error']:.2f}%, "
            f"test loss {m['test_loss']:.4f} over {m['test_count']} images"
        )
    return ExitStatus.OK


def _exit(code: int) -> None:
    exit_bounded(code)  # no library thread left waiting on a failed store keeps the process alive


if __name__ == "__main__":
    app.run(lambda argv: _exit(main(argv)))
