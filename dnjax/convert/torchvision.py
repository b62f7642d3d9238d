"""torchvision's DenseNet and ResNet state dicts as dnjax variables.

dnjax's ImageNet DenseNets and ResNets are torchvision's networks layer for layer, so every
torchvision tensor has exactly one dnjax variable and the conversion is a renaming plus a change
of layout:

* convolution kernels: torch keeps (out, in, kh, kw), flax (kh, kw, in, out);
* the classifier: torch's ``Linear.weight`` is (out, in), flax's ``Dense.kernel`` (in, out);
* BatchNorm: ``weight``/``bias`` are the params ``scale``/``bias``, ``running_mean`` and
  ``running_var`` the batch_stats ``mean`` and ``var``, copied unchanged.

The names are derived from the dnjax module's own variable tree (``jax.eval_shape`` of its
``init``), so any DenseNet or ResNet that torchvision's classes can express converts, not only
the named depths. Every dnjax variable must receive exactly one tensor of the right shape and
every tensor of the state dict must be used (``num_batches_tracked`` is read and dropped: it only
matters to a torch BatchNorm built with ``momentum=None``); otherwise :class:`ConversionError`
lists what is missing, left over or of the wrong shape.

BatchNorm statistics. Both frameworks normalise with the biased batch variance in training and
with the running variance in evaluation, with epsilon 1e-5, and torch's momentum 0.1 is flax's
0.9. They differ only in what the running variance is averaged from: torch averages the
*unbiased* batch variance (times n / (n - 1), n = batch x height x width), dnjax the biased one.
The running statistics are therefore copied as they are: evaluation gives torchvision's outputs,
and a dnjax run fine-tuned from them keeps averaging the biased variance, a relative difference
of 1 / (n - 1) per update (1 / 1567, about 6e-4, for a batch of 32 on 7x7 maps, the smallest of an
ImageNet network; less elsewhere).

torch is not needed: state dicts are read from ``.safetensors`` or ``.npz`` files with numpy;
``.pth`` files need torch installed (imported only then).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dnjax import models
from dnjax.models.densenet import DenseNet
from dnjax.models.resnet import ResNet

# The torchvision builders this converter is checked against (see dnjax.convert.verify).
SUPPORTED = (
    "densenet121", "densenet161", "densenet169", "densenet201",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
)

_BN_NAMES = {("params", "scale"): "weight", ("params", "bias"): "bias",
             ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}

# torchvision's published DenseNet files name the layers of a dense layer 'norm.1', 'conv.2', ...
# (torchvision renames them in its own loader); newer state dicts say 'norm1', 'conv2'.
_OLD_DENSELAYER = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class ConversionError(ValueError):
    """The weights do not fit the model (or are not a state dict); the message says what."""


# ---------------------------------------------------------------------------------------------
# Reading state dicts


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A state dict from a ``.safetensors``, ``.npz`` or (with torch installed) ``.pth``/``.pt``
    file, as numpy arrays; a file that is not one raises :class:`ConversionError`."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"--weights={path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import safetensors.numpy

        try:
            raw = safetensors.numpy.load_file(str(path))
        except Exception as e:
            raise ConversionError(f"{path} is not a readable safetensors file ({_one_line(e)})") from None
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        except Exception as e:
            raise ConversionError(f"{path} is not a readable npz file ({_one_line(e)})") from None
    elif suffix in (".pth", ".pt", ".bin"):
        raw = _torch_load(path)
    else:
        raise ConversionError(
            f"{path}: unknown file type {suffix!r}; give a .pth/.pt (needs torch), .safetensors or "
            ".npz state dict"
        )
    return as_state_dict(raw, str(path))


def _torch_load(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path} is a torch pickle and reading it needs torch (pip install torch); or save the "
            "state dict as safetensors where torch is installed: "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(f"{path} is not a readable torch file ({_one_line(e)})") from None


def as_state_dict(obj: Any, source: str = "the state dict") -> dict[str, np.ndarray]:
    """Tensors (torch or numpy) by name as numpy arrays.

    Accepts a training checkpoint that holds the state dict under ``'model'`` or ``'state_dict'``
    (torchvision's reference scripts save ``{'model': ..., 'optimizer': ...}``), and strips the
    ``'module.'`` prefix that ``DataParallel`` adds to every name.
    """
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping) and _all_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            bad = [k for k, v in obj.items() if not isinstance(k, str) or not _is_tensor(v)]
            what = (f"{what} whose entries are not all named tensors, e.g. {bad[0]!r}" if bad
                    else "an empty mapping")
        raise ConversionError(
            f"{source} is not a state dict (a mapping of names to tensors): it holds a {what}"
        )
    out = {k: _to_numpy(v) for k, v in obj.items()}
    if all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def _is_tensor(v: Any) -> bool:
    return isinstance(v, np.ndarray) or (hasattr(v, "detach") and hasattr(v, "shape"))


def _all_tensors(m: Mapping) -> bool:
    return all(isinstance(k, str) and _is_tensor(v) for k, v in m.items())


def _to_numpy(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    v = v.detach().cpu()
    if str(v.dtype) == "torch.bfloat16":  # numpy has no bfloat16
        v = v.float()
    return v.numpy()


def _one_line(e: Exception, limit: int = 160) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# What the weights are


def describe(state_dict: Mapping[str, Any]) -> str | None:
    """What a torchvision state dict holds, read from its names and shapes, e.g. 'a torchvision
    densenet169' or 'a torchvision DenseNet with dense blocks (2, 3), growth rate 4'."""
    sd = {_new_densenet_name(k): v for k, v in state_dict.items()}
    if "features.conv0.weight" in sd:
        blocks = []
        while True:
            n = sum(1 for k in sd if re.match(rf"features\.denseblock{len(blocks) + 1}\."
                                             r"denselayer\d+\.conv2\.weight$", k))
            if not n:
                break
            blocks.append(n)
        if not blocks:
            return "a torchvision DenseNet without dense blocks"
        growth = np.shape(sd["features.denseblock1.denselayer1.conv2.weight"])[0]
        classes = np.shape(sd["classifier.weight"])[0] if "classifier.weight" in sd else None
        known = {((6, 12, 24, 16), 32): "densenet121", ((6, 12, 32, 32), 32): "densenet169",
                 ((6, 12, 48, 32), 32): "densenet201", ((6, 12, 36, 24), 48): "densenet161"}
        name = known.get((tuple(blocks), growth))
        head = f", {classes} classes" if classes is not None else ""
        if name:
            return f"a torchvision {name}{head}"
        return f"a torchvision DenseNet with dense blocks {tuple(blocks)}, growth rate {growth}{head}"
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        stages = []
        while any(k.startswith(f"layer{len(stages) + 1}.") for k in sd):
            i = len(stages) + 1
            stages.append(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}))
        bottleneck = "layer1.0.conv3.weight" in sd
        classes = np.shape(sd["fc.weight"])[0] if "fc.weight" in sd else None
        known = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
                 ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
                 ((3, 8, 36, 3), True): "resnet152"}
        name = known.get((tuple(stages), bottleneck))
        head = f", {classes} classes" if classes is not None else ""
        if name and np.shape(sd["conv1.weight"])[0] == 64:
            return f"a torchvision {name}{head}"
        kind = "bottleneck" if bottleneck else "basic"
        return f"a torchvision ResNet with {kind} blocks {tuple(stages)}{head}"
    return None


