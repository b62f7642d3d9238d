"""Command line of a training run; everything else lives in ``dnjax.train``.

    python -m dnjax.main --config=configs/cifar_densenet.py:cifar100 --workdir=runs/bc100 \
        [--config.batch_size=128 ...]

Run the same command on every host of a TPU pod or every task of a SLURM job: the processes find
each other through ``jax.distributed``. A rerun with the same workdir resumes from its newest
checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the saved config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed: 'auto' initialises on TPU pods, SLURM jobs with several tasks, or when "
    "--coordinator_address is given.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def _cluster_detected() -> bool:
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return bool(env.get("TPU_WORKER_HOSTNAMES", "").count(",")) or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize_distributed(mode: str, coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    import jax

    if mode == "off" or (mode == "auto" and not coordinator and not _cluster_detected()):
        return
    if coordinator:
        if num_processes is None or process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        # CPU devices of different processes talk through gloo; GPU/TPU backends ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    else:
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)

    from dnjax import config_lib, train
    from dnjax.input_pipeline import DataError

    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_lib.ConfigError, DataError, train.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except train.checkpointing.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.status == "preempted":
        return train.PREEMPTED_EXIT_CODE
    if result.status == "halted":
        return 0
    m = result.metrics
    print(
        f"Finished {result.step} steps: test error {m['test_error']:.2f}% "
        f"(accuracy {100 - m['test_error']:.2f}%), top-5 error {m['test_top5_error']:.2f}%, "
        f"test loss {m['test_loss']:.4f}. Logs and checkpoints in {_WORKDIR.value}"
    )
    return 0


def run():
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
