"""Where files live: a local directory or an object store (``gs://``, ``s3://``), through one path
type.

Every path that comes from a flag or a config field (workdirs, ``init_from``, data files and
directories, study roots, reports, the converter's output) goes through :func:`path`, which gives
an ``etils.epath.Path``: the type orbax and tfds use, local or remote alike. ``pathlib.Path`` would
silently turn ``gs://bucket/run`` into a local directory ``gs:/bucket/run``.

An object store is not a file system: an object is written whole or not at all, and there is no
append, no atomic rename (a move is a copy and a delete) and no lock. The writers here are built
on what it does offer:

* :func:`write_whole` writes a file in one piece (locally through a temporary file and a rename,
  remotely as one object, which readers never see half-written);
* :class:`Staged` keeps files that grow (the metrics log, TensorBoard events, profiles) in a
  local directory and uploads each one whole at the run's sync points; for a local directory it
  is that directory itself;
* orbax writes checkpoints straight to the store (TensorStore speaks ``gs://``), marking each
  complete step with a ``commit_success.txt`` where a file system would rename a temporary
  directory;
* the workdir lock is a lease object written with the store's create-if-absent precondition
  (:mod:`dnjax.runtime.workdir`).

:func:`check_available` runs before anything is written: a remote path whose client library,
credentials or bucket is missing stops with one line naming the path and the fix.

**When the store fails**, the run says so in one line and stops, however deep in a library the
failure happened. :class:`StorageError` (a path that cannot be used) and :class:`StorageFailure`
(the store failed while in use) carry that line; :func:`write_error` and :func:`is_failure` tell a
storage failure (a full disk, a quota, a read-only mount, a store that refuses or does not answer)
from a bug, whatever raised it; :func:`quiet_failures` and :data:`quiet_abandoned_reads` keep what
the libraries beneath (orbax, TensorStore, the storage clients) log and print after one from
burying that line. A run gives each storage operation :data:`STORAGE_TIMEOUT_SECONDS`
(``--storage_timeout_seconds``; :mod:`dnjax.runtime.deadline` holds it to that).
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path as LocalPath
from typing import Any

from etils import epath

log = logging.getLogger("dnjax")

# How long a storage operation of a run (a checkpoint save, an upload of the logs, the restore at
# start, the lock's renewal) may take before the run stops with status 3.
STORAGE_TIMEOUT_SECONDS = 90.0

# scheme -> (the fsspec backend epath needs, how to install it)
BACKENDS = {
    "gs": ("gcsfs", "pip install 'dnjax[gcs]' (gcsfs and google-cloud-storage)"),
    "s3": ("s3fs", "pip install s3fs"),
}

# Listings of a bucket are not cached between calls: in a multi-process run another process
# writes the checkpoints this one lists.
try:
    import fsspec.config

    for _proto in ("gs", "gcs", "s3"):
        fsspec.config.conf.setdefault(_proto, {}).setdefault("use_listings_cache", False)
except ImportError:  # pragma: no cover - fsspec comes with etils[epath]
    pass


class StorageError(RuntimeError):
    """A path cannot be used: its store's client, credentials or bucket are missing, or a write to
    it failed. The message names the path and the fix."""


class StorageFailure(StorageError):
    """The store failed while an operation used it (refused, unreachable, out of its retries)."""


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(p) -> str | None:
    """``'gs'`` for ``gs://bucket/x``; None for a local path."""
    m = _SCHEME.match(os.fspath(p) if not isinstance(p, str) else p)
    return m.group(1).lower() if m else None


def is_remote(p) -> bool:
    return scheme(p) is not None


def path(p) -> epath.Path:
    """The one path type: remote paths as they are, local ones absolute (``~`` expanded)."""
    text = os.fspath(p) if not isinstance(p, str) else p
    s = scheme(text)
    if s is None:
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    if s not in BACKENDS:
        raise StorageError(f"{text}: {s}:// is not supported; use a local path, gs:// or s3://")
    return epath.Path(text)


def local(p) -> LocalPath:
    """A local path as ``pathlib.Path`` (for the calls that need a real file: flock, os.open)."""
    if is_remote(p):
        raise ValueError(f"{p} is not a local path")
    return LocalPath(os.fspath(p))


def bucket(p) -> str:
    """``b`` of ``gs://b/x``."""
    rest = _SCHEME.sub("", os.fspath(p) if not isinstance(p, str) else p)
    return rest.split("/", 1)[0]


def one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def emulated() -> bool:
    """Whether the Google Cloud Storage clients talk to an emulator (``STORAGE_EMULATOR_HOST``)."""
    return bool(os.environ.get("STORAGE_EMULATOR_HOST"))


_checked: set[tuple[str, str]] = set()


