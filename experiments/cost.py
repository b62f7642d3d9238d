"""What the paper's full-length CIFAR-100+ runs cost on this machine, from measured train steps.

    python -m experiments.cost [--steps=3] [--warmup=1] [--json=FILE] [--models NAME ...]
        [--memory_efficient NAME ...]

For each network of the paper's C100+ comparison it builds the run's own config (the command of
``python -m experiments.run resnet_vs_densenet --print``: batch size, dtype, number of epochs),
times its train step on synthetic inputs of CIFAR's shape as ``python -m dnjax.benchmark`` does,
and turns the median step time into the time of one epoch (50,000 training images) and of the
whole schedule. Only training steps are counted: evaluating the 10,000 test images once an epoch
costs about a tenth of an epoch's steps more. Networks named in ``--memory_efficient`` are timed in
their memory-efficient mode (DenseNet-BC-250's plain step at batch 64 needs over 21 GB of host
memory).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

from experiments import studies

MODELS = ("densenet_bc100_k12", "densenet_bc250_k24", "preact_resnet164", "preact_resnet1001")
TRAIN_IMAGES = 50_000  # CIFAR-100's training split


@dataclasses.dataclass
class Cost:
    model: str
    label: str
    params: int | None
    batch: int
    memory_efficient: bool
    epochs: float
    step_s: float  # median of the timed steps
    step_s_min: float
    compile_s: float | None
    device: str
    date: str

    @property
    def steps_per_epoch(self) -> int:
        return TRAIN_IMAGES // self.batch  # the trainer drops an epoch's last, partial batch

    @property
    def epoch_s(self) -> float:
        return self.steps_per_epoch * self.step_s

    @property
    def total_s(self) -> float:
        return self.epoch_s * self.epochs


def measure(model: str, steps: int, warmup: int, memory_efficient: bool = False) -> Cost:
    from dnjax.benchmark import measure as bench
    from experiments import report

    run = studies.paper_run(model, "c100+")
    config = report.config_of_run(run)
    if memory_efficient:
        config.model.memory_efficient = True
    row = bench.benchmark(config, steps=steps, warmup=warmup)[0]
    return Cost(
        model=model, label=run.label, params=row.params, batch=int(config.batch_size),
        memory_efficient=memory_efficient,
        epochs=float(config.num_epochs), step_s=row.step_ms / 1e3, step_s_min=row.step_ms_min / 1e3,
        compile_s=row.compile_s, device=row.device, date=row.date,
    )


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def table(costs: Sequence[Cost]) -> str:
    lines = ["| network | params | batch | epochs | step (median) | one epoch | whole run |",
             "|---|---|---|---|---|---|---|"]
    for c in costs:
        label = c.label + (" (memory-efficient)" if c.memory_efficient else "")
        lines.append(
            f"| {label} | {c.params:,} | {c.batch} | {c.epochs:g} | {c.step_s:.2f} s | "
            f"{duration(c.epoch_s)} | {duration(c.total_s)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="zoo networks with a C100+ config")
    p.add_argument("--memory_efficient", nargs="*", default=[], metavar="NAME",
                   help="DenseNets to time in their memory-efficient mode")
    p.add_argument("--steps", type=int, default=3, help="timed steps per network")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per network after compiling")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args(argv)
    costs = []
    for model in a.models:
        c = measure(model, a.steps, a.warmup, model in a.memory_efficient)
        print(f"{model}: {c.step_s:.2f} s a step at batch {c.batch}, {duration(c.epoch_s)} an epoch", flush=True)
        costs.append(c)
        if a.json:  # after every network: a long measurement that dies keeps what it measured
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            rows = [dict(dataclasses.asdict(c), steps_per_epoch=c.steps_per_epoch, epoch_s=c.epoch_s,
                         total_s=c.total_s) for c in costs]
            command = "python -m experiments.cost " + " ".join(sys.argv[1:] if argv is None else argv)
            Path(a.json).write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    print(table(costs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
