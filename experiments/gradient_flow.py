"""Gradient flow: the norm of the loss gradient that reaches each layer of a plain CNN, a ResNet and
a DenseNet, at initialisation and after a short training.

    python -m experiments.run gradient_flow --out=DIR [--data_dir=DIR] [--steps=60]

(``python -m experiments.gradient_flow`` with the same options is the same command.)

The seed's claim: dense connectivity gives every layer a short path to the loss ("implicit deep
supervision"), so early layers receive strong gradients. For each network the command trains a
short run (``python -m dnjax.main``'s trainer, in ``DIR/<network>``; rerunning skips finished
runs), then, on one fixed batch of training images (no augmentation, BatchNorm in training mode as
in a training step), takes the gradient of the mean cross-entropy with respect to

  * every convolution kernel and the classifier's kernel (``weight``), and
  * every convolution's and the classifier's input (``input``): a zero perturbation is added to
    the input of each ``nn.Conv``/``nn.Dense`` of the zoo's own modules through flax's method
    interception (``Module.perturb``), and the gradient with respect to it is the gradient
    reaching that layer. The modules are not changed or copied.

at the initial parameters (the run's seed) and at the trained ones. Layers are ordered as the
forward pass calls them; relative depth is the layer's index / (number of layers - 1). Norms are
L2 norms of the whole gradient tensor (for inputs: over the batch, so they depend on the batch
size and on each layer's feature-map size).

The networks, chosen so that two shared CPU cores measure all six in about half an hour: a plain
CNN (the zoo's VGG module with 16-32-64 channels and no shortcut, He et al.'s "plain" baseline)
with 19 and 37 convolutions, ResNet-20 and ResNet-38, DenseNet-BC (L=22 and L=40, k=12): about 20
and 40 weight layers per family (DenseNet-BC counts both convolutions of each bottleneck layer).
Training: ``--steps`` steps (default 60: 1,920 images) at batch 32,
constant learning rate 0.05 with Nesterov momentum and weight decay 1e-4, crop + flip, on the
10,000-image CIFAR-10 sample (``--data_dir``: a directory with train_10k.npz and test_10k.npz).

Output in ``DIR``: ``gradient_flow.json`` (every norm), ``gradient_flow.png`` (norm against
relative depth, log scale, one column per family) and ``report.md`` (per network: the ratio of
the first convolution's gradient norm to the last convolution's, for weights and inputs, at
initialisation and after training, and the short run's test error). ``--smoke`` runs tiny
networks on scikit-learn's digits for a few steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dnjax.exits import ExitStatus
from experiments import studies
from experiments.studies import StudyRun

PROG = "python -m experiments.gradient_flow"
MEASURE_BATCH = 128
FAMILIES = ("plain CNN", "ResNet", "DenseNet")
DEFAULT_STEPS = 60
SHORT_RECIPE: tuple[tuple[str, Any], ...] = (
    ("batch_size", 32), ("optim.learning_rate", 0.05), ("optim.nesterov", True),
    ("optim.weight_decay", 1e-4), ("optim.schedule", "constant"), ("optim.warmup_epochs", 0.0),
    ("data.test_limit", 500), ("eval_every_epochs", 1000.0), ("checkpoint_every_epochs", 1000.0),
    ("keep_checkpoints", 1),
)


def _plain(convs_per_stage: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    return tuple((w,) * n for w, n in zip((16, 32, 64), convs_per_stage))


def _net(run_name: str, family: str, label: str, config: str, **fields: Any) -> StudyRun:
    """A network as a run of its recipe file; ``fields`` are model fields (``name`` switches to
    another zoo network of the family)."""
    return StudyRun(name=run_name, config=config, dataset="C10+ (10k sample)", label=label, family=family,
               overrides=tuple((f"model.{k}", v) for k, v in fields.items()))


NETWORKS: tuple[StudyRun, ...] = (
    _net("plain20", "plain CNN", "plain-20 (19 conv)", studies.VGG_CONFIG + ":vgg11,c10+",
         name="vgg_tiny", stages=_plain((7, 6, 6))),
    _net("plain38", "plain CNN", "plain-38 (37 conv)", studies.VGG_CONFIG + ":vgg11,c10+",
         name="vgg_tiny", stages=_plain((13, 12, 12))),
    _net("resnet20", "ResNet", "ResNet-20", studies.RESNET_CONFIG + ":resnet20,c10+"),
    _net("resnet38", "ResNet", "ResNet-38", studies.RESNET_CONFIG + ":resnet_cifar,c10+", depth=38),
    _net("densenet_bc22", "DenseNet", "DenseNet-BC (L=22, k=12)", studies.DENSENET_CONFIG + ":densenet_cifar,c10+",
         depth=22, growth_rate=12, bottleneck=True, compression=0.5),
    _net("densenet_bc40", "DenseNet", "DenseNet-BC (L=40, k=12)", studies.DENSENET_CONFIG + ":densenet_cifar,c10+",
         depth=40, growth_rate=12, bottleneck=True, compression=0.5),
)
SMOKE_NETWORKS: tuple[StudyRun, ...] = (
    _net("plain_tiny", "plain CNN", "vgg_tiny", studies.VGG_CONFIG + ":vgg11,c10+", name="vgg_tiny"),
    _net("resnet_tiny", "ResNet", "resnet_tiny", studies.RESNET_CONFIG + ":resnet20,c10+", name="resnet_tiny"),
    _net("densenet_tiny", "DenseNet", "densenet_tiny", studies.DENSENET_CONFIG + ":densenet40_k12,c10+",
         name="densenet_tiny"),
)


def run_config(net: StudyRun, data_overrides, steps: int):
    """The short run's config: the network's recipe file, the data, SHORT_RECIPE and ``steps``."""
    from experiments.report import config_of_run

    return config_of_run(dataclasses.replace(
        net, overrides=net.overrides + tuple(data_overrides) + SHORT_RECIPE + (("num_train_steps", steps),)))


# ------------------------------------------------------------------------------------------------
# The gradients


def layer_gradient_norms(model, params, x, y) -> list[dict[str, Any]]:
    """For every ``nn.Conv`` and ``nn.Dense`` of ``model`` in forward order: its path, the L2 norm
    of the loss gradient with respect to its kernel (``weight``) and to its input (``input``).
    The loss is the mean cross-entropy of ``(x, y)`` in training mode (batch statistics)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    order: list[tuple[str, ...]] = []

    def perturb_inputs(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
            if context.module.is_initializing():
                order.append(tuple(context.module.path))
            return next_fun(context.module.perturb("input", args[0]), *args[1:], **kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(perturb_inputs):
        variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                                      x, train=True))
    perturbations = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables["perturbations"])
    batch_stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables.get("batch_stats", {}))

    def loss(p, eps):
        with nn.intercept_methods(perturb_inputs):
            logits, _ = model.apply({"params": p, "perturbations": eps, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    g_params, g_inputs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, perturbations)

    def at(tree, path):
        for key in path:
            tree = tree[key]
        return tree

    return [{"layer": "/".join(path),
             "weight": float(jnp.linalg.norm(at(g_params, path)["kernel"])),
             "input": float(jnp.linalg.norm(at(g_inputs, path)["input"]))} for path in order]


def measurement_batch(setup) -> tuple[Any, Any]:
    """The first MEASURE_BATCH training images of the run's data (normalised, not augmented)."""
    from dnjax.data import augmentation

    images, labels, _, _ = setup.source.arrays()
    n = min(MEASURE_BATCH, images.shape[0])
    return augmentation.normalize(images[:n], setup.ctx.mean, setup.ctx.std), labels[:n]


def ratio(norms: Sequence[dict[str, Any]], kind: str) -> float:
    """First convolution's gradient norm over the last convolution's (the classifier left out)."""
    convs = norms[:-1] if len(norms) > 1 else norms
    return convs[0][kind] / convs[-1][kind]


def measure(net: StudyRun, config, workdir: Path) -> dict[str, Any]:
    """Trains the short run (unless its log already holds a final record), then measures the
    gradients at the initial and at the trained parameters."""
    from dnjax import logs, train
    from experiments import feature_reuse
    from experiments.results import is_finished

    if not is_finished(workdir):
        train.train_and_evaluate(config, workdir)
    setup = train.Setup(config)
    x, y = measurement_batch(setup)
    initial = setup.init_state().params
    trained = feature_reuse.load_params(workdir)
    records, _ = logs.read_jsonl(workdir / logs.METRICS_FILE)
    final = next(r for r in reversed(records) if r.get("type") == "final")
    out = {"name": net.name, "label": net.label, "family": net.family,
           "params": int(sum(np.size(a) for a in _leaves(trained))),
           "steps": int(final["step"]), "test_error": float(final["test_error"])}
    for when, params in (("init", initial), ("trained", trained)):
        norms = layer_gradient_norms(setup.model, params, x, y)
        out[when] = norms
        out[f"{when}_weight_ratio"] = ratio(norms, "weight")
        out[f"{when}_input_ratio"] = ratio(norms, "input")
    return out


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


# ------------------------------------------------------------------------------------------------
# Plot and report


def plot(results: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = [f for f in FAMILIES if any(r["family"] == f for r in results)]
    fig, axes = plt.subplots(2, len(families), figsize=(5.2 * len(families), 8.4), squeeze=False, sharey="row")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, family in enumerate(families):
        nets = [r for r in results if r["family"] == family]
        for row, kind in enumerate(("weight", "input")):
            ax = axes[row][col]
            for i, r in enumerate(nets):
                for when, style in (("init", "-"), ("trained", "--")):
                    norms = [n[kind] for n in r[when]]
                    depth = np.linspace(0.0, 1.0, len(norms))
                    ax.plot(depth, norms, style, color=colors[i % len(colors)], marker=".", markersize=3,
                            label=f"{r['label']}, {'initialisation' if when == 'init' else 'after %d steps' % r['steps']}")
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            what = "kernel" if kind == "weight" else "layer input"
            ax.set(title=f"{family}: gradient w.r.t. each {what}", xlabel="relative depth (first conv = 0, classifier = 1)",
                   ylabel=f"||dL/d {what}||" if col == 0 else None)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def markdown(results: Sequence[dict[str, Any]], description: str) -> str:
    lines = ["# Gradient flow", "", description, "",
             "Ratio = gradient norm at the first convolution / at the last convolution (the classifier "
             "left out): above 1 the early layers receive more gradient than the late ones, far below 1 "
             "the gradient fades on its way down.", "",
             "| network | params | layers | weight ratio, init | weight ratio, trained | input ratio, init "
             "| input ratio, trained | steps | test error after training (%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['label']} | {r['params']:,} | {len(r['init'])} | {r['init_weight_ratio']:.3g} | "
                     f"{r['trained_weight_ratio']:.3g} | {r['init_input_ratio']:.3g} | "
                     f"{r['trained_input_ratio']:.3g} | {r['steps']} | {r['test_error']:.2f} |")
    lines += ["", "![gradient flow](gradient_flow.png)", ""]
    return "\n".join(lines)


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command's options; ``prog`` names the command in usage and help."""
    from dnjax import logs

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the runs, gradient_flow.json/.png and report.md")
    p.add_argument("--data_dir", default=None,
                   help="directory holding train_10k.npz and test_10k.npz (a CIFAR-10 sample); default: the "
                        "cifar10-sample budget's class-balanced subset of TensorFlow Datasets' cifar10")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps before the second measurement")
    p.add_argument("--only", action="append", default=[], help="measure only this network (repeatable)")
    p.add_argument("--smoke", action="store_true", help="tiny networks on scikit-learn's digits")
    logs.add_verbosity_flag(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    from dnjax import logs

    a = parser(prog).parse_args(argv)
    logs.quiet_libraries(verbose=a.verbosity >= 0)
    if a.steps < 1:
        print(f"error: --steps={a.steps} must be at least 1", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    nets = SMOKE_NETWORKS if a.smoke else NETWORKS
    if a.smoke:
        data = tuple((k, v) for k, v in studies.SMOKE_OVERRIDES if k not in dict(SHORT_RECIPE))
        data += (("batch_size", 16),)
        where = "scikit-learn digits"
    elif a.data_dir is None:
        data = tuple((k, v) for k, v in studies.sample_overrides(None) if k not in dict(SHORT_RECIPE))
        where = f"a class-balanced {studies.SAMPLE_FRACTION:.0%} of tfds cifar10"
    else:
        d = Path(a.data_dir)
        missing = [f for f in ("train_10k.npz", "test_10k.npz") if not (d / f).is_file()]
        if missing:
            print(f"error: --data_dir={d} does not hold {' and '.join(missing)}: give the directory of the "
                  "CIFAR-10 sample (train_10k.npz, test_10k.npz)", file=sys.stderr)
            return ExitStatus.BAD_INPUT
        data = tuple((k, v) for k, v in studies.sample_overrides(d) if k not in dict(SHORT_RECIPE))
        where = f"the CIFAR-10 sample in {d}"
    unknown = [n for n in a.only if n not in [net.name for net in nets]]
    if unknown:
        print(f"error: --only={unknown} are not networks of this command; they are "
              f"{', '.join(net.name for net in nets)}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    nets = [n for n in nets if not a.only or n.name in a.only]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for net in nets:
        config = run_config(net, data, a.steps)
        results.append(measure(net, config, out / net.name))
        print(f"{net.name}: weight ratio {results[-1]['init_weight_ratio']:.3g} at init, "
              f"{results[-1]['trained_weight_ratio']:.3g} after {a.steps} steps", flush=True)
    description = (f"Measured on {MEASURE_BATCH} training images of {where}; short training: {a.steps} steps of "
                   "batch 32, learning rate 0.05 (constant), Nesterov momentum, weight decay 1e-4, crop + flip.")
    (out / "gradient_flow.json").write_text(json.dumps({"description": description, "networks": results}, indent=1))
    plot(results, out / "gradient_flow.png", f"Gradient flow ({a.steps} training steps)")
    (out / "report.md").write_text(markdown(results, description))
    print(f"{out / 'report.md'}, {out / 'gradient_flow.png'}")
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
