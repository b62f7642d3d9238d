#!/usr/bin/env bash
# Prepares, on a machine with PyPI access, what benchmarks/gpu.sh needs on a GPU machine that has
# no network and already holds JAX (CUDA), PyTorch, flax, optax, orbax-checkpoint, absl, numpy,
# tqdm, matplotlib and scikit-learn (Python 3.12):
#
#   bash benchmarks/gpu_prepare.sh --data DIR
#
#   .whl/      the wheels of the run's other imports (cp312, manylinux x86_64; pure-Python ones)
#   .gpudata/  train.npz (every image of DIR/train_10k.npz) and test.npz (the first TEST_IMAGES,
#              default 5000, of DIR/test_10k.npz): the 10,000-image CIFAR-10 sample, arrays
#              'image' (uint8 N x 32 x 32 x 3) and 'label'
#
# Both folders are ignored by git (.gitignore, and .git/info/exclude for older checkouts): they
# travel as carried paths, not as tracked files. The size of everything that travels (tracked files plus the two folders) is printed: it must
# stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."

data=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data="${2:-}"; shift 2 ;;
    --data=*) data="${1#--data=}"; shift ;;
    *) echo "error: unknown argument $1 (usage: bash benchmarks/gpu_prepare.sh --data DIR)" >&2; exit 2 ;;
  esac
done
if [ -z "$data" ] || [ ! -f "$data/train_10k.npz" ] || [ ! -f "$data/test_10k.npz" ]; then
  echo "error: --data DIR must name the folder holding train_10k.npz and test_10k.npz (the CIFAR-10 sample)" >&2
  exit 2
fi
test_images="${TEST_IMAGES:-5000}"

# What dnjax imports on a training run over npz data and the benchmark that the GPU image lacks.
# Pure-Python wheels, pinned; their own requirements (absl-py, PyYAML; numpy, packaging,
# protobuf) are in the image.
WHEELS=(ml-collections==1.1.0 tensorboardX==2.6.5)

exclude=.git/info/exclude
[ -f .git ] && exclude="$(git rev-parse --git-common-dir)/info/exclude"  # a worktree shares it
mkdir -p "$(dirname "$exclude")"
for p in /.whl/ /.gpudata/ /gpu_out/; do
  grep -qxF "$p" "$exclude" 2>/dev/null || echo "$p" >>"$exclude"
done

rm -rf .whl && mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

mkdir -p .gpudata
python3 - "$data" "$test_images" <<'PY'
import sys
import numpy as np

src, n_test = sys.argv[1], int(sys.argv[2])
for name, out, n in (("train_10k.npz", "train.npz", None), ("test_10k.npz", "test.npz", n_test)):
    with np.load(f"{src}/{name}") as d:
        image, label = d["image"][:n], d["label"][:n].astype(np.int32)
    if image.dtype != np.uint8 or image.ndim != 4:
        sys.exit(f"error: {src}/{name}: 'image' must be uint8 N x H x W x C, got {image.dtype} {image.shape}")
    np.savez(f".gpudata/{out}", image=image, label=label)
    print(f".gpudata/{out}: {len(label)} images, classes {np.bincount(label).tolist()}")
PY

ls -l .whl
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
carried=$(du -cb .whl .gpudata | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((tracked + carried + ${untracked:-0}))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "travels: tracked $(mib "$tracked") + untracked $(mib "${untracked:-0}") + .whl and .gpudata $(mib "$carried") = $(mib "$total") (limit 64 MiB)"
if [ "$total" -ge $((60 * 1048576)) ]; then
  echo "error: $(mib "$total") is too close to the 64 MiB limit; use fewer test images (TEST_IMAGES=2000)" >&2
  exit 1
fi
