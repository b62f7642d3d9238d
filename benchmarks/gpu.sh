#!/usr/bin/env bash
# dnjax beside PyTorch on one NVIDIA GPU, and a short real training run: benchmarks/gpu.py in one
# process within a time budget. For a GPU machine without network whose Python (3.12) already has
# JAX with its CUDA plugin, PyTorch (CUDA), flax, optax, orbax-checkpoint, absl, numpy, tqdm,
# matplotlib and scikit-learn. Nothing is downloaded here.
#
# Once, on a machine with PyPI access, in the repository root (wheels into .whl/, the CIFAR-10
# sample slice into .gpudata/, both git-ignored; prints the size that travels, under 64 MiB):
#
#   bash benchmarks/gpu_prepare.sh --data DIR_WITH_train_10k.npz_AND_test_10k.npz
#
# Then on the GPU machine, from a copy of the working tree with .whl and .gpudata beside it:
#
#   bash benchmarks/gpu.sh              # at most 8 minutes; e.g. a remote run of
#                                       #   command "bash benchmarks/gpu.sh", carry [".whl", ".gpudata"],
#                                       #   timeout 480 s
#
# Output: $OUT (when set) or ./gpu_out: gpu.log (everything printed), gpu_benchmark.json (every
# row, ratio, goal and the training run; rewritten after each piece), train_metrics.jsonl,
# hlo_bc100_b256_bf16.txt.gz and jax_trace_bc100_b256_bf16.xplane.pb.gz (profile evidence).
# Environment: GPU_BUDGET (seconds for gpu.py, default 390), GPU_TRAIN_SECONDS (default 120),
# GPU_ARGS (more gpu.py flags, e.g. "--only bc100_b256_bf16,bc190_b64_fp32"), GPU_DRY_RUN=1 (any
# machine: no GPU checks, gpu.py --dry_run on tiny stand-ins; rehearses this script end to end).
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
out="${OUT:-$root/gpu_out}"
mkdir -p "$out"
budget="${GPU_BUDGET:-390}"
dry="${GPU_DRY_RUN:-0}"
exec > >(tee -a "$out/gpu.log") 2>&1

echo "== $(date -u +%FT%TZ) $(uname -m) $(python3 --version 2>&1)"
shopt -s nullglob
wheels=(.whl/*.whl)
site="${GPU_SITE:-/tmp/dnjax-site}"
if [ ${#wheels[@]} -eq 0 ]; then
  echo "error: no wheels in .whl/: run benchmarks/gpu_prepare.sh on a machine with PyPI access, and carry .whl" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" \
  || { echo "error: installing the carried wheels into $site failed" >&2; exit 2; }
# The tree's dnjax, configs and benchmarks first, then the carried packages, then the image's.
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX must not take most of the GPU up front: PyTorch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

nvidia-smi || echo "warning: nvidia-smi failed"
GPU_DRY_RUN="$dry" python3 - <<'PY' || { echo "error: the GPU stack is not usable (see above)" >&2; exit 3; }
import importlib.metadata as md
import os
import sys

dry = os.environ["GPU_DRY_RUN"] == "1"
for pkg in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "numpy", "ml-collections", "tensorboardX", "absl-py", "tqdm", "torch", "triton"):
    try:
        print(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        print(f"{pkg} -")
import jax

print("jax devices:", jax.devices())
if jax.default_backend() != "gpu" and not dry:
    sys.exit(f"error: JAX's backend is {jax.default_backend()!r}, not gpu")
try:
    import torch
except ImportError:
    if not dry:
        raise
else:
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if not torch.cuda.is_available() and not dry:
        sys.exit("error: torch.cuda.is_available() is False")
    if torch.cuda.is_available():
        print("torch device:", torch.cuda.get_device_name(0))
    import dnjax.benchmark.torch_reference  # noqa: F401
# Everything a run imports (nothing may need tfds or grain for npz data).
import configs.cifar_densenet, dnjax.benchmark.accelerator, dnjax.benchmark.measure  # noqa: E401
import dnjax.main, dnjax.train  # noqa: E401
assert "grain" not in sys.modules and "tensorflow_datasets" not in sys.modules
print("imports ok")
PY
for f in .gpudata/train.npz .gpudata/test.npz; do
  [ -f "$f" ] || echo "warning: $f is missing (carry .gpudata): the training run will be skipped"
done

# A hard stop a little after the budget, so that a late piece cannot eat the rerun's time.
extra=()
[ "$dry" = 1 ] && extra=(--dry_run)
timeout -k 10 $((budget + 45)) python3 benchmarks/gpu.py --out "$out" --budget "$budget" \
  --data .gpudata --train_seconds "${GPU_TRAIN_SECONDS:-120}" "${extra[@]}" ${GPU_ARGS:-}
rc=$?
echo "== gpu.py exit status $rc; files in $out:"
ls -l "$out"
exit $rc
