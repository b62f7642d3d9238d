"""The local executor: runs a list of commands (a study's runs on this host), up to one per slot at
once, each in a process of its own confined to its slot's devices (:mod:`experiments.hosts`).

- A run starts as soon as a slot is free, in the order given; its output goes to its log file.
- A run that fails is reported (name, exit status, the last lines of its log) and the others go on.
- SIGTERM or SIGINT (Ctrl-C) to the executor sends SIGTERM to every run in progress (a dnjax run
  saves a checkpoint and exits 143, ``ExitStatus.PREEMPTED``) and starts nothing more; a second
  one kills them at once.
  The children are in sessions of their own, so that a Ctrl-C at the terminal reaches them only
  through the executor, and they are sent SIGTERM by the kernel if the executor itself dies.
- Progress comes from each run's ``metrics.jsonl``: on a terminal a table redrawn every second (run,
  step/total, last test error, img/s, ETA), otherwise one line per run per event (start, each
  evaluation, end).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence, TextIO

from dnjax.exits import ExitStatus
from experiments.hosts import Slot

TAIL_LINES = 15


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@dataclasses.dataclass
class Job:
    """One command to run: ``name``, its arguments, the workdir whose metrics.jsonl tells its
    progress, and the log file its output goes to."""

    name: str
    argv: list[str]
    metrics: Callable[[], list[dict]]  # the run's metrics records so far
    log: Path


@dataclasses.dataclass
class Progress:
    """What a run's log says of it so far."""

    step: int = 0
    total: int | None = None
    test_error: float | None = None
    img_per_s: float | None = None
    seen: tuple[float, int] | None = None  # (time, step) of the first training record this time
    last: tuple[float, int] | None = None
    evals: int = 0
    final: bool = False

    def update(self, records: list[dict], since: float) -> list[dict]:
        """Takes the records; returns the evaluations new since the last call."""
        new = []
        evals = [r for r in records if r.get("type") == "eval"]
        for r in records:
            t = r.get("type")
            if t == "event" and r.get("event") == "started" and r.get("total_steps"):
                self.total = int(r["total_steps"])
            elif t == "train":
                self.step = max(self.step, int(r.get("step", 0)))
                if r.get("img_per_s") is not None:
                    self.img_per_s = float(r["img_per_s"])
                if float(r.get("time", 0)) >= since:
                    point = (float(r["time"]), int(r["step"]))
                    self.seen = self.seen or point
                    self.last = point
            elif t == "final":
                self.final = True
                self.step = max(self.step, int(r.get("step", 0)))
        if evals:
            self.test_error = evals[-1].get("test_error")
            self.step = max(self.step, int(evals[-1].get("step", 0)))
            new = evals[self.evals:]
            self.evals = len(evals)
        return new

    @property
    def eta(self) -> float | None:
        if self.total is None or self.seen is None or self.last is None or self.last[1] <= self.seen[1]:
            return None
        rate = (self.last[1] - self.seen[1]) / max(self.last[0] - self.seen[0], 1e-9)
        return (self.total - self.step) / rate

    def columns(self) -> tuple[str, str, str, str]:
        total = "?" if self.total is None else str(self.total)
        err = "-" if self.test_error is None else f"{self.test_error:.2f}%"
        rate = "-" if self.img_per_s is None else f"{self.img_per_s:.0f}"
        return f"{self.step}/{total}", err, rate, _duration(self.eta)


@dataclasses.dataclass
class _Running:
    job: Job
    slot: Slot
    proc: subprocess.Popen
    started: float
    progress: Progress = dataclasses.field(default_factory=Progress)
    polled: float = 0.0


@dataclasses.dataclass
class Outcome:
    name: str
    rc: int
    seconds: float
    slot: int


def _child_setup(cpus: tuple[int, ...] | None) -> Callable[[], None]:
    def setup() -> None:  # in the child, before exec
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
    return setup


