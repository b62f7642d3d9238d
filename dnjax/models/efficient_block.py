"""The memory-efficient dense block of pre-activation bottleneck layers (DenseNet-B/-BC).

A dense block of n layers normally keeps, for the backward pass, every layer's concatenated,
normalised and rectified input: sum over layers of (c0 + i * k) channels, quadratic in depth.
This block keeps only what is linear in depth:

* one preallocated buffer of the block's c0 + n * k output channels, into which the block input
  and each layer's k new channels are written in place (``dynamic_update_slice``); layer i reads
  its input as the buffer's first c0 + i * k channels, so no concatenation is ever built, and the
  buffer is both the block's output and the forward pass's only record of the features;
* each layer's bn_size * k channel bottleneck (the 1x1 convolution's output);
* per-channel vectors (BatchNorm statistics and coefficients).

The backward pass is written out (:func:`_block_bwd`), layer by layer from the last:

* the normalised inputs of both convolutions are rebuilt from the buffer and the bottleneck
  (element-wise work; no convolution runs twice);
* every layer adds the gradient with respect to its input into one float32 gradient buffer of
  the block's width, in place, as soon as it is computed. Autodiff would instead leave XLA one
  sum per feature over all later layers, which it fuses into one late computation that keeps
  every layer's full-width input gradient alive: quadratic memory again;
* the part of each feature's gradient that flows through later layers' BatchNorm statistics is
  linear in the feature with per-channel coefficients, so it is accumulated as two vectors and
  applied once per feature, not once per layer.

BatchNorm statistics of a feature are the same for every later layer that normalises it, so they
are computed once per feature. Dropout masks are regenerated from their keys in the backward pass.
The forward pass (:func:`dense_block`) is an ordinary JAX function: differentiated by autodiff it
is the reference the hand-written backward is tested against.

This module MIRRORS :class:`dnjax.models.densenet.DenseLayer` (bottleneck form) rather than calling
it: an edit to ``DenseLayer`` is not seen here. ``MIRRORED_DENSE_LAYER`` is the fingerprint of
the ``DenseLayer`` this block matches; ``DenseNet`` refuses ``memory_efficient=True`` when the two
differ, so a changed layer fails loudly instead of being ignored.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from dnjax.models.common import affine, batch_variance, moments

# densenet.dense_layer_fingerprint() of the DenseLayer this block mirrors. Change it only after
# porting a DenseLayer change to dense_block and _block_bwd (and running the efficient tests).
MIRRORED_DENSE_LAYER = "7ee45352ca5dd052"

f32 = jnp.float32


class BlockSpec(NamedTuple):
    """Static shape of a block: input channels, growth rate k, bottleneck width, layers, compute
    dtype, dropout rates after the 1x1 and after the 3x3 convolution, BatchNorm epsilon."""

    c0: int
    growth_rate: int
    width: int
    num_layers: int
    dtype: Any
    drop1: float
    drop2: float
    epsilon: float

    @property
    def channels(self) -> int:
        return self.c0 + self.num_layers * self.growth_rate

    def layer_input(self, i: int) -> int:
        return self.c0 + i * self.growth_rate


# Parameters of one layer, by the names of DenseLayer's variables:
# s1, t1: norm1 scale and bias (C_in,); w1: conv1 kernel (1, 1, C_in, width);
# s2, t2: norm2 scale and bias (width,); w2: conv2 kernel (3, 3, width, k).
LayerParams = dict


def conv1x1(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """A 1x1 convolution with a (1, 1, C_in, C_out) kernel, as a 2-D matrix product."""
    k = kernel.reshape(kernel.shape[-2:])
    return (x.reshape(-1, x.shape[-1]) @ k).reshape(*x.shape[:-1], k.shape[-1])


def conv3x3(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bn_relu(x, a, b, dtype):
    return jnp.maximum(x.astype(f32) * a + b, 0.0).astype(dtype)


def _keep_mask(key, rate: float, shape) -> jnp.ndarray:
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _dropout(x, key, rate: float):
    """flax ``nn.Dropout``'s arithmetic: keep with probability 1 - rate, scale by 1 / (1 - rate)."""
    if rate == 0.0 or key is None:
        return x
    return lax.select(_keep_mask(key, rate, x.shape), x / (1.0 - rate), jnp.zeros_like(x))


