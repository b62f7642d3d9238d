"""A deadline on every storage operation of a run, so that a store that fails ends the run in one
line and in bounded time instead of hanging it.

The storage clients retry by themselves, each with its own budget: gcsfs about 30 s, the
google-cloud-storage calls of the lock up to 120 s, TensorStore (the checkpoints' arrays) up to 32
retries of up to 32 s each. Transient faults (a few 503 or 429 answers, a reset connection, a slow
answer) are ridden through by those retries. A persistent one (the server gone, every write
refused, a request that never returns) must not keep a run, on a pod every host of a slice, alive
for the sum of them, nor leave a thread waiting for ever.

:class:`StorageDeadline` keeps a deadline on each operation the run waits for (``op``: an upload of
the logs, a checkpoint save, the restore at start, the final wait) and on each one that goes on in
the background (``pending``: orbax's asynchronous commit of a checkpoint, the renewal of the
lock's lease). A watcher thread checks them twice a second. An operation that fails in the
background, or that has not ended ``timeout`` seconds after it began, ends the process: one line
on stderr naming the operation, the path and what failed, which checkpoints are intact and what to
do; the lock is released if the store lets it be within a few seconds; then ``os._exit`` with
``ExitStatus.STORAGE`` (:mod:`dnjax.exits`), without waiting for the libraries' threads. A failure
the run's own thread meets (an operation raising) takes the ordinary way out through
:class:`dnjax.runtime.Run`, which reports it the same way.

The bound: a fault that persists from time ``t`` is given up on by ``t + timeout`` (each operation
began at or before ``t``), plus the release of the lock (at most :data:`RELEASE_SECONDS`). With
the default ``--storage_timeout_seconds=90`` that is at most 100 s after the first failure.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from typing import Callable

from dnjax import storage
from dnjax.exits import ExitStatus

log = logging.getLogger("dnjax")

RELEASE_SECONDS = 10.0


class StorageDeadline:
    def __init__(self, workdir, timeout: float = storage.STORAGE_TIMEOUT_SECONDS):
        self.workdir = str(workdir)
        self.timeout = float(timeout)
        self.remote = storage.is_remote(workdir)
        self.intact: Callable[[], str] = lambda: "The checkpoints committed before are intact"
        self.then = "rerun the same command to resume"  # what to do once the store answers
        self.on_failure: Callable[[], None] | None = None  # releases the lock, within RELEASE_SECONDS
        self._ops: dict[int, tuple[str, float, float, Callable[[], bool] | None,
                                   Callable[[], BaseException | None] | None]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    # ---- what the run registers

    @contextlib.contextmanager
    def op(self, what: str, timeout: float | None = None):
        """``with deadline.op("uploading gs://b/run/metrics.jsonl"):`` the block must end within
        the timeout. On an object store, a client's error raised in it becomes a
        :class:`~dnjax.storage.StorageFailure` naming ``what``."""
        key = self._add(what, timeout, None, None)
        try:
            yield
        except Exception as e:
            # dnjax's own errors (a workdir in use, a damaged checkpoint, a refused config) say
            # what they mean already; a client's error becomes one that names the operation.
            if self.remote and not type(e).__module__.startswith("dnjax"):
                raise storage.StorageFailure(f"{what} failed: {storage.one_line(e)}") from e
            raise
        finally:
            self._remove(key)

    def pending(self, what: str, done: Callable[[], bool],
                failure: Callable[[], BaseException | None] = lambda: None,
                timeout: float | None = None) -> None:
        """An operation going on in the background: over once ``done()``; ``failure()`` returns
        the error it ended with, if any."""
        self._add(what, timeout, done, failure)

    def _add(self, what, timeout, done, failure) -> int:
        key = next(self._ids)
        with self._lock:
            self._ops[key] = (what, time.monotonic(), self.timeout if timeout is None else timeout, done, failure)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="dnjax-storage-deadline", daemon=True)
                self._thread.start()
        return key

    def _remove(self, key: int) -> None:
        with self._lock:
            self._ops.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            self._ops.clear()
            failing = self._failed
        if failing:  # the watcher is ending the process with its line: no second one from here
            time.sleep(RELEASE_SECONDS + 5)

    # ---- the watcher

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                ops = list(self._ops.items())
            now = time.monotonic()
            for key, (what, start, timeout, done, failure) in ops:
                error = None
                if failure is not None:
                    try:
                        error = failure()
                    except Exception:  # noqa: BLE001 - a library's internals changed: rely on the time
                        error = None
                if error is not None:
                    self.fail(f"{what} failed: {storage.one_line(error)}")
                if done is not None:
                    try:
                        finished = done()
                    except Exception:  # noqa: BLE001
                        finished = False
                    if finished:
                        self._remove(key)
                        continue
                if now - start > timeout:
                    self.fail(f"{what} did not complete within {timeout:.0f} s (the store does not answer, or "
                              "refuses; see --storage_timeout_seconds)")

    def fail(self, why: str) -> None:
        """Ends the process: one line, the lock released if the store allows it, status 3."""
        with self._lock:
            if self._failed or self._stop.is_set():  # failing already, or the run has stopped by itself
                return
            self._failed = True
        try:
            kept = self.intact()
        except Exception:  # noqa: BLE001
            kept = "The checkpoints committed before are intact"
        message = (f"error: Storage failure on --workdir={self.workdir}: {why}. {kept}; once the store "
                   f"answers again, {self.then}.")
        log.debug("Stopping: %s", message)
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        print(message, file=sys.stderr, flush=True)
        if self.on_failure is not None:
            release = threading.Thread(target=self._quietly, args=(self.on_failure,), daemon=True)
            release.start()
            release.join(RELEASE_SECONDS)
        os._exit(ExitStatus.STORAGE)

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the lease then expires by itself
            log.debug("While stopping, releasing the lock failed: %s", storage.one_line(e))

