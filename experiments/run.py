"""Runs a study (its runs one after another on this host, or their command lines for a cluster) or
an analysis.

    python -m experiments.run STUDY --root=DIR [--budget=full|smoke|cifar10-sample|cifar100-cpu] [--only=NAME]
    python -m experiments.run STUDY --root=DIR --print [--format=shell|slurm]
    python -m experiments.run ANALYSIS [its options]      (ANALYSIS --help lists them)
    python -m experiments.run --list                      (the studies and the analyses)

Each run trains in ``DIR/<run name>`` through ``python -m dnjax.main``. A run whose log holds a
final record is skipped; any other is started, or resumed from its checkpoints by dnjax itself, so
rerunning the same command after an interruption carries on where it stopped. ``DIR/study.json``
names the study and budget that own the directory: a root that belongs to another study (or to
the same study at another budget) is refused rather than mixed. ``DIR/runner.jsonl`` records each
run's exit status, which the report uses to tell a failed run from one still in progress.

``--print`` writes one ``python -m dnjax.main`` line per run (run it from the repository root; on
a TPU pod, the same line on every host), ``--format=slurm`` an sbatch script with one array task
per run. ``--smoke`` is ``--budget=smoke``. SIGTERM is passed on to the run in progress, which
saves a checkpoint; the runner then exits with 143 like dnjax itself.

Exit status: 0 when every selected run has finished, 1 when some failed or stopped early, 2 on a
bad study, run or root, 143 when preempted.

An analysis (``ANALYSES``) measures what the studies' logs do not hold: the gradient reaching each
layer (``gradient_flow``), the weights each DenseNet layer gives its inputs (``feature_reuse``).
The name comes first and the rest are the analysis's own options, output and exit status;
``python -m experiments.run NAME ...`` and ``python -m experiments.NAME ...`` are the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Sequence

from dnjax import logs
from experiments import feature_reuse, gradient_flow, studies
from experiments.results import MANIFEST, RUNNER_LOG, is_finished, read_manifest
from experiments.studies import REPO, Run, StudyError

PREEMPTED = 143


@dataclasses.dataclass(frozen=True)
class Analysis:
    """A command beside the studies, run as ``python -m experiments.run NAME [options]``: the
    ``parser(prog)`` and ``main(argv, prog)`` of its module, which describes it in its docstring."""

    name: str
    module: ModuleType

    @property
    def prog(self) -> str:
        return f"python -m experiments.run {self.name}"

    @property
    def description(self) -> str:
        return " ".join(self.module.__doc__.split("\n\n")[0].split())

    def parser(self) -> argparse.ArgumentParser:
        return self.module.parser(self.prog)

    def main(self, argv: Sequence[str]) -> int:
        return self.module.main(list(argv), prog=self.prog)


ANALYSES: dict[str, Analysis] = {a.name: a for a in (
    Analysis("gradient_flow", gradient_flow), Analysis("feature_reuse", feature_reuse))}


def listing(width: int = 100) -> str:
    """What the runner runs: every study (its runs at the full budget and its first sentence) and
    every analysis."""
    pad = max(map(len, [*studies.STUDIES, *ANALYSES])) + 4

    def item(name: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {name:<{pad - 2}}", subsequent_indent=" " * pad,
                             break_on_hyphens=False)

    lines = ["Studies (python -m experiments.run STUDY --root=DIR, python -m experiments.report STUDY --root=DIR):"]
    for s in studies.STUDIES.values():
        lines.append(item(s.name, f"{len(s.runs)} runs. {s.description.split('. ')[0].removesuffix('.')}."))
    lines.append("Analyses (python -m experiments.run ANALYSIS [options]; ANALYSIS --help lists them):")
    lines += [item(a.name, a.description) for a in ANALYSES.values()]
    return "\n".join(lines) + "\n"


class _List(argparse.Action):
    """``--list``: prints the listing and exits 0, whatever else is given (as ``--help`` does)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(listing(), end="")
        parser.exit()


def workdir_of(root: str, run: Run) -> str:
    """``root/<run name>``, kept as text so that remote roots (gs://...) survive."""
    return f"{root.rstrip('/')}/{run.name}"


