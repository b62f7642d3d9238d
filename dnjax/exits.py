"""How dnjax's command lines end: every exit status they use, defined here once, and the two ways
out for a process whose libraries may still hold threads waiting on a failed store.

The statuses of a training run (``python -m dnjax.main``) are the ones a scheduler or the study
runner acts on: 143 and 130 say that the run saved and can be resumed, 3 that its workdir needs
attention, 2 that the command itself must change.
"""

from __future__ import annotations

import enum
import os
import signal
import sys
import threading

# How long the interpreter's shutdown may take once a command has its exit status.
SHUTDOWN_SECONDS = 10.0


class ExitStatus(enum.IntEnum):
    """What a command's exit status says."""

    OK = 0  # done: finished, evaluated, converted, or halted by halt_after_steps
    FAILED = 1  # an unexpected error (its traceback printed), or a study with runs that did not finish
    BAD_INPUT = 2  # a config, data set, argument or weights file that cannot be used; a non-finite loss
    STORAGE = 3  # the workdir cannot be used or continued: in use, unwritable, full, its store failing,
    #              its checkpoints unusable or of another model, or its run's config would change
    LOST_PROCESS = 4  # a multi-process run lost one of its processes
    INTERRUPTED = 128 + signal.SIGINT  # 130, Ctrl-C: stopped after saving, or at once at a second Ctrl-C
    PREEMPTED = 128 + signal.SIGTERM  # 143, SIGTERM or a TPU pod's preemption notice: stopped after saving


def exit_now(status: int, message: str) -> None:
    """One line on stderr, then the end of the process without the interpreter's shutdown: threads
    left waiting on a failed store or a cut-short save would report themselves after the line, or
    never end."""
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(status)


def arm_shutdown_deadline(status: int, seconds: float = SHUTDOWN_SECONDS) -> None:
    """Ends the process with ``status`` if the interpreter's shutdown has not within ``seconds``.

    Shutdown joins every thread the libraries started; one still waiting on a store that failed
    (orbax's signalling threads, a client's retry loop) must not keep the process, and on a pod
    the slice, alive."""
    timer = threading.Timer(seconds, os._exit, args=(status,))
    timer.daemon = True
    timer.start()


def exit_bounded(status: int) -> None:
    """``sys.exit(status)`` for a command line that has its exit status, with the interpreter's
    shutdown bounded by :func:`arm_shutdown_deadline`."""
    arm_shutdown_deadline(status)
    sys.exit(status)
