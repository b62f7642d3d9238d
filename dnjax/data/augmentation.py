"""On-device normalisation and augmentation of uint8 batches, inside the jitted step."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------------------------
# On-device normalisation and augmentation


def normalize(images, mean, std) -> jax.Array:
    """``(images - mean) / std`` per channel, as float32. jit-able.

    ``mean`` and ``std`` are on the images' 0..255 scale (:class:`DatasetInfo`); the 'scale'
    normalisation is mean 0, std 255 (pixels / 255).
    """
    x = jnp.asarray(images).astype(jnp.float32)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (x - mean) / std


def resize(images, size: int | None) -> jax.Array:
    """Bilinear resize of a batch [N, H, W, C] to size x size (``None``: unchanged). jit-able:
    small images are enlarged on the device, e.g. CIFAR to the 224 x 224 of ImageNet weights."""
    if size is None or tuple(images.shape[1:3]) == (size, size):
        return images
    n, _, _, c = images.shape
    return jax.image.resize(images, (n, size, size, c), "bilinear")


def augment(rng, images, *, pad: int, flip: bool) -> jax.Array:
    """Random crop after zero padding, and random horizontal flip, per example. jit-able.

    ``images`` are the normalised batch [N, H, W, C]: the zero padding then equals the mean
    pixel. Each example is padded by ``pad`` on every side and cropped back to H x W at a random
    offset; with ``flip`` each example is mirrored left-right with probability 1/2.
    ``pad=0, flip=False`` returns ``images`` unchanged.
    """
    images = jnp.asarray(images)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if pad == 0 and not flip:
        return images
    n, h, w, c = images.shape
    crop_rng, flip_rng = jax.random.split(rng)
    out = images
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * pad + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        out = jax.vmap(crop)(padded, offsets)
    if flip:
        mirrored = jax.random.bernoulli(flip_rng, 0.5, (n,))
        out = jnp.where(mirrored[:, None, None, None], out[:, :, ::-1, :], out)
    return out

