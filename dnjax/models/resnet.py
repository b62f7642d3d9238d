"""ResNets, the baselines DenseNet was measured against (He et al. 2015, 2016).

x_l = H_l(x_{l-1}) + x_{l-1}: the shortcut adds, where DenseNet concatenates. The original
(post-activation) and pre-activation residual units are separate block classes; a network picks
one with ``activation``. CIFAR networks use a 16-channel 3x3 stem and three stages at 32/16/8 px;
ImageNet networks the 7x7 stem and four stages.

Shortcuts where the shape changes: ``'A'`` subsamples and zero-pads the channels (no parameters,
the CIFAR ResNet-20...1202 of He 2015); ``'B'`` is a strided 1x1 projection (ImageNet, and the
bottleneck CIFAR nets, where the pre-activation unit applies it to the pre-activated input).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dnjax.models import common
from dnjax.models.common import ModuleDef

SHORTCUTS = ("A", "B")
BLOCKS = ("basic", "bottleneck")
ACTIVATIONS = ("post", "pre")
STEMS = ("cifar", "imagenet")


def _zero_pad_shortcut(x: jnp.ndarray, out_features: int, strides: int) -> jnp.ndarray:
    """Option A: identity, subsampled by the stride, with zero channels appended."""
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    extra = out_features - x.shape[-1]
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class _Block(nn.Module):
    """Fields shared by the four residual units. ``features`` is the inner width; a bottleneck
    unit outputs ``4 * features`` channels."""

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    shortcut: str = "B"

    expansion = 1

    def _shortcut(self, x: jnp.ndarray, preact: jnp.ndarray | None = None) -> jnp.ndarray:
        """The unit's shortcut from its input ``x``: ``x`` itself where the shape is kept, else
        option A (``x`` subsampled and zero-padded) or a strided 1x1 projection ``proj_conv``. A
        post-activation unit projects ``x`` and normalises (``proj_norm``); a pre-activation unit
        passes its pre-activated input as ``preact`` and projects that, with no norm."""
        out_features = self.features * self.expansion
        if self.strides == 1 and x.shape[-1] == out_features:
            return x
        if self.shortcut == "A":
            return _zero_pad_shortcut(x, out_features, self.strides)
        source = x if preact is None else preact
        y = self.conv(out_features, (1, 1), strides=self.strides, name="proj_conv")(source)
        return self.norm(name="proj_norm")(y) if preact is None else y


class BasicBlock(_Block):
    """Original unit: Conv3x3-BN-ReLU-Conv3x3-BN, add, ReLU."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(x)
        y = nn.relu(self.norm(name="norm1")(y))
        y = self.conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = self.norm(name="norm2")(y)
        return nn.relu(self._shortcut(x) + y)


class PreActBasicBlock(_Block):
    """Pre-activation unit: BN-ReLU-Conv3x3-BN-ReLU-Conv3x3, add, nothing after the add."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        preact = nn.relu(self.norm(name="norm1")(x))
        shortcut = self._shortcut(x, preact)
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv1")(preact)
        y = nn.relu(self.norm(name="norm2")(y))
        y = self.conv(self.features, (3, 3), padding=1, name="conv2")(y)
        return shortcut + y


class BottleneckBlock(_Block):
    """Original bottleneck: Conv1x1-BN-ReLU-Conv3x3-BN-ReLU-Conv1x1(4c)-BN, add, ReLU."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out_features = self.features * self.expansion
        y = self.conv(self.features, (1, 1), name="conv1")(x)
        y = nn.relu(self.norm(name="norm1")(y))
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(self.norm(name="norm2")(y))
        y = self.conv(out_features, (1, 1), name="conv3")(y)
        y = self.norm(name="norm3")(y)
        return nn.relu(self._shortcut(x) + y)


