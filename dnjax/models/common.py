"""Pieces every network in the zoo shares: the conv and norm constructors and input checks.

All three families build their convolutions and BatchNorms through :func:`conv_and_norm`, so the
initialisation and BatchNorm settings of the paper's code live in exactly one place.

Two choices there are about speed and keep the numerics (results agree with ``lax.conv`` and
``nn.BatchNorm`` to float32 rounding; the variables are the same, by name and shape):

* a 1x1 convolution with stride 1 is computed as a matrix product of (N*H*W, C_in) by
  (C_in, C_out). XLA's CPU backend runs the product and, above all, its weight gradient much
  faster than the equivalent convolution, which it lowers with layout transposes. DenseNet-BC
  spends half its multiply-adds in 1x1 convolutions, ResNet's bottlenecks two thirds.
* :class:`BatchNorm` normalises as ``x * a + b`` with per-channel ``a = scale / sqrt(var + eps)``
  and ``b = bias - mean * a``. Written as ``(x - mean) * a + bias`` (flax's form) the centred
  input is a full-size array that XLA keeps for the backward pass; in a DenseNet, where every
  layer normalises the concatenation of all earlier features, those copies are a large share of
  both the step time and the memory.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

ModuleDef = Callable[..., nn.Module]

# He normal with fan_out: std = sqrt(2 / (kh * kw * c_out)), what the paper's Torch code used.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch/Torch BatchNorm momentum 0.1 is flax momentum 0.9 (flax keeps 0.9 of the old average).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# The compute dtypes a network (and config.dtype) can choose; parameters stay float32. float16
# would need loss scaling, which the trainer does not do.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         **kwargs):
    """``lax.conv_general_dilated``, with plain 1x1 convolutions done as a 2-D matrix product."""
    pointwise = (
        rhs.ndim == 4
        and rhs.shape[:2] == (1, 1)
        and tuple(window_strides) == (1, 1)
        and (isinstance(padding, str) or all(tuple(p) == (0, 0) for p in padding))
        and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1
        and kwargs.get("batch_group_count", 1) == 1
        and _is_nhwc(dimension_numbers)
    )
    if not pointwise:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision, **kwargs,
        )
    kernel = rhs.reshape(rhs.shape[2], rhs.shape[3])
    out = lax.dot(lhs.reshape(-1, lhs.shape[-1]), kernel, precision=precision,
                  preferred_element_type=kwargs.get("preferred_element_type"))
    return out.reshape(*lhs.shape[:-1], kernel.shape[-1])


def _is_nhwc(dimension_numbers) -> bool:
    # flax passes ConvDimensionNumbers for NHWC inputs and HWIO kernels: lhs (0, 3, 1, 2),
    # rhs (3, 2, 0, 1), out (0, 3, 1, 2) in lax's (batch, feature, spatial...) order.
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return (tuple(dimension_numbers.lhs_spec), tuple(dimension_numbers.rhs_spec),
                tuple(dimension_numbers.out_spec)) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
    return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


class BatchNorm(nn.Module):
    """BatchNorm over all but the last axis, with flax ``nn.BatchNorm``'s variables and semantics.

    Batch statistics are computed in float32 as E[x] and E[x^2] - E[x]^2 (clipped at 0); running
    averages keep ``momentum`` of the old value and are not touched by ``init``. Under ``jax.jit``
    with the batch sharded over a mesh the statistics are global.
    """

    use_running_average: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale, bias, ra_mean, ra_var = batchnorm_variables(self, x.shape[-1], self.param_dtype)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, mean_sq = moments(x)
            var = batch_variance(mean, mean_sq)
            if not self.is_initializing():
                update_running_averages(ra_mean, ra_var, mean, var, self.momentum)
        a, b = affine(scale, bias, mean, var, self.epsilon)
        return (x.astype(jnp.float32) * a + b).astype(self.dtype or x.dtype)


class BatchNormVariables(nn.Module):
    """:class:`BatchNorm`'s variables (same names, shapes and initial values) for code that
    normalises by itself; given batch statistics ``(mean, var)`` it updates the running averages.
    Returns (scale, bias, running mean, running var)."""

    momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, channels: int, batch_stats=None):
        scale, bias, ra_mean, ra_var = batchnorm_variables(self, channels, jnp.float32)
        if batch_stats is not None and not self.is_initializing():
            update_running_averages(ra_mean, ra_var, *batch_stats, self.momentum)
        return scale, bias, ra_mean.value, ra_var.value


def batchnorm_variables(module: nn.Module, channels: int, param_dtype):
    """Creates (in ``module``'s scope) BatchNorm's params scale=1, bias=0 and its batch_stats
    mean=0, var=1; returns the two params and the two statistics' variables."""
    f32 = jnp.float32
    ra_mean = module.variable("batch_stats", "mean", lambda s: jnp.zeros(s, f32), (channels,))
    ra_var = module.variable("batch_stats", "var", lambda s: jnp.ones(s, f32), (channels,))
    scale = module.param("scale", nn.initializers.ones, (channels,), param_dtype)
    bias = module.param("bias", nn.initializers.zeros, (channels,), param_dtype)
    return scale, bias, ra_mean, ra_var


def update_running_averages(ra_mean, ra_var, mean, var, momentum: float) -> None:
    """Running averages keep ``momentum`` of the old value (Torch's momentum 1 - momentum)."""
    ra_mean.value = momentum * ra_mean.value + (1 - momentum) * mean
    ra_var.value = momentum * ra_var.value + (1 - momentum) * var


def moments(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """E[x] and E[x^2] per channel (over all but the last axis), in float32."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    return jnp.mean(x, axes), jnp.mean(x * x, axes)


def batch_variance(mean: jnp.ndarray, mean_sq: jnp.ndarray) -> jnp.ndarray:
    """E[x^2] - E[x]^2, clipped at 0 (rounding can make it slightly negative)."""
    return jnp.maximum(0.0, mean_sq - mean * mean)


def affine(scale, bias, mean, var, epsilon):
    """BatchNorm as x * a + b, per channel: a = scale / sqrt(var + eps), b = bias - mean * a."""
    a = scale.astype(jnp.float32) * lax.rsqrt(var + epsilon)
    return a, bias.astype(jnp.float32) - mean * a


def conv_and_norm(train: bool, dtype: Any) -> tuple[ModuleDef, ModuleDef]:
    """Returns (conv, norm) constructors with those settings baked in.

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
        conv_general_dilated=conv_general_dilated,
    )
    norm = functools.partial(
        BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
    )
    return conv, norm


def head(x: jnp.ndarray, num_classes: int, dtype: Any, final_norm: ModuleDef | None = None
         ) -> jnp.ndarray:
    """The end of every network: with ``final_norm`` (pre-activation networks, whose last features
    are not yet normalised) BN-ReLU as ``final_norm``, then the global average pool, the classifier
    ``head`` and the logits cast to float32. Called from a compact method, whose submodules these
    become."""
    if final_norm is not None:
        x = nn.relu(final_norm(name="final_norm")(x))
    x = global_avg_pool(x)
    x = classifier(num_classes, dtype)(x)
    return x.astype(jnp.float32)


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
