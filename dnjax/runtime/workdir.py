"""The workdir of a training run: one writer at a time, and writable before anything is compiled.

**The lock.** Process 0 of a run holds an exclusive ``flock`` on ``WORKDIR/lock`` from start-up to
exit; the file records the holder (host, pid, start time, command). A second run on the same
workdir (a requeued job whose predecessor still runs, a command launched twice) stops at once with
:class:`WorkdirError` naming the holder. The kernel drops the lock when its process dies, however
it dies, so a lock file left by a killed run is not a lock: the next run takes it over and logs
whose it was. A run that ends removes the file.

**On Google Cloud Storage** (``gs://``), which has no locks, the lock is a lease: the object
``WORKDIR/lock`` is created with the precondition ``ifGenerationMatch=0`` (the store's atomic
create-if-absent), records the same holder and is rewritten every quarter of the lease
(``--lock_lease_seconds``, default 60) with a precondition on its own generation. A second run
finds it and stops, naming the holder, unless the lease has expired (its holder died or lost the
network for a whole lease) or the holder ran on this host and its process is gone; it then takes
the lock over with a precondition on the generation it read, so of two runs racing for an expired
lease one wins. A run that finds its own lease taken over (it could not renew it in time) stops
before its next checkpoint. Expiry is judged by the clocks of the two hosts, which on cloud VMs
(NTP) agree to well under a second.

What the lock does not cover: file systems without ``flock`` (Lustre mounted without ``-o flock``,
some FUSE mounts; the run then warns and goes on unlocked), object stores other than GCS
(``s3://``: the run warns and goes on unlocked), and two runs on different hosts of an NFS mount
whose server does not support locks. Only process 0 locks: the other processes of a multi-process
run stop when process 0 (which hosts the coordination service) exits.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dnjax import storage

log = logging.getLogger("dnjax")

LOCK_FILE = "lock"
LEASE_SECONDS = 60


class WorkdirError(RuntimeError):
    """The workdir cannot be used (locked by another run, not writable, full); exit status 3."""


def check_writable(workdir: str | os.PathLike):
    """Creates ``workdir`` if needed and proves a file can be written in it. On an object store,
    first that its client, credentials and bucket are there (nothing is written locally)."""
    if storage.is_remote(workdir):
        return _check_remote_writable(workdir)
    path = Path(os.fspath(workdir)).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise WorkdirError(
            f"--workdir={path} is not writable ({e.strerror or e}); choose a writable directory. "
            "Nothing was written."
        ) from None
    return path


def _check_remote_writable(workdir):
    try:
        storage.check_available(workdir, "--workdir")
    except storage.StorageError as e:
        raise WorkdirError(str(e)) from None
    path = storage.path(workdir)
    probe = path / f".write-test-{socket.gethostname()}-{os.getpid()}"
    try:
        probe.write_bytes(b"x")
        probe.unlink()
    except Exception as e:  # noqa: BLE001 - permissions, quota, a retention policy
        raise WorkdirError(f"--workdir={path} is not writable ({storage.one_line(e)}); check the "
                           "bucket's permissions for these credentials. Nothing was written.") from None
    return path


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "an unknown process"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')} ({holder.get('command', '?')})")


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


class WorkdirLock:
    """``with WorkdirLock(workdir):`` holds the workdir's lock for the block (see the module)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir).absolute() / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        for _ in range(10):  # the file can be removed between open and flock: retry on the new one
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkdirError(
                    f"--workdir={self.path.parent} is in use by another run: "
                    f"{_describe(_read_holder(self.path))}. Wait for it to end or stop it, or use "
                    "another --workdir. Nothing was changed."
                ) from None
            except OSError as e:
                os.close(fd)
                log.warning("Cannot lock %s (%s): this file system has no flock, so a second run on "
                            "the same workdir would not be stopped", self.path, e.strerror or e)
                return
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise WorkdirError(f"Cannot take the lock {self.path}: it keeps being replaced")
        previous = os.read(fd, 1 << 16)
        if previous.strip():
            try:
                holder = json.loads(previous)
            except ValueError:
                holder = None
            log.warning("Took over the lock %s left by %s, which is no longer running",
                        self.path, _describe(holder))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(_holder()) + "\n").encode())
        self._fd = fd

    def release(self, quick: bool = False) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no one else has it now
        finally:
            os.close(fd)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def check(self) -> None:
        """Nothing to check: the kernel holds a flock for as long as the process lives."""


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's process, or a pid that cannot be checked: assume alive
    return True