# ---------------------------------------------------------------------------------------------
# Names


def _new_densenet_name(key: str) -> str:
    m = _OLD_DENSELAYER.match(key)
    return m.group(1) + m.group(2) if m else key


def _densenet_module(path: tuple[str, ...]) -> str:
    head, *rest = path
    if head == "stem_conv":
        return "features.conv0"
    if head == "stem_norm":
        return "features.norm0"
    if head == "final_norm":
        return "features.norm5"
    if head == "head":
        return "classifier"
    if m := re.fullmatch(r"block(\d+)", head):
        layer = re.fullmatch(r"layer(\d+)", rest[0])
        return f"features.denseblock{m.group(1)}.denselayer{int(layer.group(1))}.{rest[1]}"
    if m := re.fullmatch(r"transition(\d+)", head):
        return f"features.transition{m.group(1)}.{rest[0]}"
    raise ConversionError(f"no torchvision name for the dnjax DenseNet module {'/'.join(path)}")


_RESNET_LAYERS = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc", "proj_conv": "downsample.0",
                  "proj_norm": "downsample.1", "conv1": "conv1", "conv2": "conv2", "conv3": "conv3",
                  "norm1": "bn1", "norm2": "bn2", "norm3": "bn3"}


def _resnet_module(path: tuple[str, ...]) -> str:
    head, *rest = path
    if not rest and head in ("stem_conv", "stem_norm", "head"):
        return _RESNET_LAYERS[head]
    m = re.fullmatch(r"stage(\d+)_block(\d+)", head)
    if m and len(rest) == 1 and rest[0] in _RESNET_LAYERS:
        return f"layer{m.group(1)}.{int(m.group(2)) - 1}.{_RESNET_LAYERS[rest[0]]}"
    raise ConversionError(f"no torchvision name for the dnjax ResNet module {'/'.join(path)}")


