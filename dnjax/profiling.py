"""``config.profile_steps='A,B'``: a ``jax.profiler`` trace of training steps A..B (1-based,
inclusive) for TensorBoard's profile plugin.

The trace goes to ``workdir/tensorboard/plugins/profile/<time>/`` beside the run's scalars, so
``tensorboard --logdir runs/`` (with ``pip install tensorboard-plugin-profile``) shows both. The
first step compiles; start after it (e.g. ``10,12``) to see steady-state steps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

log = logging.getLogger("dnjax")


def parse_steps(spec: str) -> tuple[int, int] | None:
    """``'A,B'`` -> (A, B); ``''`` -> None. ValueError names what is wrong."""
    if spec is None or not str(spec).strip():
        return None
    parts = [p.strip() for p in str(spec).split(",")]
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"give two step numbers 'A,B' with 1 <= A <= B (e.g. '10,12'), not {spec!r}") from None
    if not 1 <= first <= last:
        raise ValueError(f"give two step numbers 'A,B' with 1 <= A <= B (e.g. '10,12'), not {spec!r}")
    return first, last


class StepProfiler:
    """Starts a trace before step A and stops it once step B has finished; ``before(step)`` and
    ``after(step, outputs)`` bracket each step. Used as a context manager, so a run that stops
    inside the window still writes its trace."""

    def __init__(self, spec: str, logdir: str | Path, *, enabled: bool = True):
        self.window = parse_steps(spec) if enabled else None
        self.logdir = Path(logdir)
        self.active = False

    def before(self, step: int) -> None:
        if self.window is not None and step == self.window[0] and not self.active:
            self.logdir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def after(self, step: int, outputs) -> None:
        if self.active and step >= self.window[1]:
            jax.block_until_ready(outputs)
            self._stop()

    def _stop(self) -> None:
        jax.profiler.stop_trace()
        self.active = False
        log.info("Profile of steps %d..%d written to %s", *self.window, self.logdir)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self._stop()
