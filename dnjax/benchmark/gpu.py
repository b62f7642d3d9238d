"""The GPU measurements of ``benchmarks/gpu.sh``, all in one process within one time budget.

    python3 -m dnjax.benchmark.gpu --out DIR [--budget 400] [--data .gpudata] [--train_seconds 120] \
        [--config configs/cifar_densenet.py:densenet_bc100_k12,c10+]
    python3 -m dnjax.benchmark.gpu --dry_run --out DIR     # any machine, CPU too: tiny stand-ins

``benchmarks/gpu.sh`` runs ``dnjax.benchmark.gpu_check`` (the stack: versions, device, imports)
and then this, with a hard stop a little after the budget.

The run starts by naming the device it found, with the datasheet figures its MFU column uses
(``dnjax.benchmark.accelerator``: an H100 SXM or an H200; any other device is named as unknown and
its MFU left empty). The rows' optimizer and data settings come from the ``--config`` recipe
(C10+ by default; its path is relative to the current directory, the repository root under
gpu.sh). What runs, in which order and within what estimates is ``gpu_plan``.

Work runs in order of importance and each piece starts only if its estimated time still fits the
budget (estimates are corrected by the compile times seen so far), so a short budget cuts the least
important rows; the JSON is rewritten after every piece and each table is printed as soon as it is
measured, so a run stopped from outside still leaves its figures.

1. DenseNet-BC-100 k=12, batch 256, bfloat16: dnjax plain and memory-efficient, PyTorch eager
   (channels_last, autocast bf16, cuDNN autotuned); then a profile of these steps (a
   ``jax.profiler`` trace and the optimised HLO of both dnjax steps, PyTorch's profiler table), for
   diagnosing from one run.
2. DenseNet-BC-190 k=40, batch 64, float32: both modes in dnjax and in PyTorch (its memory-efficient
   mode is ``torch.utils.checkpoint`` of each bottleneck).
3. DenseNet-BC-100 k=12, batch 256, bfloat16 again, now beside ``torch.compile`` (whose compile
   time is the least predictable, hence after the rows above; the dnjax steps are not recompiled).
4. A short real training run: DenseNet-BC-100 k=12 on the npz sample in ``--data`` (C10+ recipe,
   as many epochs as ``--train_seconds`` allow), test error per epoch, time to each accuracy.
5. The rest of the matrix: BC-100 batch 64 and 256 in both dtypes, pre-activation ResNet-164, BC-190
   in bfloat16, ``torch.compile`` at batch 64.

Within a piece the steps of all its rows alternate (so they share the GPU's state), after which
each PyTorch step runs once alone to read its allocator peak. Every row reports img/s (median and
fastest step), compile time (dnjax: XLA compile, autotuning included; PyTorch: the first step,
cuDNN autotuning and for ``torch.compile`` the compilation), device memory of one step (dnjax: the
compiled step's buffers; PyTorch: ``max_memory_allocated`` over one step run alone) and model FLOP
utilisation against the chip's datasheet peak (``dnjax.benchmark.accelerator``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import gc
import glob
import gzip
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dnjax import config_lib
from dnjax.benchmark import accelerator, gpu_check, measure, table
from dnjax.benchmark.gpu_plan import PLAN, PRIOR_EAGER_FIRST, PRIOR_STEP, TRAIN, Budget, Group, make_config
from dnjax.exits import ExitStatus

GOAL_SPEEDUP_EAGER = 1.5  # dnjax bf16 batch 256 BC-100 over PyTorch eager
GOAL_SPEEDUP_COMPILE = 1.0  # ... over torch.compile
GOAL_MEMORY_FRACTION = 0.30  # memory-efficient over plain step memory, BC-190 k=40
GOAL_TIME_OVERHEAD = 0.10  # memory-efficient step time over plain, BC-190 k=40
ACCURACY_TARGETS = (50.0, 60.0, 70.0, 80.0)  # test accuracy (%) whose time-to is reported
STATED_ACCURACY = 70.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Measuring


class Bench:
    """The run's state: the compiled dnjax steps (reused by later pieces), the budget, the report."""

    def __init__(self, args, out: Path, recipe):
        self.args = args
        self.recipe = recipe
        self.dry = args.dry_run
        self.out = out
        self.budget = Budget(args.budget, self.dry)
        self.jax_cache: dict[tuple, measure.JaxStep] = {}
        self.torch_ok: bool | None = None
        self.report: dict[str, Any] = {}
        self.device_kind = jax.devices()[0].device_kind

    # ---- torch availability

    def have_torch(self) -> bool:
        if self.torch_ok is None:
            if self.args.no_torch:
                self.torch_ok = False
            else:
                try:
                    import torch  # noqa: F401

                    from dnjax.benchmark import torch_reference  # noqa: F401

                    self.torch_ok = True
                except ImportError as e:
                    log(f"PyTorch rows skipped: {e}")
                    self.torch_ok = False
        return self.torch_ok

    # ---- estimates

    def threads(self, g: Group) -> int:
        return g.compile_threads or self.args.compile_threads

    def group_estimate(self, g: Group) -> float:
        est = 0.0
        steps = self.args.steps + self.args.warmup
        n_rows = 0
        missing = 0
        for dtype in g.dtypes:
            for me in g.jax_modes:
                if (g.model, g.batch, dtype, me) not in self.jax_cache:
                    missing += 1
                n_rows += 1
            if self.have_torch():
                for variant, _ in g.torch:
                    est += self.budget.estimate("torch", g.model) if variant == "compile" else (
                        1.0 if self.dry else PRIOR_EAGER_FIRST)
                    n_rows += 1
        est += missing * self.budget.estimate("jax", g.model) / max(1, min(missing, self.threads(g)))
        step = 0.05 if self.dry else PRIOR_STEP.get(g.model, 0.1) * g.batch / 64
        est += n_rows * steps * step * 1.5
        if g.profile:
            est += 20.0 if g.profile == "all" else 5.0
        return est

    def train_estimate(self) -> float:
        return self.args.train_seconds + 0.5 * self.budget.estimate("jax", "densenet_bc100_k12") + 10.0

    # ---- building steps

    def jax_step(self, g: Group, dtype: str, me: bool) -> measure.JaxStep:
        key = (g.model, g.batch, dtype, me)
        if key not in self.jax_cache:
            js = measure.jax_step(make_config(self.recipe, g.model, g.batch, dtype, me, self.dry))
            self.budget.record("jax", g.model, js.measurement.lower_s + js.measurement.compile_s)
            self.jax_cache[key] = js
        return self.jax_cache[key]

    def torch_step(self, g: Group, dtype: str, variant: str, me: bool):
        cfg = make_config(self.recipe, g.model, g.batch, dtype, me, self.dry)
        ts = measure.torch_step(cfg, compile=variant == "compile")
        ts.measurement.memory_efficient = me
        t0 = time.perf_counter()
        ts.run()  # eager: cuDNN autotuning; compile: dynamo and inductor
        first = time.perf_counter() - t0
        ts.measurement.compile_s = first
        if variant == "compile":
            self.budget.record("torch", g.model, first)
        return ts

    # ---- one group

    def run_group(self, g: Group) -> dict[str, Any]:
        rows: list[measure.Measurement] = []
        runs, jax_steps, torch_steps, errors = [], [], [], []
        missing = [(d, me) for d in g.dtypes for me in g.jax_modes if (g.model, g.batch, d, me) not in self.jax_cache]
        if self.threads(g) > 1 and len(missing) > 1:
            # XLA compiles with the GIL released; autotuning then shares the GPU between compiles.
            with concurrent.futures.ThreadPoolExecutor(self.threads(g)) as ex:
                futures = [ex.submit(self.jax_step, g, d, me) for d, me in missing]
                concurrent.futures.wait(futures)
            for f in futures:
                if f.exception() is None:
                    f.result().measurement.note = f"compiled alongside {len(missing) - 1} other(s)"
        for dtype in g.dtypes:
            for me in g.jax_modes:
                cached = (g.model, g.batch, dtype, me) in self.jax_cache and (dtype, me) not in missing
                try:
                    js = self.jax_step(g, dtype, me)
                except Exception as e:  # noqa: BLE001 - recorded, the other rows go on
                    errors.append(f"dnjax {dtype} memory_efficient={me}: {type(e).__name__}: {_first_line(e)}")
                    log("error: " + errors[-1])
                    continue
                jax_steps.append(js)
                runs.append(js.run)
                rows.append(js.measurement)
                m = js.measurement
                log(f"  dnjax {m.model} batch {m.batch} {dtype} memory_efficient={me}: "
                    f"trace {m.lower_s:.1f} s, compile {m.compile_s:.1f} s"
                    + (" (compiled for an earlier piece)" if cached else ""))
            if not self.have_torch():
                continue
            for variant, me in g.torch:
                try:
                    ts = self.torch_step(g, dtype, variant, me)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"torch {variant} {dtype} memory_efficient={me}: {type(e).__name__}: {_first_line(e)}")
                    log("error: " + errors[-1])
                    traceback.print_exc()
                    continue
                torch_steps.append(ts)
                runs.append(ts.run)
                rows.append(ts.measurement)
                log(f"  {ts.measurement.framework} {dtype} memory_efficient={me}: first step {ts.measurement.compile_s:.1f} s")
        if runs:
            times = measure.time_side_by_side(runs, self.args.steps, self.args.warmup)
            for row, (wall, cpu) in zip(rows, times):
                row.record_steps(wall, cpu)
        peak_jax = measure.jax_peak_mib()
        for js in jax_steps:
            js.measurement.peak_mib = peak_jax  # the process's peak so far (no per-step reset in JAX)
        for ts in torch_steps:
            ts.measurement.step_mib = ts.measurement.peak_mib = _torch_alone_peak(ts)

        for row in rows:
            peak, _ = accelerator.peak_tflops(self.device_kind, row.dtype)
            row.peak_tflops = peak
            row.mfu = accelerator.model_flop_utilisation(_model_gflops(row, rows), row.img_per_s, peak)
            if row.model_gflops_per_img is None:
                row.model_gflops_per_img = _model_gflops(row, rows)
        result = {"key": g.key, "title": g.title, "status": "done" if rows else "error", "rows": [dataclasses.asdict(r) for r in rows],
                  "ratios": _ratios(rows), "errors": errors}
        log(table.format_table(rows, table.GPU_COLUMNS))
        for line in ratio_lines(rows):
            log("  " + line)
        if g.profile:
            try:
                result["profile"] = self.profile(g, jax_steps, torch_steps)
            except Exception as e:  # noqa: BLE001 - a profile is evidence, not a figure
                result["profile"] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
                traceback.print_exc()
        return result

    # ---- profile evidence

    def profile(self, g: Group, jax_steps, torch_steps) -> dict[str, Any]:
        out: dict[str, Any] = {}
        steps = 3
        if g.profile == "torch":
            jax_steps = []
        # Optimised HLO of each dnjax step, and counts read from it.
        if jax_steps:
            with gzip.open(self.out / f"hlo_{g.key}.txt.gz", "wt") as f:
                for js in jax_steps:
                    text = js.compiled.as_text()
                    tag = f"memory_efficient={js.measurement.memory_efficient}"
                    f.write(f"# ===== {g.key} dnjax {tag}\n{text}\n")
                    out[f"hlo_{tag}"] = accelerator.hlo_stats(text)
        # A jax.profiler trace of a few steps of each.
        trace_dir = Path(tempfile.mkdtemp(prefix="dnjax-trace-"))
        if jax_steps:
            jax.profiler.start_trace(str(trace_dir))
            try:
                for js in jax_steps:
                    with jax.profiler.TraceAnnotation(f"memory_efficient={js.measurement.memory_efficient}"):
                        for _ in range(steps):
                            js.run()
            finally:
                jax.profiler.stop_trace()
        planes = sorted(glob.glob(str(trace_dir / "**" / "*.xplane.pb"), recursive=True))
        if planes:
            out["jax_trace"] = accelerator.summarize_xplane(planes[-1])
            out["jax_trace_steps"] = steps
            dest = self.out / f"jax_trace_{g.key}.xplane.pb.gz"
            with open(planes[-1], "rb") as src, gzip.open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if dest.stat().st_size > 15 * 2**20:
                dest.unlink()
                out["jax_trace_file"] = "too large to keep"
            else:
                out["jax_trace_file"] = dest.name
        shutil.rmtree(trace_dir, ignore_errors=True)
        for ts in torch_steps:
            out[f"torch_profile_{ts.measurement.framework}"] = _torch_profile(ts, steps)
        for name, value in out.items():
            if name.startswith("torch_profile"):
                log(f"{name} ({steps} steps):\n{value}")
        for item in out.get("jax_trace", [])[: 2 if self.dry else None]:
            if item["line"].startswith(("XLA Ops", "Stream", "XLA Modules")) or self.dry:
                top = ", ".join(f"{t['name'][:60]} {t['ms']:.1f} ms" for t in item["top"][:6])
                log(f"jax trace {item['plane']} / {item['line']}: busy {item['busy_ms']:.1f} ms over "
                    f"{steps} steps of each mode; top: {top}")
        return out

    # ---- the training run

    def run_training(self, seconds: float) -> dict[str, Any]:
        from dnjax import logs, train

        data = Path(self.args.data)
        npz_train, npz_test = data / "train.npz", data / "test.npz"
        for p in (npz_train, npz_test):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing: run benchmarks/gpu_prepare.sh --data DIR first")
        c = make_config(self.recipe, "densenet_bc100_k12", 64, self.args.train_dtype, False, self.dry)
        c.data.dataset = "npz"
        c.data.npz_train = str(npz_train)
        c.data.npz_test = str(npz_test)
        if self.dry:
            c.data.train_limit, c.data.test_limit = 64, 32
        c.progress_bar = False
        c.compilation_cache_dir = ""
        c.log_every_steps = 50
        with np.load(npz_train) as d:
            n_train = len(d["label"]) if c.data.train_limit is None else min(len(d["label"]), c.data.train_limit)
        steps_per_epoch = n_train // c.batch_size
        step_s = self._step_estimate(c)
        compile_s = 0.5 * self.budget.estimate("jax", "densenet_bc100_k12")
        epoch_s = 1.15 * steps_per_epoch * step_s + 1.0
        epochs = 2 if self.dry else int(max(1, min(300, (seconds - compile_s) // epoch_s)))
        c.num_epochs = float(epochs)
        c.checkpoint_every_epochs = float(epochs)
        c.eval_every_epochs = 1.0
        workdir = Path(tempfile.mkdtemp(prefix="dnjax-gpu-train-"))
        command = (
            f"python -m dnjax.main --config={self.args.config} --workdir=WORKDIR "
            f"--config.data.dataset=npz --config.data.npz_train={npz_train} --config.data.npz_test={npz_test} "
            f"--config.dtype={c.dtype} --config.num_epochs={epochs} --config.checkpoint_every_epochs={epochs} "
            f"--config.progress_bar=False --config.compilation_cache_dir="
        )
        log(f"training: {c.model.name}, {n_train} images, batch {c.batch_size}, {c.dtype}, {epochs} epochs "
            f"(estimated {step_s * 1e3:.1f} ms a step, {epoch_s:.1f} s an epoch, {compile_s:.0f} s to compile); "
            f"same as: {command}")
        # A hard stop: past the deadline SIGTERM makes the trainer save and return ('preempted').
        deadline = max(seconds * 1.3, seconds + 30.0) + (600.0 if self.dry else 0.0)
        previous = signal.signal(signal.SIGTERM, lambda *_: None)  # none may end the benchmark here
        timer = threading.Timer(deadline, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.daemon = True
        t0 = time.perf_counter()
        timer.start()
        try:
            result = train.train_and_evaluate(c, workdir)
        finally:
            timer.cancel()
            signal.signal(signal.SIGTERM, previous)
        wall = time.perf_counter() - t0
        records = list(logs.records(workdir))
        shutil.copyfile(workdir / logs.METRICS_FILE, self.out / "train_metrics.jsonl")
        summary = training_summary(records, ACCURACY_TARGETS)
        summary.update({
            "status": result.status, "model": c.model.name, "dtype": c.dtype, "batch": c.batch_size,
            "train_images": n_train, "test_images": summary.get("test_count"), "epochs_planned": epochs,
            "seconds_planned": seconds, "wall_s": wall, "final": result.metrics, "command": command,
            "stated_accuracy": STATED_ACCURACY,
            "time_to_stated_accuracy_s": summary["time_to_accuracy_s"].get(f"{STATED_ACCURACY:g}"),
        })
        shutil.rmtree(workdir, ignore_errors=True)
        for e in summary["epochs"]:
            log(f"  epoch {e['epoch']:6.2f}  {e['time_s']:7.1f} s  test error {e['test_error']:6.2f}%")
        log(f"training: {result.status} after {wall:.0f} s; "
            + "; ".join(f"{k}% accuracy at {v:.0f} s" if v is not None else f"{k}% not reached"
                        for k, v in summary["time_to_accuracy_s"].items()))
        return summary

    def _step_estimate(self, c) -> float:
        """Seconds per training step: the benchmark's own step of this network, batch and dtype
        if it was measured, else the batch-256 step scaled, else a prior."""
        for (model, batch, dtype, me), js in self.jax_cache.items():
            m = js.measurement
            if model == "densenet_bc100_k12" and dtype == c.dtype and not me and m.step_ms:
                if batch == 64:
                    return m.step_ms / 1e3
                fallback = m.step_ms / 1e3 * 64 / batch * 1.6
                return fallback
        return 0.05 if self.dry else PRIOR_STEP["densenet_bc100_k12"]

    # ---- calibration

    def ceilings(self) -> dict[str, Any]:
        """Measured rates of one large matrix product (bf16, and float32 at default precision)."""

        n = 1024 if self.dry else 8192
        out = {"matmul_n": n}
        for dtype in ("bfloat16", "float32"):
            k1, k2 = jax.random.split(jax.random.key(0))
            a = jax.random.normal(k1, (n, n), dtype)
            b = jax.random.normal(k2, (n, n), dtype)
            f = jax.jit(lambda x, y: x @ y)
            f(a, b).block_until_ready()
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                f(a, b).block_until_ready()
                times.append(time.perf_counter() - t0)
            out[f"matmul_{dtype}_tflops"] = 2 * n**3 / statistics.median(times) / 1e12
        return out


# --------------------------------------------------------------------------------------------
# Module-level functions (the tests use them)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def _model_gflops(row, rows) -> float | None:
    if row.model_gflops_per_img:
        return row.model_gflops_per_img
    same = [r.model_gflops_per_img for r in rows if r.model == row.model and r.model_gflops_per_img]
    return same[0] if same else None


def _release_torch_cache() -> None:
    """Hands PyTorch's cached blocks of finished pieces back to the device, for JAX's later steps."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _torch_alone_peak(ts) -> float | None:
    """One more step of this PyTorch row alone, its allocator peak in MiB (None on a CPU)."""
    ts.reset_peak()
    ts.run()
    return ts.peak_mib()


def _torch_profile(ts, steps: int) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            ts.run()
    avg = prof.key_averages()
    for key in ("device_time_total", "cuda_time_total", "cpu_time_total"):
        try:
            return avg.table(sort_by=key, row_limit=25)
        except (AttributeError, KeyError, ValueError):
            continue
    return avg.table(row_limit=25)


def _pairs(rows) -> list[tuple[Any, Any]]:
    """(dnjax row, PyTorch row) of the same dtype, each row timed."""
    get = lambda r, k: r[k] if isinstance(r, dict) else getattr(r, k)
    return [(j, t) for j in rows if get(j, "framework") == "jax" and get(j, "img_per_s")
            for t in rows if get(t, "framework") != "jax" and get(t, "dtype") == get(j, "dtype")
            and get(t, "img_per_s")]


def _ratios(rows) -> list[dict[str, Any]]:
    """Each dnjax row over each PyTorch row of the same dtype: throughput of the median and of the
    fastest step."""
    return [{"jax_memory_efficient": j.memory_efficient, "torch": t.framework,
             "torch_memory_efficient": t.memory_efficient, "dtype": j.dtype, **table.speedup(j, t)}
            for j, t in _pairs(rows)]


def ratio_lines(rows) -> list[str]:
    return [table.speedup_line(j, t) for j, t in _pairs(rows)]


def training_summary(records: list[dict[str, Any]], targets=ACCURACY_TARGETS) -> dict[str, Any]:
    """Test error per evaluation and the time (from the run's start, compilation included) at
    which each target accuracy was first reached, from a run's metrics.jsonl records."""
    start = next((r["time"] for r in records if r.get("type") == "event" and r.get("event") == "started"), None)
    evals = [r for r in records if r.get("type") == "eval"]
    if start is None and evals:
        start = evals[0]["time"]
    first_train = next((r["time"] for r in records if r.get("type") == "train"), None)
    epochs = [{"epoch": r["epoch"], "step": r["step"], "time_s": r["time"] - start,
               "test_error": r["test_error"]} for r in evals]
    time_to: dict[str, float | None] = {}
    for acc in targets:
        hit = next((e for e in epochs if 100.0 - e["test_error"] >= acc), None)
        time_to[f"{acc:g}"] = hit["time_s"] if hit else None
    return {
        "epochs": epochs,
        "best_test_error": min((e["test_error"] for e in epochs), default=None),
        "time_to_accuracy_s": time_to,
        "first_log_s": first_train - start if first_train is not None and start is not None else None,
        "test_count": evals[-1].get("test_count") if evals else None,
    }


def goals(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The targets of the GPU figures, read off the measured rows (figures, not pass/fail tests)."""
    by_key = {g["key"]: g for g in groups if g.get("status") == "done"}
    out: dict[str, Any] = {}
    # Each ratio from rows timed side by side: eager in the first piece, torch.compile in its own.
    for key, torch_prefix, name, target in (
        ("bc100_b256_bf16", "torch (", "bc100_bf16_b256_vs_eager", GOAL_SPEEDUP_EAGER),
        ("bc100_b256_bf16_compile", "torch.compile", "bc100_bf16_b256_vs_compile", GOAL_SPEEDUP_COMPILE),
    ):
        g = by_key.get(key)
        if not g:
            continue
        jax_rows = [r for r in g["rows"] if r["framework"] == "jax" and r["img_per_s"]]
        best = max(jax_rows, key=lambda r: r["img_per_s"], default=None)
        ref = next((r for r in g["rows"] if r["framework"].startswith(torch_prefix) and r["img_per_s"]), None)
        if best:
            out[name] = _goal(best, ref, target)
    g = by_key.get("bc190_b64_fp32")
    if g:
        plain = next((r for r in g["rows"] if r["framework"] == "jax" and not r["memory_efficient"]), None)
        eff = next((r for r in g["rows"] if r["framework"] == "jax" and r["memory_efficient"]), None)
        if plain and eff:
            frac = accelerator.ratio(eff["step_mib"], plain["step_mib"])
            temp_frac = accelerator.ratio(eff["temp_mib"], plain["temp_mib"])
            over = accelerator.ratio(eff["step_ms"], plain["step_ms"])
            out["bc190_memory_fraction"] = {
                "value": frac, "temp_value": temp_frac, "target": f"<= {GOAL_MEMORY_FRACTION}",
                "met": frac is not None and frac <= GOAL_MEMORY_FRACTION}
            out["bc190_time_overhead"] = {
                "value": None if over is None else over - 1.0, "target": f"<= {GOAL_TIME_OVERHEAD}",
                "met": over is not None and over - 1.0 <= GOAL_TIME_OVERHEAD}
    return out


def _goal(jax_row, torch_row, target: float) -> dict[str, Any]:
    if torch_row is None:
        return {"value": None, "target": f">= {target}", "met": None, "note": "no PyTorch row"}
    q = table.speedup(jax_row, torch_row)
    return {"value": q["median"], "fastest": q["fastest"], "target": f">= {target}",
            "met": q["median"] >= target, "jax_memory_efficient": jax_row["memory_efficient"]}


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "jax_backend": jax.default_backend(),
                           "devices": [str(d) for d in jax.devices()],
                           "device_kind": jax.devices()[0].device_kind,
                           "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
                           "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                           "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "")}
    env.update({pkg: v for pkg, v in gpu_check.versions().items() if v is not None})
    if "torch" in sys.modules:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["torch_cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
        env["torch_matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return env


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_out", help="folder for gpu_benchmark.json and the evidence files")
    p.add_argument("--budget", type=float, default=390.0, help="seconds for everything")
    p.add_argument("--reserve", type=float, default=10.0, help="seconds kept back at the end")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per row before timing")
    p.add_argument("--data", default=".gpudata", help="folder with train.npz and test.npz")
    p.add_argument("--train_seconds", type=float, default=120.0, help="training run length")
    p.add_argument("--train_dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--only", default="", help="comma-separated piece keys to run (default: all)")
    p.add_argument("--no_torch", action="store_true", help="dnjax rows only")
    p.add_argument("--compile_threads", type=int, default=1,
                   help="compile a piece's dnjax steps in this many threads at once (faster start; "
                        "XLA's autotuning then shares the GPU)")
    p.add_argument("--dry_run", action="store_true",
                   help="tiny stand-in networks and sizes, any backend: rehearses every code path")
    p.add_argument("--config", default=measure.RECIPE,
                   help="config-file spec PATH[:ARG] of the recipe (optimizer, data settings) of every "
                        "row and of the training run; PATH relative to the current directory")
    args = p.parse_args(argv)
    try:
        recipe = measure.recipe(args.config)
        config_lib.validate(recipe)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    if args.dry_run:
        args.steps, args.warmup = min(args.steps, 2), min(args.warmup, 1)
        args.train_seconds = min(args.train_seconds, 30.0)
        # Nothing a dry run times means anything: compile with XLA's optimisations off (faster).
        jax.config.update("jax_disable_most_optimizations", True)
    elif jax.default_backend() != "gpu":
        print(f"error: JAX's backend is {jax.default_backend()!r}, not a GPU; run with --dry_run to "
              "rehearse on this machine", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {k for k in args.only.split(",") if k}
    known = {x if isinstance(x, str) else x.key for x in PLAN}
    if only - known:
        print(f"error: --only {sorted(only - known)}: unknown; choose from {sorted(known)}", file=sys.stderr)
        return ExitStatus.BAD_INPUT

    bench = Bench(args, out, recipe)
    device_line, device_record = gpu_check.device()
    report = bench.report
    report.update({
        "what": "dnjax and PyTorch train steps side by side in one process; a short training run",
        "device": measure.device_name(), "date": measure.today(), "dry_run": args.dry_run,
        "argv": sys.argv[1:], "budget_s": args.budget, "steps": args.steps, "warmup": args.warmup,
        "config": args.config, "accelerator": device_record,
        "peak_source": device_record.get("source"), "peaks_tflops": device_record.get("peak_tflops", {}),
        "goals_targets": {"speedup_vs_eager": GOAL_SPEEDUP_EAGER, "speedup_vs_compile": GOAL_SPEEDUP_COMPILE,
                          "memory_fraction": GOAL_MEMORY_FRACTION, "time_overhead": GOAL_TIME_OVERHEAD},
        "groups": [], "training": None, "skipped": [],
    })
    json_path = out / "gpu_benchmark.json"

    def save() -> None:
        report["elapsed_s"] = bench.budget.elapsed()
        report["environment"] = environment()
        report["goals"] = goals(report["groups"])
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, json_path)

    log(f"device: {report['device']}; budget {args.budget:.0f} s")
    log(device_line)
    try:
        report["ceilings"] = bench.ceilings()
        log("measured: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in report["ceilings"].items()))
    except Exception as e:  # noqa: BLE001
        report["ceilings"] = {"error": f"{type(e).__name__}: {_first_line(e)}"}
    save()

    for item in PLAN:
        key = item if isinstance(item, str) else item.key
        if only and key not in only:
            continue
        left = bench.budget.left() - args.reserve
        if item == TRAIN:
            est = bench.train_estimate()
            if left < est:
                # Train for what is left rather than not at all, if that is at least half the plan.
                shortened = left - (est - args.train_seconds)
                if shortened < 0.5 * args.train_seconds:
                    report["skipped"].append({"key": key, "estimate_s": est, "left_s": left})
                    log(f"\n== {key}: skipped (about {est:.0f} s needed, {left:.0f} s left)")
                    continue
                seconds = shortened
            else:
                seconds = args.train_seconds
            log(f"\n== training run ({seconds:.0f} s of training planned; {left:.0f} s of budget left)")
            try:
                report["training"] = bench.run_training(seconds)
            except Exception as e:  # noqa: BLE001
                report["training"] = {"status": "error", "error": f"{type(e).__name__}: {_first_line(e)}"}
                traceback.print_exc()
            save()
            continue
        est = bench.group_estimate(item)
        if left < est:
            report["skipped"].append({"key": key, "estimate_s": est, "left_s": left})
            log(f"\n== {item.title}: skipped (about {est:.0f} s needed, {left:.0f} s left)")
            continue
        log(f"\n== {item.title} (estimated {est:.0f} s, {left:.0f} s left)")
        t0 = time.perf_counter()
        try:
            result = bench.run_group(item)
        except Exception as e:  # noqa: BLE001 - the next pieces still run
            result = {"key": key, "title": item.title, "status": "error",
                      "error": f"{type(e).__name__}: {_first_line(e)}", "rows": []}
            traceback.print_exc()
        result["seconds"] = time.perf_counter() - t0
        result["estimate_s"] = est
        _release_torch_cache()
        report["groups"].append(result)
        save()

    save()
    print_summary(report)
    log(f"\nwrote {json_path} ({bench.budget.elapsed():.0f} s)")
    return ExitStatus.OK


def print_summary(report: dict[str, Any]) -> None:
    rows = [r for g in report["groups"] for r in g.get("rows", [])]
    log("\n======== summary: " + report["device"] + ", " + report["date"])
    if report.get("accelerator"):
        log(accelerator.describe(report["accelerator"]["device_kind"],
                                 report["accelerator"].get("jax_memory_limit_bytes")))
    if rows:
        log(table.format_table(rows, table.GPU_COLUMNS))
    for g in report["groups"]:
        for line in ratio_lines(g.get("rows", [])):
            log(f"{g['key']}: {line}")
        for err in g.get("errors", []) + ([g["error"]] if g.get("error") else []):
            log(f"{g['key']}: error: {err}")
    for name, v in report.get("goals", {}).items():
        if v.get("value") is None:
            log(f"goal {name}: not measured")
        else:
            log(f"goal {name}: {v['value']:.3f} (target {v['target']}): {'met' if v['met'] else 'MISSED'}")
    t = report.get("training")
    if t and t.get("status") != "error":
        reached = t["time_to_stated_accuracy_s"]
        log(f"training: {t['status']}, {len(t['epochs'])} epochs in {t['wall_s']:.0f} s, best test error "
            f"{t['best_test_error']}%, {t['stated_accuracy']:g}% accuracy "
            + ("not reached" if reached is None else f"at {reached:.0f} s"))
    elif t:
        log(f"training: error: {t['error']}")
    if report["skipped"]:
        log("skipped (budget): " + ", ".join(s["key"] for s in report["skipped"]))


if __name__ == "__main__":
    sys.exit(main())
