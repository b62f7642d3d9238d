"""The GPU measurements of ``benchmarks/gpu.sh``: each network in dnjax and in PyTorch, steps
alternating, one table at the end. Networks are measured in order until ``--budget`` seconds are
spent; what did not fit is listed as skipped."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from configs import cifar_densenet
from dnjax.benchmark import measure
from dnjax.benchmark.__main__ import format_table

RUNS = (  # (model, batch, dtype, memory_efficient)
    ("densenet_bc100_k12", 64, "float32", False),
    ("densenet_bc100_k12", 64, "bfloat16", False),
    ("densenet_bc100_k12", 256, "float32", False),
    ("densenet_bc100_k12", 256, "bfloat16", False),
    ("densenet_bc100_k12", 64, "float32", True),
    ("densenet_bc190_k40", 64, "float32", False),
    ("densenet_bc190_k40", 64, "float32", True),
    ("preact_resnet164", 64, "float32", False),
    ("preact_resnet1001", 64, "float32", False),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="gpu_benchmark.json")
    p.add_argument("--budget", type=float, default=280.0, help="seconds for all measurements")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    start = time.time()
    rows, skipped = [], []
    for model, batch, dtype, me in RUNS:
        if time.time() - start > args.budget:
            skipped.append(f"{model} batch {batch} {dtype} memory_efficient={me}")
            continue
        c = cifar_densenet.get_config()
        c.model.name = model
        c.batch_size = batch
        c.dtype = dtype
        if model.startswith("densenet"):
            c.model.memory_efficient = me
        else:
            c.model.dropout_rate = None
        pair = measure.benchmark(c, steps=args.steps, warmup=3, with_torch=True)
        rows += pair
        print(format_table(pair), flush=True)
        print(f"  dnjax / torch: {pair[0].img_per_s / pair[1].img_per_s:.2f}x\n", flush=True)
    print("\n" + format_table(rows))
    for i in range(0, len(rows), 2):
        j, t = rows[i], rows[i + 1]
        print(f"{j.model:20s} batch {j.batch:3d} {j.dtype:8s} mem-eff={j.memory_efficient!s:5s} "
              f"dnjax {j.img_per_s:8.0f} img/s  torch {t.img_per_s:8.0f} img/s  "
              f"ratio {j.img_per_s / t.img_per_s:.2f}x")
    if skipped:
        print("skipped (budget):", "; ".join(skipped))
    with open(args.json, "w") as f:
        json.dump({"rows": [dataclasses.asdict(r) for r in rows], "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