def check_available(p, what: str) -> None:
    """Raises :class:`StorageError` unless the store of ``p`` can be used: its client library is
    installed, there are credentials, and the bucket exists. ``what`` names the source of the
    path in the message (``--workdir``, ``config.init_from``). Local paths pass unchecked."""
    s = scheme(p)
    if s is None:
        return
    text = os.fspath(p) if not isinstance(p, str) else p
    if s not in BACKENDS:
        raise StorageError(f"{what}={text}: {s}:// is not supported; use a local path, gs:// or s3://. "
                           "Nothing was written.")
    key = (s, bucket(text))
    if key in _checked:
        return
    module, install = BACKENDS[s]
    try:
        importlib.import_module(module)
    except ImportError:
        raise StorageError(f"{what}={text}: {s}:// needs the {module} package, which is not installed: "
                           f"{install}. Nothing was written.") from None
    if s == "gs":
        _check_gcs_credentials(text, what)
    b = bucket(text)
    if not b:
        raise StorageError(f"{what}={text} names no bucket; write {s}://BUCKET/PATH. Nothing was written.")
    try:
        exists = epath.Path(f"{s}://{b}").exists()
    except Exception as e:  # noqa: BLE001 - any failure to reach the store
        raise StorageError(f"{what}={text}: cannot reach the bucket {s}://{b} ({one_line(e)}); check the "
                           "network and the credentials. Nothing was written.") from None
    if not exists:
        make = f"gcloud storage buckets create gs://{b}" if s == "gs" else f"aws s3 mb s3://{b}"
        raise StorageError(f"{what}={text}: the bucket {s}://{b} does not exist, or these credentials "
                           f"cannot see it; create it ({make}) or name another. Nothing was written.")
    _checked.add(key)


def _check_gcs_credentials(text: str, what: str) -> None:
    if emulated():
        if not os.environ.get("TENSORSTORE_GCS_HTTP_URL"):
            # Otherwise the logs would go to the emulator and the checkpoints (TensorStore) to GCS.
            raise StorageError(
                f"{what}={text}: STORAGE_EMULATOR_HOST is set but TENSORSTORE_GCS_HTTP_URL is not, so "
                "checkpoints would not go to the same server as the logs; set TENSORSTORE_GCS_HTTP_URL="
                f"{os.environ['STORAGE_EMULATOR_HOST']} (and GOOGLE_AUTH_TOKEN_FOR_TESTING). Nothing was written.")
        return
    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions
    except ImportError:
        raise StorageError(f"{what}={text}: gs:// needs google-auth, which is not installed: "
                           f"{BACKENDS['gs'][1]}. Nothing was written.") from None
    try:
        google.auth.default()
    except auth_exceptions.DefaultCredentialsError:
        raise StorageError(
            f"{what}={text}: no Google Cloud credentials were found; on a workstation run `gcloud auth "
            "application-default login`, elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service "
            "account key (on Cloud TPU and GCE VMs the VM's service account is used). Nothing was written."
        ) from None


def write_whole(p: epath.Path, data: str | bytes) -> None:
    """Writes ``p`` in one piece: a reader sees the old content or the new, never part of it."""
    raw = data.encode() if isinstance(data, str) else data
    if is_remote(p):
        p.write_bytes(raw)  # an object becomes visible only once its upload is complete
        return
    target = local(p)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_bytes(raw)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


_STAGED = "dnjax-staged-"


