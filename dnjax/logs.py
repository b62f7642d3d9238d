"""Run logs: JSONL metrics (what reports and plots read), TensorBoard events, the config.

``metrics.jsonl`` holds one JSON object per line with a ``type`` (``train``, ``eval``, ``final``,
``event``) and a ``step``. Lines are written unbuffered as they come; a line that cannot be
written whole (a full disk) is cut off again before the error is raised. On resume the file is first
cut back to the complete lines at or before the restored step, so a crash never leaves a torn
last line behind and a resumed run does not log a step twice; a run that starts from scratch
(``resume_step=None``: no checkpoint to resume) starts an empty file. Only process 0 writes.

On an object store (``gs://``), where nothing can be appended to, the log and the TensorBoard
events are written to a local copy (:class:`dnjax.storage.Staged`) and uploaded whole at every
:meth:`MetricsLog.sync`: before each checkpoint is saved, at every event, at the end. A committed
checkpoint therefore always has its records in the bucket, and a run resumed from it reads back
the same lines a local run would keep.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterator

from dnjax import storage

METRICS_FILE = "metrics.jsonl"


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict[str, Any]], bool]:
    """Returns (records, torn): the complete records, and whether a torn or unreadable line was met."""
    records, torn = [], False
    p = storage.path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return records, torn
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            torn = True
            break
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            torn = True
            break
        if isinstance(rec, dict):
            records.append(rec)
    return records, torn


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the information as text
    return value


class MetricsLog:
    def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self._file = None
        self._tb = None
        self._staged = None
        if not enabled:
            self.path = storage.path(workdir) / METRICS_FILE
            self.tensorboard_dir = storage.path(workdir) / "tensorboard"
            return
        self._staged = storage.Staged(workdir)
        self._staged.fetch(METRICS_FILE)
        self.path = self._staged.local / METRICS_FILE
        self.tensorboard_dir = self._staged.local / "tensorboard"
        self._truncate_after(resume_step)
        self._file = self.path.open("ab", buffering=0)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # purge_step drops events a crashed run wrote past the step being resumed.
            self._tb = SummaryWriter(str(self.tensorboard_dir),
                                     purge_step=0 if resume_step is None else resume_step + 1)

    def _truncate_after(self, step: int | None) -> None:
        records, torn = read_jsonl(self.path)
        keep = [r for r in records
                if step is not None and int(r.get("step", 0)) <= step and r.get("type") != "final"]
        if keep == records and not torn:
            return
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        rec = {"type": kind, "step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _clean(v) for k, v in values.items()})
        line = (json.dumps(rec) + "\n").encode()
        end = self._file.seek(0, os.SEEK_END)
        try:
            written = 0
            while written < len(line):
                written += self._file.write(line[written:])
        except OSError:
            self._file.truncate(end)  # a full disk leaves no torn line behind
            raise
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if kind in ("event", "final"):
            self.sync()

    def sync(self) -> None:
        """Brings the workdir's copy up to date (an upload on an object store; nothing locally)."""
        if self._staged is None or not self._staged.remote:
            return
        if self._tb is not None:
            self._tb.flush()
        self._staged.sync()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._staged is not None:
            staged, self._staged = self._staged, None
            staged.close()

    def discard(self) -> None:
        """Closes without uploading: after a storage error, when the store cannot take it."""
        staged, self._staged = self._staged, None
        try:
            self.close()
        finally:
            if staged is not None:
                staged.discard()


def records(workdir: str | os.PathLike, kind: str | None = None) -> Iterator[dict[str, Any]]:
    recs, _ = read_jsonl(storage.path(workdir) / METRICS_FILE)
    return (r for r in recs if kind is None or r.get("type") == kind)


def quiet_libraries(verbose: bool = False, progress: bool = False) -> None:
    """Command-line tools print their result and warnings; the INFO logs of the libraries under
    them (orbax logs every checkpoint operation, absl and jax their set-up) come back with
    ``verbose`` (the tools' ``--verbosity`` flag). ``progress`` keeps dnjax's own INFO lines (a
    training run's data, evaluations and resumption)."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    level = logging.INFO if verbose else logging.WARNING
    for name in ("absl", "jax", "orbax"):
        logging.getLogger(name).setLevel(level)
    # gcsfs warns on every new bucket that it cannot tell the bucket's layout without the storage
    # control API (an emulator, a service account without that permission); it then works as usual.
    # google.auth, looking for credentials, warns of each place it did not find them.
    for name in ("gcsfs", "google.auth"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        storage.quiet_failures(("absl", "asyncio", "gcsfs"))
    logging.getLogger("dnjax").setLevel(logging.INFO if verbose or progress else logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def add_verbosity_flag(parser) -> None:
    """``--verbosity`` for the argparse tools, read as absl's: 0 or more shows INFO logs."""
    parser.add_argument("--verbosity", type=int, default=-1,
                        help="0 or more: also show the libraries' INFO logs (default: results and warnings)")
