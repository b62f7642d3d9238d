"""The plots of a study's report (matplotlib, written as PNG files).

  curves.png       test error over epochs, training loss (averaged over windows) beside it; one
                   row per data set, one colour per setting: the mean over seeds with a band from
                   the lowest to the highest seed. Runs that did not finish are dashed.
  efficiency.png   final test error against parameters and against MACs per image, a line per
                   family: the paper's Figure 4. Published figures, where a run has one, are
                   hollow markers at the run's measured size.
  activation.png   pre- against post-activation layers per network and data set: every seed, the
                   mean with its 95% interval, the difference; an axis that spans the errors.
  data_efficiency.png  final test error against the share of the training set a run trained on,
                   a line per family, mean ± standard deviation over seeds (error bars).

Only finished runs contribute a final error; a figure with nothing to show is not written.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from dnjax.units import human  # noqa: E402
from experiments.results import RunSummary  # noqa: E402
from experiments.studies import Study  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _datasets(results: Sequence["RunSummary"]) -> list[str]:
    out: list[str] = []
    for r in results:
        if r.run.dataset not in out:
            out.append(r.run.dataset)
    return out


def _group_colors(results: Sequence["RunSummary"]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for r in results:
        key = r.run.label
        if key not in colors:
            colors[key] = COLORS[len(colors) % len(COLORS)]
    return colors


def _finish(fig, path: Path, log_axes=(), rect=None) -> Path:
    """Gives each axis of ``log_axes`` the grid of a log scale (major and minor lines) and a
    legend, then lays out (the axes within ``rect`` of the figure, if given), writes and closes
    the figure."""
    for ax in log_axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _smoothing_window(span: float) -> float:
    """The window (in epochs) the training loss is averaged over: the smallest round width that
    gives at most about 12 points over ``span`` epochs."""
    for w in (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0):
        if span / w <= 12:
            return w
    return 50.0


def smoothed(points: Sequence[tuple[float, float]], window: float) -> list[tuple[float, float]]:
    """The mean of the (epoch, value) points in each window of ``window`` epochs, at the window's end."""
    bins: dict[int, list[float]] = {}
    for e, v in points:
        bins.setdefault(max(0, math.ceil(e / window - 1e-9) - 1), []).append(v)
    return [((k + 1) * window, statistics.fmean(vs)) for k, vs in sorted(bins.items())]


def _seed_text(runs: Sequence["RunSummary"]) -> str:
    seeds = [r.run.seed for r in runs]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _mean_band(series: Sequence[Sequence[tuple[float, float]]]):
    """At the x values every series has: (x, mean, min, max)."""
    common = sorted(set.intersection(*(set(x for x, _ in s) for s in series)))
    table = [dict(s) for s in series]
    return [(x, statistics.fmean(t[x] for t in table), min(t[x] for t in table), max(t[x] for t in table))
            for x in common]


def curves_figure(results: Sequence["RunSummary"], title: str = ""):
    """Test error and training loss over epochs: one colour per setting; with several seeds the
    mean over them as a line and their range (min to max) as a band, the legend naming the seeds.
    The training loss is the mean of the logged batches over windows of a round number of epochs."""
    shown = [r for r in results if r.evals or r.train]
    if not shown:
        return None
    datasets = _datasets(shown)
    colors = _group_colors(shown)
    span = max([e for r in shown for e, _ in (r.train or r.evals)] or [1.0])
    window = _smoothing_window(span)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 5.4 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        ax_err, ax_loss = axes[row]
        settings: dict[str, list] = {}
        for r in shown:
            if r.run.dataset == dataset:
                settings.setdefault(r.run.group, []).append(r)
        for runs in settings.values():
            color = colors[runs[0].run.label]
            done = [r for r in runs if r.finished]
            several = len(done) > 1
            label = f"{runs[0].run.label} ({'mean of ' if several else ''}{_seed_text(done or runs)})"
            for ax, series in ((ax_err, [r.evals for r in done]),
                               (ax_loss, [smoothed(r.train, window) for r in done])):
                series = [s for s in series if s]
                if not series:
                    continue
                band = _mean_band(series)
                xs, mean, lo, hi = zip(*band)
                ax.plot(xs, mean, color=color, linewidth=1.6, marker="o" if ax is ax_err else None,
                        markersize=3, label=label)
                if several:
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
            for r in runs:  # unfinished runs: their own dashed line, named with their status
                if r.finished:
                    continue
                kw = dict(color=color, linestyle="--", linewidth=1.0, alpha=0.8,
                          label=f"{r.run.label} (seed {r.run.seed}, {r.status})")
                if r.evals:
                    ax_err.plot(*zip(*r.evals), **kw)
                if r.train:
                    ax_loss.plot(*zip(*smoothed(r.train, window)), **kw)
        _reference_lines(ax_err, [r for r in shown if r.run.dataset == dataset], colors)
        band = " (band: min to max over seeds)" if any(len([r for r in g if r.finished]) > 1
                                                       for g in settings.values()) else ""
        ax_err.set(xlabel="epoch", ylabel="test error (%)", title=f"{dataset}: test error{title}{band}")
        ax_loss.set(xlabel="epoch", ylabel=f"training loss (mean over {window:g}-epoch windows)",
                    title=f"{dataset}: training loss{title}")
        for ax in (ax_err, ax_loss):
            ax.grid(alpha=0.3)
            # Under the axis: inside, the legend of several settings hides the curves.
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.tight_layout()
    return fig


