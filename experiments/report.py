"""The report of a study: a Markdown table from the runs' logs, and the plots beside it.

    python -m experiments.report STUDY --root=DIR [--out=DIR] [--budget=...]

For every run of the study (at the budget that ``DIR/study.json`` names) it reads
``DIR/<run>/config.json`` and ``metrics.jsonl`` and reports the network's parameters and MACs per
image (measured on the module, as ``python -m dnjax.models`` does), the test error at the end of
training (what the paper reports) and the best one over the evaluations, the paper's figure and
the difference. Runs that differ only in the seed are summarised as mean ± standard deviation.

A run that never started is reported as missing, one without a final record as incomplete (still
running, or crashed: the runner's exit status says which where it knows), a log with a torn last
line as such; none of them contributes a number. Output: ``report.md`` and the PNGs of
``experiments.plots`` in ``--out`` (default: the study directory).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from dnjax import logs, storage
from dnjax.exits import ExitStatus
from dnjax.units import human
from experiments import studies, verdicts as verdicts_lib
from experiments.results import FINISHED, MANIFEST, RunSummary, read_manifest, runner_exits  # report.RunSummary too
from experiments.studies import REPO, StudyError, StudyRun

# ------------------------------------------------------------------------------------------------
# Sizes of the networks


_SIZE_CACHE: dict[str, tuple[int, int]] = {}


def _num_classes(config) -> int:
    from dnjax.data import choices

    return choices.num_classes(config.data)


@functools.lru_cache(maxsize=None)
def _npz_image_shape(spec: str) -> tuple[int, ...] | None:
    import numpy as np

    from dnjax.data import DataError, npz_paths

    try:
        path = npz_paths(spec, "npz_train")[0]
    except DataError:  # the data is elsewhere: the CIFAR shape
        return None
    with np.load(path) as f:
        return tuple(f["image"].shape[1:])


def _input_shape(config) -> tuple[int, ...]:
    from dnjax.data import choices

    return choices.image_shape(config.data, _npz_image_shape)


def network_size(config) -> tuple[int, int]:
    """(parameters, MACs per image) of the run's network, traced but never compiled."""
    from dnjax import config_lib
    from dnjax.models import summary

    fields = {k: v for k, v in config_lib.model_overrides(config).items() if k != "dropout_rate"}
    shape = _input_shape(config)
    key = json.dumps([config.model.name, fields, _num_classes(config), shape], sort_keys=True, default=str)
    if key not in _SIZE_CACHE:
        model = config_lib.build_model(config, _num_classes(config))
        variables = summary.abstract_variables(model, shape)
        _SIZE_CACHE[key] = (summary.count_params(variables), summary.count_macs(model, shape, variables))
    return _SIZE_CACHE[key]


def config_of_run(run: StudyRun):
    """The config a run would train with, from its config file and overrides (no workdir needed),
    loaded as ``dnjax.main`` loads it."""
    from dnjax import config_files

    spec = str(REPO / run.config)  # the studies name config files from the repository root
    return config_files.load_config_file(spec, [*run.overrides, ("seed", run.seed)])


