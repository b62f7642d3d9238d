"""SIGTERM and Ctrl-C as a flag the training loop polls, so that a stopped run saves between two
steps.

Schedulers (SLURM, Kubernetes, preemptible VMs) send SIGTERM and wait a grace period before
SIGKILL; a person at a terminal presses Ctrl-C (SIGINT). Either handler only sets a flag: the step
in flight finishes, the loop saves a checkpoint and exits with what shells report for a process
ended by that signal, ``ExitStatus.PREEMPTED`` (143) or ``ExitStatus.INTERRUPTED`` (130).
A second Ctrl-C does not wait for the save: it prints one line and ends the process at once (the
checkpoints committed before stay intact; the save in flight is not committed and is removed by
the next run). TPU pods announce preemption through ``jax.distributed`` instead; orbax's
``reached_preemption`` reads that (:meth:`dnjax.runtime.checkpoints.Checkpoints.reached_preemption`).
"""

from __future__ import annotations

import os
import signal

from dnjax.exits import ExitStatus, exit_now


class StopSignals:
    """``with StopSignals() as signals:`` ... ``if signals.received:`` save and stop.

    ``received`` is None, ``'preempted'`` (SIGTERM) or ``'interrupted'`` (Ctrl-C)."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig, handler in ((signal.SIGTERM, self._term), (signal.SIGINT, self._interrupt)):
            try:
                self._previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread: the default handlers stay
                break
        return self

    def _term(self, signum, frame) -> None:
        self.received = self.received or "preempted"

    def _interrupt(self, signum, frame) -> None:
        if self.received == "interrupted":
            exit_now(ExitStatus.INTERRUPTED, "Aborted (second Ctrl-C) without saving; the checkpoints committed "
                     "before are intact. Rerun the same command to resume from the newest.")
        self.received = "interrupted"

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            if sig == signal.SIGINT and self.received == "interrupted":
                # The run has stopped and says so; another Ctrl-C while the process ends only
                # ends it sooner, quietly, with the same status.
                previous = lambda *_: os._exit(ExitStatus.INTERRUPTED)  # noqa: E731
            signal.signal(sig, previous)
        self._previous.clear()
