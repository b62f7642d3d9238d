"""The comparisons a study makes, each as a verdict that weighs a difference against the spread
over seeds.

A verdict compares the final test errors of two settings (groups of runs that differ only in the
seed): the difference of their means, its 95% confidence interval by Welch's t (two samples of
unequal variance, the Welch-Satterthwaite degrees of freedom), and whether the interval excludes
zero. With fewer than two finished seeds on either side the spread is unknown and the verdict says
so instead of giving an interval.

Which comparisons a study makes:

- a study with pre- and post-activation variants of a network (``activation`` among its plots):
  pre against post, per network and data set;
- a study with DenseNets and ResNets: each DenseNet setting against the ResNet setting of the same
  data set (and subset) nearest to it in parameters, the ratio of their parameters stated.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from typing import Sequence

from experiments.results import RunSummary
from experiments.studies import Study

LEVEL = 0.95
METHOD = "Welch's t"


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean(a) - mean(b), low, high, degrees of freedom): the ``level`` confidence interval of the
    difference of the means of two samples of unequal variance. Needs two values on each side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values on each side")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    se2 = va + vb
    if se2 == 0.0:
        return diff, diff, diff, float(len(a) + len(b) - 2)
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(se2)
    return diff, diff - half, diff + half, df


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``a`` against ``b``: the difference of their mean final test errors (a - b, in points)."""

    title: str
    a: str
    b: str
    errors_a: tuple[float, ...]
    errors_b: tuple[float, ...]
    note: str = ""

    @property
    def diff(self) -> float:
        return statistics.fmean(self.errors_a) - statistics.fmean(self.errors_b)

    @property
    def interval(self) -> tuple[float, float] | None:
        if len(self.errors_a) < 2 or len(self.errors_b) < 2:
            return None
        _, low, high, _ = welch(self.errors_a, self.errors_b)
        return low, high

    @property
    def excludes_zero(self) -> bool | None:
        iv = self.interval
        return None if iv is None else (iv[0] > 0 or iv[1] < 0)

    def line(self) -> str:
        ma, mb = statistics.fmean(self.errors_a), statistics.fmean(self.errors_b)
        head = (f"**{self.title}**: {self.a} {ma:.2f}% against {self.b} {mb:.2f}% "
                f"(n={len(self.errors_a)} and {len(self.errors_b)}){self.note}: difference {self.diff:+.2f} points")
        iv = self.interval
        if iv is None:
            return (head + "; one seed on a side, so the spread over seeds is unknown: a hint, not a result "
                    "(run more seeds with --seeds).")
        lower = self.a if self.diff < 0 else self.b
        verdict = (f"the interval excludes zero: {lower} has the lower error" if self.excludes_zero
                   else "the interval includes zero: no difference shown at this number of seeds")
        return head + f", 95% interval [{iv[0]:+.2f}, {iv[1]:+.2f}] ({METHOD}); {verdict}."


def _errors(rs: Sequence[RunSummary]) -> tuple[float, ...]:
    return tuple(r.final_error for r in rs if r.finished and r.final_error is not None)


def _settings(results: Sequence[RunSummary]) -> dict[str, list[RunSummary]]:
    out: dict[str, list[RunSummary]] = {}
    for r in results:
        out.setdefault(r.run.group, []).append(r)
    return out


def _activation_pairs(results: Sequence[RunSummary]) -> list[Verdict]:
    pairs: dict[str, dict[str, list[RunSummary]]] = {}
    for group, rs in _settings(results).items():
        v = rs[0].run.variant
        if v in ("pre", "post"):
            pairs.setdefault(group.replace(f"_{v}", "", 1), {})[v] = rs
    out = []
    for both in pairs.values():
        if set(both) != {"pre", "post"} or not _errors(both["pre"]) or not _errors(both["post"]):
            continue
        pre, post = both["pre"][0].run, both["post"][0].run
        out.append(Verdict(f"pre- vs post-activation, {pre.label.replace('pre-act. ', '')}, {pre.dataset}",
                           pre.label if pre.label != post.label else f"{pre.label} (pre)",
                           post.label, _errors(both["pre"]), _errors(both["post"])))
    return out


def _network(label: str) -> str:
    """A run's label without the subset it trained on ("..., 10% of the training set")."""
    return re.sub(r", [\d.]+% of the training set$", "", label)


def _family_pairs(results: Sequence[RunSummary]) -> list[Verdict]:
    settings = [rs for rs in _settings(results).values() if _errors(rs)]

    def params(rs):
        return next((r.params for r in rs if r.params), None)

    out = []
    for dn in settings:
        run = dn[0].run
        if not run.family.startswith("DenseNet") or params(dn) is None:
            continue
        rivals = [rs for rs in settings if "ResNet" in rs[0].run.family and params(rs)
                  and rs[0].run.dataset == run.dataset and rs[0].run.train_fraction == run.train_fraction]
        if not rivals:
            continue
        rn = min(rivals, key=lambda rs: abs(math.log(params(rs) / params(dn))))
        ratio = params(rn) / params(dn)
        share = "" if run.train_fraction is None else f", {run.train_fraction:.0%} of the training set"
        out.append(Verdict(f"DenseNet vs ResNet, {run.dataset}{share}", _network(run.label),
                           _network(rn[0].run.label), _errors(dn), _errors(rn),
                           note=f"; the ResNet has {ratio:.2f}x the parameters"))
    return out


def verdicts(study: Study, results: Sequence[RunSummary]) -> list[Verdict]:
    if "activation" in study.plots:
        return _activation_pairs(results)
    families = {r.run.family for r in results}
    if any(f.startswith("DenseNet") for f in families) and any("ResNet" in f for f in families) \
            and study.name != "table2":
        return _family_pairs(results)
    return []
