"""What a study's directory says: the study and budget that own it (``study.json``), the runner's
record of exit statuses (``runner.jsonl``), whether a run has finished, and what the logs of one run
say (:class:`RunResult`), read by the report and drawn by the plots. The runner writes the two
records; the report and the analyses only read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from experiments.studies import Run, StudyError

MANIFEST = "study.json"
RUNNER_LOG = "runner.jsonl"
FINISHED = "finished"


def read_manifest(root: Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StudyError(f"{path} is unreadable ({e}); is {root} a study directory?") from None


def is_finished(workdir: Path) -> bool:
    """Whether the run in ``workdir`` logged its final record."""
    from dnjax import logs

    records, _ = logs.read_jsonl(Path(workdir) / logs.METRICS_FILE)
    return any(r.get("type") == "final" for r in records)


@dataclasses.dataclass
class RunResult:
    """What the logs of one run say; error fields are None unless the run finished."""

    run: Run
    status: str  # finished | missing | incomplete | failed | preempted | halted | mismatch
    note: str = ""
    params: int | None = None
    macs: int | None = None
    final_error: float | None = None
    best_error: float | None = None
    best_epoch: float | None = None
    train_loss: float | None = None
    step: int | None = None
    epoch: float | None = None
    torn: bool = False
    evals: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (epoch, test error)
    train: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (epoch, loss)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED
