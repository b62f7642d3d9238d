"""The model zoo against docs/spec.md: sizes, channel arithmetic, operation order, memory-efficient
mode, dropout, initialisation, mixed precision, input checks, the zoo table and ResNet details.

Big networks are only traced (``jax.eval_shape``, ``jax.make_jaxpr``); anything compiled is tiny.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnjax import published
from dnjax.models import ZOO, common, densenet, efficient_block, get_model, resnet, summary

REPO = Path(__file__).resolve().parents[1]
CIFAR = (32, 32, 3)
IMAGENET = (224, 224, 3)


@contextlib.contextmanager
def fast_compile():
    """Cheaper XLA compilation for tests that measure neither speed nor memory."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


def n_params(name: str, input_shape=CIFAR, **kwargs) -> int:
    return summary.count_params(summary.abstract_variables(get_model(name, **kwargs), input_shape))


def sown_shapes(model: nn.Module, input_shape, batch: int = 2) -> dict[str, tuple[int, ...]]:
    """Shapes of every sown intermediate, from an abstract evaluation-mode forward pass."""
    variables = summary.abstract_variables(model, input_shape)
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]), variables, x
    )
    return {k: v[0].shape for k, v in state["intermediates"].items()}


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def batch(n=8, hw=8, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, hw, hw, 3)), jax.random.randint(ky, (n,), 0, 10)


def named_leaves(tree) -> dict[str, jax.Array]:
    """Leaves by their slash-joined path, e.g. 'block1/layer01/norm1/scale'."""
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


# 1. Parameter and MAC counts -------------------------------------------------------------------

CIFAR_DENSENET_PARAMS = {
    "densenet40_k12": (1_019_722, 1_060_132),
    "densenet100_k12": (6_979_642, 7_084_852),
    "densenet100_k24": (27_249_082, 27_457_972),
    "densenet_bc100_k12": (769_162, 800_032),
    "densenet_bc250_k24": (15_324_406, 15_480_556),
    "densenet_bc190_k40": (25_624_430, 25_821_620),
}
IMAGENET_DENSENET_PARAMS = {
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet264": 33_337_704,
}
TORCHVISION_RESNET_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("name", list(CIFAR_DENSENET_PARAMS))
def test_cifar_densenet_params_match_the_paper_exactly(name, classes):
    """Every CIFAR row of the paper's Table 2, for C10 and C100 heads."""
    expected = CIFAR_DENSENET_PARAMS[name][0 if classes == 10 else 1]
    assert n_params(name, num_classes=classes) == expected


@pytest.mark.parametrize("name", list(IMAGENET_DENSENET_PARAMS))
def test_imagenet_densenet_params_match_torchvision(name):
    assert n_params(name, IMAGENET) == IMAGENET_DENSENET_PARAMS[name]


@pytest.mark.parametrize("name", list(TORCHVISION_RESNET_PARAMS))
def test_imagenet_resnet_params_match_torchvision(name):
    assert n_params(name, IMAGENET) == TORCHVISION_RESNET_PARAMS[name]


def cifar_resnet_params(stages, bottleneck: bool, pre: bool, classes: int = 10) -> int:
    """Parameter count of a CIFAR ResNet written out from the spec's description of the units."""
    conv = lambda k, cin, cout: k * k * cin * cout
    bn = lambda c: 2 * c
    total = conv(3, 3, 16) + (0 if pre else bn(16))
    c = 16
    for n, w in zip(stages, (16, 32, 64)):
        for j in range(n):
            if bottleneck:  # pre-activation bottleneck with a projection where the shape changes
                out = 4 * w
                total += bn(c) + conv(1, c, w) + bn(w) + conv(3, w, w) + bn(w) + conv(1, w, out)
                if j == 0:
                    total += conv(1, c, out)
            else:  # original basic unit, option A (parameter-free) shortcut
                out = w
                total += conv(3, c, w) + bn(w) + conv(3, w, w) + bn(w)
            c = out
    if pre:
        total += bn(c)
    return total + c * classes + classes


def test_cifar_resnet_params_exact_and_near_the_published_rounded_figures():
    """ResNet-110 / pre-act ResNet-164 / -1001 equal the unit-by-unit count. He et al. print 1.7M,
    1.7M and 10.2M: ResNet-110 (1.73M) and -164 (1.70M) round to 1.7M, and ResNet-1001's 10.2M is
    its count without the BatchNorm scales and biases (10.18M; 10.33M with them), so the published
    figures hold to 2%, not 1%."""
    cases = {
        "resnet110": ((18,) * 3, False, False, 1_727_962, 1.7e6),
        "preact_resnet164": ((18,) * 3, True, True, 1_703_258, 1.7e6),
        "preact_resnet1001": ((111,) * 3, True, True, 10_327_706, 10.2e6),
    }
    without_bn = {}
    for name, (stages, bottleneck, pre, exact, paper) in cases.items():
        params = summary.abstract_variables(get_model(name), CIFAR)["params"]
        measured = summary.count_params(params)
        assert measured == cifar_resnet_params(stages, bottleneck, pre) == exact, name
        assert abs(measured / paper - 1) < 0.02, name
        leaves = jax.tree_util.tree_leaves_with_path(params)
        without_bn[name] = sum(
            math.prod(v.shape) for p, v in leaves if "norm" not in str(getattr(p[-2], "key", ""))
        )
    assert round(cases["resnet110"][3], -5) == round(cases["preact_resnet164"][3], -5) == 1_700_000
    assert without_bn["preact_resnet1001"] == 10_178_490
    assert round(without_bn["preact_resnet1001"], -5) == 10_200_000


