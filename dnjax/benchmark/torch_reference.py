"""PyTorch networks of the same architecture as the zoo's, for side-by-side speed and memory.

``from_flax(model)`` reads the fields of a dnjax ``DenseNet`` or ``ResNet`` module and builds the
PyTorch network with the same layers, widths and parameter count, so a benchmark compares the
frameworks and not two different networks. Covered: pre-activation DenseNets (plain, -B, -C, -BC;
CIFAR and ImageNet stems) and pre-activation CIFAR ResNets (basic or bottleneck units, shortcut A
or B). Initialisation follows the spec (He normal, fan_out, for convolutions; BatchNorm scale 1,
shift 0; classifier bias 0), which matters only for how the first steps look.

torch is imported when this module is, and dnjax never imports this module by itself: torch is an
optional extra (``pip install -e .[torch]``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

BN_MOMENTUM = 0.1  # flax's 0.9: PyTorch weighs the new batch by momentum
BN_EPSILON = 1e-5


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)


def _norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPSILON, momentum=BN_MOMENTUM)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# DenseNet


class DenseLayer(nn.Module):
    def __init__(self, cin, growth_rate, bottleneck, bn_size, dropout_rate, dropout_placement,
                 memory_efficient):
        super().__init__()
        self.bottleneck = bottleneck
        self.memory_efficient = memory_efficient
        self.dropout_rate = dropout_rate
        self.inner_dropout = dropout_placement == "torch"
        self.norm1 = _norm(cin)
        if bottleneck:
            self.conv1 = _conv(cin, bn_size * growth_rate, 1)
            self.norm2 = _norm(bn_size * growth_rate)
            self.conv2 = _conv(bn_size * growth_rate, growth_rate, 3, padding=1)
        else:
            self.conv1 = _conv(cin, growth_rate, 3, padding=1)

    def _bottleneck(self, *features):
        x = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        if self.inner_dropout and self.dropout_rate:
            x = F.dropout(x, self.dropout_rate, self.training)
        return x

    def forward(self, features):
        if not self.bottleneck:
            x = self.conv1(F.relu(self.norm1(torch.cat(features, 1))))
        else:
            if self.memory_efficient and self.training and any(f.requires_grad for f in features):
                x = torch_checkpoint.checkpoint(self._bottleneck, *features, use_reentrant=False)
            else:
                x = self._bottleneck(*features)
            x = self.conv2(F.relu(self.norm2(x)))
        if self.dropout_rate:
            x = F.dropout(x, self.dropout_rate, self.training)
        return x


class DenseBlock(nn.Module):
    def __init__(self, num_layers, cin, **layer_kwargs):
        super().__init__()
        k = layer_kwargs["growth_rate"]
        self.layers = nn.ModuleList(DenseLayer(cin + i * k, **layer_kwargs) for i in range(num_layers))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Module):
    def __init__(self, cin, cout, dropout_rate):
        super().__init__()
        self.norm = _norm(cin)
        self.conv = _conv(cin, cout, 1)
        self.dropout_rate = dropout_rate

    def forward(self, x):
        x = self.conv(F.relu(self.norm(x)))
        if self.dropout_rate:
            x = F.dropout(x, self.dropout_rate, self.training)
        return F.avg_pool2d(x, 2)


class DenseNet(nn.Module):
    def __init__(self, block_sizes, growth_rate=12, bottleneck=False, bn_size=4, compression=1.0,
                 init_features=16, stem="cifar", num_classes=10, dropout_rate=0.0,
                 dropout_placement="torch", memory_efficient=False):
        super().__init__()
        c = init_features
        if stem == "cifar":
            self.stem = _conv(3, c, 3, padding=1)
        else:
            self.stem = nn.Sequential(
                _conv(3, c, 7, stride=2, padding=3), _norm(c), nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages = []
        for i, n in enumerate(block_sizes):
            stages.append(DenseBlock(
                n, c, growth_rate=growth_rate, bottleneck=bottleneck, bn_size=bn_size,
                dropout_rate=dropout_rate, dropout_placement=dropout_placement,
                memory_efficient=memory_efficient,
            ))
            c += n * growth_rate
            if i + 1 < len(block_sizes):
                out = int(math.floor(compression * c))
                stages.append(Transition(c, out, dropout_rate if dropout_placement == "torch" else 0.0))
                c = out
        self.features = nn.Sequential(*stages)
        self.final_norm = _norm(c)
        self.head = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = self.features(self.stem(x))
        x = F.relu(self.final_norm(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------------------------
# Pre-activation ResNet


class PreActBlock(nn.Module):
    """Pre-activation unit, basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 to 4x the width)."""

    def __init__(self, cin, width, stride, bottleneck, shortcut):
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        cout = width * self.expansion
        self.norm1 = _norm(cin)
        self.shortcut = shortcut
        self.stride = stride
        self.cout = cout
        self.project = stride != 1 or cin != cout
        if self.project and shortcut == "B":
            self.proj_conv = _conv(cin, cout, 1, stride=stride)
        if bottleneck:
            self.body = nn.ModuleList([
                _conv(cin, width, 1), _norm(width), _conv(width, width, 3, stride, 1), _norm(width),
                _conv(width, cout, 1),
            ])
        else:
            self.body = nn.ModuleList([_conv(cin, width, 3, stride, 1), _norm(width), _conv(width, width, 3, 1, 1)])

    def forward(self, x):
        preact = F.relu(self.norm1(x))
        if not self.project:
            shortcut = x
        elif self.shortcut == "B":
            shortcut = self.proj_conv(preact)
        else:  # option A: subsample and zero-pad the channels
            s = x[:, :, :: self.stride, :: self.stride]
            extra = self.cout - s.shape[1]
            shortcut = F.pad(s, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        y = preact
        for m in self.body:
            y = F.relu(m(y)) if isinstance(m, nn.BatchNorm2d) else m(y)
        return shortcut + y


class PreActResNet(nn.Module):
    def __init__(self, stage_sizes, widths=(16, 32, 64), stem_features=16, bottleneck=True,
                 shortcut="B", num_classes=10):
        super().__init__()
        self.stem = _conv(3, stem_features, 3, padding=1)
        blocks, c = [], stem_features
        for i, (n, w) in enumerate(zip(stage_sizes, widths)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(PreActBlock(c, w, stride, bottleneck, shortcut))
                c = blocks[-1].cout
        self.blocks = nn.Sequential(*blocks)
        self.final_norm = _norm(c)
        self.head = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.final_norm(self.blocks(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# --------------------------------------------------------------------------------------------


def from_flax(model) -> nn.Module:
    """The PyTorch network with the architecture of dnjax module ``model``."""
    from dnjax.models.densenet import DenseNet as FlaxDenseNet
    from dnjax.models.resnet import ResNet as FlaxResNet

    if isinstance(model, FlaxDenseNet):
        if model.activation != "pre":
            raise NotImplementedError("the PyTorch reference has pre-activation DenseNets only")
        return DenseNet(
            tuple(model.block_sizes), model.growth_rate, model.bottleneck, model.bn_size,
            model.compression, model.init_features, model.stem, model.num_classes,
            model.dropout_rate, model.dropout_placement, model.memory_efficient,
        )
    if isinstance(model, FlaxResNet):
        if model.activation != "pre" or model.stem != "cifar":
            raise NotImplementedError("the PyTorch reference has pre-activation CIFAR ResNets only")
        return PreActResNet(
            tuple(model.stage_sizes), tuple(model.widths), model.stem_features,
            model.block == "bottleneck", model.shortcut, model.num_classes,
        )
    raise NotImplementedError(f"no PyTorch reference for {type(model).__name__}")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