# ------------------------------------------------------------------------------------------------
# Reading a run


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_run(root: Path, run: StudyRun, exits: dict[str, int] | None = None, sizes: bool = True) -> RunSummary:
    from dnjax import logs
    from dnjax.config_lib import load_run_config

    workdir = storage.path(root) / run.name
    exits = exits if exits is not None else runner_exits(root)
    result = RunSummary(run, "missing")
    config = None
    if (workdir / "config.json").exists():
        try:
            config = load_run_config(workdir)
        except Exception as e:  # a damaged config.json: say so instead of failing the whole report
            result.note = f"unreadable config.json ({type(e).__name__})"
    expected = config_of_run(run)
    if config is not None and config.model.name != expected.model.name:
        result.status = "mismatch"
        result.note = (f"{workdir} trained {config.model.name}, but the study defines {expected.model.name}; "
                       "not counted")
        return result
    if sizes:
        try:
            result.params, result.macs = network_size(config if config is not None else expected)
        except Exception as e:
            result.note = f"size unknown ({type(e).__name__}: {e})"

    records, torn = logs.read_jsonl(workdir / logs.METRICS_FILE)
    result.torn = torn
    if not records:
        rc = exits.get(run.name)
        if rc not in (None, 0):
            result.status, result.note = "failed", f"exit status {rc} before the first log line"
        elif torn:
            result.status, result.note = "incomplete", "the log holds only a torn line"
        elif workdir.exists():
            result.note = result.note or "no log yet"
        return result
    started = next((r for r in records if r.get("event") == "started"), None)
    if started is not None and started.get("params") is not None:
        result.params = int(started["params"])  # what was actually trained
    result.evals = [(float(r["epoch"]), float(r["test_error"])) for r in records
                    if r.get("type") == "eval" and _float(r.get("test_error")) is not None]
    result.train = [(float(r["epoch"]), float(r["loss"])) for r in records
                    if r.get("type") == "train" and _float(r.get("loss")) is not None]
    last = records[-1]
    result.step = int(last.get("step", 0))
    result.epoch = _float(last.get("epoch")) or (result.evals[-1][0] if result.evals else None)
    final = next((r for r in reversed(records) if r.get("type") == "final"), None)
    torn_note = "; the log ends in a torn line" if torn else ""
    if final is not None:
        result.status = FINISHED
        result.final_error = _float(final.get("test_error"))
        result.train_loss = _float(final.get("train_loss"))
        result.step, result.epoch = int(final["step"]), _float(final.get("epoch"))
        if result.evals:
            result.best_epoch, result.best_error = min(result.evals, key=lambda e: e[1])
        else:
            result.best_error, result.best_epoch = result.final_error, result.epoch
        result.note = torn_note.removeprefix("; ")
        return result
    where = f"last logged step {result.step}" + (f", epoch {result.epoch:.2f}" if result.epoch is not None else "")
    events = [r.get("event") for r in records if r.get("type") == "event"]
    rc = exits.get(run.name)
    if events and events[-1] in ("preempted", "halted", "interrupted"):
        result.status = events[-1]
        result.note = f"{events[-1]} at step {result.step}; rerun the runner to continue{torn_note}"
    elif rc not in (None, ExitStatus.OK, ExitStatus.INTERRUPTED, ExitStatus.PREEMPTED):
        result.status = "failed"
        result.note = f"exit status {rc}; {where}{torn_note}"
    else:
        result.status = "incomplete"
        result.note = f"crashed or still running: {where}{torn_note}"
    return result


def read_study(root: Path, study: str, budget: str | None = None, data_dir=None,
               sizes: bool = True) -> tuple[list[RunSummary], str]:
    """The results of every run of ``study`` under ``root``, and the budget they were run at.

    The budget comes from ``root/study.json``; a manifest of another study is an error, as is a
    budget argument that contradicts it."""
    root = storage.path(root)
    if not root.is_dir():
        raise StudyError(f"{root} does not exist: run the study first (python -m experiments.run {study} --root={root})")
    manifest = read_manifest(root)
    if manifest is not None:
        if manifest.get("study") != study:
            raise StudyError(f"{root} holds study {manifest.get('study')!r}, not {study!r} "
                             f"(its {MANIFEST} says so); give the root of {study!r}")
        mb = manifest.get("budget", "full")
        if budget is not None and budget != mb:
            raise StudyError(f"{root} holds study {study!r} at budget {mb!r}, not {budget!r}")
        budget = mb
    budget = budget or "full"
    seeds = manifest.get("seeds") if manifest is not None else None
    runs = studies.study_runs(study, budget, data_dir, seeds=seeds)
    exits = runner_exits(root)
    return [read_run(root, r, exits, sizes=sizes) for r in runs], budget


# ------------------------------------------------------------------------------------------------
# Summaries and the Markdown


