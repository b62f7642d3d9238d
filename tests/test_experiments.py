"""Experiments: the per-row configs, the studies' command lines, a smoke study run end to end
through the runner, the report's numbers against the logs, bad roots and broken logs, the plots,
the feature-reuse heatmap on a hand-built kernel, the gradient-flow and data-efficiency
measurements, and the runner as the one command of the studies and the analyses.

Only the ``..._end_to_end`` tests train (tiny runs of a few steps, with cheap compilation);
everything else reads hand-written logs or traces models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dnjax import config_files, config_lib, published
from experiments import feature_reuse, plots, report, run, studies

REPO = Path(__file__).resolve().parents[1]


def config_from_args(args: list[str]):
    """Builds the config a ``dnjax.main`` argument list describes, as the command line does: the
    config file with its argument, then each --config.FIELD=VALUE typed by the field."""

    overrides, rest = config_files.split_overrides(args)
    flags = dict(a[2:].split("=", 1) for a in rest if a.startswith("--"))
    assert set(flags) == {"config", "workdir"}, flags
    assert (REPO / flags["config"].partition(":")[0]).is_file(), flags["config"]
    return config_files.load_config_file(flags["config"], overrides)


def print_lines(capsys, *argv) -> list[str]:
    assert run.main(list(argv)) == 0
    out = capsys.readouterr().out
    return [line for line in out.splitlines() if line.strip()]


# 1. Configs: every published row is one documented command -------------------------------------


def test_cifar_configs_reach_every_published_row_with_its_recipe():
    from configs import cifar_densenet, cifar_resnet

    doc = cifar_densenet.__doc__
    for model in studies.TABLE2_DENSENETS:
        row = next(line for line in doc.splitlines() if line.startswith(f"| {model} "))
        for dataset in studies.TABLE2_DATASETS:
            paper = published.error(model, dataset)
            if paper is not None:
                assert f"{paper:.2f}" in row, (model, dataset, row)
            c = cifar_densenet.get_config(f"{model},{dataset}")
            assert c.model.name == model
            assert c.model.dropout_rate == (0.0 if dataset.endswith("+") else 0.2)
            assert c.data.augment == dataset.endswith("+")
            assert c.num_epochs == (40.0 if dataset == "svhn" else 300.0)
            assert c.data.dataset == {"svhn": "svhn_cropped"}.get(
                dataset, "cifar100" if "100" in dataset else "cifar10")
    for model in ("resnet110", "preact_resnet110", "resnet164", "preact_resnet164", "resnet1001", "preact_resnet1001"):
        c = cifar_resnet.get_config(f"{model},c100+")
        assert (c.model.name, c.batch_size, c.num_epochs, c.optim.nesterov) == (model, 128, 164.0, False)
        assert c.optim.warmup_epochs == (1.0 if model.endswith("resnet110") else 0.0)
        assert c.optim.decay_at == (0.5, 0.75)
        assert f"{published.error(model, 'c10+'):.2f}" in cifar_resnet.__doc__
    # The old single-argument form still means "the default network on this data set".
    assert cifar_densenet.get_config("cifar100").model.name == "densenet_bc100_k12"
    with pytest.raises(ValueError, match="neither a model"):
        cifar_densenet.get_config("resnet110,c10+")
    with pytest.raises(ValueError, match="two datasets"):
        cifar_densenet.get_config("c10,c100")


def test_imagenet_and_vgg_configs():
    from configs import cifar_vgg, imagenet, imagenet_densenet121

    for model in ("densenet121", "densenet169", "densenet201", "densenet264", "resnet50", "resnet101"):
        c = imagenet.get_config(model)
        assert (c.model.name, c.batch_size, c.num_epochs, c.data.dataset) == (model, 256, 90.0, "imagenet2012")
        assert [round(f * 90) for f in c.optim.decay_at] == [30, 60]
        assert f"{published.error(model, 'imagenet'):.2f}" in imagenet.__doc__
        config_lib.validate(c)
    assert imagenet_densenet121.get_config().to_dict() == imagenet.get_config("densenet121").to_dict()
    with pytest.raises(ValueError, match="not an ImageNet network"):
        imagenet.get_config("densenet40_k12")
    c = cifar_vgg.get_config("vgg16,c10")
    assert c.model.name == "vgg16" and c.model.get("dropout_rate") is None and not c.data.augment
    config_lib.validate(c)


# 2. The studies' command lines ------------------------------------------------------------------


@pytest.mark.parametrize("study", list(studies.STUDIES))
def test_print_lists_exactly_the_study_runs(capsys, study, tmp_path):
    root = str(tmp_path / "root")
    lines = print_lines(capsys, study, f"--root={root}", "--print")
    expected = studies.STUDIES[study].runs
    assert len(lines) == len(expected)
    for line, r in zip(lines, expected):
        args = shlex.split(line)
        assert args[:3] == ["python", "-m", "dnjax.main"]
        assert f"--workdir={root}/{r.name}" in args
        config = config_from_args(args[3:])
        config_lib.validate(config)  # a real, valid run configuration
        assert config.seed == r.seed
        if r.train_fraction not in (None, 1.0):  # a subset of the training set has no published figure
            assert r.paper is None and config.data.train_fraction == r.train_fraction
            continue
        assert published.error(config.model.name, r.config.split(",")[-1], config.model.get("activation")) == r.paper
    assert not Path(root).exists()  # printing starts nothing and writes nothing


def test_study_contents():
    t2 = {r.name: r for r in studies.STUDIES["table2"].runs}
    # 5 DenseNets x 5 columns + DenseNet-BC-190 on C10+/C100+, 9 ResNet rows, VGG-16
    assert len(t2) == 25 + 2 + 9 + 1
    assert t2["densenet_bc190_k40_c100+"].paper == 17.18 and "densenet_bc190_k40_c10" not in t2
    assert t2["densenet40_k12_svhn"].paper == 1.79 and t2["resnet110_c10+"].paper == 6.43
    assert t2["vgg16_c10+"].paper is None
    pp = studies.STUDIES["pre_vs_post_activation"].runs
    assert len(pp) == 2 * 2 * 2 * len(studies.PRE_POST_SEEDS)
    post = [r for r in pp if r.variant == "post" and r.model == "densenet_bc100_k12"]
    assert {r.paper for r in post} == {5.18, 24.30}
    assert all(("model.activation", "post") in r.overrides for r in post)
    assert {r.model for r in pp if r.family.endswith("ResNet")} == {"resnet164", "preact_resnet164"}
    rvd = studies.STUDIES["resnet_vs_densenet"].runs
    assert {r.model for r in rvd} >= {"densenet_bc100_k12", "preact_resnet164", "preact_resnet1001"}
    assert all(r.dataset == "C100+" for r in rvd)


def test_families_and_smoke_stand_ins_are_the_zoos_kinds_of_network():
    expected = {  # zoo network -> (family line of the plots, tiny stand-in of the smoke budget)
        "densenet40_k12": ("DenseNet", "densenet_tiny"), "densenet100_k24": ("DenseNet", "densenet_tiny"),
        "densenet_bc100_k12": ("DenseNet-BC", "densenet_bc_tiny"), "densenet_bc190_k40": ("DenseNet-BC", "densenet_bc_tiny"),
        "resnet110": ("ResNet", "resnet_tiny"), "resnet1001": ("ResNet", "resnet_tiny"),
        "preact_resnet164": ("pre-act. ResNet", "preact_resnet_tiny"), "vgg16": ("VGG", "vgg_tiny"),
    }
    smoke = {r.name: r for r in studies.study_runs("table2", "smoke")}
    seen = set()
    for r in studies.STUDIES["table2"].runs:
        if r.model in expected:
            seen.add(r.model)
            assert (r.family, dict(smoke[r.name].overrides)["model.name"]) == expected[r.model], r.name
    assert seen == set(expected)
    pp = studies.study_runs("pre_vs_post_activation", "smoke")
    assert {(r.stands_for, r.family, r.label) for r in pp if r.dataset.startswith("C10+")} == {
        ("DenseNet-BC (L=100, k=12)", "DenseNet-BC", "densenet_bc_tiny"),
        ("DenseNet-BC (L=100, k=12), post-act.", "DenseNet-BC (post-act.)", "densenet_bc_tiny, post-act."),
        ("pre-act. ResNet-164", "pre-act. ResNet", "preact_resnet_tiny"),
        ("ResNet-164", "ResNet", "resnet_tiny"),
    }
    # The kind is the module's, whatever the name: the ImageNet DenseNets are DenseNet-BCs, and a
    # builder's fields decide its stand-in.
    assert studies._family("densenet121") == "DenseNet-BC"
    bc = studies.StudyRun(name="bc", config=studies.DENSENET_CONFIG + ":densenet_cifar,c10+", dataset="C10+", label="bc",
                     family="", overrides=(("model.depth", 22), ("model.bottleneck", True), ("model.compression", 0.5)))
    assert studies._tiny_model(bc) == "densenet_bc_tiny"
    b = dataclasses.replace(bc, overrides=bc.overrides[:2])
    with pytest.raises(ValueError, match="no tiny stand-in for model 'densenet_cifar' \\(a DenseNet-B\\)"):
        studies._tiny_model(b)


def test_budgets_shrink_every_run(capsys, tmp_path):
    smoke = studies.study_runs("table2", "smoke")
    assert [r.name for r in smoke] == [r.name for r in studies.STUDIES["table2"].runs]
    for r in smoke:
        c = report.config_of_run(r)
        assert c.data.dataset == "digits" and c.model.name.endswith("_tiny") and r.paper is None
        config_lib.validate(c)
    sample = studies.study_runs("pre_vs_post_activation", "cifar10-sample", data_dir="/data")
    assert [r.name for r in sample] == [f"{net}_{v}_c10sample_s{s}" for net in ("densenet_bc16_k12", "resnet11")
                                        for v in ("pre", "post") for s in (0, 1)]
    assert sample[3].group == "densenet_bc16_k12_post_c10sample" and sample[3].seed == 1
    c = report.config_of_run(sample[3])
    assert (c.model.depth, c.model.activation, c.data.npz_train, c.num_epochs, c.seed) == (
        16, "post", "/data/train_10k.npz", 2.0, 1)
    # Without --data_dir: a class-balanced 20% of tfds cifar10 (subset seed 0), 2,000 test images;
    # the data-efficiency study's subsets are shares of that sample, drawn with each run's seed.
    for r in studies.study_runs("pre_vs_post_activation", "cifar10-sample"):
        c = report.config_of_run(r)
        config_lib.validate(c)
        assert (c.data.dataset, c.data.train_fraction, c.data.subset_seed, c.data.test_limit) == (
            "cifar10", 0.2, 0, 2000)
        assert c.data.npz_train is None and "shared" not in " ".join(r.args("w"))
    for r in studies.study_runs("data_efficiency", "cifar10-sample", seeds=(3,)):
        c = report.config_of_run(r)
        assert c.data.train_fraction == pytest.approx(0.2 * r.train_fraction) and c.data.subset_seed == 3
    for r in studies.study_runs("resnet_vs_densenet", "cifar100-cpu"):
        c = report.config_of_run(r)
        assert (c.data.dataset, c.data.num_classes, c.data.train_fraction) == ("cifar100", 100, None)
    # C100+ has no sample of its own: its runs collapse onto the C10+ ones instead of repeating them.
    assert len(studies.study_runs("resnet_vs_densenet", "cifar10-sample")) == 2
    lines = print_lines(capsys, "pre_vs_post_activation", f"--root={tmp_path}", "--smoke", "--print",
                        "--only=resnet164_post_c100+_s2")
    assert len(lines) == 1 and "--config.model.name=resnet_tiny" in lines[0] and "--config.seed=2" in lines[0]


def test_cifar100_budget_prints_valid_commands(capsys, tmp_path):
    """--budget=cifar100-cpu: equal-size stand-ins on both CIFAR-100 files, the C100+ recipe for both
    families, and the full-size network's published error as the reference."""
    rvd = studies.study_runs("resnet_vs_densenet", "cifar100-cpu", data_dir="/c100")
    pvp = studies.study_runs("pre_vs_post_activation", "cifar100-cpu", data_dir="/c100")
    assert [r.name for r in rvd] == ["densenet_bc22_k12_c100cpu", "preact_resnet8_c100cpu"]
    assert [r.name for r in pvp] == [f"{net}_{v}_c100cpu" for net in ("densenet_bc22_k12", "resnet8")
                                     for v in ("pre", "post")]
    assert [r.reference for r in rvd] == [published.error("densenet_bc100_k12", "c100+"),
                                          published.error("preact_resnet164", "c100+")]
    assert [r.reference for r in pvp if r.model == "resnet_cifar"] == [published.error("preact_resnet164", "c100+"),
                                                                       published.error("resnet164", "c100+")]
    lines = print_lines(capsys, "pre_vs_post_activation", f"--root={tmp_path}", "--budget=cifar100-cpu",
                        "--print", "--data_dir=/c100")
    assert len(lines) == 4
    sizes = {}
    for line, r in zip(lines, pvp):
        argv = shlex.split(line)
        assert argv[:3] == ["python", "-m", "dnjax.main"] and f"--workdir={tmp_path}/{r.name}" in argv
        assert "--config.data.npz_train=/c100/train_part1.npz,/c100/train_part2.npz" in argv
        c = report.config_of_run(r)
        config_lib.validate(c)
        assert (c.batch_size, c.optim.nesterov, c.optim.learning_rate, c.optim.decay_at, c.data.augment,
                c.data.num_classes, c.num_epochs, c.eval_every_epochs) == (64, True, 0.1, (0.5, 0.75), True, 100, 2.0, 0.5)
        assert c.data.npz_test == "/c100/test.npz" and c.data.test_limit is None  # the whole test set
        if r.variant == "pre":
            sizes[r.model] = report.network_size(c)[0]
    # Roughly equal sizes: DenseNet-BC L=22 k=12 and ResNet-8 with 100 classes, within 5%.
    assert sizes == {"densenet_cifar": 77_986, "resnet_cifar": 81_140}


