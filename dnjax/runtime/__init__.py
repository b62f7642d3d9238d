"""The lifecycle of a training run around its loop: one place for what keeps a run safe.

==================  ==========================================================================
``run``             :class:`Run`: start-up (writability, lock, resume, init_from, config.json,
                    logs) and shutdown (closing in order, storage errors in one line)
``resume``          what a run starts from, and whether a changed config may continue a run
``checkpoints``     orbax checkpoints: newest few and best, fingerprints, damaged ones set aside
``workdir``         one writer per workdir (flock, or a lease on GCS); writable at start
``preemption``      SIGTERM and Ctrl-C as a flag the loop polls
``compilation``     JAX's persistent compilation cache
==================  ==========================================================================
"""

from dnjax.runtime.run import Run, RunResult, check_workdir

__all__ = ["Run", "RunResult", "check_workdir"]