@dataclasses.dataclass
class Group:
    """Runs that differ only in the seed."""

    runs: list[RunSummary]

    @property
    def first(self) -> StudyRun:
        return self.runs[0].run

    @property
    def done(self) -> list[RunSummary]:
        return [r for r in self.runs if r.finished]

    def stat(self, field: str) -> tuple[float, float | None, int] | None:
        values = [getattr(r, field) for r in self.done if getattr(r, field) is not None]
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return statistics.fmean(values), std, len(values)


def groups(results: Sequence[RunSummary]) -> list[Group]:
    out: dict[str, Group] = {}
    for r in results:
        out.setdefault(r.run.group, Group([])).runs.append(r)
    return list(out.values())


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def fmt_stat(s: tuple[float, float | None, int] | None, several: bool) -> str:
    if s is None:
        return "—"
    mean, std, n = s
    if std is None:
        return f"{mean:.2f}" + (" (n=1)" if several else "")
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def _status_of_group(g: Group) -> str:
    if len(g.runs) == 1:
        r = g.runs[0]
        return f"{r.status} ({r.note})" if r.note else r.status
    done = len(g.done)
    others = [f"{r.run.name}: {r.status}" for r in g.runs if not r.finished]
    return f"{done}/{len(g.runs)} finished" + (f"; {'; '.join(others)}" if others else "")


def what_ran(results: Sequence[RunSummary], budget: str) -> str:
    """One phrase: the settings, data sets and seeds of the runs in the report, and how many finished."""
    settings = groups(results)
    seeds = sorted({r.run.seed for r in results})
    datasets = list(dict.fromkeys(r.run.dataset for r in results))
    done = sum(r.finished for r in results)
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
    return (f"{len(settings)} setting(s) on {' and '.join(datasets)}, {seed_text}: {len(results)} run(s) at budget "
            f"{budget}, {done} finished")


