"""The GPU machine's stack, checked before anything is measured: what ``benchmarks/gpu.sh`` runs
first, so that a broken image costs seconds of a lent machine, not a whole run.

    python3 -m dnjax.benchmark.gpu_check [--dry_run] [--config SPEC]

Prints the versions of the packages a run uses, JAX's devices, the accelerator line (the chip and
the datasheet figures MFU is taken against, or that the device is unknown), PyTorch's view of the
GPU, and then imports everything a run on npz data imports, which must include neither grain nor
tensorflow-datasets (the GPU image has neither). Exit status 0 when usable, 1 with a one-line
error otherwise; ``--dry_run`` accepts a machine without a GPU or PyTorch.

Only the standard library is imported at the top, so that the versions are printed even when
JAX or dnjax's own imports are what is broken.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
from typing import Any

# The packages a run uses, with versions (the image's and the carried wheels').
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint",
            "numpy", "ml-collections", "tensorboardX", "absl-py", "tqdm", "torch", "triton")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def device() -> tuple[str, dict[str, Any]]:
    """The accelerator line and the record a report keeps, for JAX's first device."""
    import jax

    from dnjax.benchmark import accelerator

    d = jax.devices()[0]
    limit = (d.memory_stats() or {}).get("bytes_limit")
    return accelerator.describe(d.device_kind, limit), accelerator.record(d.device_kind, limit)


def check(config: str | None, dry: bool) -> str | None:
    """None if the stack is usable, else what is wrong (one line). ``config``: a config-file spec,
    None for the benchmark's default recipe."""
    for pkg, version in versions().items():
        print(f"{pkg} {version or '-'}")
    import jax

    print("jax devices:", jax.devices())
    print(device()[0], flush=True)
    if jax.default_backend() != "gpu" and not dry:
        return f"JAX's backend is {jax.default_backend()!r}, not gpu"
    try:
        import torch
    except ImportError as e:
        if not dry:
            return f"PyTorch does not import ({e}): the GPU image must hold a CUDA build of torch"
    else:
        print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
        if not torch.cuda.is_available() and not dry:
            return "torch.cuda.is_available() is False"
        if torch.cuda.is_available():
            print("torch device:", torch.cuda.get_device_name(0))
        import dnjax.benchmark.torch_reference  # noqa: F401
    # Everything a run imports (by name: the run's module uses this one), and the recipe its rows
    # are built from.
    import importlib

    for name in ("dnjax.benchmark.gpu", "dnjax.main"):
        importlib.import_module(name)
    from dnjax import config_lib
    from dnjax.benchmark import measure

    try:
        config_lib.validate(measure.recipe(config or measure.RECIPE))
    except config_lib.ConfigError as e:
        return str(e)
    loaded = sorted(m for m in ("grain", "tensorflow_datasets") if m in sys.modules)
    if loaded:
        return f"a run on npz data imported {loaded}, which the GPU image does not have"
    print("imports ok")
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry_run", action="store_true", help="accept a machine without a GPU or PyTorch")
    p.add_argument("--config", default=None,
                   help="config-file spec of the rows' recipe, as dnjax.benchmark.gpu takes it "
                        "(default: configs/cifar_densenet.py:densenet_bc100_k12,c10+)")
    args = p.parse_args(argv)
    error = check(args.config, args.dry_run)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
