"""VGG with BatchNorm for CIFAR: the "plain" network of the comparison, x_l = H_l(x_{l-1}).

Stages of Conv3x3-BN-ReLU with a 2x2 max pool between stages, then a global average pool and one
Dense layer (the CIFAR form: 32 px input leaves 2x2 maps after four pools, so no large FC head).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dnjax.models import common

# Output channels of each conv, one tuple per stage (Simonyan & Zisserman, configurations A, B, D, E).
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    stages: Sequence[Sequence[int]]
    num_classes: int = 10
    dtype: Any = "float32"

    def __post_init__(self):
        if not self.stages or any(not s for s in self.stages):
            raise ValueError(f"stages={self.stages!r} is invalid: give at least one non-empty stage")
        for i, stage in enumerate(self.stages):
            for j, c in enumerate(stage):
                common.check_positive_int(f"stages[{i}][{j}]", c)
        common.check_positive_int("num_classes", self.num_classes)
        common.resolve_dtype(self.dtype)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = common.resolve_dtype(self.dtype)
        conv, norm = common.conv_and_norm(train, dtype)
        x = x.astype(dtype)
        for i, stage in enumerate(self.stages):
            if i:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for j, c in enumerate(stage):
                x = conv(c, (3, 3), padding=1, name=f"stage{i + 1}_conv{j + 1}")(x)
                x = nn.relu(norm(name=f"stage{i + 1}_norm{j + 1}")(x))
            self.sow("intermediates", f"stage{i + 1}", x)
        return common.head(x, self.num_classes, dtype)


def vgg(depth: int = 16, **kwargs: Any) -> VGG:
    if depth not in STAGES:
        raise ValueError(f"depth={depth!r} is invalid for VGG: valid depths are {sorted(STAGES)}")
    return VGG(stages=STAGES[depth], **kwargs)


VGG11 = functools.partial(vgg, depth=11)
VGG13 = functools.partial(vgg, depth=13)
VGG16 = functools.partial(vgg, depth=16)
VGG19 = functools.partial(vgg, depth=19)
VGGTiny = functools.partial(VGG, stages=((4,), (8,), (8,)))