@pytest.mark.parametrize(
    "name, input_shape, expected",
    [("densenet_bc100_k12", CIFAR, 287.9e6), ("densenet121", IMAGENET, 2.834e9)],
)
def test_macs_within_a_tenth_of_a_percent(name, input_shape, expected):
    macs = summary.count_macs(get_model(name), input_shape)
    assert abs(macs / expected - 1) < 1e-3


def test_published_table_agrees_with_the_spec():
    """dnjax/published.py is what the zoo table prints beside each count: it must match the spec."""
    for name, counts in CIFAR_DENSENET_PARAMS.items():
        assert published.CIFAR_PARAMS[name] == counts
    for name, count in {**IMAGENET_DENSENET_PARAMS, **TORCHVISION_RESNET_PARAMS}.items():
        assert published.IMAGENET_PARAMS[name] == count
    assert published.MACS["densenet_bc100_k12"] == 287.9e6
    assert published.MACS["densenet121"] == 2.834e9


# 2. Channel arithmetic ---------------------------------------------------------------------------


def test_bc100_channel_walk_and_resolution():
    """The spec's walk 24 -> 216 -> 108 -> 300 -> 150 -> 342 at 32 -> 16 -> 8 px."""
    shapes = sown_shapes(get_model("densenet_bc100_k12"), CIFAR)
    assert shapes == {
        "stem": (2, 32, 32, 24),
        "block1_out": (2, 32, 32, 216),
        "transition1_out": (2, 16, 16, 108),
        "block2_out": (2, 16, 16, 300),
        "transition2_out": (2, 8, 8, 150),
        "block3_out": (2, 8, 8, 342),
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(block_sizes=(2, 2, 2), growth_rate=4, num_init_features=8, compression=0.3),
        dict(block_sizes=(3, 1, 2), growth_rate=5, num_init_features=7, compression=0.7,
             bottleneck=True),
        dict(block_sizes=(1, 2, 3), growth_rate=3, num_init_features=9, compression=0.45,
             bottleneck=True),
        dict(block_sizes=(2, 3), growth_rate=6, num_init_features=6, compression=1.0),
    ],
)
def test_blocks_add_n_times_k_and_transitions_floor_theta_m(kwargs):
    """Each block adds n*k channels; each transition keeps floor(theta*m) (never rounds up) and halves
    H and W. With theta=0.3 on m=16 the floor is 4 where rounding would give 5."""
    model = densenet.DenseNet(**kwargs)
    shapes = sown_shapes(model, (16, 16, 3))
    c, hw = kwargs["num_init_features"], 16
    assert shapes["stem"] == (2, hw, hw, c)
    for i, n in enumerate(kwargs["block_sizes"], start=1):
        c += n * kwargs["growth_rate"]
        assert shapes[f"block{i}_out"] == (2, hw, hw, c)
        if i < len(kwargs["block_sizes"]):
            c, hw = math.floor(kwargs["compression"] * c), hw // 2
            assert shapes[f"transition{i}_out"] == (2, hw, hw, c)
    if kwargs["compression"] == 0.3:
        assert shapes["transition1_out"][-1] == 4 and shapes["transition2_out"][-1] == 3


@pytest.fixture(scope="module")
def tiny_runs():
    """DenseNet-BC-tiny (k=4, 2 layers per block), pre- and post-activation: variables and one
    training-mode forward pass on a fixed 8x8 batch, with the sown intermediates."""
    x, _ = batch(8)
    runs = {}
    with fast_compile():
        for act in ("pre", "post"):
            model = get_model("densenet_bc_tiny", activation=act)

            @jax.jit
            def init_and_run(x, model=model):
                variables = model.init(jax.random.key(0), x)
                logits, state = model.apply(
                    variables, x, train=True, mutable=["batch_stats", "intermediates"]
                )
                return variables, logits, {k: v[0] for k, v in state["intermediates"].items()}

            variables, logits, inter = init_and_run(x)
            runs[act] = dict(model=model, variables=variables, logits=logits, inter=inter, x=x)
    return runs


def test_dense_block_concatenates_its_input_unchanged(tiny_runs):
    """A block's output starts with its input channels, untouched: features are concatenated, not
    added."""
    inter = tiny_runs["pre"]["inter"]
    assert inter["stem"].shape[-1] == 8 and inter["block1_out"].shape[-1] == 8 + 2 * 4
    np.testing.assert_array_equal(inter["block1_out"][..., :8], inter["stem"])
    t1 = inter["transition1_out"]
    np.testing.assert_array_equal(inter["block2_out"][..., : t1.shape[-1]], t1)


# 3. Pre- versus post-activation --------------------------------------------------------------------


def init_and_apply(module, x, *static):
    """Initialises a layer and applies it in training mode, as one small compiled function."""

    def run(x):
        variables = module.init(jax.random.key(0), x, *static)
        return module.apply(variables, x, *static, mutable=["batch_stats"])[0]

    with fast_compile():
        return jax.jit(run)(x)


