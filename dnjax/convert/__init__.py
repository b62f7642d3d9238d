"""Pretrained weights from other frameworks as dnjax variables and workdirs.

    python -m dnjax.convert torchvision --model=densenet121 --weights=densenet121.pth --out=DIR

From Python, with a state dict in memory (torch tensors or numpy arrays)::

    from dnjax import convert
    variables = convert.convert_state_dict(tv_model.state_dict(), "densenet121")
    logits = dnjax.models.get_model("densenet121").apply(variables, images_nhwc)

:mod:`dnjax.convert.torchvision` maps the names and layouts and explains the BatchNorm
conventions; :mod:`dnjax.convert.verify` checks the conversion against torchvision itself.
"""

from dnjax.convert.torchvision import (
    SUPPORTED,
    ConversionError,
    as_state_dict,
    convert_state_dict,
    describe,
    load_state_dict,
    torchvision_state_dict,
)
from dnjax.convert.workdir import write_workdir

__all__ = [
    "SUPPORTED", "ConversionError", "as_state_dict", "convert_state_dict", "describe",
    "load_state_dict", "torchvision_state_dict", "write_workdir",
]
