"""Figures for reading GPU measurements: which chip a run found and its datasheet figures, model
FLOP utilisation, the device memory of a compiled JAX step, and summaries of a profile and of an
optimised HLO module.

Each chip is one entry, recognised by the exact ``device_kind`` strings the CUDA driver gives it
(``jax.devices()[0].device_kind``): a PCIe or NVL card of the same name has other clocks, memory
and power, so its figures would be wrong and it is reported as unknown (MFU left empty) rather
than guessed from a substring. Peak rates are for dense (not 2:4 sparse) arithmetic. float32 rows
are measured with TF32 tensor-core arithmetic, which is what both XLA (default precision) and
PyTorch (``torch.backends.cudnn.allow_tf32``, on by default) use for float32 convolutions on these
chips, so their utilisation is taken against the TF32 rate; the plain float32 rate (no tensor
cores) is listed for completeness.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator's datasheet figures."""

    name: str
    device_kinds: tuple[str, ...]  # as the driver spells them; compared without case
    memory_gb: float  # decimal GB, as the datasheet gives it
    memory_type: str
    bandwidth_tb_s: float  # device memory bandwidth, TB/s
    peak_tflops: dict[str, float]  # dense, by arithmetic: bfloat16, float16, tf32, float32
    source: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The H200 is the H100's GH100 die with the same SMs and clocks: the same arithmetic rates, with
# more and faster memory.
_HOPPER_SXM_TFLOPS = {"bfloat16": 989.4, "float16": 989.4, "tf32": 494.7, "float32": 66.9}
H100_SXM = Chip(
    name="NVIDIA H100 SXM5 80 GB",
    device_kinds=("NVIDIA H100 80GB HBM3",),
    memory_gb=80.0, memory_type="HBM3", bandwidth_tb_s=3.35,
    peak_tflops=_HOPPER_SXM_TFLOPS,
    source="NVIDIA H100 Tensor Core GPU datasheet and architecture whitepaper, H100 SXM5: dense "
           "bf16/fp16 989.4, tf32 494.7, fp32 66.9 TFLOP/s (the datasheet's 1,979 and 989 are with "
           "2:4 sparsity); 80 GB HBM3 at 3.35 TB/s",
)
H200_SXM = Chip(
    name="NVIDIA H200 SXM 141 GB",
    device_kinds=("NVIDIA H200",),
    memory_gb=141.0, memory_type="HBM3e", bandwidth_tb_s=4.8,
    peak_tflops=_HOPPER_SXM_TFLOPS,
    source="NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: bf16/fp16 1,979 and tf32 989 TFLOP/s "
           "with 2:4 sparsity, fp32 67; dense rates are half the sparse ones, taken at the H100 "
           "SXM5 whitepaper's precision (989.4, 494.7, 66.9: same die and clocks); 141 GB HBM3e at "
           "4.8 TB/s",
)
CHIPS = (H100_SXM, H200_SXM)


def lookup(device_kind: str) -> Chip | None:
    """The chip whose driver name is ``device_kind`` (case and surrounding blanks aside), or None."""
    kind = " ".join(device_kind.split()).lower()
    return next((c for c in CHIPS if kind in (k.lower() for k in c.device_kinds)), None)


def describe(device_kind: str, memory_limit_bytes: int | None = None) -> str:
    """One line naming the device, its memory, peak rates and bandwidth, and their source; for a
    device with no entry, that it is unknown and MFU stays empty."""
    chip = lookup(device_kind)
    seen = f"; JAX may allocate {memory_limit_bytes / 2**30:.1f} GiB" if memory_limit_bytes else ""
    if chip is None:
        known = ", ".join(repr(k) for c in CHIPS for k in c.device_kinds)
        return (f"accelerator: {device_kind!r} has no datasheet entry (known: {known}): MFU left "
                f"empty{seen}")
    p = chip.peak_tflops
    return (f"accelerator: {chip.name} ({device_kind!r}): {chip.memory_gb:g} GB {chip.memory_type} at "
            f"{chip.bandwidth_tb_s:g} TB/s{seen}; dense peaks bf16 {p['bfloat16']:g}, tf32 "
            f"{p['tf32']:g}, fp32 {p['float32']:g} TFLOP/s; source: {chip.source}")


def record(device_kind: str, memory_limit_bytes: int | None = None) -> dict[str, Any]:
    """What a report stores of the device: its name as the driver gives it and, for a known chip,
    the datasheet figures the MFU column is taken against."""
    chip = lookup(device_kind)
    out: dict[str, Any] = {"device_kind": device_kind, "known": chip is not None,
                           "jax_memory_limit_bytes": memory_limit_bytes}
    if chip is not None:
        out.update(chip.to_json())
    return out


# Forward, backward with respect to the inputs, backward with respect to the weights: the usual
# 3x the forward pass for a train step's model FLOPs (recomputation is not counted).
TRAIN_FLOPS_PER_FORWARD = 3.0


def peak_tflops(device_kind: str, dtype: str) -> tuple[float | None, str]:
    """(peak TFLOP/s, which rate) of a chip for a train step in ``dtype``; (None, '') if unknown.

    float32 maps to the TF32 tensor-core rate (see the module docstring)."""
    chip = lookup(device_kind)
    rate = "tf32" if dtype == "float32" else dtype
    if chip is None or rate not in chip.peak_tflops:
        return None, ""
    return chip.peak_tflops[rate], f"{chip.name} {rate}"


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