class PreActBottleneckBlock(_Block):
    """Pre-activation bottleneck: BN-ReLU-Conv1x1-BN-ReLU-Conv3x3-BN-ReLU-Conv1x1(4c), add."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        out_features = self.features * self.expansion
        preact = nn.relu(self.norm(name="norm1")(x))
        shortcut = self._shortcut(x, preact)
        y = self.conv(self.features, (1, 1), name="conv1")(preact)
        y = nn.relu(self.norm(name="norm2")(y))
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=1, name="conv2")(y)
        y = nn.relu(self.norm(name="norm3")(y))
        y = self.conv(out_features, (1, 1), name="conv3")(y)
        return shortcut + y


_BLOCK_CLASSES = {
    ("basic", "post"): BasicBlock,
    ("basic", "pre"): PreActBasicBlock,
    ("bottleneck", "post"): BottleneckBlock,
    ("bottleneck", "pre"): PreActBottleneckBlock,
}


class ResNet(nn.Module):
    """A residual network: stem, ``len(stage_sizes)`` stages, global pool, classifier.

    ``widths`` are the inner widths per stage; the first block of every stage after the first
    strides by 2. Each stage's output is sown into ``intermediates``.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    activation: str = "post"
    stem: str = "cifar"
    widths: Sequence[int] = (16, 32, 64)
    stem_features: int = 16
    shortcut: str = "A"
    num_classes: int = 10
    dtype: Any = "float32"

    def __post_init__(self):
        validate_resnet(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = common.resolve_dtype(self.dtype)
        conv, norm = common.conv_and_norm(train, dtype)
        block_cls = _BLOCK_CLASSES[(self.block, self.activation)]
        pre = self.activation == "pre"

        x = x.astype(dtype)
        if self.stem == "cifar":
            x = conv(self.stem_features, (3, 3), padding=1, name="stem_conv")(x)
            if not pre:
                x = nn.relu(norm(name="stem_norm")(x))
        else:
            x = conv(self.stem_features, (7, 7), strides=(2, 2), padding=3, name="stem_conv")(x)
            if not pre:  # a pre-activation net normalises inside its first unit instead
                x = nn.relu(norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.sow("intermediates", "stem", x)

        for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for j in range(n):
                strides = 2 if i > 0 and j == 0 else 1
                x = block_cls(
                    width, strides, conv, norm, self.shortcut, name=f"stage{i + 1}_block{j + 1:03d}"
                )(x)
            self.sow("intermediates", f"stage{i + 1}", x)

        return common.head(x, self.num_classes, dtype, final_norm=norm if pre else None)


def validate_resnet(m: ResNet) -> None:
    if not m.stage_sizes:
        raise ValueError("stage_sizes=() is invalid: a ResNet needs at least one stage")
    if len(m.widths) != len(m.stage_sizes):
        raise ValueError(
            f"widths={tuple(m.widths)} is invalid: it needs one width per stage "
            f"({len(m.stage_sizes)} stages in stage_sizes={tuple(m.stage_sizes)})"
        )
    for i, n in enumerate(m.stage_sizes):
        common.check_positive_int(f"stage_sizes[{i}]", n)
    for i, w in enumerate(m.widths):
        common.check_positive_int(f"widths[{i}]", w)
    common.check_positive_int("stem_features", m.stem_features)
    common.check_positive_int("num_classes", m.num_classes)
    common.check_choice("block", m.block, BLOCKS)
    common.check_choice("activation", m.activation, ACTIVATIONS)
    common.check_choice("stem", m.stem, STEMS)
    common.check_choice("shortcut", m.shortcut, SHORTCUTS)
    common.resolve_dtype(m.dtype)


def _cifar_units_per_stage(depth: int, per_n: int, kind: str, examples: str) -> int:
    """Depth (per_n)n+2 -> n: the stem conv, three stages of n units of per_n / 3 convs each, and
    the classifier."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < per_n + 2 or (depth - 2) % per_n:
        raise ValueError(
            f"depth={depth!r} is invalid for a CIFAR {kind} ResNet: it must be {per_n}n+2 with n >= 1, "
            f"e.g. {examples}"
        )
    return (depth - 2) // per_n


def resnet_cifar(depth: int = 20, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-(6n+2) with basic blocks and option-A shortcuts (He 2015)."""
    n = _cifar_units_per_stage(depth, 6, "basic-block", "20, 32, 44, 56, 110, 1202")
    kwargs.setdefault("shortcut", "A")
    return ResNet(stage_sizes=(n, n, n), block="basic", widths=(16, 32, 64), stem_features=16, **kwargs)


def resnet_cifar_bottleneck(depth: int = 164, **kwargs: Any) -> ResNet:
    """CIFAR bottleneck ResNet-(9n+2): stages output 64/128/256 channels (He 2016)."""
    n = _cifar_units_per_stage(depth, 9, "bottleneck", "164, 1001")
    kwargs.setdefault("shortcut", "B")
    return ResNet(
        stage_sizes=(n, n, n), block="bottleneck", widths=(16, 32, 64), stem_features=16, **kwargs
    )


ResNet20 = functools.partial(resnet_cifar, depth=20)
ResNet32 = functools.partial(resnet_cifar, depth=32)
ResNet44 = functools.partial(resnet_cifar, depth=44)
ResNet56 = functools.partial(resnet_cifar, depth=56)
ResNet110 = functools.partial(resnet_cifar, depth=110)
ResNet1202 = functools.partial(resnet_cifar, depth=1202)
PreActResNet110 = functools.partial(resnet_cifar, depth=110, activation="pre")
ResNet164 = functools.partial(resnet_cifar_bottleneck, depth=164)
PreActResNet164 = functools.partial(resnet_cifar_bottleneck, depth=164, activation="pre")
ResNet1001 = functools.partial(resnet_cifar_bottleneck, depth=1001)
PreActResNet1001 = functools.partial(resnet_cifar_bottleneck, depth=1001, activation="pre")

_IMAGENET = dict(
    stem="imagenet", widths=(64, 128, 256, 512), stem_features=64, shortcut="B", num_classes=1000
)
ImageNetResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic", **_IMAGENET)
ImageNetResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic", **_IMAGENET)
ImageNetResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck", **_IMAGENET)
ImageNetResNet101 = functools.partial(
    ResNet, stage_sizes=(3, 4, 23, 3), block="bottleneck", **_IMAGENET
)
ImageNetResNet152 = functools.partial(
    ResNet, stage_sizes=(3, 8, 36, 3), block="bottleneck", **_IMAGENET
)

ResNetTiny = functools.partial(
    ResNet, stage_sizes=(1, 1, 1), block="basic", widths=(4, 8, 16), stem_features=4
)
PreActResNetTiny = functools.partial(ResNetTiny, activation="pre")