@pytest.mark.parametrize("bottleneck", [False, True])
def test_post_activation_layer_ends_in_relu_and_pre_activation_in_conv(bottleneck):
    conv, norm = common.conv_and_norm(True, jnp.float32)
    x = [jax.random.normal(jax.random.key(1), (4, 8, 8, 6))]
    outputs = {}
    for cls in (densenet.DenseLayer, densenet.PostActDenseLayer):
        layer = cls(growth_rate=4, bottleneck=bottleneck, bn_size=4, conv=conv, norm=norm)
        outputs[cls] = init_and_apply(layer, x, True)
    post, pre = outputs[densenet.PostActDenseLayer], outputs[densenet.DenseLayer]
    assert post.shape == pre.shape == (4, 8, 8, 4)
    assert float(post.min()) >= 0.0 and float((post > 0).mean()) > 0.2
    assert float((pre < 0).mean()) > 0.2


def test_post_activation_network_normalises_the_stem_and_has_no_final_norm():
    pre, post = (
        summary.abstract_variables(get_model("densenet_bc_tiny", activation=a), (8, 8, 3))["params"]
        for a in ("pre", "post")
    )
    assert "final_norm" in pre and "final_norm" not in post
    assert "stem_norm" in post and "stem_norm" not in pre
    assert summary.count_params(pre) != summary.count_params(post)


def test_post_activation_features_are_rectified_everywhere(tiny_runs):
    """Every sown map of the post-activation net is non-negative; the pre-activation stem is not."""
    post, pre = tiny_runs["post"]["inter"], tiny_runs["pre"]["inter"]
    sown = {"stem", "block1_out", "transition1_out", "block2_out", "transition2_out", "block3_out"}
    assert set(post) == set(pre) == sown
    assert all(float(v.min()) >= 0.0 for v in post.values())
    assert float(pre["stem"].min()) < 0.0
    assert float(pre["block1_out"].min()) < 0.0


@pytest.mark.parametrize("activation", ["pre", "post"])
def test_both_variants_learn_a_fixed_batch(tiny_runs, activation):
    """A few SGD steps on one batch lower its training loss."""
    run = tiny_runs[activation]
    model, x = run["model"], run["x"]
    _, y = batch(8)

    def loss_fn(params, batch_stats):
        logits, state = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return cross_entropy(logits, y), state["batch_stats"]

    @jax.jit
    def step(params, batch_stats):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), batch_stats, loss

    params, batch_stats = run["variables"]["params"], run["variables"]["batch_stats"]
    losses = []
    with fast_compile():
        for _ in range(6):
            params, batch_stats, loss = step(params, batch_stats)
            losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.05, losses


# 4. Memory-efficient mode ----------------------------------------------------------------------------

# XLA:CPU expands optimisation barriers early (pass `cse_barrier_expander`) and a later CSE then
# merges the recomputation back into the forward pass, so by default remat is undone on CPU (same
# temp memory, same FLOPs). There the pass is switched off to measure what the model asks for.
REMAT_COMPILER_OPTIONS = (
    {"xla_disable_hlo_passes": "cse_barrier_expander"} if jax.default_backend() == "cpu" else None
)


@pytest.fixture(scope="module")
def remat_runs():
    """One training forward+backward of a DenseNet-BC (L=16, k=12) at 16x16, batch 8, in both modes,
    from the same parameters: loss, gradients, new batch_stats, the stem output; then the
    evaluation-mode logits with the new statistics.

    The two modes round differently in float32, so a ReLU input within rounding of zero can fall
    on different sides of the kink in each; through the BatchNorm statistics one such element
    moves a layer's gradients by about 1% (seen at L=28). The network is kept small enough that
    no input comes that close (about 10^5 ReLU inputs)."""
    x, y = batch(8, hw=16, seed=3)
    runs = {}
    variables = None
    for me in (False, True):
        model = get_model(
            "densenet_cifar",
            depth=16,
            growth_rate=12,
            bottleneck=True,
            compression=0.5,
            memory_efficient=me,
        )
        if variables is None:
            with fast_compile():
                variables = jax.jit(model.init)(jax.random.key(0), x[:1])

        def loss_fn(params, batch_stats, model=model):
            logits, state = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats", "intermediates"],
            )
            return cross_entropy(logits, y), state

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        with fast_compile():
            (loss, state), grads = jax.jit(grad_fn)(variables["params"], variables["batch_stats"])
        runs[me] = dict(
            loss=loss,
            grads=grads,
            batch_stats=state["batch_stats"],
            stem=state["intermediates"]["stem"][0],
            old_batch_stats=variables["batch_stats"],
        )
    for me in (False, True):
        model = get_model("densenet_cifar", depth=16, growth_rate=12, bottleneck=True,
                          compression=0.5, memory_efficient=me)
        # Both modes evaluate with the plain mode's new statistics (the test above compares them).
        stats = runs[False]["batch_stats"]
        with fast_compile():
            runs[me]["eval_logits"] = jax.jit(functools.partial(model.apply, train=False))(
                {"params": variables["params"], "batch_stats": stats}, x)
    return runs


def train_step_temp_bytes(memory_efficient: bool, depth: int, **fields) -> int:
    """Compiled temporary memory of a DenseNet-BC k=12 forward+backward pass at 16x16, batch 8."""
    model = get_model("densenet_cifar", depth=depth, growth_rate=12, bottleneck=True,
                      compression=0.5, memory_efficient=memory_efficient, **fields)
    x = jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)

    def loss_fn(params, batch_stats, x):
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.sum(logits)

    lowered = jax.jit(jax.grad(loss_fn)).lower(variables["params"], variables["batch_stats"], x)
    compiled = lowered.compile(compiler_options=REMAT_COMPILER_OPTIONS)
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_efficient_mode_lowers_compiled_temp_memory():
    """Rebuilding the normalised inputs in the backward pass keeps fewer features alive: 42% of the
    plain mode's temp memory at L=40 here (22% at DenseNet-BC-100, batch 64, 32x32); and the
    memory it adds per layer is about what the plain mode adds per layer in its first block only."""
    plain = {d: train_step_temp_bytes(False, d) for d in (22, 40)}
    efficient = {d: train_step_temp_bytes(True, d) for d in (22, 40)}
    assert efficient[40] < 0.5 * plain[40], (plain, efficient)
    # From 3 to 6 layers per block: the plain mode's extra memory is most of it quadratic.
    assert efficient[40] - efficient[22] < 0.4 * (plain[40] - plain[22]), (plain, efficient)


