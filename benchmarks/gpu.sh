#!/usr/bin/env bash
# Train-step benchmark on one NVIDIA GPU: dnjax and the PyTorch reference side by side.
#
#   bash benchmarks/gpu.sh [OUT.json]
#
# Installs what it needs (JAX with CUDA 12 wheels, a CUDA build of PyTorch, this package) unless a
# GPU-enabled JAX and PyTorch are already importable, then runs benchmarks/gpu.py: DenseNet-BC-100
# k=12 (batch 64 and 256, float32 and bfloat16), DenseNet-BC-190 k=40, pre-activation ResNet-164
# and ResNet-1001, printing one table. Budget: about 5 minutes on an H100/H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_benchmark.json}"

have_gpu_stack() {
  python3 - <<'PY' 2>/dev/null
import jax, torch
assert jax.default_backend() == "gpu" and torch.cuda.is_available()
PY
}

if ! have_gpu_stack; then
  # A local CPU wheel (PIP_FIND_LINKS) would shadow PyPI's CUDA build of torch: ignore it here.
  PIP_FIND_LINKS= python3 -m pip install --quiet --disable-pip-version-check \
    "jax[cuda12]==0.10.2" "torch==2.13.0"
fi
python3 -m pip install --quiet --disable-pip-version-check -e .
have_gpu_stack || { echo "error: JAX or PyTorch does not see a GPU" >&2; exit 1; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# JAX must not take 75% of the GPU up front: PyTorch runs in the same process.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec python3 benchmarks/gpu.py --json "$out" --budget 280
