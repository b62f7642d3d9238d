"""The verdicts of a study's report against hand computations, and the curves drawn from fixed
metrics: a band and a mean line per setting, the legend naming the seeds."""

from __future__ import annotations

import math

import matplotlib
import pytest

from experiments import plots, studies, verdicts
from experiments.results import RunSummary

matplotlib.use("Agg")


def test_welch_interval_by_hand():
    # Equal variances and sizes: Welch's degrees of freedom are 2(n - 1) = 4; t(0.975, 4) = 2.776445.
    diff, low, high, df = verdicts.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = 2.776445 * math.sqrt(1 / 3 + 1 / 3)
    assert df == pytest.approx(4.0)
    assert (diff, low, high) == pytest.approx((-3.0, -3.0 - half, -3.0 + half), abs=1e-5)
    # Unequal variances: s² = 4 and 1 over n = 3; df = (4/3 + 1/3)² / ((4/3)²/2 + (1/3)²/2) = 50/17.
    _, _, _, df = verdicts.welch([20.0, 22.0, 24.0], [25.0, 26.0, 27.0])
    assert df == pytest.approx(50 / 17)
    with pytest.raises(ValueError):
        verdicts.welch([1.0], [2.0, 3.0])


def test_verdict_lines_say_what_the_interval_shows():
    clear = verdicts.Verdict("x", "A", "B", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    assert clear.excludes_zero and clear.diff == pytest.approx(-3.0)
    line = clear.line()
    assert "difference -3.00 points" in line and "[-5.27, -0.73]" in line and "Welch's t" in line
    assert "excludes zero: A has the lower error" in line
    noisy = verdicts.Verdict("x", "A", "B", (1.0, 5.0, 9.0), (4.0, 5.0, 6.0))
    assert noisy.excludes_zero is False and "includes zero" in noisy.line()
    one = verdicts.Verdict("x", "A", "B", (80.15,), (80.84,))
    assert one.interval is None and "spread over seeds is unknown" in one.line()


def result(name: str, group: str, seed: int, variant: str, errors: list[float], label: str = "net",
           family: str = "DenseNet-BC", params: int = 1000) -> RunSummary:
    run = studies.StudyRun(name=name, config="c", dataset="C10+", label=label, family=family, seed=seed,
                      group=group, variant=variant)
    evals = [(float(i + 1), e) for i, e in enumerate(errors)]
    train = [(0.05 * (i + 1), 2.0 - 0.01 * i - 0.1 * seed) for i in range(40)]
    return RunSummary(run, "finished", final_error=errors[-1], evals=evals, train=train, params=params)


def activation_results():
    out = []
    for variant, base in (("pre", 50.0), ("post", 52.0)):
        for seed in (0, 1, 2):
            out.append(result(f"net_{variant}_s{seed}", f"net_{variant}", seed, variant,
                              [base + 10 + seed, base + seed], label=f"net {variant}"))
    return out


def test_a_study_compares_pre_with_post_and_densenets_with_resnets():
    (v,) = verdicts.verdicts(studies.STUDIES["pre_vs_post_activation"], activation_results())
    assert v.errors_a == (50.0, 51.0, 52.0) and v.errors_b == (52.0, 53.0, 54.0)
    assert v.diff == pytest.approx(-2.0)
    mixed = [result("d", "d", 0, "", [30.0], "DenseNet-BC x", params=1000),
             result("r_small", "r_small", 0, "", [35.0], "ResNet small", "pre-act. ResNet", params=1100),
             result("r_big", "r_big", 0, "", [33.0], "ResNet big", "pre-act. ResNet", params=9000)]
    (v,) = verdicts.verdicts(studies.STUDIES["resnet_vs_densenet"], mixed)
    assert v.b == "ResNet small" and "1.10x the parameters" in v.line()  # the nearest in parameters


def test_curves_draw_a_mean_and_a_band_per_setting_and_name_the_seeds():
    fig = plots.curves_figure(activation_results())
    ax_err, ax_loss = fig.axes[:2]
    for ax in (ax_err, ax_loss):
        assert len(ax.collections) == 2  # one band per setting
        labels = [line.get_label() for line in ax.get_lines()]
        assert labels == ["net pre (mean of seeds 0, 1, 2)", "net post (mean of seeds 0, 1, 2)"]
    mean_pre = ax_err.get_lines()[0]
    assert list(mean_pre.get_xdata()) == [1.0, 2.0] and list(mean_pre.get_ydata()) == pytest.approx([61.0, 51.0])
    band = ax_err.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(50.0) and band[:, 1].max() == pytest.approx(62.0)
    # The loss is averaged over windows: 40 points over 2 epochs become 8 windows of 0.25 epochs.
    loss = ax_loss.get_lines()[0]
    assert list(loss.get_xdata()) == pytest.approx([0.25 * k for k in range(1, 9)])
    assert loss.get_ydata()[0] == pytest.approx(2.0 - 0.01 * 2 - 0.1)  # seeds 0-2 of the first 5 points
    matplotlib.pyplot.close(fig)