@pytest.mark.parametrize("name, input_shape", [("densenet_bc100_k12", CIFAR),
                                               ("densenet121", IMAGENET)])
def test_memory_efficient_mode_has_the_same_variables(name, input_shape):
    """Checkpoints move between the modes: same names, shapes and dtypes (abstract init only)."""
    plain = summary.abstract_variables(get_model(name), input_shape)
    efficient = summary.abstract_variables(get_model(name, memory_efficient=True), input_shape)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), efficient) == jax.tree.map(
        lambda a: (a.shape, a.dtype), plain)


def test_memory_efficient_mode_evaluates_like_the_plain_mode(remat_runs):
    plain, efficient = remat_runs[False]["eval_logits"], remat_runs[True]["eval_logits"]
    np.testing.assert_allclose(efficient, plain, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(plain).max()) > 0.01


def test_memory_efficient_mode_gives_the_same_loss_and_gradients(remat_runs):
    plain, remat = remat_runs[False], remat_runs[True]
    np.testing.assert_allclose(remat["loss"], plain["loss"], rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(remat["grads"]) == jax.tree.structure(plain["grads"])
    remat_grads = named_leaves(remat["grads"])
    for p, g in named_leaves(plain["grads"]).items():
        np.testing.assert_allclose(remat_grads[p], g, rtol=1e-5, atol=1e-6, err_msg=p)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(plain["grads"]))


def test_a_changed_dense_layer_stops_the_memory_efficient_mode_it_would_not_reach(monkeypatch):
    """The efficient block mirrors DenseLayer instead of calling it: once DenseLayer computes
    something else (here: no ReLU after the first BatchNorm), building the memory-efficient mode
    fails naming efficient_block, while the plain mode, which does call the layer, still builds."""
    assert densenet.dense_layer_fingerprint() == efficient_block.MIRRORED_DENSE_LAYER
    get_model("densenet_bc100_k12", memory_efficient=True)

    def edited_call(self, features, train):
        x = self.norm(name="norm1")(densenet._concat(features))
        x = self.conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(x)
        x = nn.relu(self.norm(name="norm2")(x))
        return self.conv(self.growth_rate, (3, 3), padding=1, name="conv2")(x)

    monkeypatch.setattr(densenet.DenseLayer, "__call__", edited_call)
    assert densenet.dense_layer_fingerprint() != efficient_block.MIRRORED_DENSE_LAYER
    with pytest.raises(ValueError, match="efficient_block.py.*would silently ignore"):
        get_model("densenet_bc100_k12", memory_efficient=True)
    with pytest.raises(ValueError, match="DenseLayer was changed"):
        get_model("densenet121", memory_efficient=True)
    get_model("densenet_bc100_k12")  # the plain mode uses the edited layer
    get_model("densenet40_k12", memory_efficient=True)  # no bottleneck: remat of the layer itself
    get_model("densenet_bc100_k12", memory_efficient=True, activation="post")  # PostActDenseLayer


def test_the_fingerprint_covers_the_layers_composite_function_and_not_its_twins(monkeypatch):
    """DenseLayer's __call__ is shared with PostActDenseLayer and calls ``composite``: editing
    DenseLayer's composite function (here: to the post-activation order) changes the fingerprint
    and stops the memory-efficient mode; editing the post-activation twin's does not."""
    pre_composite, post_composite = densenet.DenseLayer.composite, densenet.PostActDenseLayer.composite
    monkeypatch.setattr(densenet.PostActDenseLayer, "composite", pre_composite)
    assert densenet.dense_layer_fingerprint() == efficient_block.MIRRORED_DENSE_LAYER
    monkeypatch.setattr(densenet.DenseLayer, "composite", post_composite)
    assert densenet.dense_layer_fingerprint() != efficient_block.MIRRORED_DENSE_LAYER
    with pytest.raises(ValueError, match="DenseLayer was changed"):
        get_model("densenet_bc100_k12", memory_efficient=True)


def test_memory_efficient_mode_updates_batchnorm_statistics_once(remat_runs):
    """Same running statistics in both modes, and for the first BatchNorm (on the stem output)
    exactly one momentum-0.9 step from (0, 1): mean 0.1*m and var 0.9 + 0.1*v with v the biased
    batch variance, as flax computes it. Two updates would give 0.19*m."""
    plain, remat = remat_runs[False], remat_runs[True]
    assert jax.tree.structure(remat["batch_stats"]) == jax.tree.structure(plain["batch_stats"])
    remat_stats = named_leaves(remat["batch_stats"])
    for p, a in named_leaves(plain["batch_stats"]).items():
        np.testing.assert_allclose(remat_stats[p], a, rtol=1e-5, atol=1e-6, err_msg=p)

    old = plain["old_batch_stats"]["block1"]["layer01"]["norm1"]
    np.testing.assert_array_equal(old["mean"], 0.0)
    np.testing.assert_array_equal(old["var"], 1.0)
    stem = np.asarray(plain["stem"], np.float64)
    m, v = stem.mean(axis=(0, 1, 2)), stem.var(axis=(0, 1, 2))
    n = stem.shape[0] * stem.shape[1] * stem.shape[2]
    for mode in (plain, remat):
        new = mode["batch_stats"]["block1"]["layer01"]["norm1"]
        np.testing.assert_allclose(new["mean"], 0.1 * m, rtol=1e-4, atol=1e-7)
        recovered_var = (np.asarray(new["var"], np.float64) - 0.9) / 0.1
        np.testing.assert_allclose(recovered_var, v, rtol=1e-4)
        assert not np.allclose(recovered_var, v * n / (n - 1), rtol=1e-4)