class Executor:
    """Runs ``jobs`` on ``slots``. ``on_exit(job, rc, seconds)`` is called as each run ends (the
    runner records it); ``poll_seconds`` is how often the runs' logs are read (longer for a remote
    root, whose logs are uploaded at checkpoints)."""

    def __init__(self, slots: Sequence[Slot], cwd: Path, on_exit: Callable[[Job, int, float], None],
                 out: TextIO | None = None, live: bool | None = None, poll_seconds: float = 1.0,
                 env: dict[str, str] | None = None):
        self.slots = list(slots)
        self.cwd = cwd
        self.on_exit = on_exit
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.poll_seconds = poll_seconds
        self.env = dict(os.environ if env is None else env)
        self.signals = 0
        self._drawn = 0

    # ---- signals

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def _stop_all(self, running: dict[int, _Running], sig: int) -> None:
        for r in running.values():
            if r.proc.poll() is None:
                try:
                    r.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    # ---- output

    def say(self, text: str) -> None:
        self._erase()
        print(text, file=self.out, flush=True)

    def _erase(self) -> None:
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, running: dict[int, _Running], waiting: int, done: int) -> None:
        if not self.live:
            return
        rows = [("run", "slot", "step", "test error", "img/s", "ETA")]
        for r in sorted(running.values(), key=lambda r: r.slot.index):
            rows.append((r.job.name, str(r.slot.index), *r.progress.columns()))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        lines.append(f"{len(running)} running, {waiting} waiting, {done} ended")
        width = shutil.get_terminal_size((120, 24)).columns
        self._erase()
        self.out.write("".join(line[:width] + "\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)

    def _tail(self, path: Path) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError as e:
            return f"    (its log {path} is unreadable: {e})"
        return "\n".join("    " + line for line in lines) or "    (its log is empty)"

    # ---- the loop

    def _start(self, job: Job, slot: Slot) -> _Running:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        with job.log.open("ab") as f:
            f.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} slot {slot.index}: {' '.join(job.argv)}\n".encode())
            proc = subprocess.Popen(job.argv, cwd=self.cwd, env={**self.env, **slot.env}, stdout=f,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_child_setup(slot.cpus))
        return _Running(job, slot, proc, time.time())

    def _poll(self, r: _Running, now: float, force: bool = False) -> None:
        if not force and now - r.polled < self.poll_seconds:
            return
        r.polled = now
        try:
            records = r.job.metrics()
        except Exception:  # a log being rewritten or uploaded: read it next time
            return
        for e in r.progress.update(records, r.started - 1.0):
            if not self.live:
                _, _, rate, eta = r.progress.columns()
                total = "?" if r.progress.total is None else r.progress.total
                self.say(f"{r.job.name}: step {e.get('step')}/{total}, test error {e.get('test_error', float('nan')):.2f}%, "
                         f"{rate} img/s, ETA {eta}")

    def run(self, jobs: Sequence[Job]) -> tuple[list[Outcome], bool]:
        """Runs every job; returns the outcomes and whether a signal stopped the executor."""
        pending = deque(jobs)
        free = deque(self.slots)
        running: dict[int, _Running] = {}
        outcomes: list[Outcome] = []
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        forwarded = 0
        try:
            while pending or running:
                if self.signals > forwarded:
                    forwarded = self.signals
                    if forwarded == 1:
                        self.say(f"Stopping: {len(running)} run(s) in progress save a checkpoint and stop "
                                 "(a second Ctrl-C or SIGTERM kills them at once); nothing more starts")
                        self._stop_all(running, signal.SIGTERM)
                    else:
                        self._stop_all(running, signal.SIGKILL)
                    pending.clear()
                now = time.time()
                for index, r in list(running.items()):
                    rc = r.proc.poll()
                    if rc is None:
                        self._poll(r, now)
                        continue
                    del running[index]
                    free.append(r.slot)
                    seconds = now - r.started
                    self._poll(r, now, force=True)
                    self.on_exit(r.job, rc, seconds)
                    outcomes.append(Outcome(r.job.name, rc, seconds, r.slot.index))
                    self._report(r, rc, seconds)
                while pending and free and not self.signals:
                    job, slot = pending.popleft(), free.popleft()
                    r = self._start(job, slot)
                    running[slot.index] = r
                    where = "" if not slot.env else f" on {slot.label}"
                    self.say(f"{job.name}: started{where}; log {job.log}")
                self._draw(running, len(pending), len(outcomes))
                if running:
                    time.sleep(0.2 if not self.live else 0.5)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if running:  # an exception of the executor's own: leave no run behind
                self._stop_all(running, signal.SIGTERM)
            self._erase()
        return outcomes, self.signals > 0

    def _report(self, r: _Running, rc: int, seconds: float) -> None:
        p = r.progress
        if rc == 0 and p.final:
            err = "-" if p.test_error is None else f"{p.test_error:.2f}%"
            self.say(f"{r.job.name}: finished in {_duration(seconds)}, step {p.step}, test error {err}")
        elif rc in (ExitStatus.PREEMPTED, ExitStatus.INTERRUPTED) or (self.signals and rc in (0, -signal.SIGTERM, -signal.SIGKILL)):
            self.say(f"{r.job.name}: stopped at step {p.step} ({exit_text(rc)}); rerun to resume")
        elif rc == 0:
            self.say(f"{r.job.name}: stopped at step {p.step} before the end (halt_after_steps?)")
        else:
            self.say(f"{r.job.name}: FAILED ({exit_text(rc)}) after {_duration(seconds)} at step {p.step}; "
                     f"the last lines of {r.job.log}:\n{self._tail(r.job.log)}")
