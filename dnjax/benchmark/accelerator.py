"""Figures for reading GPU measurements: the chip's peak rates, model FLOP utilisation, the device
memory of a compiled JAX step, and summaries of a profile and of an optimised HLO module.

Peak rates are the vendor's datasheet figures for dense (not sparse) arithmetic of the SXM parts:
the H200 has the H100's tensor cores and clocks (its memory is larger and faster), so both share
one table. float32 rows are measured with TF32 tensor-core arithmetic, which is what both XLA
(default precision) and PyTorch (``torch.backends.cudnn.allow_tf32``, on by default) use for float32
convolutions on these chips, so their utilisation is taken against the TF32 rate; the plain
float32 rate (no tensor cores) is listed for completeness.
"""

from __future__ import annotations

import collections
import re
from typing import Any

# TFLOP/s, dense. NVIDIA H100/H200 SXM datasheets: BF16 989.4 (1,979 with 2:4 sparsity), TF32 494.7
# (989 sparse), FP32 66.9.
HOPPER_SXM = {"bfloat16": 989.4, "float16": 989.4, "tf32": 494.7, "float32": 66.9}
PEAK_TFLOPS = {"H200": HOPPER_SXM, "H100": HOPPER_SXM}
PEAK_SOURCE = "NVIDIA H100/H200 SXM datasheet, dense: bf16 989.4, tf32 494.7, fp32 66.9 TFLOP/s"

# Forward, backward with respect to the inputs, backward with respect to the weights: the usual
# 3x the forward pass for a train step's model FLOPs (recomputation is not counted).
TRAIN_FLOPS_PER_FORWARD = 3.0


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, which rate) of a chip for a train step in ``dtype``; (None, '') if unknown.

    float32 maps to the TF32 tensor-core rate (see the module docstring)."""
    for name, table in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            rate = "tf32" if dtype == "float32" else dtype
            if rate in table:
                return table[rate], f"{name} {rate}"
    return None, ""


def model_flop_utilisation(model_gflops_per_img: float | None, img_per_s: float | None,
                           peak: float | None) -> float | None:
    """Fraction of ``peak`` TFLOP/s that a train step's model FLOPs (3 x the forward pass, which is
    ``model_gflops_per_img`` GFLOPs per image) reach at ``img_per_s``."""
    if not model_gflops_per_img or not img_per_s or not peak:
        return None
    return TRAIN_FLOPS_PER_FORWARD * model_gflops_per_img * 1e9 * img_per_s / (peak * 1e12)


def compiled_step_mib(memory_analysis: Any) -> float | None:
    """Device memory a compiled executable needs while it runs, in MiB: its arguments, its outputs
    that do not reuse (alias) a donated argument, and its temporaries. On a GPU this is XLA's
    buffer assignment, which is what the step allocates."""
    if memory_analysis is None:
        return None
    m = memory_analysis
    total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
             + m.temp_size_in_bytes)
    return total / 2**20


def ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


# --------------------------------------------------------------------------------------------
# Profiles and HLO


def summarize_xplane(path: str, top: int = 15) -> list[dict[str, Any]]:
    """Per device timeline of a ``jax.profiler`` trace: each line's busy time and its events with
    the most total time (kernels on a GPU stream, HLO ops on the 'XLA Ops' line, ...).

    Lines of host planes are left out unless the trace has no device plane (a CPU run)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(path)
    planes = [p for p in data.planes if p.name.startswith("/device:")]
    if not planes:
        planes = [p for p in data.planes if p.name.startswith("/host:CPU")]
    out = []
    for plane in planes:
        for line in plane.lines:
            totals: dict[str, float] = collections.defaultdict(float)
            counts: dict[str, int] = collections.Counter()
            for ev in line.events:
                totals[ev.name] += ev.duration_ns
                counts[ev.name] += 1
            if not totals:
                continue
            ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
            out.append({
                "plane": plane.name,
                "line": line.name,
                "busy_ms": round(sum(totals.values()) / 1e6, 3),
                "events": sum(counts.values()),
                "top": [{"name": n[:160], "ms": round(t / 1e6, 3), "count": counts[n]} for n, t in ranked],
            })
    return out


_OP = re.compile(r"=\s*\S+\s+([a-z][a-z0-9\-]*)\(")


def hlo_stats(hlo_text: str) -> dict[str, Any]:
    """Counts in an optimised HLO module's text: instructions by opcode (of every computation),
    the fusions and library calls that become kernels, and the convolution layouts."""
    ops = collections.Counter()
    targets = collections.Counter()
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m:
            ops[m.group(1)] += 1
        t = re.search(r'custom_call_target="([^"]+)"', line)
        if t:
            targets[t.group(1)] += 1
    return {
        "instructions": sum(ops.values()),
        "by_opcode": dict(ops.most_common(25)),
        "custom_call_targets": dict(targets.most_common(15)),
    }
