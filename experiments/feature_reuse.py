"""Feature reuse in a trained DenseNet, the paper's Figure 5: how strongly each layer's convolution
weighs the feature maps of each earlier layer of its dense block.

    python -m experiments.run feature_reuse --workdir=runs/densenet40_k12_c10+ [--out=reuse.png]

(``python -m experiments.feature_reuse`` with the same options is the same command.)

Inside a block, layer l's first convolution (the 3x3, or the 1x1 of a bottleneck layer) reads the
concatenation [x_0, x_1, ..., x_{l-1}]: x_0 the block's input (the stem's or the preceding
transition's output, c0 channels) and x_s the k channels of layer s. For each block the heatmap
has one row per source s = 0..n and one column per target: layers 1..n and then the layer that
reads the block's output (the transition, or the classifier after the last block).

Cell (s, t) is the mean absolute weight that target t's kernel gives to source s's channels: the
L1 norm of the kernel slice on those channels divided by its size (kernel height x width x output
channels x the source's channel count), so that a source is not weighted by how many channels it
has. The paper normalises "by the number of input feature maps" and colours from 0 to 1; here
each column is then divided by its largest entry (``--normalize=column``, the default), so the
strongest source of every target is 1 and a column shows where that layer looks. ``block``
divides by the block's largest entry instead, ``none`` leaves the raw means. Cells where s >= t
(a layer cannot read its successors) are empty.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnjax.exits import ExitStatus

PROG = "python -m experiments.feature_reuse"
NORMALIZATIONS = ("column", "block", "none")


def source_slices(c0: int, k: int, n: int) -> list[slice]:
    """Channel ranges of the block input (c0 channels) and of each of the n layers (k each)."""
    return [slice(0, c0)] + [slice(c0 + (s - 1) * k, c0 + s * k) for s in range(1, n + 1)]


def mean_abs_by_source(kernel: np.ndarray, slices: Sequence[slice]) -> np.ndarray:
    """Mean |w| over each source's input channels; the input-channel axis is -2 for both an HWIO
    conv kernel and an (in, out) dense kernel."""
    w = np.abs(np.asarray(kernel, np.float64))
    return np.array([w[..., sl, :].mean() for sl in slices])


def reuse_matrix(layer_kernels: Sequence[np.ndarray], out_kernel: np.ndarray | None, c0: int, k: int,
                 normalize: str = "column") -> np.ndarray:
    """The (n + 1) x (n + 1) heatmap of one block (n x n + 1 columns without ``out_kernel``):
    rows are sources (block input, layers 1..n), columns targets (layers 1..n, then the reader of
    the block's output). Empty cells are NaN."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is invalid; use one of {NORMALIZATIONS}")
    n = len(layer_kernels)
    slices = source_slices(c0, k, n)
    targets = list(layer_kernels) + ([out_kernel] if out_kernel is not None else [])
    m = np.full((n + 1, len(targets)), np.nan)
    for t, kernel in enumerate(targets):
        sources = min(t + 1, n + 1)  # layer t+1 reads sources 0..t; the output reader all n+1
        expected = slices[sources - 1].stop
        if kernel.shape[-2] != expected:
            raise ValueError(
                f"target {t + 1} of the block reads {kernel.shape[-2]} channels, but a block input of "
                f"{c0} channels and growth rate {k} give {expected}"
            )
        m[:sources, t] = mean_abs_by_source(kernel, slices[:sources])
    if normalize == "column":
        m = m / np.nanmax(m, axis=0, keepdims=True)
    elif normalize == "block":
        m = m / np.nanmax(m)
    return m


# ------------------------------------------------------------------------------------------------
# From a checkpoint


def load_params(workdir: str | Path, step: int | None = None, which: str = "checkpoints") -> dict[str, Any]:
    """The parameters of a run's checkpoint (newest, or ``step``) as nested dicts of numpy arrays."""
    import orbax.checkpoint as ocp

    directory = Path(workdir).absolute() / which
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} does not exist: is {workdir} the workdir of a trained run?")
    mngr = ocp.CheckpointManager(directory)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory} holds no checkpoint")
        state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        mngr.close()
    import jax

    return jax.tree.map(np.asarray, state["params"])


