"""benchmarks/gpu.py rehearsed on the CPU (``--dry_run``: tiny stand-ins, every code path), and the
arithmetic its figures rest on. No GPU and no PyTorch needed; nothing here asserts a speed."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnjax.benchmark import accelerator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gpu = _load_script()

# Runs the script as __main__ with grain and tensorflow_datasets unimportable: a run on npz data
# must not need them (they are not on the GPU machine).
_WITHOUT_GRAIN = (
    "import runpy, sys; sys.modules['grain'] = None; sys.modules['tensorflow_datasets'] = None; "
    "runpy.run_path(%r, run_name='__main__')" % str(SCRIPT)
)


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
    keys = [x if isinstance(x, str) else x.key for x in gpu.PLAN]
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


def test_peak_rates_and_model_flop_utilisation():
    assert accelerator.peak_tflops("NVIDIA H200", "bfloat16") == (989.4, "H200 bfloat16")
    # float32 convolutions run as TF32 on Hopper in both frameworks: the TF32 rate applies.
    assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3", "float32") == (494.7, "H100 tf32")
    assert accelerator.peak_tflops("cpu", "bfloat16") == (None, "")
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
    ResNet row must not carry the DenseNet recipe's dropout field, say)."""
    from dnjax.benchmark import measure

    groups = [g for g in gpu.PLAN if not isinstance(g, str)]
    for g in groups:
        for dtype in g.dtypes:
            for me in set(g.jax_modes) | {m for _, m in g.torch}:
                for dry in (False, True):
                    c = gpu.make_config(g.model, g.batch, dtype, me, dry)
                    model = measure.build_model(c)
                    assert c.dtype == dtype
                    assert getattr(model, "memory_efficient", False) == (me and g.model.startswith("densenet"))
    assert {g.model for g in groups} == {"densenet_bc100_k12", "densenet_bc190_k40", "preact_resnet164"}
