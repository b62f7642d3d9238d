"""Re-evaluates a run's checkpoint on its test split, or on other data.

    python -m dnjax.evaluate --workdir=runs/bc100 [--which=best] [--step=N] [--config.data.FIELD=VALUE ...]

The run's own ``config.json`` rebuilds the model and data, so no config file is needed. The data
fields of that config can be changed for the evaluation, e.g. ``--config.data.test_limit=None``
for the whole test split of a run trained with a shortened one, or ``--config.data.data_dir=DIR``
for a copy of the data set elsewhere; the result line says what was evaluated.

Exit status: 0 evaluated, 2 no such workdir, config, data or checkpoint, or a field that is not a
data field, 3 the workdir's store failed or did not answer within ``--storage_timeout_seconds``
(one line naming the path).
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

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
                     storage_timeout_seconds: float = STORAGE_TIMEOUT_SECONDS,
                     data: Sequence[tuple[str, str]] = ()) -> dict:
    """Builds the run's setup (data, model, steps; no trainer, nothing written) and evaluates a
    checkpoint on the test split of its data fields, changed by ``data`` ((``data.FIELD``, value)
    pairs, as ``--config.data.FIELD=VALUE`` gives them). Each read of the workdir has a deadline
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
        not_data = [path for path, _ in data if not path.startswith("data.")]
        if not_data:
            raise config_lib.ConfigError(
                f"config.{not_data[0]} cannot change for an evaluation: the checkpoint fixes the network and "
                "its training; only the data fields (--config.data.FIELD=VALUE) can")
        config = config_lib.override(config, data)
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
    metrics.update(step=meta["step"], epoch=meta.get("epoch"), which=which, dataset=setup.info.name,
                   data_changes={path: config_lib.value_at(config, path) for path, _ in data})
    return metrics


def main(argv, data: Sequence[tuple[str, str]] = ()):
    del argv
    logs.quiet_libraries(verbose=flags.FLAGS["verbosity"].present)
    from dnjax import storage

    try:
        m = evaluate_workdir(_WORKDIR.value, _WHICH.value, _STEP.value, _STORAGE_TIMEOUT.value, data)
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
            f"test loss {m['test_loss']:.4f} over {m['test_count']} images of the {m['dataset']} test split"
            + "".join(f", {path}={value!r}" for path, value in m["data_changes"].items())
        )
    return ExitStatus.OK


def run():
    data: list[tuple[str, str]] = []

    def parse(argv):
        from dnjax.config_files import split_overrides

        overrides, rest = split_overrides(argv)
        data.extend(overrides)
        return app.parse_flags_with_usage(rest)

    app.run(lambda argv: exit_bounded(main(argv, data)), flags_parser=parse)


if __name__ == "__main__":
    run()