def main_command(run: Run, root: str, extra: Sequence[str] = (), python: str = "python") -> list[str]:
    return [python, "-m", "dnjax.main", *run.args(workdir_of(root, run)), *extra]


# ------------------------------------------------------------------------------------------------
# The study's directory (what it holds: experiments.results)


def check_root(root: Path, study: str, budget: str, runs: Sequence[Run]) -> None:
    """Refuses a root that belongs to another study or budget, or holds runs that are not ours."""
    manifest = read_manifest(root)
    if manifest is not None:
        theirs = (manifest.get("study"), manifest.get("budget", "full"))
        if theirs != (study, budget):
            raise StudyError(
                f"{root} holds study {theirs[0]!r} (budget {theirs[1]!r}), not {study!r} (budget "
                f"{budget!r}); use another --root for this study. Nothing was changed."
            )
        return
    expected = {r.name: r.model for r in studies.study_runs(study, budget)}
    if Path(root).is_dir():
        foreign = sorted(
            p.name for p in Path(root).iterdir()
            if (p / "config.json").exists()
            and (p.name not in expected or _trained_model(p) not in (None, expected[p.name]))
        )
        if foreign:
            raise StudyError(
                f"{root} holds runs that are not part of study {study!r} (budget {budget!r}), or that "
                f"trained another network than the study defines: "
                f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; use another --root."
            )


def _trained_model(workdir: Path) -> str | None:
    try:
        return json.loads((workdir / "config.json").read_text())["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(root: Path, study: str, budget: str, runs: Sequence[Run]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    all_runs = studies.study_runs(study, budget)
    body = {"study": study, "budget": budget, "runs": [r.name for r in all_runs]}
    tmp = root / f".{MANIFEST}.{os.getpid()}"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)  # atomic: every host of a job may write the same file


def log_exit(root: Path, run: Run, rc: int, seconds: float) -> None:
    with (root / RUNNER_LOG).open("a", encoding="utf-8") as f:
        f.write(json.dumps({"run": run.name, "rc": rc, "seconds": round(seconds, 1),
                            "time": round(time.time(), 3)}) + "\n")


# ------------------------------------------------------------------------------------------------
# Printing


def shell_lines(runs: Sequence[Run], root: str, extra: Sequence[str] = ()) -> list[str]:
    return [shlex.join(main_command(r, root, extra)) for r in runs]


def slurm_script(study: str, budget: str, runs: Sequence[Run], root: str, extra: Sequence[str] = (),
                 data_dir: str | None = None) -> str:
    names = " ".join(shlex.quote(r.name) for r in runs)
    extra_flags = "".join(f" --set={shlex.quote(e.removeprefix('--config.'))}" for e in extra)
    if data_dir:
        extra_flags += f" --data_dir={shlex.quote(str(data_dir))}"
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name=dnjax-{study}",
        f"#SBATCH --array=0-{len(runs) - 1}",
        f"#SBATCH --output={root.rstrip('/')}/slurm-%A_%a.out",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        "# Add the partition, time limit and accelerators of your cluster, e.g. #SBATCH --gres=gpu:1.",
        "# One array task per run. A task skips a finished run and resumes an interrupted one, so",
        "# resubmitting the script after a time limit or a preemption carries every run forward.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(REPO))}",
        f"RUNS=({names})",
        f"srun python -m experiments.run {shlex.quote(study)} --root={shlex.quote(root)} "
        f"--budget={budget} --only=\"${{RUNS[$SLURM_ARRAY_TASK_ID]}}\"{extra_flags}",
        "",
    ])


# ------------------------------------------------------------------------------------------------
# Running


