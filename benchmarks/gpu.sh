#!/usr/bin/env bash
# dnjax beside PyTorch on one NVIDIA GPU, and a short real training run: python3 -m
# dnjax.benchmark.gpu in one process within a time budget, after dnjax.benchmark.gpu_check has
# printed the stack and named the device (an H100 SXM or an H200, with its datasheet figures).
# For a GPU machine without network whose Python (3.12) already has JAX with its CUDA plugin,
# PyTorch (CUDA), flax, optax, orbax-checkpoint, absl, numpy, tqdm, matplotlib and scikit-learn.
# Nothing is downloaded here.
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
# Environment: GPU_BUDGET (seconds for the measurements, default 390), GPU_TRAIN_SECONDS (default
# 120), GPU_ARGS (more dnjax.benchmark.gpu flags, e.g. "--only bc100_b256_bf16,bc190_b64_fp32"),
# GPU_DRY_RUN=1 (any machine: no GPU checks, --dry_run on tiny stand-ins; rehearses this script
# end to end).
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
# The tree's dnjax (and configs/, read as files) first, then the carried packages, then the image's.
export PYTHONPATH="$root:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX must not take most of the GPU up front: PyTorch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

nvidia-smi || echo "warning: nvidia-smi failed"
dry_flag=()
[ "$dry" = 1 ] && dry_flag=(--dry_run)
# The stack (versions, the device and its datasheet figures, PyTorch, imports) before any figure.
python3 -m dnjax.benchmark.gpu_check "${dry_flag[@]}" \
  || { echo "error: the GPU stack is not usable (see above)" >&2; exit 3; }
for f in .gpudata/train.npz .gpudata/test.npz; do
  [ -f "$f" ] || echo "warning: $f is missing (carry .gpudata): the training run will be skipped"
done

# A hard stop a little after the budget, so that a late piece cannot eat the rerun's time.
timeout -k 10 $((budget + 45)) python3 -m dnjax.benchmark.gpu --out "$out" --budget "$budget" \
  --data .gpudata --train_seconds "${GPU_TRAIN_SECONDS:-120}" "${dry_flag[@]}" ${GPU_ARGS:-}
rc=$?
echo "== dnjax.benchmark.gpu exit status $rc; files in $out:"
ls -l "$out"
exit $rc
