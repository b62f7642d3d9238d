"""DenseNet (Huang et al., arXiv 1608.06993): plain, -B, -C and -BC, CIFAR and ImageNet stems.

Layer l of a dense block sees the channel-wise concatenation [x_0, x_1, ..., x_{l-1}] of the block
input and every earlier layer's output, and adds ``growth_rate`` channels of its own; a block of n
layers therefore turns c_in channels into c_in + n * k. Transitions between blocks compress to
floor(theta * m) channels and halve height and width.

The pre-activation composite function (BN-ReLU-Conv) is the paper's and the default; the
post-activation one (Conv-BN-ReLU) exists for the ablation and is a separate pair of classes
(:class:`PostActDenseLayer`, :class:`PostActTransition`), chosen by ``activation='post'``.

``memory_efficient=True`` makes feature memory linear in depth. Dense blocks of pre-activation
bottleneck layers (DenseNet-B/-BC) become :class:`EfficientDenseBlock`: a preallocated buffer of
the block's channels that the layers write into, a hand-written backward pass that rebuilds the
normalised inputs instead of keeping them and accumulates input gradients in place (see
:mod:`dnjax.models.efficient_block`); no convolution runs twice. Other layers are wrapped in
``nn.remat``. The parameters and BatchNorm statistics are the same variables in both modes, and
running statistics are updated once per step.

The efficient block does not call :class:`DenseLayer`: it mirrors it. A change to
``DenseLayer`` must be made in :mod:`dnjax.models.efficient_block` as well;
:func:`dense_layer_fingerprint` makes the efficient mode refuse to build until it is.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import math
import textwrap
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dnjax.models import common, efficient_block
from dnjax.models.common import ModuleDef

DROPOUT_PLACEMENTS = ("torch", "torchvision")
ACTIVATIONS = ("pre", "post")
STEMS = ("cifar", "imagenet")


def _concat(features: Sequence[jnp.ndarray]) -> jnp.ndarray:
    return features[0] if len(features) == 1 else jnp.concatenate(features, axis=-1)


class _Kernel(nn.Module):
    """A convolution kernel (H, W, C_in, C_out) under the name and initialisation nn.Conv uses."""

    shape: tuple[int, int, int, int]

    @nn.compact
    def __call__(self) -> jnp.ndarray:
        return self.param("kernel", common.conv_kernel_init, self.shape, jnp.float32)


class _DenseLayerBase(nn.Module):
    """What the pre- and post-activation layers share: the fields and the layer's course. H_l is
    one composite function to ``growth_rate`` channels, or with ``bottleneck`` (DenseNet-B) a 1x1
    one to ``bn_size * growth_rate`` channels before it; subclasses give the composite function.

    Takes the list of feature maps produced so far and concatenates them itself, so that under
    ``nn.remat`` the concatenation is part of what gets recomputed.
    """

    growth_rate: int
    bottleneck: bool
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0
    dropout_placement: str = "torch"

    def composite(self, x: jnp.ndarray, index: int, features: int, window: int) -> jnp.ndarray:
        """The ``index``-th composite function (norm``index``, conv``index``): a ``window`` x
        ``window`` convolution to ``features`` channels, padded to keep height and width."""
        raise NotImplementedError

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray], train: bool) -> jnp.ndarray:
        x = _concat(features)
        if self.bottleneck:
            x = self.composite(x, 1, self.bn_size * self.growth_rate, 1)
            if self.dropout_placement == "torch":
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = self.composite(x, 2, self.growth_rate, 3)
        else:
            x = self.composite(x, 1, self.growth_rate, 3)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class DenseLayer(_DenseLayerBase):
    """Pre-activation H_l: BN-ReLU-Conv3x3(k), or with ``bottleneck`` the DenseNet-B form
    BN-ReLU-Conv1x1(bn_size * k)-BN-ReLU-Conv3x3(k).

    EDITING THIS LAYER: with ``memory_efficient=True`` and ``bottleneck=True`` this class is never
    called. Its computation (``_DenseLayerBase.__call__`` with this ``composite``) is mirrored,
    forward and hand-written backward, by ``dnjax/models/efficient_block.py`` (``dense_block`` and
    ``_block_bwd``). Make the same change there, check it with ``tests/test_models.py -k
    efficient``, then set ``efficient_block.MIRRORED_DENSE_LAYER`` to the new
    ``dense_layer_fingerprint()``. Until then the memory-efficient mode refuses to build (the plain
    mode is unaffected).
    """

    def composite(self, x: jnp.ndarray, index: int, features: int, window: int) -> jnp.ndarray:
        x = nn.relu(self.norm(name=f"norm{index}")(x))
        return self.conv(features, (window, window), padding=window // 2, name=f"conv{index}")(x)


def dense_layer_fingerprint(layer_cls: type = DenseLayer) -> str:
    """A hash of what :class:`DenseLayer` computes: the syntax trees of the methods it runs, its
    ``__call__`` and ``composite`` (comments, docstrings and formatting left out), and its fields
    with their defaults."""
    trees = [ast.parse(textwrap.dedent(inspect.getsource(getattr(layer_cls, method))))
             for method in ("__call__", "composite")]
    for tree in trees:
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    fields = [(f.name, "required" if f.default is dataclasses.MISSING else repr(f.default))
              for f in dataclasses.fields(layer_cls) if f.name not in ("parent", "name")]
    code = "".join(ast.dump(tree) for tree in trees)
    return hashlib.sha256((code + repr(fields)).encode()).hexdigest()[:16]


def check_efficient_block_mirrors_dense_layer() -> None:
    """ValueError when :class:`DenseLayer` changed since the efficient block was written to mirror it."""
    now = dense_layer_fingerprint()
    if now != efficient_block.MIRRORED_DENSE_LAYER:
        raise ValueError(
            "memory_efficient=True cannot be used: DenseLayer was changed (fingerprint "
            f"{now}, efficient_block.MIRRORED_DENSE_LAYER is {efficient_block.MIRRORED_DENSE_LAYER}) and the "
            "memory-efficient block (dnjax/models/efficient_block.py), which mirrors it instead of calling "
            "it, would silently ignore the change. Port the change there, then update "
            "MIRRORED_DENSE_LAYER; or train with memory_efficient=False"
        )


class PostActDenseLayer(_DenseLayerBase):
    """Post-activation H_l for the ablation: Conv3x3-BN-ReLU, or with ``bottleneck``
    Conv1x1-BN-ReLU-Conv3x3-BN-ReLU. Its output is non-negative."""

    def composite(self, x: jnp.ndarray, index: int, features: int, window: int) -> jnp.ndarray:
        x = self.conv(features, (window, window), padding=window // 2, name=f"conv{index}")(x)
        return nn.relu(self.norm(name=f"norm{index}")(x))


class DenseBlock(nn.Module):
    """n layers, each fed every earlier feature map; output has c_in + n * k channels."""

    num_layers: int
    layer: ModuleDef  # a layer class (possibly remat-wrapped) with everything but the name bound

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        features = [x]
        for i in range(self.num_layers):
            features.append(self.layer(name=f"layer{i + 1:02d}")(features, train))
        return _concat(features)


class _BottleneckVariables(nn.Module):
    """The variables of a bottleneck :class:`DenseLayer` (norm1, conv1, norm2, conv2), for
    :class:`EfficientDenseBlock`. Returns the parameters and the running statistics."""

    width: int
    growth_rate: int
    momentum: float = common.BN_MOMENTUM

    @nn.compact
    def __call__(self, c_in: int, batch_stats=None):
        stats1, stats2 = (None, None) if batch_stats is None else (batch_stats[:2], batch_stats[2:])
        s1, t1, mean1, var1 = common.BatchNormVariables(self.momentum, name="norm1")(c_in, stats1)
        w1 = _Kernel((1, 1, c_in, self.width), name="conv1")()
        s2, t2, mean2, var2 = common.BatchNormVariables(self.momentum, name="norm2")(
            self.width, stats2)
        w2 = _Kernel((3, 3, self.width, self.growth_rate), name="conv2")()
        return dict(s1=s1, t1=t1, w1=w1, s2=s2, t2=t2, w2=w2), (mean1, var1, mean2, var2)


class EfficientDenseBlock(nn.Module):
    """A dense block of pre-activation bottleneck layers whose memory is linear in depth: the
    same function and variables as ``DenseBlock`` of :class:`DenseLayer`, computed by
    :mod:`dnjax.models.efficient_block` (a preallocated feature buffer, a hand-written backward
    pass that rebuilds normalised inputs and accumulates gradients in place)."""

    num_layers: int
    growth_rate: int
    bn_size: int
    dtype: Any
    dropout_rate: float = 0.0
    dropout_placement: str = "torch"
    momentum: float = common.BN_MOMENTUM
    epsilon: float = common.BN_EPSILON

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        width = self.bn_size * self.growth_rate
        rate = self.dropout_rate if train else 0.0
        spec = efficient_block.BlockSpec(
            c0=x.shape[-1], growth_rate=self.growth_rate, width=width, num_layers=self.num_layers,
            dtype=self.dtype, drop1=rate if self.dropout_placement == "torch" else 0.0,
            drop2=rate, epsilon=self.epsilon,
        )
        layers = [
            _BottleneckVariables(width, self.growth_rate, self.momentum, name=f"layer{i + 1:02d}")
            for i in range(self.num_layers)
        ]
        variables = [layer(spec.layer_input(i)) for i, layer in enumerate(layers)]
        params = [p for p, _ in variables]
        x = x.astype(self.dtype)
        if not train:
            out, _, _ = efficient_block.dense_block(spec, x, params, running=[r for _, r in variables])
            return out
        keys = None
        if rate > 0:
            keys = [(self.make_rng("dropout"), self.make_rng("dropout")) for _ in layers]
        out, batch_stats = efficient_block.train_block(spec, x, params, keys)
        for i, (layer, stats) in enumerate(zip(layers, batch_stats)):
            layer(spec.layer_input(i), batch_stats=jax.tree.map(lax.stop_gradient, stats))
        return out


class _TransitionBase(nn.Module):
    """What the pre- and post-activation transitions share: a 1x1 composite function that
    compresses to ``out_features`` channels, dropout, and a 2x2 average pool that halves the
    resolution; subclasses give the composite function."""

    out_features: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0

    def composite(self, x: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = self.composite(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Transition(_TransitionBase):
    """BN-ReLU-Conv1x1(out_features)-AvgPool2x2: compresses channels and halves the resolution."""

    def composite(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.relu(self.norm(name="norm")(x))
        return self.conv(self.out_features, (1, 1), name="conv")(x)


class PostActTransition(_TransitionBase):
    """Conv1x1-BN-ReLU-AvgPool2x2, the transition of the post-activation ablation."""

    def composite(self, x: jnp.ndarray) -> jnp.ndarray:
        x = self.conv(self.out_features, (1, 1), name="conv")(x)
        return nn.relu(self.norm(name="norm")(x))


_LAYER_CLASSES = {"pre": (DenseLayer, Transition), "post": (PostActDenseLayer, PostActTransition)}


class DenseNet(nn.Module):
    """A DenseNet of ``len(block_sizes)`` dense blocks joined by transitions.

    ``bottleneck`` makes it DenseNet-B, ``compression < 1`` DenseNet-C, both DenseNet-BC.
    ``num_init_features=None`` follows the paper: 2k for DenseNet-BC and for the ImageNet stem,
    16 otherwise (the official Torch code uses 2k everywhere: pass it explicitly for that).
    ``dropout_placement='torch'`` drops after every conv but the stem (the paper's code);
    ``'torchvision'`` only after each layer's 3x3 conv.

    The stem's, each block's and each transition's outputs are sown into the ``intermediates``
    collection as ``stem``, ``block1_out``, ``transition1_out``, ... (``block1`` and ``transition1``
    name the submodules, and flax forbids a variable with a submodule's name); apply with
    ``mutable=['intermediates']`` to read them.
    """

    block_sizes: Sequence[int]
    growth_rate: int = 12
    bottleneck: bool = False
    bn_size: int = 4
    compression: float = 1.0
    num_init_features: int | None = None
    stem: str = "cifar"
    num_classes: int = 10
    dropout_rate: float = 0.0
    dropout_placement: str = "torch"
    activation: str = "pre"
    memory_efficient: bool = False
    dtype: Any = "float32"

    def __post_init__(self):
        validate_densenet(self)
        super().__post_init__()

    @property
    def init_features(self) -> int:
        if self.num_init_features is not None:
            return self.num_init_features
        if self.stem == "imagenet" or (self.bottleneck and self.compression < 1):
            return 2 * self.growth_rate
        return 16

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = common.resolve_dtype(self.dtype)
        conv, norm = common.conv_and_norm(train, dtype)
        layer_cls, transition_cls = _LAYER_CLASSES[self.activation]
        efficient_blocks = self.memory_efficient and self.bottleneck and layer_cls is DenseLayer
        if self.memory_efficient and not efficient_blocks:
            # argnums count self as 0: features=1, train=2 (a Python bool, so it must be static).
            layer_cls = nn.remat(layer_cls, static_argnums=(2,))
        layer = functools.partial(
            layer_cls,
            growth_rate=self.growth_rate,
            bottleneck=self.bottleneck,
            bn_size=self.bn_size,
            conv=conv,
            norm=norm,
            dropout_rate=self.dropout_rate,
            dropout_placement=self.dropout_placement,
        )
        transition_dropout = self.dropout_rate if self.dropout_placement == "torch" else 0.0

        x = x.astype(dtype)
        post = self.activation == "post"
        if self.stem == "cifar":
            x = conv(self.init_features, (3, 3), padding=1, name="stem_conv")(x)
            if post:
                x = nn.relu(norm(name="stem_norm")(x))
        else:
            x = conv(self.init_features, (7, 7), strides=(2, 2), padding=3, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        self.sow("intermediates", "stem", x)

        channels = self.init_features
        for i, n in enumerate(self.block_sizes):
            if efficient_blocks:
                block = EfficientDenseBlock(
                    n, self.growth_rate, self.bn_size, dtype, self.dropout_rate,
                    self.dropout_placement, name=f"block{i + 1}",
                )
            else:
                block = DenseBlock(n, layer, name=f"block{i + 1}")
            x = block(x, train)
            channels += n * self.growth_rate
            self.sow("intermediates", f"block{i + 1}_out", x)
            if i + 1 < len(self.block_sizes):
                channels = int(math.floor(self.compression * channels))
                x = transition_cls(
                    channels, conv, norm, transition_dropout, name=f"transition{i + 1}"
                )(x, train)
                self.sow("intermediates", f"transition{i + 1}_out", x)

        # post-activation features are already normalised and rectified
        return common.head(x, self.num_classes, dtype, final_norm=None if post else norm)


def validate_densenet(m: DenseNet) -> None:
    """Checks every field at construction, so a bad value fails here and not inside a trace."""
    if not m.block_sizes:
        raise ValueError("block_sizes=() is invalid: a DenseNet needs at least one dense block")
    for i, n in enumerate(m.block_sizes):
        common.check_positive_int(f"block_sizes[{i}]", n)
    common.check_positive_int("growth_rate", m.growth_rate)
    common.check_positive_int("bn_size", m.bn_size)
    common.check_positive_int("num_classes", m.num_classes)
    if m.num_init_features is not None:
        common.check_positive_int("num_init_features", m.num_init_features)
    if isinstance(m.compression, bool) or not isinstance(m.compression, (int, float)) or not (
        0.0 < m.compression <= 1.0
    ):
        raise ValueError(
            f"compression={m.compression!r} is invalid: theta must be in (0, 1] "
            "(1 for plain DenseNet, 0.5 for DenseNet-C/-BC)"
        )
    common.check_dropout("dropout_rate", m.dropout_rate)
    common.check_choice("dropout_placement", m.dropout_placement, DROPOUT_PLACEMENTS)
    common.check_choice("activation", m.activation, ACTIVATIONS)
    common.check_choice("stem", m.stem, STEMS)
    common.resolve_dtype(m.dtype)
    if m.memory_efficient and m.bottleneck and m.activation == "pre":  # the efficient block engages
        check_efficient_block_mirrors_dense_layer()


def cifar_block_sizes(depth: int, bottleneck: bool) -> tuple[int, int, int]:
    """Depth L -> layers per block: (L - 4) / 3, or (L - 4) / 6 with bottlenecks (two convs each)."""
    per_layer = 6 if bottleneck else 3
    if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 4 or (depth - 4) % per_layer:
        kind = "DenseNet-B/-BC (bottleneck=True)" if bottleneck else "DenseNet without bottlenecks"
        examples = ", ".join(str(4 + per_layer * n) for n in (1, 2, 3))
        raise ValueError(
            f"depth={depth!r} is invalid for {kind}: (depth - 4) must be a positive multiple of "
            f"{per_layer}, e.g. {examples}, ..."
        )
    n = (depth - 4) // per_layer
    return (n, n, n)


def densenet_cifar(
    depth: int = 40,
    growth_rate: int = 12,
    bottleneck: bool = False,
    compression: float = 1.0,
    **kwargs: Any,
) -> DenseNet:
    """A 3-block CIFAR/SVHN DenseNet of total depth L (stem + layers + 2 transitions + classifier)."""
    kwargs.setdefault("stem", "cifar")
    return DenseNet(
        block_sizes=cifar_block_sizes(depth, bottleneck),
        growth_rate=growth_rate,
        bottleneck=bottleneck,
        compression=compression,
        **kwargs,
    )


# The paper's Table 2 rows (CIFAR/SVHN).
DenseNet40 = functools.partial(densenet_cifar, depth=40, growth_rate=12)
DenseNet100 = functools.partial(densenet_cifar, depth=100, growth_rate=12)
DenseNet100K24 = functools.partial(densenet_cifar, depth=100, growth_rate=24)
_BC = dict(bottleneck=True, compression=0.5)
DenseNetBC100 = functools.partial(densenet_cifar, depth=100, growth_rate=12, **_BC)
DenseNetBC250 = functools.partial(densenet_cifar, depth=250, growth_rate=24, **_BC)
DenseNetBC190 = functools.partial(densenet_cifar, depth=190, growth_rate=40, **_BC)

# ImageNet (the paper's Table 1).
_IMAGENET = dict(bottleneck=True, compression=0.5, stem="imagenet", num_classes=1000)
DenseNet121 = functools.partial(DenseNet, block_sizes=(6, 12, 24, 16), growth_rate=32, **_IMAGENET)
DenseNet169 = functools.partial(DenseNet, block_sizes=(6, 12, 32, 32), growth_rate=32, **_IMAGENET)
DenseNet201 = functools.partial(DenseNet, block_sizes=(6, 12, 48, 32), growth_rate=32, **_IMAGENET)
DenseNet161 = functools.partial(DenseNet, block_sizes=(6, 12, 36, 24), growth_rate=48, **_IMAGENET)
DenseNet264 = functools.partial(DenseNet, block_sizes=(6, 12, 64, 48), growth_rate=32, **_IMAGENET)

# Tiny networks for tests: the same code paths, a few thousand parameters.
DenseNetTiny = functools.partial(DenseNet, block_sizes=(2, 2, 2), growth_rate=4, num_init_features=8)
DenseNetBCTiny = functools.partial(
    DenseNet, block_sizes=(2, 2, 2), growth_rate=4, bottleneck=True, compression=0.5
)
