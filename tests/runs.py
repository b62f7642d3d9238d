"""Helpers for tests that run the real command line: subprocesses, checkpoints, logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO.parent / "shared" / "data" / "cifar10"
TINY = "tests/tiny_config.py"


def env(devices: int = 1, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""),
    )
    e.update(extra)
    return e


def main_cmd(workdir, *overrides: str, config: str = TINY, cache: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "dnjax.main", f"--config={config}", f"--workdir={workdir}"]
    if cache is not None:
        cmd.append(f"--config.compilation_cache_dir={cache}")
    return cmd + list(overrides)


def run_main(workdir, *overrides: str, devices: int = 1, config: str = TINY, cache=None,
             timeout: float = 300, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        main_cmd(workdir, *overrides, config=config, cache=cache),
        cwd=REPO, env=env(devices, **(extra_env or {})), capture_output=True, text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_state(workdir, step: int | None = None, which: str = "checkpoints") -> dict:
    """The saved train state of a run as a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / which
    if step is None:
        step = max(int(p.name) for p in path.iterdir() if p.name.isdigit())
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path / str(step) / "state").item_metadata.tree
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
        return ckptr.restore(path / str(step) / "state", restore_args=as_numpy)


def flat(tree, prefix="") -> dict[str, np.ndarray]:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}/{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(flat(v, f"{prefix}/{i}"))
    elif tree is not None:
        out[prefix] = np.asarray(tree)
    return out
