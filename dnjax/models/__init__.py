"""The model zoo: every network by name, the one registry behind the configs' model lists, the
studies' families and kinds of network (``family``, ``variant``) and the ``python -m dnjax.models``
table.

``get_model(name, num_classes=10, **overrides)`` builds a flax module; overrides are the module's
(or its builder's) fields, e.g. ``get_model('densenet_bc100_k12', dropout_rate=0.2,
memory_efficient=True)`` or ``get_model('densenet_cifar', depth=52, growth_rate=12)``.
``field_types(name)`` lists those fields with their types: a run's ``config.model`` sets any of
them (a config file spells out those of its recipe; the command line may set the others), and
one the network does not take is refused, naming it.
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

# The native input shapes (H, W, C) and class counts of the two kinds of networks.
CIFAR_INPUT = (32, 32, 3)
IMAGENET_INPUT = (224, 224, 3)
CIFAR_CLASSES = 10
IMAGENET_CLASSES = 1000

# A zoo entry is a published network ("paper"), a builder for any depth ("builder"), or a tiny
# network of the family for tests and smoke runs ("tiny").
ROLES = ("paper", "builder", "tiny")


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str  # a name shared by the networks of one model file: densenet, resnet, vgg
    input_shape: tuple[int, int, int]
    num_classes: int
    role: str = "paper"  # one of ROLES


def _entries() -> dict[str, ZooEntry]:
    c, i = CIFAR_INPUT, IMAGENET_INPUT
    builders = {"densenet_cifar", "resnet_cifar", "resnet_cifar_bottleneck"}
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
    role = lambda name: "builder" if name in builders else "tiny" if name.endswith("_tiny") else "paper"
    return {name: ZooEntry(name, f, fam, shape, nc, role(name)) for name, f, fam, shape, nc in table}


ZOO: dict[str, ZooEntry] = _entries()
FAMILIES = tuple(dict.fromkeys(e.family for e in ZOO.values()))  # densenet, resnet, vgg, in the zoo's order

# Names that are builders for arbitrary depths rather than fixed networks (left out of the table).
GENERIC = tuple(n for n, e in ZOO.items() if e.role == "builder")


def names(family: str | None = None, input_shape: tuple[int, int, int] | None = None,
          roles: tuple[str, ...] = ROLES) -> tuple[str, ...]:
    """The zoo's names of one family and input shape (None: any), in the zoo's order."""
    return tuple(n for n, e in ZOO.items()
                 if (family is None or e.family == family)
                 and (input_shape is None or e.input_shape == input_shape) and e.role in roles)


def family(name: str) -> str:
    """The family (densenet, resnet, vgg) of zoo network ``name``; ValueError for an unknown one."""
    if name not in ZOO:
        raise ValueError(f"model={name!r} is unknown; valid names are: {', '.join(sorted(ZOO))}")
    return ZOO[name].family


# The kinds of network within each family, as the paper names them: DenseNet-B has bottleneck
# layers, DenseNet-C transitions that compress (compression < 1), DenseNet-BC both; a
# pre-activation ResNet puts BatchNorm and ReLU before each convolution of its units.
VARIANTS = {
    "densenet": ("densenet", "densenet_b", "densenet_c", "densenet_bc"),
    "resnet": ("resnet", "preact_resnet"),
    "vgg": ("vgg",),
}


def variant(name: str, **fields: Any) -> str:
    """The kind of zoo network ``name`` (built with ``fields``) within its family, one of
    ``VARIANTS[family(name)]``, read off the module's own fields: ``bottleneck`` and
    ``compression`` of a DenseNet, ``activation`` of a ResNet. A bad name or field raises
    ValueError as ``get_model`` does."""
    module = get_model(name, **fields)
    if isinstance(module, DenseNet):
        letters = ("b" if module.bottleneck else "") + ("c" if module.compression < 1 else "")
        return f"densenet_{letters}" if letters else "densenet"
    if isinstance(module, ResNet):
        return "preact_resnet" if module.activation == "pre" else "resnet"
    return ZOO[name].family


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


# Fields every network has that a run sets from elsewhere: the data set's class count and
# config.dtype.
RUN_FIELDS = ("num_classes", "dtype")

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _field_type(annotation: Any, default: Any) -> type:
    """The command-line type of a field: int, float, bool, str, or tuple for sequences."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" | None", "").replace("Optional[", "").rstrip("]") if "None" in text else text
    if text in _TYPES:
        return _TYPES[text]
    if text.startswith(("Sequence", "tuple", "Tuple", "list")):
        return tuple
    if default is not None and not isinstance(default, (list, tuple)):
        return type(default)
    raise TypeError(f"cannot tell the command-line type of a field annotated {annotation!r}")


def field_types(name: str) -> dict[str, type]:
    """The fields of zoo network ``name`` a config sets (``accepted_fields`` less ``RUN_FIELDS``),
    each with its command-line type (int, float, bool, str, tuple)."""
    factory = ZOO[name].factory
    fn = factory.func if isinstance(factory, functools.partial) else factory
    annotations: dict[str, tuple[Any, Any]] = {}
    modules = [fn] if inspect.isclass(fn) else [c for c in _SET_BY_BUILDERS if fn.__module__ == c.__module__]
    for module_cls in modules:
        for f in dataclasses.fields(module_cls):
            default = None if f.default is dataclasses.MISSING else f.default
            annotations[f.name] = (f.type, default)
    if not inspect.isclass(fn):
        for p in inspect.signature(fn).parameters.values():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                annotations[p.name] = (p.annotation, None if p.default is p.empty else p.default)
    return {k: _field_type(*annotations[k]) for k in accepted_fields(factory) if k not in RUN_FIELDS}


def built_fields(name: str, **overrides: Any) -> dict[str, Any]:
    """Every field (``field_types``) of zoo network ``name`` built with ``overrides``, with its
    value: the one given, else the module's own, else (a builder's argument such as ``depth``)
    the builder's default. ``get_model(name, **built_fields(name, **overrides))`` builds the same
    network whatever the entry's defaults are then."""
    module = get_model(name, **overrides)
    factory = ZOO[name].factory
    fn = factory.func if isinstance(factory, functools.partial) else factory
    arguments = {} if inspect.isclass(fn) else inspect.signature(factory).parameters
    out = {}
    for field in field_types(name):
        if field in overrides:
            value = overrides[field]
        elif hasattr(module, field):
            value = getattr(module, field)
        else:
            value = arguments[field].default if field in arguments else None
        out[field] = tuple(value) if isinstance(value, list) else value
    return out


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


def check_input(model: nn.Module, image_shape) -> None:
    """Traces ``model``'s initialisation on one image of ``image_shape`` (nothing is computed), so
    that a network that cannot take such images (too small for its downsampling, a field that only
    fails in a layer) fails now: ValueError saying why."""
    import jax
    import jax.numpy as jnp

    def init(x):
        key = jax.random.key(0)
        return model.init({"params": key, "dropout": key}, x, train=False)

    try:
        jax.eval_shape(init, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    except Exception as e:
        raise ValueError(f"cannot be built for {tuple(image_shape)} images: {type(e).__name__}: {e}") from None


def input_shape(name: str) -> tuple[int, int, int]:
    return ZOO[name].input_shape


def num_classes(name: str) -> int:
    return ZOO[name].num_classes
