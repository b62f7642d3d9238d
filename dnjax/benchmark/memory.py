"""Memory versus depth: DenseNet-BC train steps, naive and memory-efficient, compiled side by side.

    python -m dnjax.benchmark.memory [--depths 40 100 160 250] [--bc190] [--batch 64] \
        [--time 40 100] [--steps 5] [--out docs/results/memory_vs_depth] \
        [--config configs/cifar_densenet.py:densenet_bc100_k12,c10+]

For DenseNet-BC k=12 at each depth (and DenseNet-BC-190 k=40 with ``--bc190``) the trainer's step is
compiled from abstract values twice and its temporary memory read from XLA's memory analysis, so
no large model has to run:

* ``naive``: every layer's concatenation and normalised input are kept for the backward pass;
* ``efficient``: ``memory_efficient=True`` (a feature buffer per block; the backward pass rebuilds the normalised inputs and accumulates gradients in place).

Step time is measured, with the modes alternating, for the depths given to ``--time``. The
optimizer and dtype are those of the ``--config`` recipe (C10+ by default). Writes ``OUT.json``
and a plot ``OUT.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dnjax import config_lib
from dnjax.benchmark import measure
from dnjax.exits import ExitStatus

MODES = ("naive", "efficient")


def config_for(base, depth: int, growth_rate: int, batch: int, mode: str):
    """``base``'s recipe for DenseNet-BC of this depth and growth rate in this memory mode."""
    efficient = mode != "naive"
    if (depth, growth_rate) == (190, 40):
        c = measure.with_model(base, "densenet_bc190_k40", memory_efficient=efficient)
    else:
        c = measure.with_model(base, "densenet_cifar", depth=depth, growth_rate=growth_rate,
                               bottleneck=True, compression=0.5, memory_efficient=efficient)
    c.batch_size = batch
    return c


def study(nets: list[tuple[int, int]], batch: int, timed: set[tuple[int, int]], steps: int,
          modes=MODES, log=print, base=None) -> list[dict]:
    """Rows of ``nets`` (depth, growth rate) in each mode; ``base`` is the recipe (default:
    ``measure.RECIPE``)."""
    base = measure.recipe() if base is None else base
    rows = []
    for depth, k in nets:
        steps_by_mode = {}
        for mode in modes:
            cfg = config_for(base, depth, k, batch, mode)
            js = measure.jax_step(cfg, compile_only=(depth, k) not in timed)
            m = js.measurement
            row = {
                "depth": depth, "growth_rate": k, "batch": batch, "mode": mode,
                "params": m.params, "temp_mib": m.temp_mib, "compile_s": m.compile_s,
                "step_gflops_per_img": m.step_gflops_per_img, "step_ms": None, "step_ms_min": None,
                "device": m.device, "date": m.date,
            }
            rows.append(row)
            steps_by_mode[mode] = (js, row)
            log(f"BC-{depth} k={k} {mode:9s}: temp {m.temp_mib:9.1f} MiB, compile {m.compile_s:6.1f} s, "
                f"step {m.step_gflops_per_img:.2f} GFLOPs/img")
        if (depth, k) in timed:
            runs = [js.run for js, _ in steps_by_mode.values()]
            for (js, row), (wall, cpu) in zip(steps_by_mode.values(),
                                              measure.time_side_by_side(runs, steps, warmup=1)):
                js.measurement.record_steps(wall, cpu)
                row["step_ms"] = js.measurement.step_ms
                row["step_ms_min"] = js.measurement.step_ms_min
                row["cpu_ms"] = js.measurement.cpu_ms
                log(f"BC-{depth} k={k} {row['mode']:9s}: step {row['step_ms']:.0f} ms median, "
                    f"{row['step_ms_min']:.0f} ms min")
        del steps_by_mode
    return rows


def table(rows: list[dict]) -> str:
    by_net: dict[tuple[int, int], dict[str, dict]] = {}
    for r in rows:
        by_net.setdefault((r["depth"], r["growth_rate"]), {})[r["mode"]] = r
    modes = [m for m in MODES if any(m in v for v in by_net.values())]
    head = ["network", "params"] + [f"{m} MiB" for m in modes] + [f"{m} / naive" for m in modes[1:]]
    head += [f"{m} step ms" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (depth, k), v in by_net.items():
        naive = v.get("naive", {}).get("temp_mib")
        cells = [f"DenseNet-BC-{depth} k={k}", f"{next(iter(v.values()))['params']:,}"]
        cells += [f"{v[m]['temp_mib']:.0f}" if m in v else "" for m in modes]
        cells += [f"{100 * v[m]['temp_mib'] / naive:.1f}%" if m in v and naive else "" for m in modes[1:]]
        for m in modes:
            ms = v.get(m, {}).get("step_ms")
            rel = ""
            if ms and m != "naive" and v.get("naive", {}).get("step_ms"):
                rel = f" ({100 * (ms / v['naive']['step_ms'] - 1):+.0f}%)"
            cells.append(f"{ms:.0f}{rel}" if ms else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    k12 = [r for r in rows if r["growth_rate"] == 12]
    for mode, style in zip(MODES, ("o-", "s-")):
        pts = sorted((r["depth"], r["temp_mib"] / 1024) for r in k12 if r["mode"] == mode)
        if pts:
            ax.plot(*zip(*pts), style, label=f"{mode} (BC, k=12)")
    for mode, marker in zip(MODES, ("o", "s")):
        for r in rows:
            if r["growth_rate"] != 12 and r["mode"] == mode:
                ax.plot([r["depth"]], [r["temp_mib"] / 1024], marker, color="k", fillstyle="none")
                ax.annotate(f"BC-{r['depth']} k={r['growth_rate']} {mode}",
                            (r["depth"], r["temp_mib"] / 1024), fontsize=7,
                            xytext=(4, 0), textcoords="offset points")
    first = rows[0]
    ax.set_xlabel("depth L")
    ax.set_ylabel("train-step temporary memory (GiB)")
    ax.set_title(f"DenseNet-BC train step, batch {first['batch']}: XLA compiled memory\n"
                 f"{first['device']}, {first['date']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", type=int, nargs="*", default=[40, 100, 160, 250])
    p.add_argument("--growth_rate", type=int, default=12)
    p.add_argument("--bc190", action="store_true", help="add DenseNet-BC-190 k=40")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--time", type=int, nargs="*", default=[], help="depths (k=12) whose steps are timed")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--out", default="docs/results/memory_vs_depth", help="path without extension")
    p.add_argument("--config", default=measure.RECIPE,
                   help="config-file spec PATH[:ARG] of the recipe (optimizer, dtype) the steps use")
    args = p.parse_args(argv)
    try:
        base = measure.recipe(args.config)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    nets = [(d, args.growth_rate) for d in args.depths] + ([(190, 40)] if args.bc190 else [])
    timed = {(d, args.growth_rate) for d in args.time}
    rows = study(nets, args.batch, timed, args.steps, modes=args.modes,
                 log=lambda s: print(s, flush=True), base=base)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(table(rows))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
