"""What the logs of one run say (:class:`RunResult`): read by the report, drawn by the plots."""

from __future__ import annotations

import dataclasses

from experiments.studies import Run

FINISHED = "finished"


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
