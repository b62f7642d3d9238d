"""Runs a study on this host (its runs packed onto the host's devices, or one after another),
prints its command lines for a cluster, or runs an analysis.

    python -m experiments.run STUDY --root=DIR [--budget=full|smoke|cifar10-sample|cifar100-cpu]
        [--only=NAME|PATTERN] [--seeds=0,1,2] [--parallel=N|auto] [--devices_per_run=K] [--host=I/H]
    python -m experiments.run STUDY --root=DIR --print [--format=shell|slurm]
    python -m experiments.run ANALYSIS [its options]      (ANALYSIS --help lists them)
    python -m experiments.run --list                      (the studies and the analyses)

Each run trains in ``DIR/<run name>`` through ``python -m dnjax.main``, its output in
``DIR/logs/<run name>.log``. A run whose log holds a final record is skipped; any other is
started, or resumed from its checkpoints by dnjax itself, so rerunning the same command after an
interruption carries on where it stopped. ``DIR/study.json`` names the study, budget and seeds that
own the directory: a root that belongs to another study (or to the same study at another budget)
is refused rather than mixed. ``DIR/runner.jsonl`` (``runner.hostIofH.jsonl`` for host I of H)
records each run's exit status, which the report uses to tell a failed run from one in progress.

``--parallel=N`` runs up to N runs at once, each in its own process on its own share of the
host's GPUs, TPU chips or CPU cores (:mod:`experiments.hosts` finds them and builds the
environment that confines a run to its share); ``auto`` runs one per device. ``--host=I/H`` takes
host I of H's share of the runs (every run on exactly one host); on a TPU pod slice or in a
multi-task SLURM step it is found from the environment. ``--seeds`` runs every setting of the study
once per seed. SIGTERM or Ctrl-C stops every run in progress with a checkpoint (the executor,
:mod:`experiments.executor`, passes SIGTERM on) and exits 143; a run that fails is reported with
the end of its log and the others go on.

``--print`` writes one ``python -m dnjax.main`` line per run (run it from the repository root; on
a TPU pod, the same line on every host), ``--format=slurm`` an sbatch script with one array task
per run. ``--smoke`` is ``--budget=smoke``.

Exit status: 0 when every selected run has finished, 1 when some failed or stopped early, 2 on a
bad study, run, root or placement, 143 when interrupted.

An analysis (``ANALYSES``) measures what the studies' logs do not hold: the gradient reaching each
layer (``gradient_flow``), the weights each DenseNet layer gives its inputs (``feature_reuse``).
The name comes first and the rest are the analysis's own options, output and exit status;
``python -m experiments.run NAME ...`` and ``python -m experiments.NAME ...`` are the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import ModuleType
from typing import Sequence

from dnjax import logs, storage
from dnjax.exits import ExitStatus
from experiments import executor, feature_reuse, gradient_flow, hosts, studies
from experiments.results import MANIFEST, RUNNER_LOG, is_finished, read_manifest, runner_log_name  # noqa: F401
from experiments.studies import REPO, StudyError, StudyRun


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


def workdir_of(root: str, run: StudyRun) -> str:
    """``root/<run name>``, kept as text so that remote roots (gs://...) survive."""
    return f"{root.rstrip('/')}/{run.name}"


def main_command(run: StudyRun, root: str, extra: Sequence[str] = (), python: str = "python") -> list[str]:
    return [python, "-m", "dnjax.main", *run.args(workdir_of(root, run)), *extra]


# ------------------------------------------------------------------------------------------------
# The study's directory (what it holds: experiments.results)


def check_root(root, study: str, budget: str, seeds: Sequence[int] | None) -> tuple[int, ...] | None:
    """Refuses a root that belongs to another study or budget, holds runs that are not ours, or was
    started with the study's own seeds when ``seeds`` are given (or the reverse). Returns the seeds
    the root's manifest is to list: those it lists and ``seeds`` (a root takes more seeds)."""
    root = storage.path(root)
    manifest = read_manifest(root)
    if manifest is not None:
        theirs = (manifest.get("study"), manifest.get("budget", "full"))
        if theirs != (study, budget):
            raise StudyError(
                f"{root} holds study {theirs[0]!r} (budget {theirs[1]!r}), not {study!r} (budget "
                f"{budget!r}); use another --root for this study. Nothing was changed."
            )
        stored = manifest.get("seeds")
        if (stored is None) != (seeds is None):
            given = "without --seeds" if seeds is None else f"with --seeds={','.join(map(str, seeds))}"
            had = "without --seeds" if stored is None else f"with --seeds={','.join(map(str, stored))}"
            raise StudyError(f"{root} was started {had} and this command is {given}: the run names differ; "
                             "give the same seeds (more may be added) or use another --root. Nothing was changed.")
        if seeds is None:
            return None
        return tuple(stored) + tuple(s for s in seeds if s not in stored)
    expected = {r.name: r.model for r in studies.study_runs(study, budget, seeds=seeds)}
    if root.is_dir():
        foreign = sorted(
            p.name for p in root.iterdir()
            if (p / "config.json").exists()
            and (p.name not in expected or _trained_model(p) not in (None, expected[p.name]))
        )
        if foreign:
            raise StudyError(
                f"{root} holds runs that are not part of study {study!r} (budget {budget!r}), or that "
                f"trained another network than the study defines: "
                f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}; use another --root."
            )
    return None if seeds is None else tuple(seeds)


