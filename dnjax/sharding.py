"""The device mesh and the shardings of a data-parallel run.

One mesh axis, ``data``, spans every device of every process. Parameters, optimizer state and
BatchNorm statistics are replicated; batches are split along their first axis. Under ``jax.jit``
BatchNorm then computes statistics over the global batch (XLA inserts the all-reduce), which is
what a single large device would compute.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(axis: str = "data") -> Mesh:
    # Auto axis types: with Explicit ones the integer-label cross-entropy gradient fails to type.
    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def check_divisible(field: str, batch: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch % n:
        raise ValueError(
            f"{field}={batch} is not divisible by the number of devices ({n}, over "
            f"{jax.process_count()} process(es)); choose a multiple of {n}, e.g. "
            f"--config.{field}={max(n, (batch // n) * n) if batch >= n else n}"
        )


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full.

    Each process hands over only the slices that its own devices hold, so in a multi-process run
    each feeds just its part of a sharded batch.
    """
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
    return jax.tree.map(lambda _: sharding, tree)


def to_host(x: Any) -> Any:
    """Fetches a (replicated) value to the host, on every process."""
    return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), x)