def curves(results: Sequence["RunSummary"], path: Path, title: str = "") -> Path | None:
    fig = curves_figure(results, title)
    return None if fig is None else _finish(fig, path)


def _reference_lines(ax, results: Sequence["RunSummary"], colors: dict[str, str]) -> None:
    """A dotted line, in the run's colour, at the published final error of the full-size network
    each shortened run stands in for (one line per network and figure). A figure further from the
    curves than their own span is named in the legend only, so that the curves keep the axis."""
    drawn: set[tuple[str, float]] = set()
    low, high = ax.dataLim.y0, ax.dataLim.y1
    span = max(high - low, 1.0)
    for r in results:
        ref = r.run.reference
        if ref is None or (r.run.stands_for, ref) in drawn:
            continue
        drawn.add((r.run.stands_for, ref))
        label = f"paper: {r.run.stands_for or r.run.label}, full schedule ({ref:.2f}%"
        if low - span <= ref <= high + span:
            ax.axhline(ref, color=colors[r.run.label], linestyle=":", linewidth=1.2, label=label + ")")
        else:
            ax.plot([], [], color=colors[r.run.label], linestyle=":", linewidth=1.2,
                    label=label + f", {'below' if ref < low else 'above'} the axis)")


def _family_points(results, dataset: str, x_field: str):
    """{family: [(x, mean final error, paper, label, half-width of the mean's 95% interval or
    None, each seed's error)]}, one point per setting, sorted by x."""
    fams: dict[str, list[tuple]] = {}
    by_group: dict[str, list] = {}
    for r in results:
        if r.finished and r.run.dataset == dataset and getattr(r, x_field) and r.final_error is not None:
            by_group.setdefault(r.run.group, []).append(r)
    for rs in by_group.values():
        x = float(getattr(rs[0], x_field))
        errors = [r.final_error for r in rs]
        err, half = mean_interval(errors)
        fams.setdefault(rs[0].run.family, []).append((x, err, rs[0].run.paper, rs[0].run.label, half, errors))
    return {f: sorted(p, key=lambda t: t[0]) for f, p in fams.items()}


def efficiency(results: Sequence["RunSummary"], path: Path, title: str = "") -> Path | None:
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
                several = any(p[4] is not None for p in pts)
                ax.plot(xs, ys, marker="o", color=c,
                        label=f"{family} (measured{', mean ± 95% interval over seeds' if several else ''})")
                for x, y, _, label, half, errors in pts:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=7)
                    if half is not None:
                        ax.errorbar([x], [y], yerr=[half], color=c, capsize=4, linewidth=1)
                        ax.plot([x] * len(errors), errors, "o", color=c, alpha=0.35, markersize=3)
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


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """The mean and the half-width of its ``level`` interval (Student's t); None for one value."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, None
    return m, float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def activation(results: Sequence["RunSummary"], path: Path, title: str = "") -> Path | None:
    """Pre- against post-activation per (network, data set): each seed as a small dot, the mean as
    a large one with its 95% interval (Student's t over the seeds), the difference written above;
    the axis spans the measured errors, so that a gap of a few tenths is visible."""
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
    fig, axes = plt.subplots(1, len(cells), figsize=(max(6, 3.2 * len(cells)), 5.4), squeeze=False)
    for ax, (key, v) in zip(axes[0], cells.items()):
        means = {}
        for j, variant in enumerate(("pre", "post")):
            if not v[variant]:
                continue
            m, half = mean_interval(v[variant])
            means[variant] = m
            ax.plot([j] * len(v[variant]), v[variant], "o", color=COLORS[j], alpha=0.45, markersize=4,
                    label=f"{variant}-act.: each seed (n={len(v[variant])})")
            ax.errorbar([j + 0.12], [m], yerr=None if half is None else [half], fmt="D", color=COLORS[j],
                        capsize=5, markersize=7, label=f"{variant}-act.: mean" + ("" if half is None else " ± 95% interval"))
            ax.annotate(f"{m:.2f}", (j + 0.12, m), textcoords="offset points", xytext=(8, -3), fontsize=8)
            p = papers.get((key, variant))
            if p is not None:  # the paper's figure (runs of the reduced budgets have none)
                ax.plot([j - 0.15], [p], marker="_", markersize=16, markeredgewidth=2.5, color="black",
                        label="paper")
        if len(means) == 2:
            ax.set_title(f"pre − post = {means['pre'] - means['post']:+.2f} points", fontsize=9)
        ax.set_xticks([0, 1])
        ax.set_xticklabels(["pre-activation", "post-activation"], fontsize=8)
        ax.set_xlim(-0.5, 1.6)
        ax.margins(y=0.08)
        ax.set_xlabel(names[key], fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("final test error (%)")
    fig.suptitle(f"Pre- vs post-activation layers{title}", fontsize=10)
    # One legend under the panels (inside a panel it would hide the intervals' ends), each entry
    # once: every panel draws the same kinds of marks.
    entries = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(entries.values(), entries.keys(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    return _finish(fig, path, rect=(0, 0.1, 1, 1))


def data_efficiency(results: Sequence["RunSummary"], path: Path, title: str = "") -> Path | None:
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


def study_plots(study: "Study", results: Sequence["RunSummary"], out: Path, title_suffix: str = "") -> list[Path]:
    written = []
    for name in study.plots:
        p = PLOTS[name](results, Path(out) / f"{name}.png", title_suffix)
        if p is not None:
            written.append(p)
    return written
