"""Re-evaluates a run's checkpoint on the whole test split.

    python -m dnjax.evaluate --workdir=runs/bc100 [--which=best] [--step=N]

The run's own ``config.json`` rebuilds the model and data, so no config flag is needed.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from dnjax import logs

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
_WHICH = flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "A specific step instead of the newest.")
_JSON = flags.DEFINE_bool("json", False, "Print the metrics as one JSON object.")
flags.mark_flag_as_required("workdir")


def evaluate_workdir(workdir, which: str = "latest", step: int | None = None) -> dict:
    """Builds the run's setup (data, model, steps; no trainer, nothing written) and evaluates a
    checkpoint on the whole test split."""
    from dnjax import config_lib, storage, train
    from dnjax.runtime import checkpoints as checkpointing

    storage.check_available(workdir, "--workdir")
    config = config_lib.load_run_config(workdir)
    setup = train.Setup(config)
    ckpts = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    try:
        restored = setup.restore(ckpts, which=which, step=step)
        if restored is None:
            raise checkpointing.CheckpointError(f"No {which} checkpoint in {workdir}")
        state, meta = restored
        metrics = setup.evaluate(state)
    finally:
        ckpts.close()
    metrics.update(step=meta["step"], epoch=meta.get("epoch"), which=which)
    return metrics


def main(argv):
    del argv
    logs.quiet_libraries(verbose=flags.FLAGS["verbosity"].present)
    try:
        m = evaluate_workdir(_WORKDIR.value, _WHICH.value, _STEP.value)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if _JSON.value:
        print(json.dumps(m))
    else:
        print(
            f"{_WORKDIR.value} ({m['which']} checkpoint, step {m['step']}): test error "
            f"{m['test_error']:.2f}%, top-5 error {m['test_top5_error']:.2f}%, "
            f"test loss {m['test_loss']:.4f} over {m['test_count']} images"
        )
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
