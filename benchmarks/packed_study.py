"""Times a study run one after another against the same study packed onto the host's devices, and
compares what each run computed.

    python benchmarks/packed_study.py --data_dir=DIR --out=docs/results/packed_study.json \\
        [--modes=sequential,sequential_1core,parallel2] [--steps=150]

DIR holds the real CIFAR-100 (train_part1.npz, train_part2.npz, test.npz). The study is the
cifar100-cpu budget of pre_vs_post_activation (4 runs: DenseNet-BC L=22 and ResNet-8, pre- and
post-activation), each shortened to ``--steps`` training steps (its evaluation on the whole
10,000-image test set at the end kept). Modes:

  sequential        --parallel=1: one run after another, each on every core (the default)
  sequential_1core  --parallel=1 --devices_per_run=1: one after another, each on one core
  parallel2         --parallel=2: two at once, each on a core of its own
  parallel2_shared  --parallel=2 --devices_per_run=2: two at once, both on both cores (2 threads each)

Each mode trains in a fresh root under ``--work``. The JSON holds every mode's wall time and
aggregate training throughput (images trained / wall time), each run's own time, and, for every
pair of modes, whether each run's logged numbers (losses, test errors) are bitwise equal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnjax import logs  # noqa: E402

STUDY = "pre_vs_post_activation"
MODES = {
    "sequential": ["--parallel=1"],
    "sequential_1core": ["--parallel=1", "--devices_per_run=1"],
    "parallel2": ["--parallel=2"],
    "parallel2_shared": ["--parallel=2", "--devices_per_run=2"],
}
BATCH = 64


def numbers(workdir: Path) -> list:
    return [sorted((k, v) for k, v in r.items() if k not in ("time", "img_per_s"))
            for r in logs.records(workdir) if r["type"] in ("train", "eval", "final")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default="/tmp/dnjax-packed-study")
    p.add_argument("--modes", default="sequential,parallel2")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--cache", default=None,
                   help="a compilation cache shared by every mode (default: a new, empty one for each mode)")
    a = p.parse_args()
    modes = a.modes.split(",")
    out = Path(a.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update({
        "study": STUDY, "budget": "cifar100-cpu", "steps_per_run": a.steps, "batch": BATCH,
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    })
    result.setdefault("modes", {})
    for mode in modes:
        root = Path(a.work) / mode
        shutil.rmtree(root, ignore_errors=True)
        cmd = [sys.executable, "-m", "experiments.run", STUDY, f"--root={root}", "--budget=cifar100-cpu",
               f"--data_dir={a.data_dir}", f"--set=num_train_steps={a.steps}", *MODES[mode]]
        cache = a.cache or root.parent / f"{mode}-jax-cache"  # default: each mode compiles afresh
        if not a.cache:
            shutil.rmtree(cache, ignore_errors=True)
        cmd.append(f"--set=compilation_cache_dir={cache}")
        print(f"== {mode}: {' '.join(cmd)}", flush=True)
        load_before = os.getloadavg()[0]  # other work on the machine shows here
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
        wall = time.time() - t0
        print(proc.stdout[-2000:], proc.stderr[-2000:], flush=True)
        if proc.returncode != 0:
            print(f"{mode}: exit status {proc.returncode}", file=sys.stderr)
            return 1
        exits = [json.loads(line) for line in (root / "runner.jsonl").read_text().splitlines()]
        runs = {e["run"]: round(e["seconds"], 1) for e in exits}
        images = sum(a.steps * BATCH for _ in runs)
        result["modes"][mode] = {
            "command": " ".join(cmd[1:]).replace(str(a.data_dir), "DIR").replace(str(a.work), "WORK"),
            "wall_s": round(wall, 1), "images_per_s": round(images / wall, 1), "run_seconds": runs,
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_1min_before": round(load_before, 2),
            "test_error": {r: next(x["test_error"] for x in logs.records(root / r, "final")) for r in runs},
        }
        print(f"{mode}: {wall:.1f} s, {images / wall:.1f} img/s", flush=True)
    done = [m for m in MODES if m in result["modes"] and (Path(a.work) / m).is_dir()]
    result["bitwise_equal"] = {}
    for i, m1 in enumerate(done):
        for m2 in done[i + 1:]:
            runs = result["modes"][m1]["run_seconds"]
            result["bitwise_equal"][f"{m1} vs {m2}"] = {
                r: numbers(Path(a.work) / m1 / r) == numbers(Path(a.work) / m2 / r) for r in runs}
    if "sequential" in result["modes"] and "parallel2" in result["modes"]:
        result["speedup_wall"] = round(result["modes"]["sequential"]["wall_s"] / result["modes"]["parallel2"]["wall_s"], 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "modes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
