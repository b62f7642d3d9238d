"""Where a study's runs go: this host's devices, the shares the local executor packs runs onto, the
environment that confines a run to its share, and this host's part of a study that several hosts
run together.

Nothing here initialises an accelerator: the runner finds the devices from the operating system
(``/proc``, ``/dev``) and leaves them to the runs it starts, since a GPU or TPU chip that the
runner held would be unavailable to them.

Confining a run to its share, per platform:

- GPU: ``CUDA_VISIBLE_DEVICES`` lists the share's GPUs; the run sees them as devices 0..k-1.
- TPU VM: the libtpu variables for several independent processes on one VM, each on its own chips
  (``TPU_VISIBLE_CHIPS`` and its older name ``TPU_VISIBLE_DEVICES``, ``TPU_CHIPS_PER_PROCESS_BOUNDS``,
  ``TPU_PROCESS_BOUNDS=1,1,1``, and a ``TPU_MESH_CONTROLLER_ADDRESS``/``_PORT`` of its own), as
  documented for JAX on Cloud TPU VMs; see docs/reproducing.md.
- CPU: the share's cores as the process's CPU affinity (XLA sizes its thread pool from it) and
  ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set to the share's size.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

PLATFORMS = ("gpu", "tpu", "cpu")
# The first port of the per-process TPU mesh controllers (libtpu's default port); run i uses +i.
TPU_BASE_PORT = 8476
# Chips per process -> TPU_CHIPS_PER_PROCESS_BOUNDS (the shares' chips form a block of the host's grid).
TPU_CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}


class PlacementError(ValueError):
    """A --parallel, --devices_per_run or --host value this host cannot honour."""


@dataclasses.dataclass(frozen=True)
class Host:
    """This host's devices of one platform: GPU indices, TPU chip indices or CPU core ids."""

    platform: str
    devices: tuple[int, ...]
    found: str = ""  # how they were found, for the runner's first line

    @property
    def unit(self) -> str:
        return {"gpu": "GPU", "tpu": "TPU chip", "cpu": "CPU core"}[self.platform]


def _ids(text: str) -> tuple[int, ...] | None:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else None


def _gpus() -> tuple[tuple[int, ...], str] | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and _ids(visible) is not None:
        return _ids(visible), "CUDA_VISIBLE_DEVICES"
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir() and any(proc.iterdir()):
        return tuple(range(len(list(proc.iterdir())))), str(proc)
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    n = len(re.findall(r"^GPU \d+", out, re.M))
    return (tuple(range(n)), "nvidia-smi -L") if n else None


GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are PCI devices of Google's vendor id


def _tpu_chips(dev: Path = Path("/dev"), pci: Path = Path("/sys/bus/pci/devices")) -> tuple[tuple[int, ...], str] | None:
    """The chips of a TPU VM: ``/dev/accel*`` (v2-v4), or on v5e/v5p/v6e the PCI devices of Google's
    vendor id (their VFIO groups in ``/dev/vfio`` alone could be any passed-through device)."""
    visible = os.environ.get("TPU_VISIBLE_CHIPS") or os.environ.get("TPU_VISIBLE_DEVICES")
    accel = sorted(int(p.name[5:]) for p in dev.glob("accel*") if p.name[5:].isdigit())
    found = "/dev/accel*"
    if not accel:
        try:
            n = sum((d / "vendor").read_text().strip() == GOOGLE_PCI_VENDOR for d in pci.iterdir())
        except OSError:
            n = 0
        accel, found = list(range(n)), f"Google PCI devices in {pci}"
    if not accel:
        return None
    if visible and _ids(visible) is not None:
        return _ids(visible), "TPU_VISIBLE_CHIPS"
    return tuple(accel), found


def detect(environ: Mapping[str, str] | None = None) -> Host:
    """This host's accelerators, or its CPU cores: the platform JAX would pick (``JAX_PLATFORMS``
    first, when set), without initialising it."""
    environ = os.environ if environ is None else environ
    wanted = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    wanted = [{"cuda": "gpu", "rocm": "gpu"}.get(p, p) for p in wanted] or ["tpu", "gpu", "cpu"]
    for platform in wanted:
        found = {"tpu": _tpu_chips, "gpu": _gpus}.get(platform, lambda: None)()
        if found:
            return Host(platform, *found)
        if platform == "cpu":
            cores = tuple(sorted(os.sched_getaffinity(0)))
            return Host("cpu", cores, "the process's CPU affinity")
    cores = tuple(sorted(os.sched_getaffinity(0)))
    return Host("cpu", cores, f"no {'/'.join(wanted)} found; the process's CPU affinity")


# ------------------------------------------------------------------------------------------------
# Shares and the environment of a run on one


@dataclasses.dataclass(frozen=True)
class Slot:
    """One place for a run: its share of the host's devices, the environment variables that confine
    it there, and (on a CPU) the cores it is bound to. A slot of the whole host changes nothing."""

    index: int
    share: tuple[int, ...]
    env: dict[str, str]
    cpus: tuple[int, ...] | None = None
    label: str = ""  # "GPU 3", "CPU cores 0,1"


