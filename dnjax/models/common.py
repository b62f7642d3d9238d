"""Pieces every network in the zoo shares: the conv and norm constructors and input checks.

All three families build their convolutions and BatchNorms through :func:`conv_and_norm`, so the
initialisation and BatchNorm settings of the spec live in exactly one place.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# He normal with fan_out: std = sqrt(2 / (kh * kw * c_out)), what the paper's Torch code used.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch/Torch BatchNorm momentum 0.1 is flax momentum 0.9 (flax keeps 0.9 of the old average).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def conv_and_norm(train: bool, dtype: Any) -> tuple[ModuleDef, ModuleDef]:
    """Returns (conv, norm) constructors with the spec's settings baked in.

    Parameters are always float32; ``dtype`` is the compute dtype. BatchNorm uses batch statistics
    in training and running averages in evaluation; under ``jax.jit`` with a batch sharded over a
    mesh the batch statistics are global (XLA inserts the all-reduce).
    """
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        param_dtype=jnp.float32,
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
    )
    return conv, norm


def classifier(num_classes: int, dtype: Any) -> nn.Dense:
    return nn.Dense(
        num_classes,
        dtype=dtype,
        param_dtype=jnp.float32,
        bias_init=nn.initializers.zeros,
        name="head",
    )


def resolve_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r} is invalid: it must be an integer >= 1")


def check_choice(field: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is invalid: valid values are {list(choices)}")


def check_dropout(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{field}={value!r} is invalid: a dropout rate must be in [0, 1)")


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(x, axis=(1, 2))