def _block_inputs(drop1: float, drop2: float, dtype=jnp.float32, seed=0):
    """A dense block of three bottleneck layers (c0=5, k=3) with random parameters and input."""
    spec = efficient_block.BlockSpec(5, 3, 12, 3, dtype, drop1, drop2, 1e-5)
    r = np.random.default_rng(seed)

    def arr(x):
        return jnp.asarray(x, jnp.float32)

    params = []
    for i in range(spec.num_layers):
        c = spec.layer_input(i)
        params.append(dict(
            s1=arr(r.uniform(0.5, 1.5, c)), t1=arr(0.1 * r.normal(size=c)),
            w1=arr(0.3 * r.normal(size=(1, 1, c, spec.width))),
            s2=arr(r.uniform(0.5, 1.5, spec.width)), t2=arr(0.1 * r.normal(size=spec.width)),
            w2=arr(0.2 * r.normal(size=(3, 3, spec.width, spec.growth_rate))),
        ))
    x0 = arr(r.normal(size=(4, 6, 6, spec.c0))).astype(dtype)
    keys = None
    if drop1 or drop2:
        keys = [tuple(jax.random.split(jax.random.key(i), 2)) for i in range(spec.num_layers)]
    target = arr(r.normal(size=(4, 6, 6, spec.channels)))
    return spec, x0, params, keys, target


@pytest.mark.parametrize("drop1, drop2", [(0.0, 0.0), (0.2, 0.3), (0.0, 0.5)],
                         ids=["no-dropout", "torch-placement", "torchvision-placement"])
def test_efficient_block_backward_equals_autodiff_of_its_forward(drop1, drop2):
    """The hand-written backward pass of the memory-efficient block gives autodiff's gradients of
    the same forward function, for the input and every parameter, with and without dropout (the
    masks regenerated from their keys)."""
    spec, x0, params, keys, target = _block_inputs(drop1, drop2)

    def loss(block):
        return lambda x0, params: jnp.sum(jnp.sin(block(x0, params)) * target)

    reference = loss(lambda x0, p: efficient_block.dense_block(spec, x0, p, keys)[0])
    efficient = loss(lambda x0, p: efficient_block.train_block(spec, x0, p, keys)[0])
    with fast_compile():
        want_loss, want = jax.jit(jax.value_and_grad(reference, (0, 1)))(x0, params)
        got_loss, got = jax.jit(jax.value_and_grad(efficient, (0, 1)))(x0, params)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    got_leaves = named_leaves(got)
    for path, w in named_leaves(want).items():
        scale = float(jnp.abs(w).max())
        assert scale > 0, path
        np.testing.assert_allclose(got_leaves[path], w, rtol=0, atol=2e-5 * scale, err_msg=path)
    if keys is not None:  # dropout really acted: the same block without it gives another loss
        plain = loss(lambda x0, p: efficient_block.dense_block(spec, x0, p, None)[0])
        assert abs(float(plain(x0, params)) - float(want_loss)) > 1e-3


def test_efficient_block_in_bfloat16_is_as_close_to_float32_as_autodiff():
    """In bfloat16 compute the hand-written backward pass (which accumulates in float32) adds no
    error of its own: its gradients are as close to the float32 ones as autodiff's bfloat16
    gradients of the same forward pass are (both about 19% here, worst tensor in norm)."""
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        spec, x0, params, _, target = _block_inputs(0.0, 0.0, dtype=dtype)
        for name, fn in (("autodiff", efficient_block.dense_block),
                         ("efficient", efficient_block.train_block)):
            def loss(x0, p, fn=fn, spec=spec, target=target):
                return jnp.sum(jnp.sin(fn(spec, x0, p)[0].astype(jnp.float32)) * target)
            with fast_compile():
                grads[dtype, name] = jax.jit(jax.grad(loss, (0, 1)))(x0, params)

    def distance(name):
        pairs = zip(jax.tree.leaves(grads[jnp.bfloat16, name]),
                    jax.tree.leaves(grads[jnp.float32, "autodiff"]))
        return max(float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))
                   for a, b in pairs)

    autodiff, efficient = distance("autodiff"), distance("efficient")
    assert 0 < efficient < 1.25 * autodiff + 1e-3, (efficient, autodiff)


def test_efficient_block_statistics_are_the_batch_moments_of_each_layer_input():
    spec, x0, params, _, _ = _block_inputs(0.0, 0.0)
    out, stats = jax.jit(lambda x, p: efficient_block.train_block(spec, x, p))(x0, params)
    for i, (mean1, var1, _, _) in enumerate(stats):
        layer_input = np.asarray(out[..., :spec.layer_input(i)], np.float64)
        np.testing.assert_allclose(mean1, layer_input.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var1, layer_input.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out[..., :spec.c0], x0)