class _Forwarder:
    """Passes SIGTERM/SIGINT to the run in progress and remembers that it came."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.received: int | None = None

    def __call__(self, signum, frame):
        self.received = signum
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def run_study(study: str, root: Path, runs: Sequence[Run], budget: str, extra: Sequence[str] = (),
              stdout=None) -> int:
    root = Path(root).absolute()
    check_root(root, study, budget, runs)
    write_manifest(root, study, budget, runs)
    forward = _Forwarder()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    problems: list[str] = []
    try:
        for i, run in enumerate(runs, 1):
            workdir = root / run.name
            head = f"[{i}/{len(runs)}] {run.name}"
            if is_finished(workdir):
                print(f"{head}: finished already, skipped", flush=True)
                continue
            resuming = (workdir / "checkpoints").is_dir() and any((workdir / "checkpoints").iterdir())
            print(f"{head}: {'resuming' if resuming else 'starting'} ({run.label}, {run.dataset})", flush=True)
            cmd = main_command(run, str(root), extra, python=sys.executable)
            t0 = time.time()
            forward.proc = subprocess.Popen(cmd, cwd=REPO, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
            rc = forward.proc.wait()
            forward.proc = None
            log_exit(root, run, rc, time.time() - t0)
            if rc == PREEMPTED or forward.received is not None:
                print(f"{head}: preempted; rerun the same command to resume", flush=True)
                return PREEMPTED
            if rc != 0:
                problems.append(f"{run.name} (exit {rc})")
                print(f"{head}: failed with exit status {rc}; see {workdir}", flush=True)
            elif not is_finished(workdir):
                problems.append(f"{run.name} (stopped before the end)")
                print(f"{head}: stopped before the end (halt_after_steps?)", flush=True)
            else:
                print(f"{head}: finished in {time.time() - t0:.0f} s", flush=True)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if problems:
        print(f"{len(problems)} run(s) did not finish: {', '.join(problems)}", flush=True)
        return 1
    print(f"All {len(runs)} run(s) of {study} finished; report: python -m experiments.report {study} "
          f"--root={root}", flush=True)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The options of a runner command line: a study's, or, where the first argument names an
    analysis, that analysis's own. ``analysis`` is the analysis's name, or None for a study."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ANALYSES:
        a = ANALYSES[argv[0]].parser().parse_args(argv[1:])
        a.analysis = argv[0]
        return a
    p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help=f"one of: {', '.join(studies.STUDIES)}; or an analysis, one of: "
                   f"{', '.join(ANALYSES)}, followed by its own options (ANALYSIS --help lists them)")
    p.add_argument("--list", action=_List, help="list the studies and the analyses, and exit")
    p.add_argument("--root", required=True, help="directory of the study; each run in ROOT/<run name>")
    p.add_argument("--budget", default="full", choices=studies.BUDGETS)
    p.add_argument("--smoke", action="store_true", help="the same as --budget=smoke")
    p.add_argument("--data_dir", default=None,
                   help=f"data directory of --budget=cifar10-sample (default {studies.SAMPLE_DIR}) or --budget=cifar100-cpu (default {studies.CIFAR100_DIR})")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this run (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra --config.KEY=VALUE for every run, e.g. compilation_cache_dir=/tmp/c")
    p.add_argument("--print", action="store_true", dest="print_only", help="print the commands, run nothing")
    p.add_argument("--format", default="shell", choices=("shell", "slurm"))
    logs.add_verbosity_flag(p)
    a = p.parse_args(argv)
    a.analysis = None
    return a


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ANALYSES:
        return ANALYSES[argv[0]].main(argv[1:])
    a = parse_args(argv)
    logs.quiet_libraries(verbose=a.verbosity >= 0)
    budget = "smoke" if a.smoke else a.budget
    try:
        runs = studies.study_runs(a.study, budget, a.data_dir, a.only)
        for s in a.set:
            if "=" not in s:
                raise StudyError(f"--set {s!r}: expected KEY=VALUE, e.g. compilation_cache_dir=/tmp/cache")
        extra = [f"--config.{s}" for s in a.set]
        if a.verbosity >= 0 and not a.print_only:  # the runs' library logs too
            extra.append(f"--verbosity={a.verbosity}")
        if a.print_only:
            if a.format == "slurm":
                print(slurm_script(a.study, budget, runs, a.root, extra, a.data_dir), end="")
            else:
                print("\n".join(shell_lines(runs, a.root, extra)))
            return 0
        return run_study(a.study, Path(a.root), runs, budget, extra)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