def check_convertible(model) -> None:
    """Raises ConversionError unless torchvision's classes can express ``model``."""
    if isinstance(model, DenseNet):
        wrong = {"stem": ("imagenet", model.stem), "activation": ("pre", model.activation),
                 "bottleneck": (True, model.bottleneck), "compression": (0.5, model.compression)}
    elif isinstance(model, ResNet):
        wrong = {"stem": ("imagenet", model.stem), "activation": ("post", model.activation),
                 "shortcut": ("B", model.shortcut)}
    else:
        raise ConversionError(
            f"torchvision weights convert into a DenseNet or ResNet, not a {type(model).__name__}"
        )
    bad = [f"{k}={got!r} (torchvision: {want!r})" for k, (want, got) in wrong.items() if got != want]
    if bad:
        raise ConversionError(
            f"torchvision's {type(model).__name__} has no counterpart of this one: {', '.join(bad)}"
        )


def torch_names(model, abstract=None) -> dict[tuple[str, ...], tuple[str, str]]:
    """For every dnjax variable (collection, module..., name) of ``model``: the torchvision tensor
    name and how it is laid out ('conv', 'linear' or 'vector')."""
    check_convertible(model)
    abstract = abstract_variables(model) if abstract is None else abstract
    module_name = _densenet_module if isinstance(model, DenseNet) else _resnet_module
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        keys = tuple(p.key for p in path)
        collection, *modules, var = keys
        prefix = module_name(tuple(modules))
        if len(leaf.shape) == 4:
            layout, suffix = "conv", "weight"
        elif len(leaf.shape) == 2:
            layout, suffix = "linear", "weight"
        elif modules[-1] == "head":
            layout, suffix = "vector", "bias"
        else:
            layout, suffix = "vector", _BN_NAMES[(collection, var)]
        out[keys] = (f"{prefix}.{suffix}", layout)
    return out


def abstract_variables(model, input_shape=(64, 64, 3)):
    """The shapes of ``model``'s variables (no computation)."""

    def init():
        key = jax.random.key(0)
        return model.init({"params": key, "dropout": key},
                          jnp.zeros((1, *input_shape), jnp.float32), train=False)

    return jax.eval_shape(init)


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def _to_dnjax(array: np.ndarray, layout: str) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if layout == "conv":
        array = array.transpose(2, 3, 1, 0)
    elif layout == "linear":
        array = array.T
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------------
# Conversion


def resolve_model(model, num_classes: int | None = None):
    if isinstance(model, str):
        if model not in models.ZOO:
            raise ConversionError(f"--model={model!r} is not a dnjax network; supported: "
                                  f"{', '.join(SUPPORTED)}")
        return models.get_model(model, num_classes=num_classes)
    return model