# 5. Dropout ------------------------------------------------------------------------------------------


def dropout_calls(model, variables, x, rng):
    """Runs a training forward pass and returns (logits, [(input, output) of each active Dropout])."""
    calls = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        m = context.module
        if isinstance(m, nn.Dropout) and context.method_name == "__call__":
            if m.rate > 0 and not m.deterministic:
                calls.append((args[0], out))
        return out

    with nn.intercept_methods(interceptor):
        logits, _ = model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"])
    return logits, calls


@pytest.fixture(scope="module")
def dropout_runs(tiny_runs):
    """The tiny BC net with dropout 0.2 in both placements, one training pass each with the same
    rng: logits and every active Dropout's input and output."""
    variables, x = tiny_runs["pre"]["variables"], tiny_runs["pre"]["x"]
    runs = {}
    with fast_compile():
        for placement in ("torch", "torchvision"):
            model = get_model("densenet_bc_tiny", dropout_rate=0.2, dropout_placement=placement)
            run = jax.jit(lambda v, x, model=model: dropout_calls(model, v, x, jax.random.key(7)))
            logits, calls = run(variables, x)
            runs[placement] = dict(model=model, logits=logits, calls=calls)
    return runs, variables, x


def test_dropout_depends_on_the_rng_in_training_only(dropout_runs):
    runs, variables, x = dropout_runs
    model = runs["torch"]["model"]
    with fast_compile():
        train = jax.jit(
            lambda v, x, r: model.apply(
                v, x, train=True, rngs={"dropout": r}, mutable=["batch_stats"]
            )[0]
        )
        a, b, a2 = (train(variables, x, jax.random.key(s)) for s in (1, 2, 1))
        evaluate = jax.jit(lambda v, x, r: model.apply(v, x, train=False, rngs={"dropout": r}))
        e1, e2 = evaluate(variables, x, jax.random.key(1)), evaluate(variables, x, jax.random.key(2))
        e0 = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert float(jnp.abs(a - b).max()) > 1e-4
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(e1, e0)


def test_dropout_placement_torch_versus_torchvision(dropout_runs):
    """The Torch code drops after the 1x1, the 3x3 and each transition conv (2*6 + 2 = 14 sites in a
    3x2-layer BC net); torchvision only after each 3x3 (6). Same rng, different outputs."""
    runs, _, _ = dropout_runs
    assert {p: len(r["calls"]) for p, r in runs.items()} == {"torch": 14, "torchvision": 6}
    assert float(jnp.abs(runs["torch"]["logits"] - runs["torchvision"]["logits"]).max()) > 1e-4


def test_dropout_zeroes_about_the_rate_and_rescales_the_rest(dropout_runs):
    runs, _, _ = dropout_runs
    calls = runs["torch"]["calls"]
    inputs = np.concatenate([np.ravel(i) for i, _ in calls])
    outputs = np.concatenate([np.ravel(o) for _, o in calls])
    live = inputs != 0
    assert live.sum() > 20_000
    dropped = (outputs[live] == 0).mean()
    assert abs(dropped - 0.2) < 0.02, dropped
    kept = live & (outputs != 0)
    np.testing.assert_allclose(outputs[kept], inputs[kept] / 0.8, rtol=1e-5)


# 6. Initialisation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bc_init():
    """Real init of a wide DenseNet-BC (k=32): about 300k conv weights; kernel shapes do not depend
    on the input size."""
    model = get_model("densenet_cifar", depth=16, growth_rate=32, bottleneck=True, compression=0.5)
    with fast_compile():
        return jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4, 4, 3)))


def test_conv_kernels_are_he_normal_fan_out(bc_init):
    """std = sqrt(2/(kh*kw*c_out)) per kernel within sampling error (fan_in would be 2-4x smaller
    here), mean 0, and a normal shape (kurtosis 3; a truncated normal or uniform is flatter)."""
    kernels = {p: k for p, k in named_leaves(bc_init["params"]).items() if k.ndim == 4}
    assert len(kernels) >= 10
    pooled = []
    for p, k in kernels.items():
        kh, kw, c_in, c_out = k.shape
        expected = math.sqrt(2.0 / (kh * kw * c_out))
        w = np.asarray(k, np.float64).ravel()
        assert abs(w.std() / expected - 1) < 6 / math.sqrt(2 * w.size) + 1e-3, (p, w.std(), expected)
        assert abs(w.mean()) < 6 * expected / math.sqrt(w.size), p
        pooled.append(w / expected)
    z = np.concatenate(pooled)
    assert z.size > 250_000
    assert abs(z.std() - 1) < 0.01 and abs(z.mean()) < 0.01
    kurtosis = np.mean(z**4) / np.mean(z**2) ** 2
    assert abs(kurtosis - 3) < 0.1, kurtosis


def test_batchnorm_and_dense_initial_values(bc_init):
    params, stats = bc_init["params"], bc_init["batch_stats"]
    named = named_leaves(params)
    scales = [v for p, v in named.items() if "norm" in p and p.endswith("scale")]
    biases = [v for p, v in named.items() if "norm" in p and p.endswith("bias")]
    assert len(scales) == len(biases) > 10
    assert all(np.all(np.asarray(s) == 1.0) for s in scales)
    assert all(np.all(np.asarray(b) == 0.0) for b in biases)
    np.testing.assert_array_equal(params["head"]["bias"], 0.0)
    assert float(jnp.abs(params["head"]["kernel"]).max()) > 0
    means = [v for p, v in named_leaves(stats).items() if p.endswith("mean")]
    vars_ = [v for p, v in named_leaves(stats).items() if p.endswith("var")]
    assert len(means) == len(vars_) == len(scales)
    assert all(np.all(np.asarray(m) == 0.0) for m in means)
    assert all(np.all(np.asarray(v) == 1.0) for v in vars_)