def _sweep_staged() -> None:
    """Removes the local copies that killed processes of this host left in the temporary
    directory (a SIGKILL leaves no chance to clean up); everything in them was uploaded or is
    rewritten by the resumed run."""
    root = LocalPath(tempfile.gettempdir())
    for d in root.glob(f"{_STAGED}*-*"):
        pid = d.name[len(_STAGED):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass  # another user's process: not ours to judge


class Staged:
    """Files of ``target`` that grow while a run writes them, on any store.

    ``local`` is where they are written. For a local ``target`` it is ``target`` itself and
    :meth:`sync` does nothing. For a remote one it is a fresh local directory, and :meth:`sync`
    uploads every file changed since the last sync, each as a whole object (an object store has
    no append). :meth:`fetch` brings an existing file down first, for a run that continues it.
    """

    def __init__(self, target):
        self.target = path(target)
        self.remote = is_remote(self.target)
        if self.remote:
            _sweep_staged()
            self.local = LocalPath(tempfile.mkdtemp(prefix=f"{_STAGED}{os.getpid()}-"))
        else:
            self.local = local(self.target)
        self._sent: dict[str, tuple[int, int]] = {}

    def fetch(self, name: str) -> None:
        if not self.remote:
            return
        src = self.target / name
        try:
            data = src.read_bytes()
        except FileNotFoundError:
            return
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"Cannot read {src}: {one_line(e)}") from None
        dst = self.local / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        st = dst.stat()
        self._sent[name] = (st.st_size, st.st_mtime_ns)

    def sync(self) -> None:
        if not self.remote:
            return
        for f in sorted(self.local.rglob("*")):
            if not f.is_file():
                continue
            name = f.relative_to(self.local).as_posix()
            st = f.stat()
            if self._sent.get(name) == (st.st_size, st.st_mtime_ns):
                continue
            dst = self.target / name
            try:
                dst.write_bytes(f.read_bytes())
            except Exception as e:  # noqa: BLE001 - the store refused or could not be reached
                raise StorageError(f"Cannot upload {dst}: {one_line(e)}") from e
            self._sent[name] = (st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        try:
            self.sync()
        finally:
            if self.remote:
                shutil.rmtree(self.local, ignore_errors=True)

    def discard(self) -> None:
        """Drops the local copies without uploading (a run stopping on a storage error)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# When the store fails: which errors mean it, and the libraries' noise after one

# errno values that mean "this storage cannot take the write", as opposed to a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


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


def is_failure(exc: BaseException | None) -> bool:
    """Whether ``exc`` means that the storage failed: a write error in its chain, or a
    :class:`StorageError`."""
    return exc is not None and (write_error(exc) is not None or isinstance(exc, StorageError))


# What the storage clients and orbax log when a remote store fails: refused or reset connections,
# 5xx and 429 answers past the retries, orbax's background commit and its signalling threads.
REMOTE_FAILURE = re.compile(
    r"Connect call failed|Connection refused|Connection reset|ClientConnectorError|ClientOSError|"
    r"ServerDisconnectedError|ClientPayloadError|RetryError|ServiceUnavailable|TooManyRequests|"
    r"InternalServerError|UNAVAILABLE|DEADLINE_EXCEEDED|out of retries|Handler Commit|"
    r"Save Finalize thread|_SignalingThread|Event loop is closed|cannot schedule new futures|"
    r"Max retries exceeded|HTTP status 5\d\d|HttpError")


class StorageErrorEcho(logging.Filter):
    """For the libraries' loggers: one line for the first storage error they log, nothing for the
    tracebacks that follow it (an asynchronous save that fails logs one per array and thread); the
    run then stops with one line saying what happened. What they log when a remote store fails
    is not shown at all: the run's own line names the object and the failure. ``--verbosity=0``
    shows them all."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {type(record.exc_info[1]).__name__} {record.exc_info[1]}"
        if REMOTE_FAILURE.search(text):
            self.seen = True
            _quiet_closed_loops()
            return False
        if any(os.strerror(code) in text for code in WRITE_ERRNOS):
            if self.seen:
                return False
            self.seen = True
            _quiet_closed_loops()
            record.msg, record.args, record.exc_info, record.exc_text = text.splitlines()[0][:300], None, None, None
            return True
        return not self.seen  # what a failed save logs after the error itself


def quiet_failures(loggers) -> None:
    """After a storage failure, the run's own line is what is shown: one :class:`StorageErrorEcho`
    on each of the ``loggers`` (names), and the threads of the libraries that die of a remote
    store's failure quieted (:func:`_quiet_thread_failures`). Installed once however often called."""
    _quiet_thread_failures()
    echo = StorageErrorEcho()
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, StorageErrorEcho) for f in logger.filters):
            logger.addFilter(echo)


def _quiet_thread_failures() -> None:
    """Library threads that die of a remote store's failure (an uncaught exception in orbax's or
    the clients' threads) are logged at debug level instead of printing a traceback: the run stops
    with one line of its own."""
    previous = threading.excepthook
    if getattr(previous, "_dnjax_quiet", False):
        return

    def hook(args):
        if args.exc_value is not None and REMOTE_FAILURE.search(f"{type(args.exc_value).__name__} {args.exc_value}"):
            log.debug("Thread %s stopped: %s", getattr(args.thread, "name", "?"), one_line(args.exc_value))
            return
        previous(args)

    hook._dnjax_quiet = True
    threading.excepthook = hook


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


def _abandoned_read(exc: BaseException | None, obj: Any) -> bool:
    """Late errors of the array reads that a failed restore leaves behind."""
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    code = getattr(obj, "cr_code", None)  # a coroutine dropped unfinished
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class AbandonedReadFilter(logging.Filter):
    """asyncio's "Task/Future exception was never retrieved" for an orbax read. The orbax path is
    in the message when the task's coroutine is named there, else only in the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "exception was never retrieved" not in msg:
            return True
        orbax = f"{os.sep}orbax{os.sep}"
        if orbax in msg:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None:
            if orbax in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


class QuietAbandonedReads:
    """When one array of a damaged checkpoint fails to read, orbax abandons the other reads; their
    errors arrive later, in other threads, as a screenful of tracebacks that hide the one-line reason
    logged for the skipped checkpoint. Those, and only those, are dropped while a reader holds this
    (the checkpoints of a run, from their first restore until they are closed); when the last
    reader releases it the previous ``sys.unraisablehook`` and the asyncio logger are given back.
    Nested readers share one installation."""

    def __init__(self):
        self.users = 0
        self.previous = None
        self.filter = AbandonedReadFilter()

    def _hook(self, unraisable):
        if not _abandoned_read(unraisable.exc_value, unraisable.object):
            (self.previous or sys.__unraisablehook__)(unraisable)

    def acquire(self) -> None:
        if self.users == 0:
            self.previous = sys.unraisablehook
            sys.unraisablehook = self._hook
            logging.getLogger("asyncio").addFilter(self.filter)
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            if sys.unraisablehook == self._hook:  # unless someone replaced it since
                sys.unraisablehook = self.previous
            self.previous = None
            logging.getLogger("asyncio").removeFilter(self.filter)


quiet_abandoned_reads = QuietAbandonedReads()