def markdown(study: studies.Study, results: Sequence[RunSummary], budget: str, root: Path | str,
             plots: Sequence[str] = (), npz_data: bool = False) -> str:
    b = studies.budget(budget, npz_data and "--data_dir")
    lines = [f"# Study `{study.name}`", "", f"**What ran**: {what_ran(results, budget)}. Runs under `{root}`.", "",
             f"The study at full length: {study.description}", ""]
    lines.append(f"Budget **{budget}**: {b.description}.")
    if budget != "full":
        lines += ["", "These are not the paper's full-length runs: the networks, data and schedule are "
                  "reduced, so the errors are not comparable with the paper's figures, which are left out; "
                  "the column *stands in for* names the published network each run represents."]
    lines += ["", "Test error in %, on the test split at the end of training (final, as the paper reports) "
              "and the lowest over the evaluations (best); mean ± standard deviation over seeds where a "
              "configuration has several. Δ = final − paper.", ""]
    stand_ins = any(r.run.stands_for for r in results)
    references = any(r.run.reference is not None for r in results)
    if references:
        lines += ["The column *paper, full-size* gives the published final error of the network a run "
                  "stands in for, trained with the full recipe (drawn as a dotted line in the curves); it "
                  "is a reference point, not a target for the shortened run.", ""]
    head = ["model", "data", "params", "MACs", "final error", "best error", "paper", "Δ", "status"]
    if references:
        head.insert(1, "paper, full-size")
    if stand_ins:
        head.insert(1, "stands in for")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups(results):
        several = len(g.runs) > 1
        final, best = g.stat("final_error"), g.stat("best_error")
        paper = g.first.paper
        delta = None if final is None or paper is None else final[0] - paper
        params = next((r.params for r in g.runs if r.params is not None), None)
        macs = next((r.macs for r in g.runs if r.macs is not None), None)
        row = [g.first.label, g.first.dataset, human(params), human(macs),
               fmt_stat(final, several), fmt_stat(best, several), fmt(paper),
               "—" if delta is None else f"{delta:+.2f}", _status_of_group(g)]
        if references:
            row.insert(1, fmt(g.first.reference))
        if stand_ins:
            row.insert(1, g.first.stands_for or "—")
        lines.append("| " + " | ".join(row) + " |")
    found = verdicts_lib.verdicts(study, results)
    if found:
        lines += ["", "## Verdicts", "",
                  "Each comparison of the study on the final test error: the difference of the means over "
                  f"seeds and its 95% confidence interval by {verdicts_lib.METHOD} (unequal variances, "
                  "Welch-Satterthwaite degrees of freedom); a difference whose interval excludes zero is "
                  "larger than the seed-to-seed spread explains.", ""]
        lines += [f"- {v.line()}" for v in found]
    lines += ["", "## Runs", "",
              "| run | status | seed | steps | epochs | final error | best error (epoch) | final train loss | params | note |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        best = "—" if r.best_error is None else f"{r.best_error:.2f} ({r.best_epoch:g})"
        lines.append(
            f"| {r.run.name} | {r.status} | {r.run.seed} | {r.step if r.step is not None else '—'} | "
            f"{fmt(r.epoch)} | {fmt(r.final_error)} | {best} | {fmt(r.train_loss, 4)} | "
            f"{r.params if r.params is not None else '—'} | {r.note or ''} |"
        )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def _npz_data(root, results: Sequence[RunSummary]) -> bool:
    """Whether the study's runs read npz files (--data_dir): its study.json says so, or (older roots)
    the config.json of its first run that has one."""
    manifest = read_manifest(root) or {}
    if "data" in manifest:
        return manifest["data"] == "npz"
    for r in results:
        path = storage.path(root) / r.run.name / "config.json"
        if path.exists():
            try:
                return json.loads(path.read_text())["data"]["dataset"] == "npz"
            except (OSError, ValueError, KeyError, TypeError):
                return False
    return False


def write_report(study_name: str, root: Path, out: Path | None = None, budget: str | None = None,
                 data_dir=None, with_plots: bool = True) -> tuple[Path, list[Path], list[RunSummary]]:
    from experiments import plots as plots_lib

    study = studies.get_study(study_name)
    results, budget = read_study(root, study_name, budget, data_dir)
    upload = out is None and storage.is_remote(str(root))  # drawn here, then copied into the bucket
    out = Path(tempfile.mkdtemp(prefix="dnjax-report-")) if upload else Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if with_plots:
        written = plots_lib.study_plots(study, results, out, title_suffix=f" ({budget})" if budget != "full" else "")
    path = out / "report.md"
    path.write_text(markdown(study, results, budget, root, written, data_dir is not None or _npz_data(root, results)))
    if upload:
        remote = storage.path(root)
        for f in [*written, path]:
            storage.write_whole(remote / f.name, f.read_bytes())
        shutil.rmtree(out, ignore_errors=True)
        return remote / path.name, [remote / f.name for f in written], results
    return path, written, results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    p.add_argument("study", help=f"one of: {', '.join(studies.STUDIES)}")
    p.add_argument("--root", required=True, help="the study directory given to experiments.run")
    p.add_argument("--out", default=None, help="where report.md and the PNGs go (default: ROOT)")
    p.add_argument("--budget", default=None, choices=studies.BUDGETS,
                   help="only needed for a root without study.json (runs launched from --print lines)")
    p.add_argument("--data_dir", default=None,
                   help="as given to experiments.run, for --budget=cifar10-sample or cifar100-cpu")
    p.add_argument("--no_plots", action="store_true")
    logs.add_verbosity_flag(p)
    a = p.parse_args(argv)
    logs.quiet_libraries(verbose=a.verbosity >= 0)
    try:
        root = a.root if storage.is_remote(a.root) else Path(a.root)
        path, written, results = write_report(a.study, root, a.out and Path(a.out), a.budget,
                                              a.data_dir, not a.no_plots)
    except (StudyError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    done = sum(r.finished for r in results)
    print(f"{path}: {done}/{len(results)} runs finished" + "".join(f"\n{w}" for w in written))
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
