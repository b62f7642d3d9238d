"""Helpers for tests that run the real command line: subprocesses, checkpoints, logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from dnjax import logs, storage

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


def steps(workdir, which: str = "checkpoints") -> list[int]:
    """The committed steps of ``workdir/which`` (a local or gs:// workdir), oldest first."""
    import orbax.checkpoint as ocp

    path = storage.path(workdir) / which
    if not storage.is_remote(path):
        return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.is_dir() else []
    return sorted(ocp.path.step.checkpoint_steps(path))


def load_state(workdir, step: int | None = None, which: str = "checkpoints") -> dict:
    """The saved train state of a run (local or gs://) as a nested dict of numpy arrays."""
    import orbax.checkpoint as ocp

    path = storage.path(workdir) / which
    if step is None:
        step = steps(workdir, which)[-1]
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


# The tiny config for 60 steps with everything a crash can hit: 89 steps per epoch make a
# checkpoint every 3 steps and an evaluation (and maybe a best save) every 6; dropout on, so the
# randomness of every step matters too.
STEPS = 60
EVAL_EVERY = 6
LONG = (
    f"--config.num_train_steps={STEPS}",
    "--config.log_every_steps=1",
    "--config.model.dropout_rate=0.2",
    "--config.checkpoint_every_epochs=0.0337",
    "--config.eval_every_epochs=0.0674",
)
TMP_MARK = ".orbax-checkpoint-tmp"


def without_times(rec):
    return {k: v for k, v in rec.items() if k not in ("time", "img_per_s")}


def assert_same_run(reference, workdir, total: int = STEPS) -> None:
    """Final state (parameters, BatchNorm statistics, optimizer state, step), best checkpoint and
    logged metrics of a ``total``-step run bitwise equal to the reference run's (either may be a
    gs:// workdir)."""
    for which in ("checkpoints", "best"):
        assert steps(workdir, which)[-1] == steps(reference, which)[-1], which
        a = flat(load_state(reference, which=which))
        b = flat(load_state(workdir, which=which))
        assert a.keys() == b.keys() and len(a) > 100
        differ = [k for k in a if not np.array_equal(a[k], b[k])]
        assert not differ, f"{which}: {len(differ)} arrays differ, e.g. {differ[:3]}"
    recs, torn = logs.read_jsonl(storage.path(workdir) / logs.METRICS_FILE)
    assert not torn
    train_steps = [r["step"] for r in recs if r["type"] == "train"]
    assert train_steps == list(range(1, total + 1)), "each step logged exactly once, in order"
    for kind in ("train", "eval", "final"):
        want = [without_times(r) for r in logs.records(reference, kind)]
        got = [without_times(r) for r in recs if r["type"] == kind]
        assert got == want, kind
    starts = [r for r in recs if r["type"] == "event" and r["event"] == "started"]
    assert len(starts) == 1
    leftovers = [p for d in ("checkpoints", "best") for p in (storage.path(workdir) / d).iterdir()
                 if TMP_MARK in p.name]
    assert not leftovers, leftovers


def assert_close_states(a, b, *, rtol, atol):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if k.endswith("/step"):
            assert int(fa[k]) == int(fb[k])
            continue
        np.testing.assert_allclose(fa[k], fb[k], rtol=rtol, atol=atol, err_msg=k)
