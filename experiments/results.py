"""What a study's directory says: the study and budget that own it (``study.json``), the runner's
record of exit statuses (``runner.jsonl``), whether a run has finished, and what the logs of one run
say (:class:`RunSummary`), read by the report and drawn by the plots. The runner writes the two
records; the report and the analyses only read."""

from __future__ import annotations

import dataclasses
import json

from experiments.studies import StudyError, StudyRun

MANIFEST = "study.json"
RUNNER_LOG = "runner.jsonl"  # of a study run by one host; host I of H writes runner.hostIofH.jsonl
FINISHED = "finished"


def runner_log_name(host: int = 0, hosts: int = 1) -> str:
    return RUNNER_LOG if hosts == 1 else f"runner.host{host}of{hosts}.jsonl"


def read_manifest(root) -> dict | None:
    from dnjax import storage

    path = storage.path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise StudyError(f"{path} is unreadable ({e}); is {root} a study directory?") from None


def runner_exits(root) -> dict[str, int]:
    """Each run's last exit status as the runners of every host recorded it."""
    from dnjax import logs, storage

    root = storage.path(root)
    exits: dict[str, tuple[float, int]] = {}
    for path in [root / RUNNER_LOG, *sorted(root.glob("runner.host*.jsonl"))]:
        records, _ = logs.read_jsonl(path)
        for r in records:
            if "run" in r and "rc" in r and r.get("time", 0) >= exits.get(r["run"], (-1.0, 0))[0]:
                exits[r["run"]] = (r.get("time", 0), int(r["rc"]))
    return {name: rc for name, (_, rc) in exits.items()}


def is_finished(workdir) -> bool:
    """Whether the run in ``workdir`` (local or remote) logged its final record."""
    from dnjax import logs

    return any(r.get("type") == "final" for r in logs.records(workdir))


@dataclasses.dataclass
class RunSummary:
    """What the logs of one run of a study say, for the report, its verdicts and its plots; the
    error fields are None unless the run finished."""

    run: StudyRun
    status: str  # finished | missing | incomplete | failed | preempted | interrupted | halted | mismatch
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
