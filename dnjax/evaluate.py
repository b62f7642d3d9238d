"""Re-evaluates a run's checkpoint on the whole test split.

    python -m dnjax.evaluate --workdir=runs/bc100 [--which=best] [--step=N]

The run's own ``config.json`` rebuilds the model and data, so no config flag is needed.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import ml_collections
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
_WHICH = flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint to evaluate.")
_STEP = flags.DEFINE_integer("step", None, "A specific step instead of the newest.")
_JSON = flags.DEFINE_bool("json", False, "Print the metrics as one JSON object.")
flags.mark_flag_as_required("workdir")


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} the workdir of a dnjax run?")
    from configs import default

    config = default.get_config()
    config.unlock()
    config.update_from_flattened_dict(_flatten(json.loads(path.read_text())))
    return config


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def evaluate_workdir(workdir: str | Path, which: str = "latest", step: int | None = None) -> dict:
    from dnjax import checkpointing, train

    config = load_run_config(workdir)
    trainer = train.Trainer(config, workdir)
    ckpts = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
    try:
        template = trainer.init_state()
        restored = ckpts.restore(
            train.abstract_state(template, trainer.mesh), which=which, step=step,
            shapes=checkpointing.param_shapes(template.params),
        )
        if restored is None:
            raise checkpointing.CheckpointError(f"No {which} checkpoint in {workdir}")
        state, meta = restored
        _, _, test_images, test_labels = trainer.device_data()
        metrics = trainer.evaluate(state, test_images, test_labels)
    finally:
        ckpts.close()
    metrics.update(step=meta["step"], epoch=meta.get("epoch"), which=which)
    return metrics


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING)
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
