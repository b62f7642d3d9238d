"""SIGTERM as a flag the training loop polls, so that a preempted run saves between two steps.

Schedulers (SLURM, Kubernetes, preemptible VMs) send SIGTERM and wait a grace period before
SIGKILL. The handler only sets a flag: the step in flight finishes, the loop saves a checkpoint
and exits with :data:`PREEMPTED_EXIT_CODE`, what shells report for a process ended by SIGTERM.
TPU pods announce preemption through ``jax.distributed`` instead; orbax's
``reached_preemption`` reads that (:meth:`dnjax.runtime.checkpoints.Checkpoints.reached_preemption`).
"""

from __future__ import annotations

import signal

# Exit status of a run stopped by SIGTERM after saving (128 + SIGTERM).
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class SigtermFlag:
    """``with SigtermFlag() as sigterm:`` ... ``if sigterm.set:`` save and stop."""

    def __init__(self):
        self.set = False
        self._previous = None

    def __enter__(self) -> SigtermFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: the default handler stays
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