def test_batchnorm_uses_torch_momentum_and_epsilon():
    """PyTorch momentum 0.1 is flax momentum 0.9; epsilon 1e-5 (flax defaults are 0.99 and 1e-5)."""
    _, norm = common.conv_and_norm(True, jnp.float32)
    bn = norm()
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5 and bn.use_running_average is False


# 7. bfloat16 compute -----------------------------------------------------------------------------


def test_bfloat16_compute_keeps_float32_params_and_logits(tiny_runs):
    """Same parameters, bfloat16 compute: float32 params, statistics and logits, bfloat16 features,
    logits within 5% of the float32 network's scale."""
    run = tiny_runs["pre"]
    variables, lo32 = run["variables"], run["logits"]
    bf16 = get_model("densenet_bc_tiny", dtype="bfloat16")
    with fast_compile():
        init16 = jax.eval_shape(bf16.init, jax.random.key(0), run["x"])
        lo16, state16 = jax.jit(
            lambda v, x: bf16.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
        )(variables, run["x"])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(init16))
    assert lo16.dtype == jnp.float32 and lo32.dtype == jnp.float32
    assert state16["intermediates"]["block1_out"][0].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state16["batch_stats"]))
    error, scale = float(jnp.abs(lo16 - lo32).max()), float(jnp.abs(lo32).max())
    assert scale > 1e-3 and 0 < error < 5e-2 * scale, (error, scale)


# 8. Input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, pattern",
    [
        ("densenet_cifar", dict(depth=41), "depth=41"),
        ("densenet_cifar", dict(depth=42, bottleneck=True), "depth=42"),
        ("densenet_cifar", dict(depth=43, bottleneck=True, compression=0.5), "depth=43"),
        ("densenet_bc100_k12", dict(compression=0), "compression=0"),
        ("densenet_bc100_k12", dict(compression=1.5), "compression=1.5"),
        ("densenet40_k12", dict(growth_rate=0), "growth_rate=0"),
        ("densenet_bc100_k12", dict(bn_size=0), "bn_size=0"),
        ("densenet_bc100_k12", dict(dropout_rate=1.0), "dropout_rate=1.0"),
        ("densenet_bc100_k12", dict(dropout_rate=-0.1), "dropout_rate=-0.1"),
        ("densenet_bc100_k12", dict(activation="mid"), "activation='mid'"),
        ("densenet_bc100_k12", dict(stem="svhn"), "stem='svhn'"),
        ("densenet_bc100_k12", dict(dropout_placement="keras"), "dropout_placement='keras'"),
        ("densenet_bc100_k12", dict(num_classes=0), "num_classes=0"),
        ("densenet_bc100_k12", dict(grwoth_rate=12), "grwoth_rate"),
        ("resnet_cifar", dict(depth=21), "depth=21"),
        ("resnet_cifar_bottleneck", dict(depth=165), "depth=165"),
        ("resnet20", dict(activation="mid"), "activation='mid'"),
        ("resnet20", dict(shortcut="C"), "shortcut='C'"),
        ("no_such_net", {}, "no_such_net"),
    ],
)
def test_bad_configuration_fails_at_construction_naming_field_and_value(name, kwargs, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        get_model(name, **kwargs)


def test_depths_that_divide_are_accepted():
    """40 is valid both ways ((40-4)/3 = 12, (40-4)/6 = 6); 43 only without bottlenecks."""
    assert get_model("densenet_cifar", depth=40).block_sizes == (12, 12, 12)
    assert get_model("densenet_cifar", depth=40, bottleneck=True).block_sizes == (6, 6, 6)
    assert get_model("densenet_cifar", depth=43).block_sizes == (13, 13, 13)
    assert get_model("resnet_cifar", depth=20).stage_sizes == (3, 3, 3)


# 9. The zoo command -------------------------------------------------------------------------------


def run_zoo(*args: str) -> subprocess.CompletedProcess:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "dnjax.models", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=pythonpath),
        capture_output=True,
        text=True,
        timeout=300,
    )


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """Parses the plain table by the header's column positions."""
    lines = [l for l in text.splitlines() if l.strip()]
    header = lines[0]
    names = re.findall(r"\S+(?: \S+)*", header)
    starts = [header.index(n) for n in names] + [None]
    rows = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:])]
        rows[cells[0]] = dict(zip(names, cells))
    return rows


def test_zoo_command_prints_measured_counts():
    proc = run_zoo("--only", "densenet_bc100_k12", "resnet110")
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert set(rows) == {"densenet_bc100_k12", "resnet110"}
    assert rows["densenet_bc100_k12"]["params"] == "769,162"
    assert rows["densenet_bc100_k12"]["paper params"] == "769,162"
    assert rows["densenet_bc100_k12"]["layers per block"] == "16-16-16"
    assert rows["resnet110"]["params"] == "1,727,962"
    assert rows["resnet110"]["layers per block"] == "18-18-18"


def test_zoo_command_markdown():
    proc = run_zoo("--markdown", "--only", "resnet20")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("| model | input | classes | params |")
    assert re.fullmatch(r"\|(---\|)+", lines[1])
    assert lines[2].startswith("| resnet20 | 32x32 | 10 | 269,722 |")


