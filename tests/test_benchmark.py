"""The benchmark command on a tiny network, and the PyTorch reference's architecture (when torch is
installed): a smoke of the tools, not a timing. Nothing here asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dnjax.models import get_model, summary

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_command_writes_positive_figures(tmp_path, cache):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, "-m", "dnjax.benchmark", "--config=configs/cifar_densenet.py",
        "--config.model.name=densenet_bc_tiny", "--config.batch_size=4",
        f"--config.compilation_cache_dir={cache}", "--compilation_cache",
        "--steps=2", "--warmup=1", f"--json={out}", "--both_modes",
        "--variant_xla_option=xla_cpu_enable_fast_math=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "densenet_bc_tiny" in proc.stdout and "img/s" in proc.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["framework"], r["memory_efficient"], r["note"]) for r in rows] == [
        ("jax", False, ""), ("jax", True, ""),
        ("jax", False, "xla_cpu_enable_fast_math=False"), ("jax", True, "xla_cpu_enable_fast_math=False"),
    ]
    assert rows[0]["params"] == rows[1]["params"]
    # The memory-efficient mode keeps less for the backward pass, even in a two-layer block.
    assert rows[1]["temp_mib"] < rows[0]["temp_mib"]
    for row in rows:
        _check_row(row)


def test_benchmark_command_refuses_a_malformed_xla_option():
    cmd = [sys.executable, "-m", "dnjax.benchmark", "--config=configs/cifar_densenet.py",
           "--variant_xla_option=no_value"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--variant_xla_option='no_value': expected NAME=VALUE" in proc.stderr


def _check_row(row):
    assert row["framework"] == "jax" and row["batch"] == 4
    assert row["img_per_s"] > 0 and row["step_ms"] > 0 and len(row["step_ms_all"]) == 2
    assert row["model_gflops_per_img"] > 0
    # The train step (forward, backward, update) costs more than the forward pass it contains.
    assert row["step_gflops_per_img"] > 2 * row["model_gflops_per_img"]
    assert row["temp_mib"] > 0 and row["compile_s"] >= 0
    assert row["params"] == summary.count_params(
        summary.abstract_variables(get_model("densenet_bc_tiny"), (32, 32, 3))
    )
    assert row["device"].startswith(("cpu", "gpu", "tpu", "cuda")) and row["date"]


def test_memory_study_compiles_both_modes(fast_compile):
    from dnjax.benchmark import measure, memory

    base = measure.recipe(f"{ROOT}/{measure.RECIPE}")
    rows = memory.study([(10, 4)], batch=2, timed=set(), steps=1, log=lambda s: None, base=base)
    assert [r["mode"] for r in rows] == ["naive", "efficient"]
    assert all(r["temp_mib"] > 0 and r["params"] > 0 for r in rows)
    assert rows[0]["params"] == rows[1]["params"]
    assert "DenseNet-BC-10 k=4" in memory.table(rows)


@pytest.mark.parametrize(
    "name", ["densenet_bc_tiny", "densenet_tiny", "densenet_bc100_k12", "preact_resnet_tiny",
             "preact_resnet164"]
)
def test_torch_reference_has_the_same_parameter_count(name):
    torch_reference = pytest.importorskip("dnjax.benchmark.torch_reference")
    model = get_model(name)
    expected = summary.count_params(summary.abstract_variables(model, (32, 32, 3)))
    assert torch_reference.count_params(torch_reference.from_flax(model)) == expected
    if name == "densenet_bc100_k12":
        assert expected == 769_162


def test_torch_reference_trains_one_step():
    pytest.importorskip("torch")
    from dnjax.benchmark import measure

    c = measure.with_model(measure.recipe(f"{ROOT}/{measure.RECIPE}"), "densenet_bc_tiny")
    c.batch_size = 2
    step = measure.torch_step(c)
    step.run()
    assert step.measurement.params == 5_466


def test_one_table_for_measured_rows_and_saved_ones():
    """Both commands print through one formatter, from a run's rows or from its saved JSON."""
    import dataclasses

    from dnjax.benchmark import measure, table

    fast = measure.Measurement("jax", "densenet_bc100_k12", 256, "bfloat16", True, img_per_s=21_034.2,
                               step_ms=12.171, step_ms_min=11.5, compile_s=61.26, step_mib=5_123.4, mfu=0.0351)
    slow = measure.Measurement("torch (channels_last)", "densenet_bc100_k12", 256, "bfloat16", False,
                               img_per_s=14_022.8, step_ms=18.256, step_ms_min=17.25)
    text = table.format_table([fast, slow], table.GPU_COLUMNS)
    assert text == table.format_table([dataclasses.asdict(fast), dataclasses.asdict(slow)], table.GPU_COLUMNS)
    head, first, second = text.splitlines()
    assert head.split() == ["framework", "model", "batch", "dtype", "mem-eff", "img/s", "step", "ms", "min", "ms",
                            "compile", "s", "step", "MiB", "temp", "MiB", "MFU", "%"]
    assert first.split() == ["jax", "densenet_bc100_k12", "256", "bfloat16", "True", "21034", "12.2", "11.5",
                             "61.3", "5123", "-", "3.5"]
    assert second.split()[-7:] == ["14023", "18.3", "17.2", "-", "-", "-", "-"]
    q = table.speedup(fast, slow)
    assert q == pytest.approx({"median": 21_034.2 / 14_022.8, "fastest": 17.25 / 11.5})
    assert table.speedup(fast, dataclasses.replace(slow, img_per_s=None)) == {}
    assert table.speedup_line(fast, slow) == (
        "dnjax bfloat16 (memory_efficient=True) / torch (channels_last) bfloat16 (memory_efficient=False): "
        "1.50x median step, 1.50x fastest step")
