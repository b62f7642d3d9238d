"""Checks the torchvision conversion against torchvision itself, and writes the test fixtures.

    pip install torch torchvision safetensors
    python -m dnjax.convert.verify [--models densenet121 resnet50 ...] [--json verify.json] \
        [--fixtures tests/fixtures/torchvision]

For each supported network it builds torchvision's model with random weights, including random
BatchNorm scales, shifts, running means and running variances (so that a swapped pair changes the
output), converts its state dict, and compares dnjax's logits with torchvision's on the same
random 224x224 images in evaluation mode (running statistics) and in training mode (batch
statistics), and the running statistics both frameworks hold after that training-mode pass.
The comparison of running variances checks the documented difference: torch averages the unbiased
batch variance, dnjax the biased one, so dnjax's updated variance is compared after rescaling its
batch part by n / (n - 1).

``--fixtures DIR`` also writes what the test suite checks the converter against without torch
(:data:`FIXTURES`: torchvision's own DenseNet and ResNet classes at a tiny size, their random
state dicts as ``.safetensors`` and reference outputs as ``.npz``), and torchvision's ImageNet
evaluation transform applied to a few synthetic images (``transform_source*.png`` in,
``transform_torchvision*.png`` out, with one normalised row of each in ``transform_rows.npz``).

torch and torchvision are imported inside the functions that need them; importing this module
does not need them (the tests read :data:`FIXTURES` and :func:`fixture_model` from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dnjax.convert.torchvision import SUPPORTED

# Tiny networks built with torchvision's own classes. "narrow" divides every ResNet stage's width
# (torchvision's ResNet hard-codes 64..512; the stem keeps its 64 channels).
FIXTURES: dict[str, dict[str, Any]] = {
    "densenet_small": dict(kind="densenet", growth_rate=4, block_config=(2, 3), num_init_features=8,
                           bn_size=2, num_classes=5),
    # DenseNet-121's blocks at growth rate 2: the zoo's densenet121 with config fields
    # growth_rate=2, num_init_features=4, bn_size=1, so a run config can name it.
    "densenet121_narrow": dict(kind="densenet", growth_rate=2, block_config=(6, 12, 24, 16),
                               num_init_features=4, bn_size=1, num_classes=10),
    "resnet_basic": dict(kind="resnet", block="basic", layers=(2, 1, 1, 1), divisor=32,
                         num_classes=5),
    "resnet_bottleneck": dict(kind="resnet", block="bottleneck", layers=(1, 2, 1, 1), divisor=32,
                              num_classes=5),
}
# Fixtures whose reference also holds the running statistics after a training-mode pass (the
# others have hundreds of BatchNorms, whose statistics would dominate the files' size).
WITH_RUNNING_STATS = ("densenet_small", "resnet_basic", "resnet_bottleneck")
FIXTURE_INPUT = (3, 3, 36, 36)  # NCHW: odd feature-map sizes after the stem (18, 9, 5, 3)
INPUT_SCALE = 32  # fixture inputs are int8 / INPUT_SCALE: exact in float32, a quarter of the bytes
TRANSFORM_SIZES = ((299, 406), (383, 260), (61, 83), (90, 64))  # (height, width) of the sources
SMALL_CROP = 56  # the last two sources go through the transform at crop 56 (resize 64)


def fixture_model(spec: dict[str, Any]):
    """The dnjax module for a :data:`FIXTURES` entry."""
    from dnjax.models.densenet import DenseNet
    from dnjax.models.resnet import ResNet

    if spec["kind"] == "densenet":
        return DenseNet(block_sizes=tuple(spec["block_config"]), growth_rate=spec["growth_rate"],
                        bottleneck=True, bn_size=spec["bn_size"], compression=0.5,
                        num_init_features=spec["num_init_features"], stem="imagenet",
                        num_classes=spec["num_classes"])
    return ResNet(stage_sizes=tuple(spec["layers"]), block=spec["block"], activation="post",
                  stem="imagenet", widths=tuple(w // spec["divisor"] for w in (64, 128, 256, 512)),
                  stem_features=64, shortcut="B", num_classes=spec["num_classes"])


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB image with smooth gradients, sharp edges and fine stripes (which a resize
    without antialiasing would alias), cheap to store compressed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 17.0)], -1) * 160 + 40
    for _ in range(4):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(8, height / 3)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    stripes = (x > width * 0.6) & (y < height * 0.4)
    img[stripes] = np.where((x[stripes] // 2) % 2 == 0, 250.0, 5.0)[:, None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# torch side


def _torch():
    try:
        import torch
        import torchvision
    except ImportError:
        sys.exit("error: the verification needs torch and torchvision: pip install torch torchvision")
    return torch, torchvision


def torchvision_model(name_or_spec):
    """A torchvision model (random weights) by builder name or :data:`FIXTURES` spec."""
    torch, torchvision = _torch()
    if isinstance(name_or_spec, str):
        return torchvision.models.get_model(name_or_spec, weights=None)
    spec = name_or_spec
    if spec["kind"] == "densenet":
        return torchvision.models.DenseNet(
            growth_rate=spec["growth_rate"], block_config=tuple(spec["block_config"]),
            num_init_features=spec["num_init_features"], bn_size=spec["bn_size"],
            num_classes=spec["num_classes"])
    resnet = torchvision.models.resnet
    block = resnet.BasicBlock if spec["block"] == "basic" else resnet.Bottleneck
    divisor = spec["divisor"]

    class NarrowResNet(resnet.ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            return super()._make_layer(block, planes // divisor, blocks, stride, dilate)

    model = NarrowResNet(block, list(spec["layers"]), num_classes=spec["num_classes"])
    model.fc = torch.nn.Linear(512 // divisor * block.expansion, spec["num_classes"])
    return model


def randomize(model, seed: int) -> None:
    """Random BatchNorm scale, shift, running mean and variance, and classifier bias (torchvision
    initialises them to 1, 0, 0, 1 and 0, where a swapped pair would go unnoticed)."""
    torch, _ = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
                m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
            elif isinstance(m, torch.nn.Linear):
                m.bias.copy_(0.1 * torch.randn(m.out_features, generator=g))


def _bn_counts(model, x) -> dict[str, int]:
    """n = batch x height x width seen by every BatchNorm in a forward pass of ``x``."""
    torch, _ = _torch()
    counts, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: counts.__setitem__(name, inp[0].numel() // inp[0].shape[1])))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return counts


def torch_reference(model, x_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluation-mode and training-mode logits, and the running statistics after the
    training-mode pass (the model's state dict is left as it was)."""
    torch, _ = _torch()
    x = torch.from_numpy(x_nchw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    counts = _bn_counts(model, x)
    with torch.no_grad():
        eval_logits = model.eval()(x).numpy()
        train_logits = model.train()(x).numpy()
    out = {"logits_eval": eval_logits, "logits_train": train_logits}
    for k, v in model.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            out[f"after_train/{k}"] = v.numpy().copy()
    for name, n in counts.items():
        out[f"bn_count/{name}"] = np.array(n, np.int64)
    model.load_state_dict(before)
    model.eval()
    return out


# ---------------------------------------------------------------------------------------------
# dnjax side and the comparison


def dnjax_outputs(model, variables, x_nchw: np.ndarray) -> dict[str, Any]:
    import jax

    x = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    train_logits, updated = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    return {"logits_eval": np.asarray(eval_logits), "logits_train": np.asarray(train_logits),
            "batch_stats": jax.tree.map(np.asarray, updated["batch_stats"])}


def compare(reference: dict[str, np.ndarray], ours: dict[str, Any], variables, model,
            momentum: float = 0.1) -> dict[str, float]:
    """Max abs and relative (to the largest reference magnitude) differences."""
    from dnjax.convert.torchvision import torch_names

    out = {}
    for mode in ("eval", "train"):
        ref, got = reference[f"logits_{mode}"], ours[f"logits_{mode}"]
        diff = float(np.max(np.abs(ref - got)))
        out[f"{mode}_max_abs"] = diff
        out[f"{mode}_rel"] = diff / float(np.max(np.abs(ref)))
        out[f"{mode}_argmax_agree"] = float(np.mean(ref.argmax(-1) == got.argmax(-1)))
    mean_err, var_err, var_err_uncorrected = 0.0, 0.0, 0.0
    for keys, (name, _) in torch_names(model).items():
        if keys[0] != "batch_stats":
            continue
        new = ours["batch_stats"]
        old = variables["batch_stats"]
        for k in keys[1:]:
            new, old = new[k], old[k]
        ref = reference[f"after_train/{name}"]
        if keys[-1] == "mean":
            mean_err = max(mean_err, float(np.max(np.abs(new - ref) / np.maximum(np.abs(ref), 1e-3))))
        else:
            n = int(reference[f"bn_count/{name.rsplit('.', 1)[0]}"])
            kept = (1 - momentum) * old
            corrected = kept + (new - kept) * n / (n - 1)
            var_err = max(var_err, float(np.max(np.abs(corrected - ref) / ref)))
            var_err_uncorrected = max(var_err_uncorrected, float(np.max(np.abs(new - ref) / ref)))
    out.update(running_mean_rel=mean_err, running_var_rel=var_err,
               running_var_rel_without_correction=var_err_uncorrected)
    return out


def verify(name: str, batch: int, seed: int) -> dict[str, float]:
    torch, _ = _torch()
    from dnjax import convert, models

    torch.manual_seed(seed)
    tv = torchvision_model(name)
    randomize(tv, seed)
    x = np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    reference = torch_reference(tv, x)
    model = models.get_model(name)
    variables = convert.convert_state_dict(tv.state_dict(), model)
    t = time.perf_counter()
    ours = dnjax_outputs(model, variables, x)
    result = compare(reference, ours, variables, model)
    result["seconds"] = time.perf_counter() - t
    result["logit_scale"] = float(np.max(np.abs(reference["logits_eval"])))
    return result


def write_fixtures(directory: Path, seed: int = 0) -> None:
    torch, torchvision = _torch()
    import safetensors.numpy

    directory.mkdir(parents=True, exist_ok=True)
    for i, (name, spec) in enumerate(FIXTURES.items()):
        torch.manual_seed(seed + i)
        tv = torchvision_model(spec)
        randomize(tv, seed + i)
        q = np.random.default_rng(seed + i).standard_normal(FIXTURE_INPUT) * INPUT_SCALE
        q = np.clip(np.round(q), -127, 127).astype(np.int8)
        reference = torch_reference(tv, q.astype(np.float32) / INPUT_SCALE)
        if name not in WITH_RUNNING_STATS:
            reference = {k: v for k, v in reference.items() if k.startswith("logits_")}
        state = {k: v.numpy() for k, v in tv.state_dict().items()}
        safetensors.numpy.save_file(state, str(directory / f"{name}.safetensors"))
        np.savez_compressed(directory / f"{name}.npz", input_int8=q, **reference)
        n_params = sum(int(np.prod(v.shape)) for v in state.values())
        print(f"fixture {name}: {len(state)} tensors, {n_params} values")

    # torchvision's evaluation transform of the published weights, at 224 and at a small size.
    weights = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1
    full = weights.transforms()
    small = type(full)(crop_size=SMALL_CROP, resize_size=round(SMALL_CROP * 256 / 224))
    from PIL import Image

    rows = {}
    for i, (h, w) in enumerate(TRANSFORM_SIZES):
        image = synthetic_image(h, w, seed=i)
        transform, crop = (full, 224) if max(h, w) > 200 else (small, SMALL_CROP)
        out = transform(Image.fromarray(image)).numpy().transpose(1, 2, 0)  # CHW -> HWC
        mean, std = np.array(full.mean, np.float32), np.array(full.std, np.float32)
        pixels = np.round((out * std + mean) * 255).astype(np.uint8)  # exact: values are k / 255
        Image.fromarray(image).save(directory / f"transform_source{i}.png", optimize=True)
        Image.fromarray(pixels).save(directory / f"transform_torchvision{i}.png", optimize=True)
        rows[f"crop{i}"] = np.array(crop)
        rows[f"row{i}"] = out[crop // 2]  # one normalised row, float32, as torchvision gives it
    np.savez_compressed(directory / "transform_rows.npz", **rows)
    (directory / "versions.json").write_text(json.dumps(
        {"torch": torch.__version__, "torchvision": torchvision.__version__,
         "resize": full.resize_size, "crop": full.crop_size, "interpolation": str(full.interpolation),
         "antialias": full.antialias, "mean": full.mean, "std": full.std}, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(SUPPORTED), choices=SUPPORTED)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--fixtures", type=Path, help="also write the test fixtures into this directory")
    args = parser.parse_args(argv)
    torch, torchvision = _torch()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"batch {args.batch} x 3 x 224 x 224, float32 on CPU")
    if args.fixtures:
        write_fixtures(args.fixtures, args.seed)
    results = {}
    header = ("| model | eval max abs | eval rel | train max abs | train rel | top-1 agree | "
              "running mean rel | running var rel (corrected / not) |")
    print(header)
    print("|---" * 8 + "|")
    for name in args.models:
        r = results[name] = verify(name, args.batch, args.seed)
        print(f"| {name} | {r['eval_max_abs']:.1e} | {r['eval_rel']:.1e} | {r['train_max_abs']:.1e} | "
              f"{r['train_rel']:.1e} | {r['eval_argmax_agree']:.0%} / {r['train_argmax_agree']:.0%} | "
              f"{r['running_mean_rel']:.1e} | {r['running_var_rel']:.1e} / "
              f"{r['running_var_rel_without_correction']:.1e} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__,
                                         "torchvision": torchvision.__version__,
                                         "batch": args.batch, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
