"""The lifecycle of one training run in its workdir, from start-up to exit.

``with Run(setup, workdir) as run:`` does, before the first step: proves the workdir writable
(and an object store reachable), takes its lock (process 0), compares the config with the run
already there, reads ``init_from``, restores the newest intact checkpoint or initialises, writes
``config.json`` and opens the metrics log. The training loop then calls :meth:`Run.log`,
:meth:`Run.save`, :meth:`Run.stop_reason` and :meth:`Run.finish` / :meth:`Run.stop`. Leaving the
block closes everything in order; a storage error (full disk, quota, a bucket that refuses)
becomes one :class:`~dnjax.runtime.workdir.WorkdirError` saying which checkpoints are intact, and
a run that stopped before writing anything leaves no directory behind.

The loop itself (``dnjax.train``) knows nothing of locks, files or signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Sequence

import jax

from dnjax import logs, provenance, storage
from dnjax.runtime import checkpoints as ckpt_lib, resume
from dnjax.runtime.deadline import StorageDeadline
from dnjax.runtime.preemption import StopSignals
from dnjax.runtime.workdir import LEASE_SECONDS, WorkdirError, check_writable, lock_for

log = logging.getLogger("dnjax")


@dataclasses.dataclass
class RunResult:
    status: str  # finished | preempted | interrupted | halted
    step: int
    metrics: dict[str, float]
    state: Any = None  # the final train state (None for a finished run left untouched)


def check_workdir(workdir) -> None:
    """Before the data is read or anything compiled: a workdir on an object store whose client,
    credentials or bucket is missing stops the run (:class:`WorkdirError`, status 3)."""
    try:
        storage.check_available(workdir, "--workdir")
    except storage.StorageError as e:
        raise WorkdirError(str(e)) from None


class Run:
    """See the module docstring. After entering: ``finished`` is the result of a run that had
    already ended (the block then does nothing); otherwise ``state`` and ``start`` are where
    training continues."""

    def __init__(self, setup, workdir, accept_config_changes: Sequence[str] = (),
                 lock_lease_seconds: float = LEASE_SECONDS,
                 storage_timeout_seconds: float = storage.STORAGE_TIMEOUT_SECONDS):
        self.setup = setup
        self.workdir = storage.path(workdir)
        self.accepted = tuple(accept_config_changes)
        self.is_main = jax.process_index() == 0
        self._deadline = StorageDeadline(self.workdir, storage_timeout_seconds)
        self._deadline.intact = self._intact
        self._lock = lock_for(self.workdir, lock_lease_seconds) if self.is_main else None
        if self._lock is not None:
            self._lock.deadline = self._deadline
            self._deadline.on_failure = lambda: self._lock.release(quick=True)
        self._committed: int | None = None  # the newest step known to be committed
        self._in_flight: int | None = None  # the step of the save that may still be writing
        self._created: list = []  # directories this run made, deepest first
        self._written = False
        self._ckpts: ckpt_lib.Checkpoints | None = None
        self._log: logs.MetricsLog | None = None
        self._signals = StopSignals()
        self._locked = False
        self.finished: RunResult | None = None
        self.state = None
        self.start = 0

    # ---- start-up

    def __enter__(self) -> Run:
        if self.is_main:
            if not storage.is_remote(self.workdir):  # an object store has no directories to leave
                here = storage.local(self.workdir)
                self._created = [d for d in (here, *here.parents) if not d.exists()]
            with self._deadline.op(f"writing a test file to {self.workdir}"):
                check_writable(self.workdir)
        try:
            if self._lock is not None:
                with self._deadline.op(f"taking the lock {self.workdir / 'lock'}"):
                    self._lock.__enter__()
                self._locked = True
            self._open()
        except BaseException as e:
            self._close(e)
            raise
        self._signals.__enter__()
        return self

    def _open(self) -> None:
        setup, cfg, sched = self.setup, self.setup.config, self.setup.sched
        changes, final = {}, None
        with self._deadline.op(f"reading the run in {self.workdir}"):
            started = ckpt_lib.has_checkpoints(self.workdir)
            if started:
                _, changes = resume.check_config(self.workdir, cfg, self.accepted)
                final = resume.final_record(self.workdir, sched.total_steps)
            # Read before anything is written: weights that do not fit stop the run untouched.
            initial = None
            if cfg.init_from and not started:
                initial = resume.initial_weights(setup)
            self._ckpts = ckpt_lib.Checkpoints(self.workdir, keep=cfg.keep_checkpoints, training=True)
        # (A fresh start compiles the initialisation, which can take longer than any store.)
        restoring = (self._deadline.op(f"restoring the newest checkpoint of {self.workdir / 'checkpoints'}")
                     if started else contextlib.nullcontext())
        with restoring:
            state, resumed = resume.restore_or_init(setup, self._ckpts, initial)
        start = int(jax.device_get(state.step))
        self._committed = start if resumed else None
        if resumed and final is not None and start == sched.total_steps:
            # Finished, and its last checkpoint read back intact: leave the run exactly as it is.
            # (A damaged one was skipped above: the run then trains to the end again.)
            log.info("%s already finished at step %d; nothing to do", self.workdir, sched.total_steps)
            skip = ("type", "step", "time", "epoch")
            self.finished = RunResult("finished", start, {k: v for k, v in final.items() if k not in skip})
            return
        # Written only once the workdir is known to hold this model (or nothing yet).
        if self.is_main:
            with self._deadline.op(f"writing {self.workdir / 'config.json'}"):
                storage.write_whole(self.workdir / "config.json", cfg.to_json_best_effort(indent=2))
        self._written = True
        with self._deadline.op(f"reading {self.workdir / logs.METRICS_FILE}"):
            self._log = logs.MetricsLog(self.workdir, resume_step=start if resumed else None,
                                        enabled=self.is_main)
        params = int(sum(x.size for x in jax.tree.leaves(state.params)))
        epochs = round(sched.total_steps / sched.steps_per_epoch, 2)
        log.info("%s, %s parameters, on %s (%s training images): %d steps, %g epoch%s of %d steps of %d images",
                 _network(cfg), f"{params:,}", setup.info.name, f"{setup.info.num_train:,}", sched.total_steps,
                 epochs, "" if epochs == 1 else "s", sched.steps_per_epoch, cfg.batch_size)
        if resumed:
            log.info("Resumed from %s at step %d", self.workdir / "checkpoints", start)
            self.log("event", start, event="resumed", provenance=provenance.collect())
            if changes:
                self.log("event", start, event="config_changed", changes={k: list(v) for k, v in changes.items()})
        else:
            self.log(
                "event", 0, event="started", model=cfg.model.name,
                params=params,
                steps_per_epoch=sched.steps_per_epoch, total_steps=sched.total_steps,
                devices=jax.device_count(), processes=jax.process_count(),
                **(initial.start_event if initial is not None else {}), provenance=provenance.collect(),
            )
        self.state, self.start = state, start

    # ---- what the loop calls

    @property
    def tensorboard_dir(self):
        """Where TensorBoard files (events, profiles) go: the workdir's ``tensorboard/`` or, on an
        object store, its local copy."""
        return self._log.tensorboard_dir

    def log(self, kind: str, step: int, **values: Any) -> None:
        with self._deadline.op(f"uploading the logs to {self.workdir}"):  # at events (local: a write)
            self._log.write(kind, step, **values)

    def newest_checkpoint(self) -> int | None:
        return self._ckpts.latest.latest_step()

    def save(self, step: int, state, epoch: float, test_error: float | None = None) -> None:
        """A checkpoint of ``state`` (and the best one when ``test_error`` beats it)."""
        if self._lock is not None:
            self._lock.check()  # another run took the workdir over: save nothing
        with self._deadline.op(f"uploading the logs to {self.workdir}"):
            self._log.sync()  # every committed checkpoint has its records in the workdir
        meta = self.setup.meta(state, epoch)
        if test_error is not None:  # lets a resumed run redo a best save that a crash cut short
            meta["test_error"] = test_error
        where = self.workdir / "checkpoints" / str(step)
        with self._deadline.op(f"saving the checkpoint {where}"):  # waits for the previous save first
            self._ckpts.save(step, state, meta, force=True, items=self.setup.source.save_items())
            self._saved()
            if test_error is not None:
                self._ckpts.save_best(step, state, meta, test_error)
        self._in_flight = step
        ckpts = self._ckpts
        self._deadline.pending(f"writing the checkpoint {where}", failure=ckpts.failure,
                               done=lambda: self._in_flight != step or ckpts.idle())

    def _saved(self) -> None:
        """The save in flight has completed (a newer one started only after it did, or it was awaited)."""
        if self._in_flight is not None:
            self._committed, self._in_flight = self._in_flight, None

    def _wait(self) -> None:
        with self._deadline.op(f"writing the checkpoint {self.workdir / 'checkpoints' / str(self._in_flight)}"):
            self._ckpts.wait()
        self._saved()

    def _intact(self) -> str:
        if self._committed is None:
            return "No checkpoint of this run is known to be committed"
        return f"The checkpoints up to step {self._committed} are intact"

    def stop_reason(self, step: int) -> str | None:
        """'preempted' (SIGTERM, or a TPU pod's preemption notice), 'interrupted' (Ctrl-C),
        'halted' (``config.halt_after_steps``) or None: keep training."""
        if self._signals.received is not None:
            return self._signals.received
        if self._ckpts.reached_preemption(step):
            return "preempted"
        if step == self.setup.config.halt_after_steps and step < self.setup.sched.total_steps:
            return "halted"
        return None

    def stop(self, why: str, step: int, state, epoch: float, *, saved: bool,
             metrics: dict[str, float]) -> RunResult:
        """Saves (unless this step was just saved), waits for the save and logs why the run stopped."""
        if not saved:
            self.save(step, state, epoch)
        self._wait()
        self.log("event", step, event=why)
        what = {"halted": "Halted (halt_after_steps)", "interrupted": "Interrupted (Ctrl-C)"}.get(
            why, "Preempted (SIGTERM)")
        log.warning("%s at step %d: checkpoint saved to %s; rerun the same command to resume.",
                    what, step, self.workdir / "checkpoints")
        return RunResult(why, step, metrics, state)

    def finish(self, step: int, state, final: dict[str, float], epoch: float) -> RunResult:
        self.log("final", step, epoch=round(epoch, 4), **final)
        return RunResult("finished", step, final, state)

    # ---- shutdown

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._close(exc)  # a second Ctrl-C while the last save is awaited still aborts at once
        finally:
            self._signals.__exit__(exc_type, exc, tb)

    def _close(self, exc: BaseException | None) -> None:
        failed = storage.is_failure(exc)
        try:
            if not failed:
                try:
                    with self._deadline.op(f"finishing the run in {self.workdir} (the last checkpoint, the logs)"):
                        # The first error is the one to report, so closing does not raise over it.
                        if self._log is not None:
                            _quietly(self._log.close, raise_=exc is None)
                        if self._ckpts is not None:
                            _quietly(self._ckpts.close, raise_=exc is None)
                            self._saved()
                except Exception as e:
                    if not storage.is_failure(e):
                        raise
                    exc, failed = e, True
            if failed:  # the store cannot take the rest, and what is still being written can only fail
                if self._log is not None:
                    _quietly(self._log.discard, raise_=False)
                if self._ckpts is not None:
                    self._ckpts.abandon()
        finally:
            self._log = self._ckpts = None
            self._deadline.close()
            if self._locked:
                self._locked = False
                self._lock.release(quick=failed)
            if exc is not None and not self._written:
                for d in self._created:
                    try:
                        d.rmdir()  # only if empty: a run stopped before writing leaves nothing behind
                    except OSError:
                        break
        if failed:
            raise WorkdirError(self._failure_message(exc)) from exc

    def _failure_message(self, exc: BaseException) -> str:
        cause = storage.write_error(exc)
        what = (f"{cause.strerror or cause}{f' ({cause.filename})' if cause.filename else ''}"
                if cause is not None else str(exc))
        if storage.is_remote(self.workdir):  # the store may not answer a listing now
            return (f"Cannot write to --workdir={self.workdir}: {what}. {self._intact()}; once the store "
                    "answers again, rerun the same command to resume.")
        steps = ckpt_lib.committed_steps(self.workdir)
        kept = (f"The checkpoints up to step {steps[-1]} are intact" if steps
                else "No checkpoint had been committed")
        return (f"Cannot write to --workdir={self.workdir}: {what}. {kept}; free space (or fix the "
                "storage) and rerun the same command to resume.")


def _quietly(close, *, raise_: bool) -> None:
    """Calls ``close``; while another error is on its way out, logs (not raises) what fails."""
    try:
        close()
    except Exception as e:  # noqa: BLE001 - the error being raised already says what went wrong
        if raise_:
            raise
        log.debug("While stopping, %s failed too: %s", getattr(close, "__qualname__", close),
                  str(e).splitlines()[0] if str(e) else e)


def _network(cfg) -> str:
    """The run's network as the console shows it: its zoo name and kind, e.g. 'densenet_cifar
    (densenet_bc, depth 16)'."""
    from dnjax import models

    fields = {k: v for k, v in cfg.model.items() if k != "name" and v is not None}
    depth = f", depth {fields['depth']}" if "depth" in fields else ""
    return f"{cfg.model.name} ({models.variant(cfg.model.name, **fields)}{depth})"
