"""The plots of a study's report (matplotlib, written as PNG files).

  curves.png       test error over epochs for every run, training loss beside it; one row per
                   data set. Runs that did not finish are dashed and marked as such.
  efficiency.png   final test error against parameters and against MACs per image, a line per
                   family: the paper's Figure 4. Published figures, where a run has one, are
                   hollow markers at the run's measured size.
  activation.png   pre- against post-activation layers per network and data set, mean ± standard
                   deviation over seeds, with the published figures.
  data_efficiency.png  final test error against the share of the training set a run trained on,
                   a line per family, mean ± standard deviation over seeds (error bars).

Only finished runs contribute a final error; a figure with nothing to show is not written.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from dnjax.units import human  # noqa: E402
from experiments.results import RunResult  # noqa: E402
from experiments.studies import Study  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _datasets(results: Sequence["RunResult"]) -> list[str]:
    out: list[str] = []
    for r in results:
        if r.run.dataset not in out:
            out.append(r.run.dataset)
    return out


def _group_colors(results: Sequence["RunResult"]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for r in results:
        key = r.run.label
        if key not in colors:
            colors[key] = COLORS[len(colors) % len(COLORS)]
    return colors


def _finish(fig, path: Path, log_axes=()) -> Path:
    """Gives each axis of ``log_axes`` the grid of a log scale (major and minor lines) and a
    legend, then lays out, writes and closes the figure."""
    for ax in log_axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves(results: Sequence["RunResult"], path: Path, title: str = "") -> Path | None:
    shown = [r for r in results if r.evals or r.train]
    if not shown:
        return None
    datasets = _datasets(shown)
    colors = _group_colors(shown)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.2 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        ax_err, ax_loss = axes[row]
        labelled: set[str] = set()
        for r in shown:
            if r.run.dataset != dataset:
                continue
            style = "-" if r.finished else "--"
            label = r.run.label + ("" if r.finished else f" ({r.status})")
            first = label not in labelled
            labelled.add(label)
            kw = dict(color=colors[r.run.label], linestyle=style, linewidth=1.4, alpha=0.9)
            if r.evals:
                e, err = zip(*r.evals)
                ax_err.plot(e, err, marker="o", markersize=3, label=label if first else None, **kw)
            if r.train:
                e, loss = zip(*r.train)
                ax_loss.plot(e, loss, label=label if first else None, **kw)
        _reference_lines(ax_err, [r for r in shown if r.run.dataset == dataset], colors)
        ax_err.set(xlabel="epoch", ylabel="test error (%)", title=f"{dataset}: test error{title}")
        ax_loss.set(xlabel="epoch", ylabel="training loss (logged batches)", title=f"{dataset}: training loss{title}")
        for ax in (ax_err, ax_loss):
            ax.grid(alpha=0.3)
        ax_err.legend(fontsize=8)
    return _finish(fig, path)


def _reference_lines(ax, results: Sequence["RunResult"], colors: dict[str, str]) -> None:
    """A dotted line, in the run's colour, at the published final error of the full-size network
    each shortened run stands in for (one line per network and figure)."""
    drawn: set[tuple[str, float]] = set()
    for r in results:
        ref = r.run.reference
        if ref is None or (r.run.stands_for, ref) in drawn:
            continue
        drawn.add((r.run.stands_for, ref))
        ax.axhline(ref, color=colors[r.run.label], linestyle=":", linewidth=1.2,
                   label=f"paper: {r.run.stands_for or r.run.label}, full schedule ({ref:.2f}%)")


def _family_points(results, dataset: str, x_field: str):
    fams: dict[str, list[tuple[float, float, float | None, str]]] = {}
    by_group: dict[str, list] = {}
    for r in results:
        if r.finished and r.run.dataset == dataset and getattr(r, x_field) and r.final_error is not None:
            by_group.setdefault(r.run.group, []).append(r)
    for rs in by_group.values():
        x = float(getattr(rs[0], x_field))
        err = statistics.fmean(r.final_error for r in rs)
        fams.setdefault(rs[0].run.family, []).append((x, err, rs[0].run.paper, rs[0].run.label))
    return {f: sorted(p) for f, p in fams.items()}


def efficiency(results: Sequence["RunResult"], path: Path, title: str = "") -> Path | None:
    datasets = [d for d in _datasets(results) if _family_points(results, d, "params")]
    if not datasets:
        return None
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.6 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (field, xlabel) in enumerate((("params", "parameters"), ("macs", "MACs per image"))):
            ax = axes[row][col]
            fams = _family_points(results, dataset, field)
            for i, (family, pts) in enumerate(sorted(fams.items())):
                c = COLORS[i % len(COLORS)]
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                ax.plot(xs, ys, marker="o", color=c, label=f"{family} (measured)")
                for x, y, _, label in pts:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                paper = [(p[0], p[2]) for p in pts if p[2] is not None]
                if paper:
                    ax.plot(*zip(*paper), marker="o", markerfacecolor="none", linestyle=":", color=c,
                            label=f"{family} (paper)")
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: human(v)))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.margins(x=0.15, y=0.15)
            ax.set(xlabel=xlabel, ylabel="final test error (%)", title=f"{dataset}: error vs {xlabel}{title}")
    return _finish(fig, path, log_axes=axes.flat)


def _strip_activation(label: str) -> str:
    return label.replace(", post-act.", "").replace("pre-act. ", "")


def activation(results: Sequence["RunResult"], path: Path, title: str = "") -> Path | None:
    """Bars of pre vs post per (network, data set): runs of one group are seeds of one bar."""
    cells: dict[str, dict[str, list]] = {}
    names: dict[str, str] = {}
    papers: dict[tuple[str, str], float] = {}
    for r in results:
        if not r.run.variant:
            continue
        key = r.run.group.replace(f"_{r.run.variant}", "", 1)  # the same for both variants
        if key not in names:
            name = _strip_activation(r.run.label)
            if r.run.stands_for:
                name += f"\nfor {_strip_activation(r.run.stands_for)}"
            names[key] = f"{name}\n{r.run.dataset}"
        cells.setdefault(key, {"pre": [], "post": []})
        if r.finished and r.final_error is not None:
            cells[key][r.run.variant].append(r.final_error)
        if r.run.paper is not None:
            papers[(key, r.run.variant)] = r.run.paper
    cells = {k: v for k, v in cells.items() if v["pre"] or v["post"]}
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 2.6 * len(cells)), 5.8))
    width = 0.38
    any_paper = False
    for j, variant in enumerate(("pre", "post")):
        for i, (key, v) in enumerate(cells.items()):
            if not v[variant]:
                continue
            x = i + (j - 0.5) * width
            m = statistics.fmean(v[variant])
            sd = statistics.stdev(v[variant]) if len(v[variant]) > 1 else 0.0
            ax.bar([x], [m], width, yerr=[sd], capsize=4, color=COLORS[j],
                   label=f"{variant}-activation (measured, mean ± std)" if i == 0 or not ax.containers else None)
            ax.annotate(f"{m:.2f}", (x, m + sd), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
            p = papers.get((key, variant))
            if p is not None:
                any_paper = True
                ax.plot([x], [p], marker="_", markersize=22, markeredgewidth=2.5, color="black")
    if any_paper:
        ax.plot([], [], marker="_", linestyle="none", markersize=14, markeredgewidth=2.5, color="black", label="paper")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([names[k] for k in cells], fontsize=8)
    ax.set(ylabel="final test error (%)", title=f"Pre- vs post-activation layers{title}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    return _finish(fig, path)


def data_efficiency(results: Sequence["RunResult"], path: Path, title: str = "") -> Path | None:
    """Final test error against training-set share, a line per (family, data set)."""
    cells: dict[tuple[str, str], dict[float, list[float]]] = {}
    labels: dict[tuple[str, str], str] = {}
    for r in results:
        if r.run.train_fraction is None or not r.finished or r.final_error is None:
            continue
        key = (r.run.family, r.run.dataset)
        cells.setdefault(key, {}).setdefault(r.run.train_fraction, []).append(r.final_error)
        labels[key] = r.run.label.rsplit(", ", 1)[0]  # the network, without the share
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    for i, (key, by_fraction) in enumerate(sorted(cells.items())):
        xs = sorted(by_fraction)
        means = [statistics.fmean(by_fraction[x]) for x in xs]
        stds = [statistics.stdev(by_fraction[x]) if len(by_fraction[x]) > 1 else 0.0 for x in xs]
        ax.errorbar([100 * x for x in xs], means, yerr=stds, marker="o", capsize=4, color=COLORS[i % len(COLORS)],
                    label=f"{labels[key]}, {key[1]}")
        for x, m in zip(xs, means):
            ax.annotate(f"{m:.1f}", (100 * x, m), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks([100 * x for x in sorted({x for c in cells.values() for x in c})])
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set(xlabel="share of the training set (class-balanced, nested subsets)", ylabel="final test error (%)",
           title=f"Test error against training-set size{title}")
    return _finish(fig, path, log_axes=[ax])


PLOTS = {"curves": curves, "efficiency": efficiency, "activation": activation, "data_efficiency": data_efficiency}


def study_plots(study: "Study", results: Sequence["RunResult"], out: Path, title_suffix: str = "") -> list[Path]:
    written = []
    for name in study.plots:
        p = PLOTS[name](results, Path(out) / f"{name}.png", title_suffix)
        if p is not None:
            written.append(p)
    return written