class LeaseLock:
    """``with LeaseLock("gs://bucket/run"):`` holds a GCS workdir's lease for the block (see the
    module docstring). :meth:`check` raises :class:`WorkdirError` once the lease was lost."""

    def __init__(self, workdir: str | os.PathLike, lease_seconds: float = LEASE_SECONDS):
        self.workdir = str(storage.path(workdir))
        self.uri = f"{self.workdir.rstrip('/')}/{LOCK_FILE}"
        self.lease = float(lease_seconds)
        self.generation: int | None = None
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blob = None
        self._started: str | None = None  # the holder's start time, kept through renewals
        self.deadline = None  # the run's StorageDeadline: a renewal that fails for a lease stops the run

    def _new_blob(self):
        try:
            from google.cloud import storage as gcs
        except ImportError:
            raise WorkdirError(f"--workdir={self.workdir}: its lock needs google-cloud-storage, which is not "
                               f"installed: {storage.BACKENDS['gs'][1]}. Nothing was written.") from None
        if storage.emulated():
            from google.auth.credentials import AnonymousCredentials

            client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"),
                                credentials=AnonymousCredentials())
        else:
            client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT"))
        name = self.uri.split("://", 1)[1].split("/", 1)[1]
        # A fresh object handle each time: a handle that has read a generation keeps asking for it.
        bucket = client.bucket(storage.bucket(self.uri))
        return lambda: bucket.blob(name)

    def _record(self) -> bytes:
        now = time.time()
        rec = dict(_holder(), lease_seconds=self.lease, renewed=now,
                   expires=datetime.datetime.fromtimestamp(now + self.lease, datetime.timezone.utc)
                   .isoformat(timespec="seconds"))
        if self._started is not None:
            rec["started"] = self._started
        return (json.dumps(rec) + "\n").encode()

    def _stale(self, holder: dict[str, Any] | None) -> str | None:
        """Why the lock ``holder`` wrote no longer holds (None: it holds)."""
        if holder is None:
            return "an unreadable lock record"
        try:
            age = time.time() - float(holder["renewed"])
            lease = float(holder.get("lease_seconds", LEASE_SECONDS))
        except (KeyError, TypeError, ValueError):
            return "a lock record without a lease"
        if age > lease:
            return f"its lease expired {age - lease:.0f} s ago"
        if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
            return "its process on this host is gone"
        return None

    def acquire(self) -> None:
        from google.api_core import exceptions as gexc

        new_blob = self._new_blob()
        self._started = _holder()["started"]
        for _ in range(10):
            blob = new_blob()
            try:
                blob.upload_from_string(self._record(), content_type="application/json", if_generation_match=0)
                self.generation = blob.generation
                break
            except gexc.PreconditionFailed:
                pass  # held, or left behind: read it
            try:
                blob.reload()
                generation = blob.generation
                text = blob.download_as_bytes(if_generation_match=generation)
            except (gexc.NotFound, gexc.PreconditionFailed):
                continue  # released or replaced meanwhile: try again
            try:
                holder = json.loads(text)
            except ValueError:
                holder = None
            why = self._stale(holder)
            if why is None:
                left = float(holder["renewed"]) + float(holder.get("lease_seconds", LEASE_SECONDS)) - time.time()
                raise WorkdirError(
                    f"--workdir={self.workdir} is in use by another run: {_describe(holder)}, whose lease "
                    f"on {self.uri} runs {left:.0f} s more. Wait for it to end or stop it, or use another "
                    "--workdir. Nothing was changed."
                )
            try:
                blob.upload_from_string(self._record(), content_type="application/json",
                                        if_generation_match=generation)
            except gexc.PreconditionFailed:
                continue  # another run took it first: read whose it is now
            self.generation = blob.generation
            log.warning("Took over the lock %s left by %s (%s)", self.uri, _describe(holder), why)
            break
        else:
            raise WorkdirError(f"Cannot take the lock {self.uri}: it keeps being replaced")
        self._blob = blob  # held from here on: renewed, and deleted on release
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="dnjax-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        # The client's own retries ride through transient faults, within a quarter of the lease:
        # a renewal that still fails is tried again at the next one.
        budget = self.lease / 4
        retry = DEFAULT_RETRY.with_timeout(budget)
        last_ok = time.monotonic()
        while not self._stop.wait(self.lease / 4):
            try:
                self._blob.upload_from_string(self._record(), content_type="application/json",
                                              if_generation_match=self.generation, timeout=budget, retry=retry)
                self.generation = self._blob.generation
                last_ok = time.monotonic()
            except (gexc.PreconditionFailed, gexc.NotFound):
                self.lost = (f"the lock {self.uri} was taken over by another run (this run could not renew "
                             "its lease in time)")
                return
            except Exception as e:  # noqa: BLE001 - a network error: retried at the next renewal
                if time.monotonic() - last_ok > self.lease:
                    self.lost = (f"the lease on {self.uri} could not be renewed for {self.lease:.0f} s "
                                 f"({storage.one_line(e)})")
                    if self.deadline is not None and not self._stop.is_set():
                        self.deadline.fail(f"renewing the lease on {self.uri} failed for {self.lease:.0f} s "
                                           f"({storage.one_line(e)})")
                    return
                log.debug("Renewing the lease on %s failed (%s); retrying", self.uri, storage.one_line(e))

    def check(self) -> None:
        if self.lost is not None:
            raise WorkdirError(f"Stopped: {self.lost}, so another run may be writing to --workdir="
                               f"{self.workdir}. The checkpoints committed before are intact; make sure only "
                               "one run uses the workdir, then rerun to resume.")

    def release(self, quick: bool = False) -> None:
        """Deletes the lock object. ``quick``: the store has been failing, so one short try (the
        lease expires by itself otherwise)."""
        if self._blob is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1 if quick else self.lease / 4)
        blob, self._blob = self._blob, None
        if self.lost is not None:
            return  # no longer ours
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        try:
            if quick:
                blob.delete(if_generation_match=self.generation, timeout=5, retry=None)
            else:
                blob.delete(if_generation_match=self.generation, timeout=self.lease / 4,
                            retry=DEFAULT_RETRY.with_timeout(self.lease / 4))
        except (gexc.NotFound, gexc.PreconditionFailed):
            pass
        except Exception as e:  # noqa: BLE001 - the lease then expires by itself
            (log.debug if quick else log.warning)("Could not remove the lock %s (%s); it expires in %.0f s",
                                                 self.uri, storage.one_line(e), self.lease)

    def __enter__(self) -> LeaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class NoLock:
    """Object stores without a lease implementation: the run goes on unlocked, saying so."""

    def __init__(self, workdir):
        self.workdir = workdir

    def __enter__(self) -> NoLock:
        log.warning("--workdir=%s: %s:// has no lock here, so a second run on the same workdir would not "
                    "be stopped", self.workdir, storage.scheme(self.workdir))
        return self

    def __exit__(self, *exc) -> None:
        pass

    def release(self, quick: bool = False) -> None:
        pass

    def check(self) -> None:
        pass


def lock_for(workdir: str | os.PathLike, lease_seconds: float = LEASE_SECONDS):
    """The lock of ``workdir``: a flock locally, a lease on GCS, none on other object stores."""
    s = storage.scheme(workdir)
    if s is None:
        return WorkdirLock(workdir)
    if s == "gs":
        return LeaseLock(workdir, lease_seconds)
    return NoLock(workdir)