def _dropout_bwd(g, key, rate: float):
    if rate == 0.0 or key is None:
        return g
    return jnp.where(_keep_mask(key, rate, g.shape), g / (1.0 - rate), 0.0)


def dense_block(spec: BlockSpec, x0, params: Sequence[LayerParams], keys=None, running=None):
    """The block's forward pass. Returns the buffer (the block's output), per layer the BatchNorm
    statistics (mean1, var1, mean2, var2), and what the backward pass keeps: per layer the
    bottleneck and the BatchNorm coefficients (a1, b1, a2, b2) of x * a + b.

    ``keys``: per layer a pair of dropout keys (after the 1x1, after the 3x3 conv) or None.
    ``running``: per layer the BatchNorm running (mean1, var1, mean2, var2) to normalise with
    (evaluation); None normalises with batch statistics (training).
    """
    n, h, w, _ = x0.shape
    dtype = spec.dtype
    buf = lax.dynamic_update_slice(jnp.zeros((n, h, w, spec.channels), x0.dtype), x0, (0, 0, 0, 0))
    feature_moments = [moments(x0)] if running is None else None
    stats, bottlenecks, coefficients = [], [], []
    for i, p in enumerate(params):
        c = spec.layer_input(i)
        key1, key2 = keys[i] if keys is not None else (None, None)
        if running is None:
            mean = jnp.concatenate([m for m, _ in feature_moments])
            var = batch_variance(mean, jnp.concatenate([q for _, q in feature_moments]))
        else:
            mean, var = running[i][0], running[i][1]
        a, b = affine(p["s1"], p["t1"], mean, var, spec.epsilon)
        bottleneck = conv1x1(bn_relu(buf[..., :c], a, b, dtype), p["w1"].astype(dtype))
        bottleneck = _dropout(bottleneck, key1, spec.drop1)
        if running is None:
            mean2, mean_sq2 = moments(bottleneck)
            var2 = batch_variance(mean2, mean_sq2)
        else:
            mean2, var2 = running[i][2], running[i][3]
        a2, b2 = affine(p["s2"], p["t2"], mean2, var2, spec.epsilon)
        new = conv3x3(bn_relu(bottleneck, a2, b2, dtype), p["w2"].astype(dtype))
        new = _dropout(new, key2, spec.drop2)
        buf = lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, 0, 0, c))
        if running is None and i + 1 < len(params):
            feature_moments.append(moments(new))
        stats.append((mean, var, mean2, var2))
        bottlenecks.append(bottleneck)
        coefficients.append((a, b, a2, b2))
    return buf, stats, (bottlenecks, coefficients)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _train_block(spec, x0, params, keys):
    buf, stats, _ = dense_block(spec, x0, params, keys)
    return buf, stats


def _block_fwd(spec, x0, params, keys):
    buf, stats, (bottlenecks, coefficients) = dense_block(spec, x0, params, keys)
    return (buf, stats), (buf, bottlenecks, coefficients, params, stats, keys)


