"""JAX's persistent compilation cache (``config.compilation_cache_dir``): a rerun, a resumed run or
the next run of a sweep loads the compiled steps instead of compiling them again."""

from __future__ import annotations

import os

import jax


def use_cache(directory: str | None) -> None:
    """Points JAX at ``directory`` (``~`` expanded; '' or None: no persistent cache). Every
    compilation longer than a second is kept, however small."""
    if not directory:
        return
    path = os.path.expanduser(directory)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