def _trained_model(workdir) -> str | None:
    try:
        return json.loads((workdir / "config.json").read_text())["model"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(root, study: str, budget: str, seeds: Sequence[int] | None, data_dir=None) -> None:
    """``root/study.json``: the study, budget, seeds, data (tfds, or npz files given with --data_dir)
    and every run (of every host). Every host of a study writes the same content, in one piece."""
    root = storage.path(root)
    root.mkdir(parents=True, exist_ok=True)
    all_runs = studies.study_runs(study, budget, seeds=seeds)
    body = {"study": study, "budget": budget, "runs": [r.name for r in all_runs],
            "data": "tfds" if data_dir is None else "npz"}
    if seeds is not None:
        body["seeds"] = list(seeds)
    storage.write_whole(root / MANIFEST, json.dumps(body, indent=2) + "\n")


class RunnerLog:
    """This host's record of the runs' exit statuses (``runner.jsonl``, or ``runner.hostIofH.jsonl``
    where several hosts share the root), appended to locally and rewritten whole in a bucket."""

    def __init__(self, root, host: int = 0, hosts: int = 1):
        self.path = storage.path(root) / runner_log_name(host, hosts)

    def write(self, run: str, rc: int, seconds: float) -> None:
        line = json.dumps({"run": run, "rc": rc, "seconds": round(seconds, 1), "time": round(time.time(), 3)}) + "\n"
        if storage.is_remote(self.path):
            old = self.path.read_text() if self.path.exists() else ""
            storage.write_whole(self.path, old + line)
        else:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)


# ------------------------------------------------------------------------------------------------
# Printing


def shell_lines(runs: Sequence[StudyRun], root: str, extra: Sequence[str] = ()) -> list[str]:
    return [shlex.join(main_command(r, root, extra)) for r in runs]


def slurm_script(study: str, budget: str, runs: Sequence[StudyRun], root: str, extra: Sequence[str] = (),
                 data_dir: str | None = None, seeds: str | None = None) -> str:
    names = " ".join(shlex.quote(r.name) for r in runs)
    extra_flags = "".join(f" --set={shlex.quote(e.removeprefix('--config.'))}" for e in extra)
    if data_dir:
        extra_flags += f" --data_dir={shlex.quote(str(data_dir))}"
    if seeds:
        extra_flags += f" --seeds={shlex.quote(seeds)}"
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