def _block_bwd(spec, residuals, cotangents):
    """Layer by layer from the last: see the module docstring. The cotangent of the statistics is
    ignored: they only feed the running averages, which no loss depends on."""
    buf, bottlenecks, coefficients, params, stats, keys = residuals
    g_buf, _ = cotangents
    k = spec.growth_rate
    count = buf.size // buf.shape[-1]
    grad = g_buf.astype(f32)
    # d loss / d x of a feature through later layers' batch statistics: (lin + 2 * quad * x) / count
    lin = jnp.zeros((spec.channels,), f32)
    quad = jnp.zeros((spec.channels,), f32)
    dparams = [None] * len(params)
    for i in reversed(range(len(params))):
        p, (mean, var, mean2, var2), (a, b, a2, b2) = params[i], stats[i], coefficients[i]
        key1, key2 = keys[i] if keys is not None else (None, None)
        c = spec.layer_input(i)
        new = buf[..., c:c + k].astype(f32)
        g_new = grad[..., c:c + k] + (lin[c:c + k] + 2.0 * quad[c:c + k] * new) / count
        # Everything rebuilt below depends on the incoming gradient, so that XLA cannot share it
        # with the forward pass (and keep it alive until now). Adding 0 * g changes no value.
        tie = 0.0 * g_new.reshape(-1)[0]
        g_new = _dropout_bwd(g_new, key2, spec.drop2)

        # BN2-ReLU-Conv3x3, from the kept bottleneck; its statistics are the bottleneck's own.
        hb = bottlenecks[i].astype(f32) + tie
        dh, dw2, ds2, dt2, dmean2, dsq2 = _bn_relu_conv_bwd(
            spec, conv3x3, hb, p["s2"], p["t2"], p["w2"], mean2, var2, a2, b2, g_new)
        dh = dh + (dmean2 + 2.0 * dsq2 * hb) / count
        dh = _dropout_bwd(dh, key1, spec.drop1)

        # BN1-ReLU-Conv1x1, from the buffer's first c channels; the gradient through their
        # statistics is applied once per feature, from lin and quad.
        dx, dw1, ds1, dt1, dmean, dsq = _bn_relu_conv_bwd(
            spec, conv1x1, buf[..., :c].astype(f32) + tie, p["s1"], p["t1"], p["w1"],
            mean, var, a, b, dh)
        lin = lin + jnp.pad(dmean, (0, spec.channels - c))
        quad = quad + jnp.pad(dsq, (0, spec.channels - c))
        grad = lax.dynamic_update_slice(grad, grad[..., :c] + dx, (0, 0, 0, 0))
        dparams[i] = {
            "s1": ds1.astype(p["s1"].dtype), "t1": dt1.astype(p["t1"].dtype),
            "w1": dw1.astype(p["w1"].dtype),
            "s2": ds2.astype(p["s2"].dtype), "t2": dt2.astype(p["t2"].dtype),
            "w2": dw2.astype(p["w2"].dtype),
        }
    x0 = buf[..., :spec.c0].astype(f32)
    g_x0 = grad[..., :spec.c0] + (lin[:spec.c0] + 2.0 * quad[:spec.c0] * x0) / count
    keys_ct = None if keys is None else jax.tree.map(lambda _: None, keys)
    return g_x0.astype(buf.dtype), type(params)(dparams), keys_ct


def _bn_relu_conv_bwd(spec, conv, x, scale, bias, kernel, mean, var, a, b, g):
    """Backward pass of conv(relu(x * a + b), kernel) with the BatchNorm affine (a, b) of batch
    statistics (mean, var), from the float32 input ``x``, rebuilt by the caller.

    Returns the gradient with respect to ``x`` through the convolution (not through the
    statistics), the kernel's, the scale's and bias's, and those of E[x] and E[x^2]."""
    z = x * a + b
    _, conv_vjp = jax.vjp(conv, jnp.maximum(z, 0.0).astype(spec.dtype), kernel.astype(spec.dtype))
    dy, dkernel = conv_vjp(g.astype(spec.dtype))
    dz = jnp.where(z > 0, dy.astype(f32), 0.0)
    dscale, dbias, dmean, dsq = _affine_vjp(scale, bias, mean, var, spec.epsilon,
                                            jnp.sum(dz * x, (0, 1, 2)), jnp.sum(dz, (0, 1, 2)))
    return dz * a, dkernel, dscale, dbias, dmean, dsq


def _affine_vjp(scale, bias, mean, var, epsilon, da, db):
    """Gradients of the batch affine a = scale / sqrt(var + eps), b = bias - mean * a, with
    var = max(0, E[x^2] - E[x]^2), with respect to scale, bias, E[x] and E[x^2]."""
    r = lax.rsqrt(var + epsilon)
    a = scale.astype(f32) * r
    da = da - mean * db  # b depends on a
    dvar = jnp.where(var > 0, da * scale.astype(f32) * -0.5 * r * r * r, 0.0)
    return da * r, db, -a * db - 2.0 * mean * dvar, dvar


_train_block.defvjp(_block_fwd, _block_bwd)


def train_block(spec: BlockSpec, x0, params: Sequence[LayerParams], keys=None):
    """The block in training (batch statistics) with the memory-efficient backward pass.

    Returns (the block's output, per-layer BatchNorm batch statistics (mean1, var1, mean2, var2)
    for the running averages; no gradient flows back through them)."""
    return _train_block(spec, x0, list(params), keys)
