"""What produced a run: the code (its git commit, and whether the checkout had changes), the
libraries, the devices and the settings that change XLA's numbers (flags, threads). A training run
logs it with its ``started`` and ``resumed`` events, so a committed result says how it was made,
and :func:`differences` says what a rerun here would change.

What a rerun reproduces bit for bit: the same commit, library versions, device kind and count, XLA
flags and (on a CPU) thread count give the same numbers; a change of any of them may change the
last bits of every step, and then the curves agree only within the seed-to-seed spread.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
# The fields whose change can change a run's numbers (the others describe, e.g. the host name).
NUMERIC = ("commit", "dirty", "jax", "jaxlib", "flax", "optax", "numpy", "platform", "device_kind",
           "devices", "processes", "xla_flags", "threads", "cpu")


@functools.lru_cache(maxsize=1)
def code_version() -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it) of the checkout dnjax runs from; (None, None)
    for an installed copy or where git is missing."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, (bool(status.stdout.strip()) if status.returncode == 0 else None)


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The processor's name (XLA compiles CPU code for the processor it runs on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """This process's provenance (JAX must be initialised: it names the devices)."""
    import jax

    commit, dirty = code_version()
    devices = jax.devices()
    return {
        "commit": commit, "dirty": dirty,
        **{p.replace("-checkpoint", ""): _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "platform": devices[0].platform, "device_kind": devices[0].device_kind,
        "devices": len(devices), "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "threads": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "host": platform.node(),
    }


def recorded(records: list[dict]) -> dict[str, Any] | None:
    """The provenance a run's metrics records hold (its last start or resumption), or None."""
    for r in reversed(records):
        if r.get("type") == "event" and r.get("event") in ("started", "resumed") and "provenance" in r:
            return r["provenance"]
    return None


def differences(then: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields that can change the numbers and differ between ``then`` and ``now``."""
    return {k: (then.get(k), now.get(k)) for k in NUMERIC if then.get(k) != now.get(k)}