def pin_env(platform: str, share: Sequence[int], index: int) -> tuple[dict[str, str], tuple[int, ...] | None]:
    """The environment variables (and, on a CPU, the affinity) that give a process ``share``."""
    ids = ",".join(map(str, share))
    if platform == "gpu":
        return {"CUDA_VISIBLE_DEVICES": ids}, None
    if platform == "tpu":
        if len(share) not in TPU_CHIP_BOUNDS:
            raise PlacementError(f"--devices_per_run={len(share)}: a TPU run takes 1, 2, 4 or 8 chips")
        port = TPU_BASE_PORT + index
        return {
            "TPU_VISIBLE_CHIPS": ids, "TPU_VISIBLE_DEVICES": ids,
            "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_CHIP_BOUNDS[len(share)], "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}", "TPU_MESH_CONTROLLER_PORT": str(port),
        }, None
    if platform == "cpu":
        n = str(len(share))
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n}, tuple(share)
    raise PlacementError(f"unknown platform {platform!r}; one of {', '.join(PLATFORMS)}")


def parse_parallel(text: str) -> int | None:
    """``--parallel``: a positive number of runs at once, or ``auto`` (None): one per device."""
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise PlacementError(f"--parallel={text!r}: expected a positive number of runs at once, or auto")
    return int(text)


def plan(host: Host, parallel: int | None, per_run: int | None = None) -> tuple[list[Slot], str]:
    """The slots for ``parallel`` runs at once (None: as many as the host has devices of
    ``per_run``, default 1) of ``per_run`` devices each (default: the host's devices divided among
    the runs), and a sentence saying what was chosen and why."""
    n_dev = len(host.devices)
    if per_run is not None and per_run < 1:
        raise PlacementError(f"--devices_per_run={per_run}: expected a positive number")
    if parallel is None:
        per_run = per_run or 1
        parallel = max(1, n_dev // per_run)
        why = f"--parallel=auto: one run per {host.unit}" if per_run == 1 else \
            f"--parallel=auto: one run per {per_run} {host.unit}s"
    else:
        why = f"--parallel={parallel}"
    if per_run is None:
        per_run = max(1, n_dev // parallel)
    shared = per_run * parallel > n_dev and host.platform == "cpu" and per_run <= n_dev
    if per_run * parallel > n_dev and not shared:
        raise PlacementError(
            f"{parallel} run(s) at once of {per_run} {host.unit}(s) each need {per_run * parallel} "
            f"{host.unit}s; this host has {n_dev} ({host.found}); lower --parallel or --devices_per_run"
        )
    # A share of the whole host is left as a run started by hand has it (except on a TPU VM of a pod
    # slice, pinned even whole: unpinned, libtpu waits for the other VMs); shared CPU shares wrap.
    whole = per_run == n_dev and host.platform != "tpu"
    slots = []
    for i in range(parallel):
        share = tuple(host.devices[(i * per_run + j) % n_dev] for j in range(per_run))
        env, cpus = ({}, None) if whole else pin_env(host.platform, share, i)
        label = "the whole host" if whole else f"{host.unit}{'s' if per_run > 1 else ''} {','.join(map(str, share))}"
        slots.append(Slot(i, share, env, cpus, label + (" (shared)" if shared else "")))
    if shared:  # CPU cores shared by runs with as many threads as a run alone on per_run cores
        why += (f": {parallel} run(s) at once sharing this host's {n_dev} CPU cores, each with {per_run} "
                f"thread(s) ({host.found}); a run's numbers are those of a run alone on {per_run} core(s)")
    else:
        left = n_dev - per_run * parallel
        why += (f": {parallel} run(s) at once, each on {per_run} of this host's {n_dev} {host.unit}s "
                f"({host.found})" + (f"; {left} left idle" if left else ""))
    return slots, why


# ------------------------------------------------------------------------------------------------
# Several hosts


def parse_host(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise PlacementError(f"--host={text!r}: expected I/H with 0 <= I < H, e.g. --host=0/4 on the first of four hosts")
    return int(m.group(1)), int(m.group(2))


METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/"


def _metadata(key: str, timeout: float = 2.0) -> str | None:
    req = urllib.request.Request(METADATA + key, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


def host_index(environ: Mapping[str, str] | None = None, tpu_vm: bool | None = None) -> tuple[int, int, str]:
    """(I, H, where they came from) when ``--host`` is not given: a TPU pod slice's worker index and
    worker count (``TPU_WORKER_ID`` and ``TPU_WORKER_HOSTNAMES``, else the VM's metadata
    ``agent-worker-number`` and ``worker-network-endpoints``), SLURM's task of a multi-task step
    (``SLURM_PROCID`` of ``SLURM_NTASKS``), or 0/1."""
    environ = os.environ if environ is None else environ
    if environ.get("TPU_WORKER_ID", "").isdigit() and environ.get("TPU_WORKER_HOSTNAMES"):
        names = [h for h in environ["TPU_WORKER_HOSTNAMES"].split(",") if h.strip()]
        return int(environ["TPU_WORKER_ID"]), len(names), "TPU_WORKER_ID of TPU_WORKER_HOSTNAMES"
    if environ.get("SLURM_NTASKS", "").isdigit() and int(environ["SLURM_NTASKS"]) > 1 \
            and environ.get("SLURM_PROCID", "").isdigit():
        return int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]), "SLURM_PROCID of SLURM_NTASKS"
    if tpu_vm is None:
        tpu_vm = _tpu_chips() is not None
    if tpu_vm:
        worker, endpoints = _metadata("agent-worker-number"), _metadata("worker-network-endpoints")
        if worker is not None and worker.strip().isdigit() and endpoints:
            return int(worker), len(endpoints.split(",")), "the TPU VM's metadata (agent-worker-number)"
    return 0, 1, "one host"


def host_share(runs: Sequence, index: int, count: int) -> list:
    """Host ``index`` of ``count``'s runs: every ``count``-th run of the study's order from the
    ``index``-th, so that every run falls to exactly one host and each host gets a mix."""
    return list(runs[index::count])
