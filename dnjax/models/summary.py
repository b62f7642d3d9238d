"""Parameter and MAC counts measured on the real modules, without compiling anything.

Parameters come from ``jax.eval_shape`` of ``init``. MACs (multiply-accumulates of convolutions
and dense layers per image, the figure papers quote) come from walking the jaxpr of one forward
pass: every ``conv_general_dilated`` and ``dot_general`` contributes its output size times the
length of the sum behind each output element.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...], batch: int = 1) -> Any:
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    return jax.eval_shape(
        lambda rng, x: model.init({"params": rng, "dropout": rng}, x, train=False),
        jax.random.key(0),
        x,
    )


def count_params(variables_or_params: Any) -> int:
    params = variables_or_params.get("params", variables_or_params) if hasattr(
        variables_or_params, "get"
    ) else variables_or_params
    return int(sum(math.prod(p.shape) for p in jax.tree.leaves(params)))


def _macs_of_jaxpr(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval
            kernel = eqn.invars[1].aval
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            per_output = math.prod(kernel.shape) // kernel.shape[out_feature_dim]
            total += math.prod(out.shape) * per_output
        elif name == "dot_general":
            out = eqn.outvars[0].aval
            lhs = eqn.invars[0].aval
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            total += math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)
        for sub in jax_core.jaxprs_in_params(eqn.params):
            total += _macs_of_jaxpr(sub)
    return total


def count_macs(model: nn.Module, input_shape: tuple[int, ...], variables: Any = None) -> int:
    """MACs for one image at ``input_shape`` (H, W, C), in evaluation mode."""
    if variables is None:
        variables = abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    return _macs_of_jaxpr(closed.jaxpr)


def layers_per_block(model: nn.Module) -> tuple[int, ...]:
    """Layers (or residual units) per block or stage: DenseNet's block_sizes, ResNet's
    stage_sizes, the lengths of VGG's stages; () for a network that has none of these fields."""
    for field in ("block_sizes", "stage_sizes"):
        if hasattr(model, field):
            return tuple(getattr(model, field))
    return tuple(len(s) for s in getattr(model, "stages", ()))


def describe(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    variables = abstract_variables(model, input_shape)
    return {
        "params": count_params(variables),
        "macs": count_macs(model, input_shape, variables),
        "layers_per_block": layers_per_block(model),
    }