def _numbered(tree: dict, prefix: str) -> list[str]:
    keys = [key for key in tree if re.fullmatch(rf"{prefix}\d+", key)]
    return sorted(keys, key=lambda key: int(key[len(prefix):]))


def block_matrices(params: dict[str, Any], normalize: str = "column") -> list[dict[str, Any]]:
    """One entry per dense block: its heatmap and what the last column is."""
    blocks = _numbered(params, "block")
    if not blocks:
        raise ValueError("the parameters hold no dense block ('block1', ...): not a DenseNet checkpoint")
    out = []
    for i, name in enumerate(blocks, 1):
        layers = [params[name][key] for key in _numbered(params[name], "layer")]
        kernels = [np.asarray(layer["conv1"]["kernel"]) for layer in layers]
        last = layers[-1]["conv2" if "conv2" in layers[-1] else "conv1"]["kernel"]
        c0, k = kernels[0].shape[-2], int(np.shape(last)[-1])
        transition = params.get(f"transition{i}")
        if transition is not None:
            reader, reader_name = np.asarray(transition["conv"]["kernel"]), "transition"
        elif i == len(blocks) and "head" in params:
            reader, reader_name = np.asarray(params["head"]["kernel"]), "classifier"
        else:
            reader, reader_name = None, None
        out.append({
            "block": i, "layers": len(layers), "input_channels": int(c0), "growth_rate": k,
            "reader": reader_name, "matrix": reuse_matrix(kernels, reader, c0, k, normalize),
        })
    return out


def plot(blocks: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(blocks), figsize=(4.4 * len(blocks), 4.4), squeeze=False)
    image = None
    for ax, b in zip(axes[0], blocks):
        m = np.ma.masked_invalid(b["matrix"])
        image = ax.imshow(m, cmap="jet", vmin=0.0, vmax=1.0 if np.nanmax(b["matrix"]) <= 1.0 else None,
                          interpolation="nearest")
        n = b["layers"]
        cols = [str(t) for t in range(1, n + 1)] + ([{"transition": "T", "classifier": "C"}[b["reader"]]]
                                                   if b["reader"] else [])
        step = max(1, (n + 1) // 12)
        ax.set_xticks(range(0, len(cols), step))
        ax.set_xticklabels(cols[::step], fontsize=8)
        ax.set_yticks(range(0, n + 1, step))
        ax.set_yticklabels([("in" if s == 0 else str(s)) for s in range(0, n + 1, step)], fontsize=8)
        reader = {"transition": "T = transition", "classifier": "C = classifier"}.get(b["reader"], "")
        ax.set(title=f"Dense block {b['block']}", xlabel=f"target layer ({reader})" if reader else "target layer",
               ylabel="source layer (in = block input)")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="mean |weight| (normalised)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command's options; ``prog`` names the command in usage and help."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a DenseNet run's workdir")
    p.add_argument("--out", default=None, help="the PNG (default WORKDIR/feature_reuse.png); a .json beside it")
    p.add_argument("--step", type=int, default=None, help="a checkpoint step instead of the newest")
    p.add_argument("--normalize", default="column", choices=NORMALIZATIONS)
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    a = parser(prog).parse_args(argv)
    try:
        params = load_params(a.workdir, a.step)
        blocks = block_matrices(params, a.normalize)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    out = Path(a.out) if a.out else Path(a.workdir) / "feature_reuse.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"Feature reuse, {Path(a.workdir).name} ({a.normalize} normalisation)"
    plot(blocks, out, title)
    out.with_suffix(".json").write_text(json.dumps(
        [{**b, "matrix": [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in b["matrix"]]}
         for b in blocks], indent=1))
    print(f"{out}: {len(blocks)} blocks, {', '.join(str(b['layers']) for b in blocks)} layers")
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
