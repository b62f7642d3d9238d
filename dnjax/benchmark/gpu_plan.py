"""What the GPU run measures, in which order, and how long each piece is expected to take.

The pieces of ``PLAN`` run in order of importance; ``Budget`` estimates a piece from priors for an
H100/H200-class GPU, scaled by how the compiles seen so far compared with their priors, so that a
piece starts only if it still fits. ``make_config`` turns a row into a config of the trainer; with
``--dry_run`` the rows are tiny stand-ins of the same families, so every code path runs on a CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import ml_collections

from dnjax.benchmark import measure


@dataclasses.dataclass(frozen=True)
class Group:
    """Rows measured side by side: dnjax in each memory mode, then PyTorch variants."""

    key: str
    title: str
    model: str
    batch: int
    dtypes: tuple[str, ...]
    jax_modes: tuple[bool, ...] = (False, True)  # memory_efficient of each dnjax row
    torch: tuple[tuple[str, bool], ...] = (("eager", False),)  # (eager | compile, memory_efficient)
    profile: str = ""  # 'all': HLO, jax trace and PyTorch profile of the rows; 'torch': PyTorch's only
    compile_threads: int = 0  # > 1: compile the dnjax steps at once (0: --compile_threads)


TRAIN = "train"
PLAN: tuple[Group | str, ...] = (
    Group("bc100_b256_bf16", "DenseNet-BC-100 k=12, batch 256, bfloat16", "densenet_bc100_k12", 256,
          ("bfloat16",), profile="all"),
    # The two largest compiles of the run, done at once: both modes see the same autotuning
    # conditions, and neither the memory figures nor their ratio depend on the algorithms picked.
    Group("bc190_b64_fp32", "DenseNet-BC-190 k=40, batch 64, float32", "densenet_bc190_k40", 64,
          ("float32",), torch=(("eager", False), ("eager", True)), compile_threads=2),
    # torch.compile's compile time is the least predictable: after the rows above, re-timing the
    # compiled dnjax steps (no new compile) beside it.
    Group("bc100_b256_bf16_compile", "DenseNet-BC-100 k=12, batch 256, bfloat16, with torch.compile",
          "densenet_bc100_k12", 256, ("bfloat16",), torch=(("eager", False), ("compile", False)),
          profile="torch"),
    TRAIN,
    Group("bc100_b64_bf16", "DenseNet-BC-100 k=12, batch 64, bfloat16", "densenet_bc100_k12", 64,
          ("bfloat16",)),
    Group("bc100_b256_fp32", "DenseNet-BC-100 k=12, batch 256, float32", "densenet_bc100_k12", 256,
          ("float32",)),
    Group("bc100_b64_fp32", "DenseNet-BC-100 k=12, batch 64, float32", "densenet_bc100_k12", 64,
          ("float32",)),
    Group("resnet164_b128", "pre-activation ResNet-164, batch 128, bfloat16 and float32",
          "preact_resnet164", 128, ("bfloat16", "float32"), jax_modes=(False,)),
    Group("bc190_b64_bf16", "DenseNet-BC-190 k=40, batch 64, bfloat16", "densenet_bc190_k40", 64,
          ("bfloat16",), torch=(("eager", False), ("eager", True))),
    Group("bc100_b64_bf16_compile", "DenseNet-BC-100 k=12, batch 64, bfloat16, with torch.compile",
          "densenet_bc100_k12", 64, ("bfloat16",), jax_modes=(False,), torch=(("compile", False),)),
)

# Seconds, before anything is seen on the machine (an H100/H200-class GPU): a cold XLA compile of
# the train step (autotuning included), torch.compile's first step, an eager first step, one step.
PRIOR_JAX_COMPILE = {"densenet_bc100_k12": 60.0, "densenet_bc190_k40": 120.0, "preact_resnet164": 45.0}
PRIOR_TORCH_COMPILE = {"densenet_bc100_k12": 120.0, "densenet_bc190_k40": 240.0, "preact_resnet164": 90.0}
PRIOR_EAGER_FIRST = 10.0
PRIOR_STEP = {"densenet_bc100_k12": 0.05, "densenet_bc190_k40": 0.3, "preact_resnet164": 0.05}

# --dry_run: tiny stand-ins of the same families, so every code path runs in seconds on a CPU.
DRY_MODELS = {
    "densenet_bc100_k12": ("densenet_bc_tiny", {}),
    "densenet_bc190_k40": ("densenet_cifar", dict(depth=16, growth_rate=4, bottleneck=True, compression=0.5)),
    "preact_resnet164": ("preact_resnet_tiny", {}),
}
DRY_BATCH = {256: 8, 128: 8, 64: 4}
DRY_PRIOR_COMPILE = 10.0


def make_config(recipe: ml_collections.ConfigDict, model: str, batch: int, dtype: str,
                memory_efficient: bool, dry: bool) -> ml_collections.ConfigDict:
    """A row's config: ``recipe``'s optimizer and data settings (C10+ by default) for ``model``."""
    name, fields = DRY_MODELS[model] if dry else (model, {})
    if name.startswith("densenet"):
        fields = dict(fields, memory_efficient=memory_efficient)
    c = measure.with_model(recipe, name, **fields)
    c.batch_size = DRY_BATCH.get(batch, batch) if dry else batch
    c.dtype = dtype
    return c


class Budget:
    """Wall-clock budget of the whole run, and estimates of what a piece of work will take, from
    priors scaled by what the compiles seen so far took against theirs."""

    def __init__(self, seconds: float, dry: bool):
        self.start = time.perf_counter()
        self.seconds = seconds
        self.dry = dry
        self.seen: dict[tuple[str, str], float] = {}  # (kind, model) -> seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def record(self, kind: str, model: str, seconds: float) -> None:
        self.seen[(kind, model)] = max(seconds, self.seen.get((kind, model), 0.0))

    def _prior(self, kind: str, model: str) -> float:
        if self.dry:
            return DRY_PRIOR_COMPILE
        table = PRIOR_JAX_COMPILE if kind == "jax" else PRIOR_TORCH_COMPILE
        return table.get(model, 60.0)

    def estimate(self, kind: str, model: str) -> float:
        if (kind, model) in self.seen:
            return self.seen[(kind, model)]
        scales = [s / self._prior(k, m) for (k, m), s in self.seen.items() if k == kind]
        return self._prior(kind, model) * (statistics.median(scales) if scales else 1.0)