def convert_state_dict(state_dict: Mapping[str, Any], model, *, num_classes: int | None = None,
                       source: str = "the state dict") -> dict[str, Any]:
    """dnjax variables ``{'params': ..., 'batch_stats': ...}`` (numpy float32) for ``model`` (a zoo
    name such as 'densenet121', or a flax DenseNet/ResNet module) from a torchvision state dict
    (torch tensors or numpy arrays, e.g. ``torchvision.models.densenet121(weights=...)
    .state_dict()``).

    Raises :class:`ConversionError` naming every missing, unused or misshapen tensor.
    """
    model = resolve_model(model, num_classes)
    sd = as_state_dict(state_dict, source)
    sd = {_new_densenet_name(k): v for k, v in sd.items()} if isinstance(model, DenseNet) else sd
    abstract = abstract_variables(model)
    names = torch_names(model, abstract)
    shapes = {tuple(p.key for p in path): tuple(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}

    seen: dict[str, tuple[str, ...]] = {}
    for keys, (name, _) in names.items():
        if name in seen:  # two dnjax variables from one tensor: a mapping bug, never user error
            raise AssertionError(f"{'/'.join(keys)} and {'/'.join(seen[name])} both map to {name}")
        seen[name] = keys

    missing, misshapen, flat = [], [], {}
    # Parameters before statistics, kernels before biases: the first problems named are the
    # most telling ones.
    order = sorted(names, key=lambda k: (k[0] != "params", k[:-1], k[-1] != "kernel"))
    for keys in order:
        name, layout = names[keys]
        if name not in sd:
            missing.append(name)
            continue
        want = _torch_shape(shapes[keys], layout)
        got = tuple(np.shape(sd[name]))
        if got != want:
            misshapen.append(f"{name} has shape {list(got)}, the model needs {list(want)}")
            continue
        flat[keys] = _to_dnjax(sd[name], layout)
    used = set(seen)
    bn_counters = {n.rsplit(".", 1)[0] + ".num_batches_tracked" for n in used
                   if n.endswith(".running_mean")}
    unused = sorted(k for k in sd if k not in used and k not in bn_counters)

    if missing or misshapen or unused:
        described = describe(sd)
        what = f" (the weights look like {described})" if described else ""
        parts = []
        if misshapen:
            parts.append(f"{len(misshapen)} tensor(s) of the wrong shape, e.g. "
                         + "; ".join(misshapen[:2]))
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
        if unused:
            parts.append(f"{len(unused)} tensor(s) the model has no place for, e.g. {unused[0]}")
        raise ConversionError(
            f"{source} does not fit {_model_label(model)}{what}: " + "; ".join(parts)
            + ". Choose the --model the weights were trained as"
            + (" (and --num_classes for a classifier of another size)" if _only_head(misshapen) else "")
            + "; nothing was written."
        )

    variables: dict[str, Any] = {}
    for keys, array in flat.items():
        node = variables
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = array
    return variables


def _only_head(misshapen: list[str]) -> bool:
    return bool(misshapen) and all(m.startswith(("classifier.", "fc.")) for m in misshapen)


def _model_label(model) -> str:
    for name in SUPPORTED:
        try:
            if models.get_model(name, num_classes=model.num_classes, dtype=model.dtype) == model:
                return name
        except ValueError:
            continue
    fields = {"DenseNet": ("block_sizes", "growth_rate", "bn_size", "num_init_features"),
              "ResNet": ("stage_sizes", "block", "widths", "stem_features")}[type(model).__name__]
    inner = ", ".join(f"{f}={getattr(model, f)!r}" for f in fields)
    return f"the dnjax {type(model).__name__}({inner}, num_classes={model.num_classes})"


def torchvision_state_dict(variables: Mapping[str, Any], model) -> dict[str, np.ndarray]:
    """The inverse: torchvision's state dict (numpy, no ``num_batches_tracked``) of dnjax
    ``variables`` of ``model``; converting it back gives the same variables."""
    model = resolve_model(model)
    out = {}
    for keys, (name, layout) in torch_names(model).items():
        node = variables
        for k in keys:
            node = node[k]
        array = np.asarray(node, np.float32)
        if layout == "conv":
            array = array.transpose(3, 2, 0, 1)
        elif layout == "linear":
            array = array.T
        out[name] = np.ascontiguousarray(array)
    return out
