"""The GPU run rehearsed on the CPU: ``python -m dnjax.benchmark.gpu --dry_run`` (tiny stand-ins,
every code path), ``benchmarks/gpu_prepare.sh`` and ``benchmarks/gpu.sh`` end to end as a GPU
machine runs them, the device lookup, and the arithmetic the figures rest on. No GPU and no
PyTorch needed; nothing here asserts a speed."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnjax.benchmark import accelerator, gpu, gpu_plan, measure

ROOT = Path(__file__).resolve().parents[1]
RECIPE = f"{ROOT}/{measure.RECIPE}"

# Runs the module as __main__ with grain and tensorflow_datasets unimportable: a run on npz data
# must not need them (they are not on the GPU machine).
_WITHOUT_GRAIN = (
    "import runpy, sys; sys.modules['grain'] = None; sys.modules['tensorflow_datasets'] = None; "
    "runpy.run_module('dnjax.benchmark.gpu', run_name='__main__', alter_sys=True)"
)

pytestmark = pytest.mark.slow  # whole runs in subprocesses


def _run(args, timeout=900):
    return subprocess.run([sys.executable, "-c", _WITHOUT_GRAIN, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _sample_npz(folder: Path, n_train=80, n_test=40) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, n in (("train", n_train), ("test", n_test)):
        np.savez(folder / f"{name}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 label=rng.integers(0, 10, n).astype(np.int32))
    return folder


def test_dry_run_writes_the_rows_the_profile_and_the_training_run(tmp_path):
    out = tmp_path / "out"
    data = _sample_npz(tmp_path / "data")
    # A budget no CPU exhausts: this test is about what is written, the next one about the cut.
    proc = _run(["--dry_run", "--no_torch", "--only", "bc100_b256_bf16,train", "--budget", "100000",
                 "--out", str(out), "--data", str(data)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary" in proc.stdout and "img/s" in proc.stdout and "epoch" in proc.stdout
    report = json.loads((out / "gpu_benchmark.json").read_text())
    assert report["dry_run"] is True and report["skipped"] == []
    assert report["ceilings"]["matmul_bfloat16_tflops"] > 0
    [group] = report["groups"]
    assert group["key"] == "bc100_b256_bf16" and group["status"] == "done" and group["errors"] == []
    rows = group["rows"]
    assert [(r["framework"], r["memory_efficient"], r["dtype"], r["batch"]) for r in rows] == [
        ("jax", False, "bfloat16", 8), ("jax", True, "bfloat16", 8)]
    for r in rows:
        assert r["img_per_s"] > 0 and 0 < r["step_ms_min"] <= r["step_ms"]
        assert len(r["step_ms_all"]) == report["steps"] == 2
        assert r["compile_s"] > 0 and r["model_gflops_per_img"] > 0
        # The step's memory holds its temporaries and more (arguments: the state and the batch).
        assert r["step_mib"] > r["temp_mib"] > 0
        assert r["mfu"] is None and r["peak_tflops"] is None  # no peak rate for a CPU
    assert rows[1]["step_mib"] < rows[0]["step_mib"]  # the memory-efficient mode keeps less
    assert group["ratios"] == []  # no PyTorch rows
    # Profile evidence: optimised HLO of both modes and a trace, as files and as summaries.
    prof = group["profile"]
    for mode in ("False", "True"):
        assert prof[f"hlo_memory_efficient={mode}"]["instructions"] > 50
    assert prof["jax_trace"] and all(item["busy_ms"] >= 0 for item in prof["jax_trace"])
    hlo = gzip.open(out / "hlo_bc100_b256_bf16.txt.gz", "rt").read()
    assert hlo.count("HloModule") == 2
    assert (out / prof["jax_trace_file"]).stat().st_size > 0
    # The training run: two epochs of the stand-in on 64 training images, tested on 32.
    t = report["training"]
    assert t["status"] == "finished" and t["epochs_planned"] == 2
    assert t["train_images"] == 64 and t["test_images"] == 32
    assert [e["epoch"] for e in t["epochs"]] == [1.0, 2.0]
    assert all(0 <= e["test_error"] <= 100 for e in t["epochs"])
    assert t["epochs"][0]["time_s"] < t["epochs"][1]["time_s"] <= t["wall_s"] + 1
    assert set(t["time_to_accuracy_s"]) == {"50", "60", "70", "80"}
    lines = (out / "train_metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["type"] == "eval" for line in lines) == 2


def test_budget_cuts_the_least_important_pieces(tmp_path):
    out = tmp_path / "out"
    proc = _run(["--dry_run", "--no_torch", "--budget", "0", "--out", str(out), "--data", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_benchmark.json").read_text())
    keys = [x if isinstance(x, str) else x.key for x in gpu_plan.PLAN]
    assert [s["key"] for s in report["skipped"]] == keys
    assert report["groups"] == [] and report["training"] is None
    assert "skipped (budget): " + ", ".join(keys) in proc.stdout


def test_refuses_to_run_the_real_measurements_without_a_gpu(tmp_path):
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    proc = _run(["--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert "not a GPU; run with --dry_run" in proc.stderr
    proc = _run(["--dry_run", "--only", "bc100_b256_bf16,nope", "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and "--only ['nope']: unknown" in proc.stderr
    # The recipe is a file: from another directory it must be named, and a wrong name says so.
    proc = _run(["--dry_run", "--config", "nowhere/cifar_densenet.py:densenet_bc100_k12,c10+",
                 "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --config=nowhere/cifar_densenet.py:densenet_bc100_k12,c10+: nowhere/cifar_densenet.py "
        "is not a file; run from the repository root or give the path of the config file, e.g. "
        "--config=/path/to/dnjax/configs/cifar_densenet.py:densenet_bc100_k12,c10+")


def test_the_two_lent_chips_are_recognised_by_their_driver_names():
    h100, h200 = accelerator.lookup("NVIDIA H100 80GB HBM3"), accelerator.lookup("NVIDIA H200")
    assert h100 is accelerator.H100_SXM and h200 is accelerator.H200_SXM
    assert (h100.memory_gb, h100.bandwidth_tb_s) == (80.0, 3.35)
    assert (h200.memory_gb, h200.bandwidth_tb_s) == (141.0, 4.8)
    for chip in (h100, h200):
        assert chip.peak_tflops == {"bfloat16": 989.4, "float16": 989.4, "tf32": 494.7, "float32": 66.9}
    assert accelerator.lookup("  nvidia h200 ") is h200  # the driver's case and padding aside
    # Cards of the same name with other clocks and memory are not guessed to be these.
    for kind in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", "cpu"):
        assert accelerator.lookup(kind) is None, kind
        assert accelerator.peak_tflops(kind, "bfloat16") == (None, "")


def test_the_device_line_and_record_name_the_figures_or_say_unknown():
    line = accelerator.describe("NVIDIA H200", 150 * 2**30)
    assert line.startswith("accelerator: NVIDIA H200 SXM 141 GB ('NVIDIA H200'): 141 GB HBM3e at 4.8 TB/s; "
                           "JAX may allocate 150.0 GiB; dense peaks bf16 989.4, tf32 494.7, fp32 66.9 TFLOP/s; "
                           "source: NVIDIA H200 Tensor Core GPU datasheet")
    assert "80 GB HBM3 at 3.35 TB/s" in accelerator.describe("NVIDIA H100 80GB HBM3")
    assert accelerator.describe("NVIDIA A100-SXM4-80GB") == (
        "accelerator: 'NVIDIA A100-SXM4-80GB' has no datasheet entry (known: 'NVIDIA H100 80GB HBM3', "
        "'NVIDIA H200'): MFU left empty")
    rec = accelerator.record("NVIDIA H100 80GB HBM3", 10)
    assert rec["known"] and rec["memory_gb"] == 80.0 and rec["bandwidth_tb_s"] == 3.35
    assert rec["peak_tflops"]["tf32"] == 494.7 and rec["jax_memory_limit_bytes"] == 10
    assert accelerator.record("cpu") == {"device_kind": "cpu", "known": False, "jax_memory_limit_bytes": None}


def test_peak_rates_and_model_flop_utilisation():
    assert accelerator.peak_tflops("NVIDIA H200", "bfloat16") == (989.4, "NVIDIA H200 SXM 141 GB bfloat16")
    # float32 convolutions run as TF32 on Hopper in both frameworks: the TF32 rate applies.
    assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == (494.7, "NVIDIA H100 SXM5 80 GB tf32")
    # DenseNet-BC-100 k=12: 287.9M multiply-accumulates per image forward, 0.5758 GFLOPs; a train
    # step is 3 forward passes. 20,000 img/s in bf16 on an H200: 34.55 TFLOP/s of 989.4.
    mfu = accelerator.model_flop_utilisation(0.5758, 20_000, 989.4)
    assert mfu == pytest.approx(3 * 0.5758e9 * 20_000 / 989.4e12) == pytest.approx(0.034918, rel=1e-4)
    assert accelerator.model_flop_utilisation(None, 20_000, 989.4) is None
    assert accelerator.model_flop_utilisation(0.5758, 20_000, None) is None


def test_compiled_step_memory_counts_arguments_unaliased_outputs_and_temporaries():
    x = jax.ShapeDtypeStruct((256, 1024), jnp.float32)  # 1 MiB
    donated = jax.jit(lambda a: a * 2, donate_argnums=0).lower(x).compile()
    kept = jax.jit(lambda a: a * 2).lower(x).compile()
    assert accelerator.compiled_step_mib(donated.memory_analysis()) == pytest.approx(1.0)
    assert accelerator.compiled_step_mib(kept.memory_analysis()) == pytest.approx(2.0)


def test_training_summary_and_goals_from_known_figures():
    records = [
        {"type": "event", "step": 0, "time": 100.0, "event": "started"},
        {"type": "train", "step": 50, "time": 130.0, "loss": 2.0},
        {"type": "eval", "step": 156, "time": 140.0, "epoch": 1.0, "test_error": 55.0, "test_count": 5000},
        {"type": "eval", "step": 312, "time": 142.5, "epoch": 2.0, "test_error": 35.0, "test_count": 5000},
        {"type": "eval", "step": 468, "time": 145.0, "epoch": 3.0, "test_error": 38.0, "test_count": 5000},
    ]
    s = gpu.training_summary(records)
    assert [e["time_s"] for e in s["epochs"]] == [40.0, 42.5, 45.0]
    assert s["time_to_accuracy_s"] == {"50": 42.5, "60": 42.5, "70": None, "80": None}
    assert s["best_test_error"] == 35.0 and s["first_log_s"] == 30.0 and s["test_count"] == 5000

    def row(fw, me, ips, ms_min, step_mib=None, temp=None):
        return {"framework": fw, "memory_efficient": me, "img_per_s": ips, "step_ms": 1e3 / ips,
                "step_ms_min": ms_min, "step_mib": step_mib, "temp_mib": temp}

    groups = [
        {"key": "bc100_b256_bf16", "status": "done", "rows": [
            row("jax", False, 30_000, 8.0), row("jax", True, 33_000, 7.5),
            row("torch (channels_last)", False, 20_000, 12.0)]},
        # torch.compile is compared with the dnjax steps timed beside it, in its own piece.
        {"key": "bc100_b256_bf16_compile", "status": "done", "rows": [
            row("jax", False, 31_000, 8.0), row("jax", True, 32_000, 7.5),
            row("torch (channels_last)", False, 20_000, 12.0),
            row("torch.compile (channels_last)", False, 36_000, 7.0)]},
        {"key": "bc190_b64_fp32", "status": "done", "rows": [
            row("jax", False, 1000, 60.0, 20_000, 19_000), row("jax", True, 950, 65.0, 5_000, 4_200)]},
    ]
    g = gpu.goals(groups)
    assert g["bc100_bf16_b256_vs_eager"]["value"] == pytest.approx(1.65)  # best dnjax mode: 33,000
    assert g["bc100_bf16_b256_vs_eager"]["met"] is True
    assert g["bc100_bf16_b256_vs_compile"]["value"] == pytest.approx(32 / 36)
    assert g["bc100_bf16_b256_vs_compile"]["fastest"] == pytest.approx(7.0 / 7.5)
    assert g["bc100_bf16_b256_vs_compile"]["met"] is False
    assert g["bc190_memory_fraction"]["value"] == pytest.approx(0.25) and g["bc190_memory_fraction"]["met"]
    assert g["bc190_time_overhead"]["value"] == pytest.approx(1000 / 950 - 1)
    assert g["bc190_time_overhead"]["met"] is True


def test_every_planned_row_has_a_valid_config():
    """Each row of the plan, full size and dry-run stand-in, is a config the trainer accepts (a
    ResNet row must not carry the DenseNet recipe's dropout field, say), of the right network."""
    recipe = measure.recipe(RECIPE)
    # A recipe that spells out its network's architecture must not pass it on to another network.
    recipe.model.growth_rate, recipe.model.depth = 12, 100
    groups = [g for g in gpu_plan.PLAN if not isinstance(g, str)]
    for g in groups:
        for dtype in g.dtypes:
            for me in set(g.jax_modes) | {m for _, m in g.torch}:
                for dry in (False, True):
                    c = gpu_plan.make_config(recipe, g.model, g.batch, dtype, me, dry)
                    model = measure.build_model(c)
                    assert c.dtype == dtype and c.optim.nesterov and c.optim.weight_decay == 1e-4
                    assert getattr(model, "memory_efficient", False) == (me and g.model.startswith("densenet"))
                    if g.model == "densenet_bc190_k40":
                        assert model.growth_rate == (4 if dry else 40)
    assert {g.model for g in groups} == {"densenet_bc100_k12", "densenet_bc190_k40", "preact_resnet164"}


def _prepared_tree(tmp_path: Path) -> Path:
    """The files a GPU machine gets (dnjax, configs, benchmarks; a git checkout, as the travel-size
    count reads it), prepared by gpu_prepare.sh from a small sample in the CIFAR-10 sample's
    layout. Needs PyPI, as the preparation does."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "ml-collections==1.1.0",
                            "-d", str(tmp_path / "probe")], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"PyPI is unreachable, and gpu_prepare.sh downloads from it: {probe.stderr.strip()[-200:]}")
    tree = tmp_path / "tree"
    for d in ("dnjax", "configs", "benchmarks"):
        shutil.copytree(ROOT / d, tree / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".gitignore", tree / ".gitignore")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=tree, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
    sample = tmp_path / "sample"
    rng = np.random.default_rng(0)
    sample.mkdir()
    for name, n in (("train_10k", 80), ("test_10k", 40)):
        np.savez(sample / f"{name}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 label=np.arange(n) % 10)
    prep = subprocess.run(["bash", "benchmarks/gpu_prepare.sh", "--data", str(sample)], cwd=tree,
                          capture_output=True, text=True, timeout=600)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    assert ".gpudata/train.npz: 80 images, classes [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]" in prep.stdout
    assert ".gpudata/test.npz: 40 images" in prep.stdout and "(limit 64 MiB)" in prep.stdout
    assert sorted(p.name.split("-")[0] for p in (tree / ".whl").glob("*.whl")) == ["ml_collections", "tensorboardx"]
    return tree


def test_gpu_sh_dry_run_end_to_end(tmp_path):
    """As a GPU machine runs it (the carried wheels installed with pip, the stack checked, the
    device named, the measurements), on the CPU with GPU_DRY_RUN=1; the training piece only."""
    tree = _prepared_tree(tmp_path)
    out, site = tmp_path / "out", tmp_path / "site"
    env = dict(os.environ, OUT=str(out), GPU_SITE=str(site), GPU_DRY_RUN="1", GPU_ARGS="--only train --no_torch",
               JAX_PLATFORMS="cpu")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "gpu.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    assert (site / "ml_collections").is_dir() and (site / "tensorboardX").is_dir()
    lines = log.splitlines()
    unknown = ("accelerator: 'cpu' has no datasheet entry (known: 'NVIDIA H100 80GB HBM3', 'NVIDIA H200'): "
               "MFU left empty")
    # Named by the stack check, before "imports ok", at the start of the measurements and in their
    # summary.
    assert lines.index(unknown) < lines.index("imports ok")
    start = next(i for i, line in enumerate(lines) if line.startswith("device: cpu: "))
    assert lines[start + 1] == unknown and lines.index("imports ok") < start
    summary = next(i for i, line in enumerate(lines) if line.startswith("======== summary: cpu: "))
    assert lines[summary + 1] == unknown
    assert "ml-collections 1.1.0" in lines and "== dnjax.benchmark.gpu exit status 0; files in " + str(out) + ":" in lines
    report = json.loads((out / "gpu_benchmark.json").read_text())
    assert report["accelerator"] == {"device_kind": "cpu", "known": False, "jax_memory_limit_bytes": None}
    assert report["config"] == measure.RECIPE and report["groups"] == []
    t = report["training"]
    assert t["status"] == "finished" and t["train_images"] == 64 and t["test_images"] == 32
    assert sum(json.loads(x)["type"] == "eval" for x in (out / "train_metrics.jsonl").read_text().splitlines()) == 2


def test_gpu_sh_without_wheels_stops_at_once(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "benchmarks", tree / "benchmarks")
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu.sh")], env=dict(os.environ, OUT=str(tmp_path / "out")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert ("error: no wheels in .whl/: run benchmarks/gpu_prepare.sh on a machine with PyPI access, and carry "
            ".whl") in proc.stdout + proc.stderr
