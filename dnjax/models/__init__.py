"""The model zoo: every network by name, for configs, tests and the ``python -m dnjax.models`` table.

``get_model(name, num_classes=10, **overrides)`` builds a flax module; overrides are the module's
(or its builder's) fields, e.g. ``get_model('densenet_bc100_k12', dropout_rate=0.2,
memory_efficient=True)`` or ``get_model('densenet_cifar', depth=52, growth_rate=12)``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn

from dnjax.models import densenet, resnet, vgg
from dnjax.models.densenet import DenseNet
from dnjax.models.resnet import ResNet
from dnjax.models.vgg import VGG

CIFAR_INPUT = (32, 32, 3)
IMAGENET_INPUT = (224, 224, 3)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str  # densenet | resnet | vgg
    input_shape: tuple[int, int, int]
    num_classes: int


def _entries() -> dict[str, ZooEntry]:
    c, i = CIFAR_INPUT, IMAGENET_INPUT
    table = [
        # DenseNet, CIFAR/SVHN (the paper's Table 2)
        ("densenet40_k12", densenet.DenseNet40, "densenet", c, 10),
        ("densenet100_k12", densenet.DenseNet100, "densenet", c, 10),
        ("densenet100_k24", densenet.DenseNet100K24, "densenet", c, 10),
        ("densenet_bc100_k12", densenet.DenseNetBC100, "densenet", c, 10),
        ("densenet_bc250_k24", densenet.DenseNetBC250, "densenet", c, 10),
        ("densenet_bc190_k40", densenet.DenseNetBC190, "densenet", c, 10),
        ("densenet_cifar", densenet.densenet_cifar, "densenet", c, 10),
        # DenseNet, ImageNet (Table 1)
        ("densenet121", densenet.DenseNet121, "densenet", i, 1000),
        ("densenet169", densenet.DenseNet169, "densenet", i, 1000),
        ("densenet201", densenet.DenseNet201, "densenet", i, 1000),
        ("densenet161", densenet.DenseNet161, "densenet", i, 1000),
        ("densenet264", densenet.DenseNet264, "densenet", i, 1000),
        # ResNet, CIFAR
        ("resnet20", resnet.ResNet20, "resnet", c, 10),
        ("resnet32", resnet.ResNet32, "resnet", c, 10),
        ("resnet44", resnet.ResNet44, "resnet", c, 10),
        ("resnet56", resnet.ResNet56, "resnet", c, 10),
        ("resnet110", resnet.ResNet110, "resnet", c, 10),
        ("preact_resnet110", resnet.PreActResNet110, "resnet", c, 10),
        ("resnet1202", resnet.ResNet1202, "resnet", c, 10),
        ("resnet164", resnet.ResNet164, "resnet", c, 10),
        ("preact_resnet164", resnet.PreActResNet164, "resnet", c, 10),
        ("resnet1001", resnet.ResNet1001, "resnet", c, 10),
        ("preact_resnet1001", resnet.PreActResNet1001, "resnet", c, 10),
        ("resnet_cifar", resnet.resnet_cifar, "resnet", c, 10),
        ("resnet_cifar_bottleneck", resnet.resnet_cifar_bottleneck, "resnet", c, 10),
        # ResNet, ImageNet: v1 (original) and v2 (pre-activation)
        ("resnet18", resnet.ImageNetResNet18, "resnet", i, 1000),
        ("resnet34", resnet.ImageNetResNet34, "resnet", i, 1000),
        ("resnet50", resnet.ImageNetResNet50, "resnet", i, 1000),
        ("resnet101", resnet.ImageNetResNet101, "resnet", i, 1000),
        ("resnet152", resnet.ImageNetResNet152, "resnet", i, 1000),
        ("preact_resnet18", functools.partial(resnet.ImageNetResNet18, activation="pre"), "resnet", i, 1000),
        ("preact_resnet34", functools.partial(resnet.ImageNetResNet34, activation="pre"), "resnet", i, 1000),
        ("preact_resnet50", functools.partial(resnet.ImageNetResNet50, activation="pre"), "resnet", i, 1000),
        ("preact_resnet101", functools.partial(resnet.ImageNetResNet101, activation="pre"), "resnet", i, 1000),
        ("preact_resnet152", functools.partial(resnet.ImageNetResNet152, activation="pre"), "resnet", i, 1000),
        # VGG with BN, CIFAR
        ("vgg11", vgg.VGG11, "vgg", c, 10),
        ("vgg13", vgg.VGG13, "vgg", c, 10),
        ("vgg16", vgg.VGG16, "vgg", c, 10),
        ("vgg19", vgg.VGG19, "vgg", c, 10),
        # Tiny networks for tests and smoke runs
        ("densenet_tiny", densenet.DenseNetTiny, "densenet", c, 10),
        ("densenet_bc_tiny", densenet.DenseNetBCTiny, "densenet", c, 10),
        ("resnet_tiny", resnet.ResNetTiny, "resnet", c, 10),
        ("preact_resnet_tiny", resnet.PreActResNetTiny, "resnet", c, 10),
        ("vgg_tiny", vgg.VGGTiny, "vgg", c, 10),
    ]
    return {name: ZooEntry(name, f, fam, shape, nc) for name, f, fam, shape, nc in table}


ZOO: dict[str, ZooEntry] = _entries()

# Names that are builders for arbitrary depths rather than fixed networks (left out of the table).
GENERIC = ("densenet_cifar", "resnet_cifar", "resnet_cifar_bottleneck")


# Module fields that the depth-based builders derive themselves (from ``depth``).
_SET_BY_BUILDERS = {
    DenseNet: ("block_sizes",),
    ResNet: ("stage_sizes", "block", "widths", "stem_features"),
    VGG: ("stages",),
}


def accepted_fields(factory: Callable[..., nn.Module]) -> list[str]:
    """The keyword arguments a zoo factory takes: its own plus those of the module it builds."""
    fn = factory.func if isinstance(factory, functools.partial) else factory
    names: list[str] = []
    if inspect.isclass(fn) and issubclass(fn, nn.Module):
        names = [f.name for f in dataclasses.fields(fn) if f.name not in ("parent", "name")]
    else:
        names = [p for p in inspect.signature(fn).parameters if p != "kwargs"]
        for module_cls, fixed in _SET_BY_BUILDERS.items():
            if fn.__module__ == module_cls.__module__:
                names += [f.name for f in dataclasses.fields(module_cls)
                          if f.name not in ("parent", "name", *fixed)]
    return sorted(set(names))


def get_model(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Builds the zoo network ``name``; a bad name or field raises ValueError naming it."""
    if name not in ZOO:
        raise ValueError(f"model={name!r} is unknown; valid names are: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    valid = accepted_fields(entry.factory)
    unknown = sorted(k for k in overrides if k not in valid)
    if unknown:
        raise ValueError(
            f"model {name!r} has no field(s) {unknown}; valid fields are: {', '.join(valid)}"
        )
    kwargs = dict(overrides)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return entry.factory(**kwargs)


def input_shape(name: str) -> tuple[int, int, int]:
    return ZOO[name].input_shape