def test_slurm_script_has_one_task_per_run(capsys):
    runs = studies.STUDIES["resnet_vs_densenet"].runs
    assert run.main(["resnet_vs_densenet", "--root=/scratch/rvd", "--print", "--format=slurm"]) == 0
    script = capsys.readouterr().out
    assert f"#SBATCH --array=0-{len(runs) - 1}" in script
    names = shlex.split(re.search(r"^RUNS=\((.*)\)$", script, re.M).group(1))
    assert names == [r.name for r in runs]
    assert '--only="${RUNS[$SLURM_ARRAY_TASK_ID]}"' in script


def test_unknown_study_run_or_budget(capsys, tmp_path):
    assert run.main(["table3", f"--root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "'table3' is unknown" in err and "pre_vs_post_activation" in err
    assert run.main(["table2", f"--root={tmp_path}", "--only=densenet40_k12_c10", "--only=bogus"]) == 2
    assert "['bogus'] are not in study 'table2'" in capsys.readouterr().err
    assert report.main(["table3", f"--root={tmp_path}"]) == 2
    with pytest.raises(studies.StudyError, match="budget 'tiny' is unknown"):
        studies.study_runs("table2", "tiny")


def test_foreign_root_is_refused(capsys, tmp_path):
    (tmp_path / run.MANIFEST).write_text(json.dumps({"study": "table2", "budget": "full"}))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run.main(["resnet_vs_densenet", f"--root={tmp_path}"]) == 2
    assert "holds study 'table2'" in capsys.readouterr().err
    assert run.main(["table2", f"--root={tmp_path}", "--smoke"]) == 2  # same study, other budget
    assert "budget 'full'" in capsys.readouterr().err
    assert report.main(["resnet_vs_densenet", f"--root={tmp_path}"]) == 2
    assert "holds study 'table2'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # Without a manifest, run directories that are not the study's give it away.
    other = tmp_path / "other"
    (other / "someone_elses_run").mkdir(parents=True)
    (other / "someone_elses_run" / "config.json").write_text("{}")
    assert run.main(["table2", f"--root={other}", "--smoke"]) == 2
    assert "not part of study 'table2'" in capsys.readouterr().err
    # ... and so does a run of the study's name that trained another network (a full-budget run
    # met by a smoke invocation, say).
    mixed = tmp_path / "mixed"
    (mixed / "vgg16_c10+").mkdir(parents=True)
    (mixed / "vgg16_c10+" / "config.json").write_text(json.dumps({"model": {"name": "vgg16"}}))
    assert run.main(["table2", f"--root={mixed}", "--smoke", "--only=vgg16_c10+"]) == 2
    assert "vgg16_c10+" in capsys.readouterr().err and not (mixed / run.MANIFEST).exists()


# 3. Reports from hand-written logs ---------------------------------------------------------------

SMOKE_STUDY = "pre_vs_post_activation"


def write_log(workdir: Path, records: list[dict], torn: str | None = None) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (workdir / "metrics.jsonl").write_text(text + (torn or ""))


def finished_log(errors: list[float], final_loss: float, params: int = 5322) -> list[dict]:
    recs = [{"type": "event", "step": 0, "time": 0.0, "event": "started", "params": params}]
    for i, e in enumerate(errors, 1):
        recs.append({"type": "train", "step": 4 * i, "time": 1.0, "epoch": float(i), "loss": 2.0 / i})
        recs.append({"type": "eval", "step": 4 * i, "time": 1.0, "epoch": float(i), "test_error": e,
                     "test_loss": 1.0, "test_top5_error": 1.0, "test_count": 64})
    recs.append({"type": "final", "step": 4 * len(errors), "time": 2.0, "epoch": float(len(errors)),
                 "test_error": errors[-1], "test_loss": 1.0, "train_loss": final_loss})
    return recs


def table_rows(md: str, section_start: str) -> dict[str, list[str]]:
    """The rows of the Markdown table after ``section_start``, keyed by their first cell."""
    body = md.split(section_start, 1)[1]
    rows = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("| run |") and not line.startswith("| model |"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells)
        elif rows and not line.startswith("|"):
            break
    return rows


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A smoke root of the activation study: finished, crashed, failed and missing runs."""
    root = tmp_path_factory.mktemp("synthetic")
    (root / run.MANIFEST).write_text(json.dumps({"study": SMOKE_STUDY, "budget": "smoke"}))
    write_log(root / "densenet_bc100_k12_pre_c10+_s0", finished_log([40.0, 31.25, 34.375], 0.8125))
    write_log(root / "densenet_bc100_k12_pre_c10+_s1", finished_log([50.0, 37.5], 0.5))
    # seed 2 crashed mid-run: an eval was logged, then a torn line
    crashed = finished_log([12.5], 0.1)[:-1]
    write_log(root / "densenet_bc100_k12_pre_c10+_s2", crashed, torn='{"type": "train", "step": 6, "ti')
    write_log(root / "densenet_bc100_k12_post_c10+_s0", finished_log([60.0, 45.0], 1.25, params=5202))
    # this one failed: the runner recorded exit status 2
    write_log(root / "densenet_bc100_k12_post_c10+_s1", finished_log([70.0], 2.0)[:3])
    with (root / run.RUNNER_LOG).open("w") as f:
        f.write(json.dumps({"run": "densenet_bc100_k12_post_c10+_s1", "rc": 2}) + "\n")
    write_log(root / "resnet164_pre_c10+_s0", finished_log([80.0], 2.0)[:3]
              + [{"type": "event", "step": 4, "time": 1.0, "event": "preempted"}])
    return root


def test_report_table_holds_the_logged_numbers(synthetic_root, tmp_path):
    path, written, results = report.write_report(SMOKE_STUDY, synthetic_root, out=tmp_path)
    md = path.read_text()
    runs = table_rows(md, "## Runs")
    s0, s1 = runs["densenet_bc100_k12_pre_c10+_s0"], runs["densenet_bc100_k12_pre_c10+_s1"]
    # columns: run, status, seed, steps, epochs, final, best (epoch), train loss, params, note
    assert s0[1] == "finished" and s0[5] == "34.38" and s0[6] == "31.25 (2)" and s0[7] == "0.8125"
    assert s0[8] == "5322"  # the trained network's size, from the "started" event
    assert s1[5] == "37.50" and s1[6] == "37.50 (2)"
    # The summary row: mean ± sample std over the two finished seeds, not the crashed one.
    summary = table_rows(md, "| model |")
    pre = next(cells for label, cells in summary.items() if label == "densenet_bc_tiny" and "C10+" in cells[2])
    mean, std = np.mean([34.375, 37.5]), np.std([34.375, 37.5], ddof=1)
    assert pre[5] == f"{mean:.2f} ± {std:.2f} (n=2)"
    assert pre[6] == f"{np.mean([31.25, 37.5]):.2f} ± {np.std([31.25, 37.5], ddof=1):.2f} (n=2)"
    assert "2/3 finished" in pre[-1] and "densenet_bc100_k12_pre_c10+_s2: incomplete" in pre[-1]


def test_report_marks_crashed_failed_preempted_and_missing_runs(synthetic_root, tmp_path):
    results, budget = report.read_study(synthetic_root, SMOKE_STUDY, sizes=False)
    by = {r.run.name: r for r in results}
    assert budget == "smoke"
    crashed = by["densenet_bc100_k12_pre_c10+_s2"]
    assert crashed.status == "incomplete" and crashed.torn and crashed.final_error is None
    assert "torn" in crashed.note and "last logged step 4" in crashed.note
    failed = by["densenet_bc100_k12_post_c10+_s1"]
    assert failed.status == "failed" and "exit status 2" in failed.note and failed.final_error is None
    assert by["resnet164_pre_c10+_s0"].status == "preempted"
    assert by["resnet164_post_c100+_s2"].status == "missing"
    assert len(results) == len(studies.STUDIES[SMOKE_STUDY].runs)  # nothing dropped
    md = report.markdown(studies.STUDIES[SMOKE_STUDY], results, budget, synthetic_root)
    runs = table_rows(md, "## Runs")
    # The crashed run's logged 12.5% must not appear as a result anywhere.
    assert runs["densenet_bc100_k12_pre_c10+_s2"][5] == "—" and "12.50" not in md
    assert runs["resnet164_post_c100+_s2"][1] == "missing"


def test_report_flags_a_run_of_another_network(tmp_path):
    (tmp_path / run.MANIFEST).write_text(json.dumps({"study": SMOKE_STUDY, "budget": "smoke"}))
    wd = tmp_path / "resnet164_pre_c10+_s0"
    write_log(wd, finished_log([10.0], 0.1))
    (wd / "config.json").write_text(json.dumps({"model": {"name": "vgg_tiny"}}))
    results, _ = report.read_study(tmp_path, SMOKE_STUDY, sizes=False)
    r = next(r for r in results if r.run.name == wd.name)
    assert r.status == "mismatch" and r.final_error is None and "vgg_tiny" in r.note


def png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > 10_000, path
    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200 and float(np.std(img[..., :3])) > 0.05


def test_plots_are_written(synthetic_root, tmp_path):
    results, _ = report.read_study(synthetic_root, SMOKE_STUDY)
    assert plots.curves(results, tmp_path / "c.png") is not None
    assert plots.activation(results, tmp_path / "a.png") is not None
    for name in ("c.png", "a.png"):
        png_ok(tmp_path / name)
    # Figure 4: error against parameters and MACs needs the sizes of finished runs.
    assert plots.efficiency(results, tmp_path / "e.png") is not None
    png_ok(tmp_path / "e.png")
    nothing = [r for r in results if not r.finished]
    assert plots.efficiency(nothing, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


# 4. Feature reuse --------------------------------------------------------------------------------


def hand_built_block():
    """A block with c0 = 3 input channels, k = 2, two layers, and a transition to 4 channels.

    Every weight on a source's channels has the same magnitude (signs alternate, which the
    absolute value must undo); the magnitudes are chosen so the expected cells are exact."""
    c0, k = 3, 2

    def kernel(magnitudes, per_source, cout, hw=1):
        chans = np.concatenate([np.full(n, m) for m, n in zip(magnitudes, per_source)])
        w = np.broadcast_to(chans[None, None, :, None], (hw, hw, len(chans), cout)).copy()
        w[..., ::2] *= -1  # sign flips along the output channels
        return w

    layer1 = kernel([5.0], [c0], 8)  # 1x1 bottleneck, reads the block input only
    layer2 = kernel([1.0, 3.0], [c0, k], 8)
    transition = kernel([2.0, 4.0, 8.0], [c0, k, k], 4)
    return c0, k, [layer1, layer2], transition


def test_reuse_matrix_on_a_hand_built_kernel():
    c0, k, layers, transition = hand_built_block()
    m = feature_reuse.reuse_matrix(layers, transition, c0, k, normalize="none")
    assert m.shape == (3, 3)  # one row per source (input, layer 1, layer 2), one column per target
    expected = np.array([[5.0, 1.0, 2.0], [np.nan, 3.0, 4.0], [np.nan, np.nan, 8.0]])
    np.testing.assert_allclose(m, expected)  # NaN where a layer cannot see the source
    col = feature_reuse.reuse_matrix(layers, transition, c0, k)  # per target: max = 1
    np.testing.assert_allclose(col, expected / np.array([5.0, 3.0, 8.0]))
    blk = feature_reuse.reuse_matrix(layers, transition, c0, k, normalize="block")
    np.testing.assert_allclose(blk, expected / 8.0)
    # Per-channel means: a source with more channels of the same weight is not weighted higher.
    wide = feature_reuse.reuse_matrix([layers[0], np.ones((3, 3, 5, 2))], None, c0, k, normalize="none")
    assert wide.shape == (3, 2) and wide[0, 1] == wide[1, 1] == 1.0
    with pytest.raises(ValueError, match="reads 5 channels"):
        feature_reuse.reuse_matrix([layers[1]], None, c0, k)


def test_block_matrices_of_a_densenet_follow_its_layout():
    import jax

    from dnjax.models import get_model, summary

    # The module's real parameter tree (shapes by eval_shape), filled with random numbers.
    model = get_model("densenet_cifar", depth=22, growth_rate=4, bottleneck=True, compression=0.5)
    shapes = summary.abstract_variables(model, (8, 8, 3))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.normal(size=a.shape), shapes)
    blocks = feature_reuse.block_matrices(params)
    assert [b["layers"] for b in blocks] == [3, 3, 3]
    assert [b["reader"] for b in blocks] == ["transition", "transition", "classifier"]
    assert [b["input_channels"] for b in blocks] == [8, 10, 11]  # 2k, then floor(theta * m)
    for b in blocks:
        m = b["matrix"]
        assert m.shape == (4, 4)
        assert np.all(np.isnan(m[np.tril_indices(4, -1)])) and not np.any(np.isnan(m[np.triu_indices(4)]))
        np.testing.assert_allclose(np.nanmax(m, axis=0), 1.0)
    # The first column is the first layer's mean |w| over the block input, exactly.
    raw = feature_reuse.block_matrices(params, normalize="none")[1]["matrix"]
    assert raw[0, 0] == pytest.approx(np.abs(params["block2"]["layer01"]["conv1"]["kernel"]).mean())
    png = feature_reuse.plot(blocks, Path(os.environ.get("TMPDIR", "/tmp")) / f"reuse_{os.getpid()}.png")
    png_ok(png)
    png.unlink()
    with pytest.raises(ValueError, match="not a DenseNet"):
        feature_reuse.block_matrices({"stage1": {}})


# 5. A smoke study, end to end ---------------------------------------------------------------------

SMOKE_RUNS = ("densenet_bc100_k12_pre_c10+_s0", "densenet_bc100_k12_post_c10+_s0")


def runner(root: Path, cache: Path, *extra: str, study: str = SMOKE_STUDY,
           runs: tuple[str, ...] = SMOKE_RUNS) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "experiments.run", study, f"--root={root}", "--smoke",
           f"--set=compilation_cache_dir={cache}", *[f"--only={n}" for n in runs], *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_smoke_study_end_to_end(tmp_path):
    from dnjax import logs

    root = tmp_path / "study"
    proc = runner(root, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((root / run.MANIFEST).read_text())["study"] == SMOKE_STUDY
    exits = [json.loads(l) for l in (root / run.RUNNER_LOG).read_text().splitlines()]
    assert [(e["run"], e["rc"]) for e in exits] == [(n, 0) for n in SMOKE_RUNS]

    # A second invocation finds both runs finished and trains nothing.
    again = runner(root, tmp_path / "cache")
    assert again.returncode == 0 and again.stdout.count("finished already, skipped") == 2
    assert len((root / run.RUNNER_LOG).read_text().splitlines()) == 2

    path, written, _ = report.write_report(SMOKE_STUDY, root)
    md = path.read_text()
    rows = table_rows(md, "## Runs")
    for name in SMOKE_RUNS:
        records, torn = logs.read_jsonl(root / name / "metrics.jsonl")
        assert not torn
        final = next(r for r in records if r["type"] == "final")
        evals = [r for r in records if r["type"] == "eval"]
        best = min(evals, key=lambda r: r["test_error"])
        assert len(evals) == 2 and final["step"] == 8  # 2 epochs of 4 steps, evaluated each epoch
        assert rows[name][1] == "finished"
        assert rows[name][5] == f"{final['test_error']:.2f}"
        assert rows[name][6] == f"{best['test_error']:.2f} ({best['epoch']:g})"
        assert rows[name][7] == f"{final['train_loss']:.4f}"
        started = next(r for r in records if r.get("event") == "started")
        assert rows[name][8] == str(started["params"])
    assert [p.name for p in written] == ["curves.png", "activation.png"]
    for p in written:
        png_ok(p)
        assert f"({p.name})" in md

    # Figure 5 from the trained checkpoint: densenet_bc_tiny has 2 layers in each of 3 blocks.
    out = tmp_path / "reuse.png"
    assert run.main(["feature_reuse", f"--workdir={root / SMOKE_RUNS[1]}", f"--out={out}"]) == 0
    png_ok(out)
    blocks = json.loads(out.with_suffix(".json").read_text())
    same = tmp_path / "module" / "reuse.png"  # python -m experiments.feature_reuse: the same command
    assert feature_reuse.main([f"--workdir={root / SMOKE_RUNS[1]}", f"--out={same}"]) == 0
    assert json.loads(same.with_suffix(".json").read_text()) == blocks
    assert [len(b["matrix"]) for b in blocks] == [3, 3, 3]
    assert all(len(row) == 3 for b in blocks for row in b["matrix"])
    assert all(max(v for v in col if v is not None) == 1.0
               for b in blocks for col in zip(*b["matrix"]))


def test_cost_of_a_full_run_from_the_step_time():
    from experiments import cost

    c = cost.Cost(model="densenet_bc100_k12", label="DenseNet-BC (L=100, k=12)", params=800_032, batch=64,
                  memory_efficient=False, epochs=300.0, step_s=0.5, step_s_min=0.4, compile_s=10.0, device="cpu", date="2026-12-02")
    assert c.steps_per_epoch == 781  # 50,000 // 64: the trainer drops the last, partial batch
    assert c.epoch_s == 390.5 and c.total_s == 117_150.0
    assert [cost.duration(s) for s in (90, 7200, 117_150, 400_000)] == ["1.5 min", "2.0 h", "32.5 h", "4.6 days"]
    row = cost.table([c]).splitlines()[-1]
    assert row == "| DenseNet-BC (L=100, k=12) | 800,032 | 64 | 300 | 0.50 s | 6.5 min | 32.5 h |"
    # Each network of the comparison has a C100+ config whose schedule the table uses.
    assert {studies.paper_run(m, "c100+").config.split(":")[0] for m in cost.MODELS} == {
        studies.DENSENET_CONFIG, studies.RESNET_CONFIG}


# 6. The seed's claims: data efficiency and gradient flow -------------------------------------------


def test_data_efficiency_study_pairs_equal_networks_on_nested_subsets_with_equal_steps():
    full = studies.study_runs("data_efficiency", "full")
    assert [r.name for r in full] == [r.name for r in studies.STUDIES["data_efficiency"].runs]
    assert len(full) == len(studies.DATA_FRACTIONS) * len(studies.DATA_MODELS) * len(studies.DATA_SEEDS["full"])
    assert {r.model for r in full} == {"densenet_bc100_k12", "resnet56"}
    for r in full:
        c = report.config_of_run(r)
        config_lib.validate(c)
        # the DenseNet recipe and the steps of the whole training set (300 epochs of 50,000 at 64) for every run
        assert (c.batch_size, c.optim.nesterov, c.num_train_steps) == (64, True, 300 * (50_000 // 64))
        assert (c.data.train_fraction, c.data.subset_seed) == (r.train_fraction, r.seed)
    sample = studies.study_runs("data_efficiency", "cifar10-sample", data_dir="/data")
    assert [r.name for r in sample] == [f"{net}_{pct}pct_c10sample_s0" for pct in ("10", "25", "50", "100")
                                        for net in ("densenet_bc22_k12", "resnet8")]
    sizes = {}
    for r in sample:
        c = report.config_of_run(r)
        config_lib.validate(c)
        assert (c.num_train_steps, c.batch_size, c.optim.learning_rate, c.optim.nesterov, c.data.npz_train) == (
            studies.data_efficiency_steps("cifar10-sample"), 64, 0.1, True, "/data/train_10k.npz")
        assert c.eval_every_epochs == pytest.approx(0.5 / r.train_fraction)  # about the same steps for every subset
        sizes[c.model.name] = report.network_size(c)[0]
    assert studies.data_efficiency_steps("cifar10-sample") == 10_000 // 64
    assert sizes == {"densenet_cifar": 71_686, "resnet_cifar": 75_290}  # equal within 5%
    c100 = studies.study_runs("data_efficiency", "cifar100-cpu", data_dir="/c100")
    assert len(c100) == 8 and all(report.config_of_run(r).num_train_steps == 2 * (50_000 // 64) for r in c100)


DE_SMOKE_RUNS = ("densenet_bc100_k12_c100+_10pct_s0", "densenet_bc100_k12_c100+_10pct_s1")


@pytest.mark.slow
def test_data_efficiency_smoke_study_end_to_end(tmp_path):
    from dnjax import logs

    root = tmp_path / "study"
    proc = runner(root, tmp_path / "cache", study="data_efficiency", runs=DE_SMOKE_RUNS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path, written, results = report.write_report("data_efficiency", root)
    md = path.read_text()
    errors = {}
    for name in DE_SMOKE_RUNS:
        records, _ = logs.read_jsonl(root / name / "metrics.jsonl")
        final = next(r for r in records if r["type"] == "final")
        assert final["step"] == studies.data_efficiency_steps("smoke")  # the same steps for every subset
        errors[name] = final["test_error"]
        assert table_rows(md, "## Runs")[name][5] == f"{final['test_error']:.2f}"
        config = json.loads((root / name / "config.json").read_text())
        assert config["data"]["train_fraction"] == float(name.split("_")[-2].removesuffix("pct")) / 100
    # the two seeds of the 10% subset are one row, mean ± std of the logged errors
    ten = [errors[n] for n in DE_SMOKE_RUNS[:2]]
    mean, std = np.mean(ten), np.std(ten, ddof=1)
    row = table_rows(md, "| model |")["densenet_bc_tiny, 10% of the training set"]
    assert row[5] == f"{mean:.2f} ± {std:.2f} (n=2)"
    assert [p.name for p in written] == ["data_efficiency.png"]
    png_ok(written[0])


def test_layer_gradient_norms_against_autodiff_and_by_hand():
    import jax
    import jax.numpy as jnp
    import optax

    from dnjax import models
    from experiments import gradient_flow

    model = models.get_model("vgg_tiny", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
    y = jnp.arange(6) % 10
    params = model.init(jax.random.key(0), x, train=False)["params"]
    norms = gradient_flow.layer_gradient_norms(model, params, x, y)
    assert [n["layer"] for n in norms] == ["stage1_conv1", "stage2_conv1", "stage3_conv1", "head"]

    def loss(p, images):
        logits, _ = model.apply({"params": p, "batch_stats": jax.tree.map(jnp.zeros_like, {})}, images,
                                train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (_, logits), (g_params, g_x) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    for n in norms:  # kernels: plain autodiff of the loss
        assert n["weight"] == pytest.approx(float(jnp.linalg.norm(g_params[n["layer"]]["kernel"])), rel=1e-5)
    # the first convolution reads the image itself
    assert norms[0]["input"] == pytest.approx(float(jnp.linalg.norm(g_x)), rel=1e-5)
    # the classifier's input, by hand: dL/dh = (softmax(logits) - onehot(y)) / B @ W^T
    dlogits = (jax.nn.softmax(logits) - jax.nn.one_hot(y, 10)) / x.shape[0]
    by_hand = np.linalg.norm(np.asarray(dlogits) @ np.asarray(params["head"]["kernel"]).T)
    assert norms[-1]["input"] == pytest.approx(by_hand, rel=1e-4)
    assert gradient_flow.ratio(norms, "weight") == pytest.approx(norms[0]["weight"] / norms[2]["weight"])


@pytest.mark.slow
def test_gradient_flow_smoke_end_to_end(tmp_path, capsys):
    from dnjax import logs

    assert run.main(["gradient_flow", f"--out={tmp_path}", "--smoke", "--steps=2", "--only=plain_tiny",
                     "--only=densenet_tiny"]) == 0
    data = json.loads((tmp_path / "gradient_flow.json").read_text())["networks"]
    assert [n["name"] for n in data] == ["plain_tiny", "densenet_tiny"]
    md = (tmp_path / "report.md").read_text()
    for n in data:
        records, _ = logs.read_jsonl(tmp_path / n["name"] / "metrics.jsonl")
        final = next(r for r in records if r["type"] == "final")
        assert final["step"] == n["steps"] == 2 and final["test_error"] == n["test_error"]
        assert len(n["init"]) == len(n["trained"]) > 2 and n["init"] != n["trained"]
        assert n["init_weight_ratio"] == pytest.approx(n["init"][0]["weight"] / n["init"][-2]["weight"])
        row = table_rows(md, "| network |")[n["label"]]
        assert row[3:5] == [f"{n['init_weight_ratio']:.3g}", f"{n['trained_weight_ratio']:.3g}"]
        assert row[-1] == f"{n['test_error']:.2f}"
    # densenet_tiny: stem, 3 blocks of 2 layers, 2 transitions, classifier
    assert len(data[1]["init"]) == 1 + 6 + 2 + 1
    png_ok(tmp_path / "gradient_flow.png")


def test_gradient_flow_refuses_a_missing_data_dir(tmp_path, capsys):
    from experiments import gradient_flow

    out = tmp_path / "out"
    assert gradient_flow.main([f"--out={out}", f"--data_dir={tmp_path / 'nowhere'}"]) == 2
    err = capsys.readouterr().err
    assert f"--data_dir={tmp_path / 'nowhere'} does not hold train_10k.npz and test_10k.npz" in err
    assert run.main(["gradient_flow", f"--out={out}", f"--data_dir={tmp_path / 'nowhere'}"]) == 2
    assert capsys.readouterr().err == err  # the runner's analysis is the same command
    assert not out.exists()


# 7. One entry point: the runner runs the studies and the analyses --------------------------------


def test_the_runner_lists_its_studies_and_analyses(capsys):
    assert set(run.ANALYSES) == {"gradient_flow", "feature_reuse"}
    assert not set(run.ANALYSES) & set(studies.STUDIES)  # a name means one thing
    for name, analysis in run.ANALYSES.items():
        assert analysis.module.__name__ == f"experiments.{name}"  # python -m experiments.NAME
    with pytest.raises(SystemExit) as stop:
        run.main(["--list"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, study in studies.STUDIES.items():
        assert any(line.split()[:3] == [name, str(len(study.runs)), "runs."] for line in lines), name
    for start in ("  table2                  37 runs. Every published CIFAR/SVHN row of the paper's Table 2",
                  "  gradient_flow           Gradient flow: the norm of the loss gradient that reaches each layer",
                  "  feature_reuse           Feature reuse in a trained DenseNet, the paper's Figure 5: how"):
        assert any(line.startswith(start) for line in lines), start
    with pytest.raises(SystemExit) as stop:  # like --help, whatever else is given
        run.main(["table2", "--root=/nowhere", "--list"])
    assert stop.value.code == 0 and "feature_reuse" in capsys.readouterr().out


def test_the_runner_hands_an_analysis_its_own_options(capsys, tmp_path):
    a = run.parse_args(["gradient_flow", "--out=gf", "--smoke", "--steps=2", "--only=plain_tiny"])
    assert (a.analysis, a.out, a.smoke, a.steps, a.only) == ("gradient_flow", "gf", True, 2, ["plain_tiny"])
    a = run.parse_args(["feature_reuse", "--workdir=w", "--step=78", "--normalize=block"])
    assert (a.analysis, a.workdir, a.step, a.normalize, a.out) == ("feature_reuse", "w", 78, "block", None)
    assert run.parse_args(["table2", "--root=r"]).analysis is None
    # An analysis's usage errors name the command that was typed.
    for argv, prog in ((["feature_reuse"], "python -m experiments.run feature_reuse"),
                       (["gradient_flow", "--steps=2"], "python -m experiments.run gradient_flow")):
        with pytest.raises(SystemExit) as stop:
            run.main(argv)
        assert stop.value.code == 2
        assert f"{prog}: error: the following arguments are required: --" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        feature_reuse.main([])
    assert "python -m experiments.feature_reuse: error: the following arguments are required: --workdir" in (
        capsys.readouterr().err)
    # The analysis's exit status and message come back through the runner.
    assert run.main(["feature_reuse", f"--workdir={tmp_path}"]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'checkpoints'} does not exist: is {tmp_path} the workdir of a trained run?\n"


@pytest.mark.parametrize("command", [["experiments.run", "gradient_flow"], ["experiments.gradient_flow"]])
def test_both_commands_of_an_analysis_run_it(tmp_path, command):
    """``python -m experiments.run gradient_flow`` and ``python -m experiments.gradient_flow`` from the
    repository root, up to the check of the data directory (nothing trains)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out, nowhere = tmp_path / "out", tmp_path / "nowhere"
    proc = subprocess.run([sys.executable, "-m", *command, f"--out={out}", f"--data_dir={nowhere}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"error: --data_dir={nowhere} does not hold train_10k.npz and test_10k.npz: give the "
                           "directory of the CIFAR-10 sample (train_10k.npz, test_10k.npz)\n")
    assert not out.exists()

