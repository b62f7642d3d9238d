"""Command line of a training run; everything else lives in ``dnjax.train``.

    python -m dnjax.main --config=configs/cifar_densenet.py:cifar100 --workdir=runs/bc100 \
        [--config.batch_size=128 ...]

Run the same command on every host of a TPU pod or every task of a SLURM job: the processes find
each other through ``jax.distributed``. A rerun with the same workdir resumes from its newest
checkpoint.

Exit status: 0 finished (or halted by ``halt_after_steps``), 143 preempted by SIGTERM after saving,
130 stopped by Ctrl-C (after saving; a second Ctrl-C aborts at once without saving),
2 a bad config or data set or a non-finite loss, 3 a workdir that cannot be used (another run holds
it, it is not writable or became full, its store failed or did not answer within
``--storage_timeout_seconds``, its checkpoints are unusable or of another model, or it
holds a run with a config this one would change; see ``--accept_config_changes``), 4 a
multi-process run lost a process. When one process of a multi-process run dies, the others stop with status 4 as soon as
a collective fails, or are stopped by ``jax.distributed`` once the dead one has missed heartbeats
for ``--heartbeat_timeout_seconds``; none waits forever.
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags

from dnjax import config_files, config_lib
from dnjax.exits import ExitStatus, arm_shutdown_deadline, exit_bounded, exit_now
from dnjax.storage import STORAGE_TIMEOUT_SECONDS

_CONFIG = config_files.ConfigFlag("config", "FILE[:ARG]: the config file, e.g. configs/quickstart.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the saved config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed: 'auto' initialises on TPU pods, SLURM jobs with several tasks, or when "
    "--coordinator_address is given.",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100,
    "Multi-process runs: a process that sends no heartbeat for this long is declared dead, and "
    "jax.distributed stops the others.",
)
_ACCEPT = flags.DEFINE_list(
    "accept_config_changes", [],
    "Resuming a run whose config.json differs from this config in fields that change training "
    "(model, data, batch, optimizer, schedule, seed, dtype) is refused; list the fields (or 'all') "
    "to continue the run with the new values on purpose.",
)
_LEASE = flags.DEFINE_float(
    "lock_lease_seconds", 60.0,
    "gs:// workdirs: the lease of the run's lock object, renewed every quarter of it. A run killed "
    "without a chance to release it holds the workdir this long (on another host; on the same "
    "host a rerun takes it over at once).",
)
_STORAGE_TIMEOUT = flags.DEFINE_float(
    "storage_timeout_seconds", STORAGE_TIMEOUT_SECONDS,
    "A storage operation of the run (a checkpoint save or its background commit, an upload of the "
    "logs, the restore at start, the lock's renewal) that has not ended this long after it began "
    "stops the run with status 3, as one that fails does; raise it for checkpoints that take "
    "longer to write.",
)
flags.register_validator("heartbeat_timeout_seconds", lambda v: v >= 1, "must be at least 1 second")
flags.register_validator("lock_lease_seconds", lambda v: v >= 4, "must be at least 4 seconds")
flags.register_validator("storage_timeout_seconds", lambda v: v >= 1, "must be at least 1 second")
flags.mark_flags_as_required(["config", "workdir"])


def _cluster_detected() -> bool:
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return bool(env.get("TPU_WORKER_HOSTNAMES", "").count(",")) or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize_distributed(mode: str, coordinator: str | None, num_processes: int | None,
                           process_id: int | None, heartbeat_timeout_seconds: int = 100) -> None:
    import jax

    if mode == "off" or (mode == "auto" and not coordinator and not _cluster_detected()):
        return
    if coordinator:
        if num_processes is None or process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        # CPU devices of different processes talk through gloo; GPU/TPU backends ignore this.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                                   heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    else:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from dnjax import logs

    logs.quiet_libraries(verbose=flags.FLAGS["verbosity"].present, progress=True)
    initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _HEARTBEAT.value)

    from dnjax import train
    from dnjax.data import DataError
    from dnjax.runtime.checkpoints import CheckpointError
    from dnjax.runtime.workdir import WorkdirError

    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _ACCEPT.value,
                                          _LEASE.value, _STORAGE_TIMEOUT.value)
    except (config_lib.ConfigError, DataError, train.NonFiniteLossError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    except KeyboardInterrupt:
        # Ctrl-C before the training loop took over the signal (reading data, compiling, restoring).
        exit_now(ExitStatus.INTERRUPTED, "Interrupted (Ctrl-C) before training began; nothing was "
                 "saved beyond the checkpoints already in the workdir. Rerun the same command to resume.")
    except (CheckpointError, WorkdirError) as e:
        # Without the interpreter's shutdown: orbax's reads of a damaged checkpoint, or its saves
        # to a full disk, leave tasks that would report themselves after this line.
        exit_now(ExitStatus.STORAGE, f"error: {e}")
    except Exception as e:
        import jax

        if jax.process_count() == 1:
            arm_shutdown_deadline(ExitStatus.FAILED)
            raise
        # Most likely a collective failed because another process died. Exiting normally would
        # wait in jax.distributed's shutdown barrier for the dead process.
        traceback.print_exc()
        exit_now(
            ExitStatus.LOST_PROCESS,
            f"error: process {jax.process_index()} of {jax.process_count()} stopped: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Another process has "
            "probably died (see its log). Rerun all processes with the same command to resume "
            "from the newest checkpoint.",
        )
    if result.status == "preempted":
        return ExitStatus.PREEMPTED
    if result.status == "interrupted":
        return ExitStatus.INTERRUPTED
    if result.status == "halted":
        return ExitStatus.OK
    m = result.metrics
    print(
        f"Finished {result.step} steps: test error {m['test_error']:.2f}% "
        f"(accuracy {100 - m['test_error']:.2f}%), top-5 error {m['test_top5_error']:.2f}%, "
        f"test loss {m['test_loss']:.4f}. Logs and checkpoints in {_WORKDIR.value}"
    )
    return ExitStatus.OK


def run():
    app.run(lambda argv: exit_bounded(main(argv)), flags_parser=_CONFIG.parse)


if __name__ == "__main__":
    run()
