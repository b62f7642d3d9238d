"""The one table of benchmark rows that both commands print (``python -m dnjax.benchmark`` on any
machine, ``python -m dnjax.benchmark.gpu`` on a GPU), and the throughput ratio of two rows.

A row is a ``measure.Measurement`` or its dict (as a report's JSON holds it), so a summary can be
printed again from a saved report. Each command picks its columns from one catalog, so a figure
reads the same in both.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


def _num(v: float) -> str:
    """Three significant figures without an exponent: 0.84 ms, 18.4 ms, 2500 ms, 21000 img/s."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


# field -> (header, format)
COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "framework": ("framework", str),
    "model": ("model", str),
    "batch": ("batch", str),
    "dtype": ("dtype", str),
    "memory_efficient": ("mem-eff", str),
    "img_per_s": ("img/s", _num),
    "step_ms": ("step ms", _num),
    "step_ms_min": ("min ms", _num),
    "lower_s": ("trace s", "{:.1f}".format),
    "compile_s": ("compile s", "{:.1f}".format),
    "model_gflops_per_img": ("GFLOPs/img fwd", "{:.3f}".format),
    "step_gflops_per_img": ("GFLOPs/img step", "{:.3f}".format),
    "step_mib": ("step MiB", "{:.0f}".format),
    "temp_mib": ("temp MiB", "{:.0f}".format),
    "peak_mib": ("peak MiB", "{:.0f}".format),
    "mfu": ("MFU %", lambda v: f"{100 * v:.1f}"),
    "device": ("device", str),
    "date": ("date", str),
    "note": ("note", str),
}

# Any machine: where the time and the memory go (trace, FLOPs, temporaries), and on what.
CPU_COLUMNS = ("framework", "model", "batch", "dtype", "memory_efficient", "img_per_s", "step_ms",
               "step_ms_min", "lower_s", "compile_s", "model_gflops_per_img", "step_gflops_per_img",
               "temp_mib", "peak_mib", "device", "date", "note")
# One GPU, named once above the table: the step's whole device memory and the utilisation.
GPU_COLUMNS = ("framework", "model", "batch", "dtype", "memory_efficient", "img_per_s", "step_ms",
               "step_ms_min", "compile_s", "step_mib", "temp_mib", "mfu")


def _as_dict(row) -> dict[str, Any]:
    return row if isinstance(row, dict) else dataclasses.asdict(row)


def format_table(rows, columns: tuple[str, ...] = CPU_COLUMNS) -> str:
    """Rows as aligned text columns; a missing figure is '-'."""
    cells = [[COLUMNS[k][0] for k in columns]]
    for r in rows:
        d = _as_dict(r)
        cells.append(["-" if d.get(k) is None else COLUMNS[k][1](d[k]) for k in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def speedup(row, reference) -> dict[str, float]:
    """``row``'s throughput over ``reference``'s, from the median and from the fastest step; {}
    where either was not timed."""
    a, b = _as_dict(row), _as_dict(reference)
    if not a.get("img_per_s") or not b.get("img_per_s"):
        return {}
    return {"median": a["img_per_s"] / b["img_per_s"], "fastest": b["step_ms_min"] / a["step_ms_min"]}


def label(row) -> str:
    """A row's name in a ratio line, e.g. 'dnjax bfloat16 (memory_efficient=True)'."""
    d = _as_dict(row)
    name = "dnjax" if d["framework"] == "jax" else d["framework"]
    note = f", {d['note']}" if d.get("note") and d["framework"] == "jax" else ""
    return f"{name} {d['dtype']} (memory_efficient={d['memory_efficient']}{note})"


def speedup_line(row, reference) -> str:
    q = speedup(row, reference)
    if not q:
        return f"{label(row)} / {label(reference)}: not timed"
    return (f"{label(row)} / {label(reference)}: {q['median']:.2f}x median step, "
            f"{q['fastest']:.2f}x fastest step")