def test_zoo_command_rejects_an_unknown_name():
    proc = run_zoo("--only", "no_such_net")
    assert proc.returncode != 0 and "no_such_net" in proc.stderr


# 10. ResNet details -----------------------------------------------------------------------------


def test_option_a_shortcut_has_no_parameters():
    """ResNet-20: 269,722 parameters, exactly its convs, BatchNorms and head; no projection."""
    params = summary.abstract_variables(get_model("resnet20"), CIFAR)["params"]
    assert summary.count_params(params) == 269_722 == cifar_resnet_params((3, 3, 3), False, False)
    assert not any("proj" in p for p in named_leaves(params))


def test_preact_bottleneck_resnet_projects_in_the_first_block_of_each_stage():
    params = summary.abstract_variables(get_model("preact_resnet164"), CIFAR)["params"]
    projected = sorted(k for k, v in params.items() if "proj_conv" in v)
    assert projected == ["stage1_block001", "stage2_block001", "stage3_block001"]
    assert not any("proj_norm" in p for p in named_leaves(params))
    assert "stem_norm" not in params and "final_norm" in params
    assert params["stage1_block001"]["proj_conv"]["kernel"].shape == (1, 1, 16, 64)
    assert params["stage3_block001"]["proj_conv"]["kernel"].shape == (1, 1, 128, 256)


def test_post_activation_basic_block_output_is_rectified():
    """The original unit ends in ReLU after the add; the pre-activation unit ends in the add."""
    conv, norm = common.conv_and_norm(True, jnp.float32)
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 8))
    out = {}
    for cls in (resnet.BasicBlock, resnet.PreActBasicBlock):
        out[cls] = init_and_apply(cls(16, 2, conv, norm, "A"), x)
    post, pre = out[resnet.BasicBlock], out[resnet.PreActBasicBlock]
    assert post.shape == pre.shape == (4, 4, 4, 16)
    assert float(post.min()) >= 0.0 and float((post > 0).mean()) > 0.2
    assert float((pre < 0).mean()) > 0.2


def test_option_a_shortcut_subsamples_and_zero_pads():
    """Shape-changing units of ResNet-20 pass x[:, ::2, ::2] with zero channels on both sides."""
    x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3)
    y = resnet._zero_pad_shortcut(x, 8, 2)
    assert y.shape == (2, 2, 2, 8)
    np.testing.assert_array_equal(y[..., 2:5], x[:, ::2, ::2, :])
    assert float(jnp.abs(y[..., :2]).max()) == 0 and float(jnp.abs(y[..., 5:]).max()) == 0


def test_zoo_names_build():
    """Every zoo entry builds with its defaults (construction only)."""
    for name in ZOO:
        model = get_model(name)
        assert isinstance(model, nn.Module), name


def test_variant_is_read_off_the_module_fields():
    """DenseNet-B/-C/-BC from bottleneck and compression, pre-activation ResNets from their
    activation; the ImageNet DenseNets are DenseNet-BC although their names do not say so."""
    from dnjax import models

    expected = {
        "densenet40_k12": "densenet", "densenet100_k24": "densenet", "densenet_bc100_k12": "densenet_bc",
        "densenet_bc190_k40": "densenet_bc", "densenet121": "densenet_bc", "densenet_cifar": "densenet",
        "resnet110": "resnet", "preact_resnet110": "preact_resnet", "resnet164": "resnet",
        "preact_resnet1001": "preact_resnet", "resnet50": "resnet", "preact_resnet50": "preact_resnet",
        "vgg16": "vgg", "densenet_tiny": "densenet", "densenet_bc_tiny": "densenet_bc",
        "resnet_tiny": "resnet", "preact_resnet_tiny": "preact_resnet", "vgg_tiny": "vgg",
    }
    assert {n: models.variant(n) for n in expected} == expected
    for name, entry in ZOO.items():
        assert models.variant(name) in models.VARIANTS[entry.family], name
    # Fields change the kind the module is, not the name.
    assert models.variant("densenet_cifar", depth=40, bottleneck=True) == "densenet_b"
    assert models.variant("densenet_cifar", compression=0.5) == "densenet_c"
    assert models.variant("densenet_bc100_k12", compression=1.0) == "densenet_b"
    assert models.variant("densenet_bc100_k12", activation="post") == "densenet_bc"
    assert models.variant("resnet_cifar_bottleneck", depth=11, activation="pre") == "preact_resnet"
    assert models.variant("preact_resnet164", activation="post") == "resnet"
    # Each kind the CIFAR studies use has exactly one tiny network.
    tiny = [models.variant(n) for n in models.names(roles=("tiny",))]
    assert sorted(tiny) == sorted(set(tiny)) == ["densenet", "densenet_bc", "preact_resnet", "resnet", "vgg"]
    with pytest.raises(ValueError, match="no_such_net"):
        models.variant("no_such_net")
    with pytest.raises(ValueError, match="has no field"):
        models.variant("vgg16", bottleneck=True)


@pytest.mark.parametrize(
    "name, field, value",
    [("densenet_cifar", "block_sizes", (1, 1, 1)), ("resnet110", "widths", (1, 2, 3)),
     ("vgg16", "stages", ((8,),))],
)
def test_fields_a_builder_derives_from_depth_are_refused_by_name(name, field, value):
    """A depth-based builder sets these itself; overriding them is a ValueError, not a TypeError."""
    with pytest.raises(ValueError, match=field):
        get_model(name, **{field: value})