def _log_dir(root: str, study: str) -> Path:
    """Where the runs' output goes as they run: ROOT/logs, or for a root in a bucket a local folder
    (each log is uploaded to ROOT/logs when its run ends)."""
    if not storage.is_remote(root):
        return Path(root) / "logs"
    key = hashlib.sha1(root.encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"dnjax-study-{study}-{key}" / "logs"


def run_study(study: str, root: str | Path, runs: Sequence[StudyRun], budget: str, extra: Sequence[str] = (), *,
              parallel: int | None = 1, per_run: int | None = None, host: tuple[int, int] = (0, 1),
              seeds: Sequence[int] | None = None, data_dir=None, out=None, live: bool | None = None) -> int:
    """Runs this host's share of ``runs`` (every ``host[1]``-th from the ``host[0]``-th), packed
    onto its devices by :class:`experiments.executor.Executor`; see the module's docstring."""
    out = out or sys.stdout
    root = str(root) if storage.is_remote(str(root)) else os.path.abspath(root)
    placement = hosts.detect()
    slots, why = hosts.plan(placement, parallel, per_run)
    manifest_seeds = check_root(root, study, budget, seeds)
    write_manifest(root, study, budget, manifest_seeds, data_dir)
    index, count = host
    mine = hosts.host_share(runs, index, count)
    where = f"host {index} of {count} takes {len(mine)} of them" if count > 1 else "all on this host"
    print(f"{study} at budget {budget}: {len(runs)} run(s), {where}; {why}", file=out, flush=True)

    record = RunnerLog(root, index, count)
    log_dir = _log_dir(root, study)
    workdirs = {run.name: storage.path(workdir_of(root, run)) for run in mine}
    jobs = []
    for run in mine:
        workdir = workdirs[run.name]
        if is_finished(workdir):
            print(f"{run.name}: finished already, skipped", file=out, flush=True)
            continue
        metrics = workdir / logs.METRICS_FILE
        # Every run is a process of its own on this host (a pod's other VMs run other runs).
        argv = main_command(run, root, [*extra, "--distributed=off"], python=sys.executable)
        jobs.append(executor.Job(run.name, argv,
                                 lambda m=metrics: logs.read_jsonl(m)[0], log_dir / f"{run.name}.log"))

    def on_exit(job: executor.Job, rc: int, seconds: float) -> None:
        record.write(job.name, rc, seconds)
        if storage.is_remote(root):
            try:
                storage.write_whole(storage.path(root) / "logs" / job.log.name, job.log.read_bytes())
            except Exception as e:  # the run's own result is in the bucket already
                print(f"{job.name}: its log stays at {job.log} (upload failed: {storage.one_line(e)})", file=out)

    ex = executor.Executor(slots, REPO, on_exit, out=out, live=live,
                           poll_seconds=15.0 if storage.is_remote(root) else 1.0)
    outcomes, interrupted = ex.run(jobs)
    if interrupted:
        saved = sum(o.rc in (ExitStatus.OK, ExitStatus.PREEMPTED, ExitStatus.INTERRUPTED) for o in outcomes)
        print(f"Interrupted: {saved} run(s) stopped with their checkpoints saved; rerun the same command to "
              "resume.", file=out, flush=True)
        return ExitStatus.PREEMPTED
    problems = []
    for o in outcomes:
        if o.rc != 0:
            problems.append(f"{o.name} ({executor.exit_text(o.rc)})")
        elif not is_finished(workdirs[o.name]):
            problems.append(f"{o.name} (stopped before the end)")
    if problems:
        print(f"{len(problems)} run(s) did not finish: {', '.join(problems)}; their logs are in {log_dir}",
              file=out, flush=True)
        return ExitStatus.FAILED
    host_note = f" (this host's {len(mine)})" if count > 1 else ""
    print(f"All {len(runs) if count == 1 else len(mine)} run(s){host_note} of {study} finished; report: "
          f"python -m experiments.report {study} --root={root}", file=out, flush=True)
    return ExitStatus.OK


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
    p.add_argument("--root", required=True, help="directory of the study (local or gs://); each run in ROOT/<run name>")
    p.add_argument("--budget", default="full", choices=studies.BUDGETS)
    p.add_argument("--smoke", action="store_true", help="the same as --budget=smoke")
    p.add_argument("--data_dir", default=None,
                   help="npz files for --budget=cifar10-sample (DIR/train_10k.npz, test_10k.npz) or --budget=cifar100-cpu "
                        "(DIR/train_part1.npz, train_part2.npz, test.npz); default: TensorFlow Datasets' cifar10 "
                        "(a class-balanced 20%% of its training split) and cifar100")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only this run, or the runs matching this shell pattern, e.g. 'densenet*_c100+' (repeatable)")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run every setting of the study once per seed (e.g. 0,1,2 or 0-4), whatever seeds the study "
                        "and budget have of their own; the run names end in _s<seed>")
    p.add_argument("--parallel", default="1", metavar="N|auto",
                   help="runs at once on this host, each in its own process on its own share of the devices "
                        "(GPUs, TPU chips or CPU cores); auto: one run per device (default 1: one run at a time on every device)")
    p.add_argument("--devices_per_run", type=int, default=None, metavar="K",
                   help="devices of each run (default: the host's devices divided among the --parallel runs)")
    p.add_argument("--host", default=None, metavar="I/H",
                   help="take host I of H's share of the runs (every H-th from the I-th), all hosts writing under one "
                        "--root; default: a TPU pod slice's worker index, SLURM_PROCID of a multi-task step, else 0/1")
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
        seeds = studies.parse_seeds(a.seeds) if a.seeds is not None else None
        runs = studies.study_runs(a.study, budget, a.data_dir, a.only, seeds=seeds)
        for s in a.set:
            if "=" not in s:
                raise StudyError(f"--set {s!r}: expected KEY=VALUE, e.g. compilation_cache_dir=/tmp/cache")
        extra = [f"--config.{s}" for s in a.set]
        if a.verbosity >= 0 and not a.print_only:  # the runs' library logs too
            extra.append(f"--verbosity={a.verbosity}")
        if a.print_only:
            if a.format == "slurm":
                print(slurm_script(a.study, budget, runs, a.root, extra, a.data_dir, a.seeds), end="")
            else:
                print("\n".join(shell_lines(runs, a.root, extra)))
            return ExitStatus.OK
        parallel = hosts.parse_parallel(a.parallel)
        if a.host is not None:
            host = hosts.parse_host(a.host)
        else:
            i, h, _ = hosts.host_index()
            host = (i, h)
        return run_study(a.study, a.root, runs, budget, extra, parallel=parallel, per_run=a.devices_per_run,
                         host=host, seeds=seeds, data_dir=a.data_dir)
    except (StudyError, hosts.PlacementError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
