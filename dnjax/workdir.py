"""The workdir of a training run: one writer at a time, writable before anything is compiled, and
write errors (a full disk) turned into one clear line.

**The lock.** Process 0 of a run holds an exclusive ``flock`` on ``WORKDIR/lock`` from start-up to
exit; the file records the holder (host, pid, start time, command). A second run on the same
workdir (a requeued job whose predecessor still runs, a command launched twice) stops at once with
:class:`WorkdirError` naming the holder. The kernel drops the lock when its process dies, however
it dies, so a lock file left by a killed run is not a lock: the next run takes it over and logs
whose it was. A run that ends removes the file.

What the lock does not cover: file systems without ``flock`` (Lustre mounted without ``-o flock``,
some FUSE mounts; the run then warns and goes on unlocked), object stores such as ``gs://`` (no
POSIX locks at all), and two runs on different hosts of an NFS mount whose server does not
support locks. Only process 0 locks: the other processes of a multi-process run stop when
process 0 (which hosts the coordination service) exits.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("dnjax")

LOCK_FILE = "lock"

# errno values that mean "this storage cannot take the write", as opposed to a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


class WorkdirError(RuntimeError):
    """The workdir cannot be used (locked by another run, not writable, full); exit status 3."""


def check_writable(workdir: str | os.PathLike) -> Path:
    """Creates ``workdir`` if needed and proves a file can be written in it."""
    path = Path(workdir).absolute()
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

    def release(self) -> None:
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


def write_error(exc: BaseException) -> OSError | None:
    """The storage error (full disk, quota, read-only, I/O error) behind ``exc``, if any: an OSError
    anywhere in its chain, or one reported as text by orbax or TensorStore."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            return e
        text = str(e)
        for code in WRITE_ERRNOS:
            if os.strerror(code) in text:
                return OSError(code, os.strerror(code), _path_in(text))
        e = e.__cause__ or e.__context__
    return None


def _path_in(text: str) -> str | None:
    for word in text.replace('"', " ").replace("'", " ").split():
        if word.startswith("/"):
            return word.rstrip(".,:;)]")
    return None


class StorageErrorEcho(logging.Filter):
    """For the libraries' loggers: one line for the first storage error they log, nothing for the
    tracebacks that follow it (an asynchronous save that fails logs one per array and thread); the
    run then stops with one line saying what happened. ``--verbosity=0`` shows them all."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        if any(os.strerror(code) in text for code in WRITE_ERRNOS):
            if self.seen:
                return False
            self.seen = True
            _quiet_closed_loops()
            record.msg, record.args, record.exc_info, record.exc_text = text.splitlines()[0][:300], None, None, None
            return True
        return not self.seen  # what a failed save logs after the error itself


def _quiet_closed_loops() -> None:
    """After a failed asynchronous save, TensorStore's callbacks for the arrays still in flight
    find orbax's event loop closed, and report each as an unraisable exception."""
    previous = sys.unraisablehook
    if getattr(previous, "_dnjax_closed_loops", False):
        return

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        previous(unraisable)

    hook._dnjax_closed_loops = True
    sys.unraisablehook = hook
