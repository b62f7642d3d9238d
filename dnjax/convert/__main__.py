"""Converts a torchvision checkpoint into a dnjax workdir.

    python -m dnjax.convert torchvision --model=densenet121 --weights=densenet121.pth --out=DIR
    python -m dnjax.evaluate --workdir=DIR            # ImageNet validation, torchvision's transform

The workdir's config is the ImageNet recipe of MODEL (``configs/imagenet.py:MODEL`` of the
repository dnjax runs from) in float32 unless ``--config`` names another (with it, any
``--config.FIELD=VALUE`` override works as in ``dnjax.main``, e.g. ``--config.data.data_dir``). ``.pth`` files need torch; ``.safetensors`` and ``.npz`` do not.
Exit status 2 with a one-line error, and nothing written, when the weights do not fit the model.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

from absl import app, flags

from dnjax import config_files, config_lib
from dnjax.exits import ExitStatus

_FRAMEWORKS = ("torchvision",)
_MODEL = flags.DEFINE_string("model", None, "The network the weights belong to, e.g. densenet121.")
_WEIGHTS = flags.DEFINE_string("weights", None, "A state dict: .pth/.pt (needs torch), .safetensors or .npz.")
_OUT = flags.DEFINE_string("out", None, "The workdir to create (must not exist or be empty).")
_CONFIG = config_files.ConfigFlag(
    "config", "FILE[:ARG]: the run config the workdir gets (default: the ImageNet recipe of --model, in "
    "float32); its model.name is set to --model.")
flags.mark_flags_as_required(["model", "weights", "out"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(model: str, weights: str | Path, out, config):
    from dnjax import convert as conv

    if model not in conv.SUPPORTED:
        raise conv.ConversionError(
            f"--model={model!r} has no torchvision counterpart; supported: {', '.join(conv.SUPPORTED)}"
        )
    conv.workdir.check_out(out)
    config.model.name = model
    state_dict = conv.load_state_dict(weights)
    net = conv.workdir.build_model(config)
    variables = conv.convert_state_dict(state_dict, net, source=str(weights))
    source = {"framework": "torchvision", "model": model, "weights": str(Path(weights).absolute()),
              "sha256": _sha256(Path(weights)), "tensors": len(state_dict)}
    return conv.write_workdir(out, variables, config, converted_from=source)


def main(argv):
    if len(argv) != 2 or argv[1] not in _FRAMEWORKS:
        raise app.UsageError(f"name the framework the weights come from: one of {_FRAMEWORKS}, "
                             "e.g. python -m dnjax.convert torchvision --model=... ")
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("absl", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from dnjax import models
    from dnjax.convert import ConversionError

    try:
        if _CONFIG.value is None:
            # A model without an ImageNet recipe is refused by convert() with the supported list.
            imagenet = _MODEL.value in models.names(input_shape=models.IMAGENET_INPUT)
            spec = f"{config_files.repository_config('imagenet.py')}:{_MODEL.value if imagenet else ''}"
            # torchvision's published accuracies are float32 figures
            config = config_files.load_config_file(spec, [("dtype", "float32")])
        else:
            config = _CONFIG.value
        out = convert(_MODEL.value, _WEIGHTS.value, _OUT.value, config)
    except (ConversionError, config_lib.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    print(f"Wrote {out}: {_MODEL.value} from {_WEIGHTS.value} (step 0). Evaluate with "
          f"python -m dnjax.evaluate --workdir={out}; fine-tune with --config.init_from={out}")
    return ExitStatus.OK


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_CONFIG.parse)
