"""torchvision weights into dnjax, checked against outputs torchvision itself computed.

The fixtures (tests/fixtures/torchvision, written by ``python -m dnjax.convert.verify --fixtures``)
are torchvision's own DenseNet and ResNet classes at a tiny size with random weights, BatchNorm
statistics included, and their evaluation- and training-mode logits; no torch is needed here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from dnjax import convert
from dnjax.convert import verify
from dnjax.convert.torchvision import ConversionError, torch_names

import runs

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"


def load_fixture(name):
    state_dict = convert.load_state_dict(FIXTURES / f"{name}.safetensors")
    with np.load(FIXTURES / f"{name}.npz") as f:
        reference = {k: f[k] for k in f.files}
    x = reference.pop("input_int8").astype(np.float32) / verify.INPUT_SCALE
    return state_dict, np.ascontiguousarray(x.transpose(0, 2, 3, 1)), reference


def _close(got, want, what, tol=1e-5):
    """float32 agreement: within ``tol`` of the largest reference logit."""
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("name", sorted(verify.FIXTURES))
def test_fixture_converts_to_torchvision_logits(name, fast_compile):
    state_dict, x, ref = load_fixture(name)
    model = verify.fixture_model(verify.FIXTURES[name])
    variables = convert.convert_state_dict(state_dict, model)
    eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    train_logits, updated = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
    _close(np.asarray(eval_logits), ref["logits_eval"], f"{name}: evaluation-mode logits")
    # Training mode normalises with statistics of the batch: in the last blocks of the narrow
    # DenseNet-121 (1x1 maps) that is 3 values per channel, whose variance magnifies float32
    # rounding to ~1e-4 after 58 layers (a wrong or swapped tensor changes the logits by ~1).
    _close(np.asarray(train_logits), ref["logits_train"], f"{name}: training-mode logits",
           tol=1e-4 if name == "densenet121_narrow" else 1e-5)
    # The logits are not trivially equal (random BatchNorm statistics make eval and train differ).
    assert np.max(np.abs(ref["logits_eval"] - ref["logits_train"])) > 1e-2

    if name not in verify.WITH_RUNNING_STATS:
        return
    # Running statistics after one training-mode pass: the means agree; torch averages the
    # unbiased batch variance, dnjax the biased one, which n / (n - 1) accounts for exactly.
    stats = jax.tree.map(np.asarray, updated["batch_stats"])
    checked = 0
    for keys, (tname, _) in torch_names(model).items():
        if keys[0] != "batch_stats":
            continue
        new, old = stats, variables["batch_stats"]
        for k in keys[1:]:
            new, old = new[k], old[k]
        want = ref[f"after_train/{tname}"]
        if keys[-1] == "mean":
            np.testing.assert_allclose(new, want, rtol=1e-4, atol=1e-6, err_msg=tname)
        else:
            n = int(ref[f"bn_count/{tname.rsplit('.', 1)[0]}"])
            assert np.max(np.abs(new - want) / want) > 1e-4 / n  # the conventions do differ
            corrected = 0.9 * old + (new - 0.9 * old) * n / (n - 1)
            np.testing.assert_allclose(corrected, want, rtol=1e-5, err_msg=tname)
        checked += 1
    assert checked == 2 * sum(1 for k in torch_names(model) if k[-1] == "mean")


def test_every_variable_is_filled_from_its_own_tensor():
    """Converting back gives the state dict (less num_batches_tracked) value for value, so no
    tensor went to two variables or none."""
    state_dict, _, _ = load_fixture("resnet_bottleneck")
    model = verify.fixture_model(verify.FIXTURES["resnet_bottleneck"])
    back = convert.torchvision_state_dict(convert.convert_state_dict(state_dict, model), model)
    expected = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    assert back.keys() == expected.keys()
    for k in expected:
        assert np.array_equal(back[k], expected[k]), k


def test_memory_efficient_densenet_takes_the_same_weights(fast_compile):
    state_dict, x, ref = load_fixture("densenet_small")
    spec = verify.FIXTURES["densenet_small"]
    model = verify.fixture_model(spec).clone(memory_efficient=True)
    variables = convert.convert_state_dict(state_dict, model)
    _close(np.asarray(model.apply(variables, x, train=False)), ref["logits_eval"], "efficient")


def test_published_densenet_files_with_old_layer_names_convert():
    """torchvision's published DenseNet files say 'denselayer1.norm.1.weight' for 'norm1'."""
    state_dict, x, ref = load_fixture("densenet_small")
    old = {}  # files that old also predate num_batches_tracked
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if ".denselayer" in k and f".{part}." in k:
                k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[k] = v
    assert "features.denseblock1.denselayer1.norm.1.running_var" in old
    model = verify.fixture_model(verify.FIXTURES["densenet_small"])
    variables = convert.convert_state_dict(old, model)
    _close(np.asarray(model.apply(variables, x, train=False)), ref["logits_eval"], "old names")


def test_npz_and_wrapped_state_dicts_read_the_same(tmp_path):
    state_dict, _, _ = load_fixture("densenet_small")
    np.savez(tmp_path / "w.npz", **state_dict)
    assert _equal(convert.load_state_dict(tmp_path / "w.npz"), state_dict)
    # torchvision's reference training scripts save {'model': state_dict, ...}; DataParallel
    # prefixes every name with 'module.'.
    wrapped = {"model": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 3}
    assert _equal(convert.as_state_dict(wrapped), state_dict)


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["densenet121", "densenet161", "densenet169", "densenet201",
                                  "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_supported_networks_have_one_torchvision_name_per_variable(name):
    """The zoo network's variables map one to one onto torchvision's names, with torchvision's
    parameter count (buffers: two per BatchNorm)."""
    from dnjax import models, published

    model = models.get_model(name)
    names = torch_names(model)
    assert len(set(names.values())) == len(names)
    abstract = convert.torchvision.abstract_variables(model)
    params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract["params"]))
    assert params == published.IMAGENET_PARAMS[name]
    torch_style = {n for n, _ in names.values()}
    assert ("features.conv0.weight" if name.startswith("densenet") else "conv1.weight") in torch_style
    assert ("classifier.bias" if name.startswith("densenet") else "fc.bias") in torch_style


# ---------------------------------------------------------------------------------------------
# Weights that do not fit


def _error(state_dict, model) -> str:
    with pytest.raises(ConversionError) as e:
        convert.convert_state_dict(state_dict, model)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_weights_of_another_architecture_are_named():
    state_dict, _, _ = load_fixture("resnet_basic")
    msg = _error(state_dict, verify.fixture_model(verify.FIXTURES["densenet_small"]))
    assert "a torchvision ResNet with basic blocks (2, 1, 1, 1)" in msg
    assert "missing, e.g. features." in msg and "no place for, e.g. " in msg


def test_weights_of_another_size_name_the_tensor_and_shapes():
    state_dict, _, _ = load_fixture("densenet_small")
    spec = dict(verify.FIXTURES["densenet_small"], growth_rate=6)
    msg = _error(state_dict, verify.fixture_model(spec))
    assert "growth rate 4" in msg  # what the file holds
    assert "features.denseblock1.denselayer1.conv1.weight has shape [8, 8, 1, 1], the model needs [12, 8, 1, 1]" in msg


def test_classifier_of_another_size_suggests_the_number_of_classes():
    state_dict, _, _ = load_fixture("resnet_basic")
    spec = dict(verify.FIXTURES["resnet_basic"], num_classes=7)
    msg = _error(state_dict, verify.fixture_model(spec))
    assert "fc.weight has shape [5, 16], the model needs [7, 16]" in msg and "num_classes" in msg


def test_missing_and_extra_tensors_are_named():
    state_dict, _, _ = load_fixture("resnet_bottleneck")
    model = verify.fixture_model(verify.FIXTURES["resnet_bottleneck"])
    missing = dict(state_dict)
    del missing["layer3.0.downsample.1.running_var"]
    assert "1 tensor(s) missing, e.g. layer3.0.downsample.1.running_var" in _error(missing, model)
    extra = dict(state_dict, **{"layer1.0.se.weight": np.zeros(3, np.float32)})
    assert "1 tensor(s) the model has no place for, e.g. layer1.0.se.weight" in _error(extra, model)


def test_what_is_not_a_state_dict_is_refused(tmp_path):
    with pytest.raises(ConversionError, match="holds a list"):
        convert.as_state_dict([np.zeros(3)])
    with pytest.raises(ConversionError, match="not all named tensors, e.g. 'epoch'"):
        convert.as_state_dict({"conv1.weight": np.zeros(3), "epoch": 3})
    bad = tmp_path / "weights.safetensors"
    bad.write_text('{"not": "tensors"}')
    with pytest.raises(ConversionError, match="not a readable safetensors file"):
        convert.load_state_dict(bad)
    pth = tmp_path / "weights.pth"
    pth.write_bytes(b"\x00garbage")
    with pytest.raises(ConversionError, match="torch"):  # needs torch, or torch cannot read it
        convert.load_state_dict(pth)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ConversionError, match="unknown file type '.txt'"):
        convert.load_state_dict(tmp_path / "x.txt")


# ---------------------------------------------------------------------------------------------
# The command line and the workdir


def _npz_data(tmp_path, size=36):
    rng = np.random.default_rng(0)
    paths = []
    for split, n in (("train", 16), ("test", 12)):
        p = tmp_path / f"{split}.npz"
        np.savez(p, image=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                 label=rng.integers(0, 10, n))
        paths.append(p)
    return paths


def narrow121_overrides(train, test):
    """``densenet121_narrow`` as a run config: the zoo's densenet121 at growth rate 2."""
    spec = verify.FIXTURES["densenet121_narrow"]
    return [
        "--config=configs/imagenet.py:densenet121",
        f"--config.model.growth_rate={spec['growth_rate']}",
        f"--config.model.num_init_features={spec['num_init_features']}",
        f"--config.model.bn_size={spec['bn_size']}",
        "--config.data.dataset=npz", f"--config.data.npz_train={train}",
        f"--config.data.npz_test={test}", f"--config.data.num_classes={spec['num_classes']}",
        "--config.batch_size=8", "--config.eval_batch_size=8", "--config.progress_bar=false",
        "--config.dtype=float32",
    ]


def convert_cmd(*args, model="densenet121", weights=FIXTURES / "densenet121_narrow.safetensors",
                out=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dnjax.convert", "torchvision", f"--model={model}",
           f"--weights={weights}", f"--out={out}", *args]
    return subprocess.run(cmd, cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The narrow DenseNet-121 fixture converted by the command line into a workdir."""
    tmp = tmp_path_factory.mktemp("converted")
    train, test = _npz_data(tmp)
    out = tmp / "dn121"
    r = convert_cmd(*narrow121_overrides(train, test), out=out)
    assert r.returncode == 0, r.stderr
    return out, train, test


@pytest.mark.slow
def test_command_line_writes_a_workdir_that_evaluate_reads(converted):
    out, train, test = converted
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["name"] == "densenet121" and config["model"]["growth_rate"] == 2
    assert config["dtype"] == "float32"
    state = runs.load_state(out)
    assert int(state["step"]) == 0
    state_dict, _, _ = load_fixture("densenet121_narrow")
    spec = verify.FIXTURES["densenet121_narrow"]
    want = convert.convert_state_dict(state_dict, verify.fixture_model(spec))
    got = runs.flat({"params": state["params"], "batch_stats": state["batch_stats"]})
    expected = runs.flat(want)
    counters = sum(k.endswith("num_batches_tracked") for k in state_dict)
    assert got.keys() == expected.keys() and len(got) == len(state_dict) - counters
    for k in got:
        assert np.array_equal(got[k], expected[k]), k

    r = subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={out}", "--json"],
                       cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["step"] == 0 and m["test_count"] == 12 and np.isfinite(m["test_loss"])


@pytest.mark.parametrize("case", ["architecture", "not_a_state_dict", "model", "out_not_empty"])
def test_command_line_refuses_bad_input_and_writes_nothing(tmp_path, case):
    out = tmp_path / "out"
    kwargs = {}
    if case == "architecture":
        kwargs = dict(weights=FIXTURES / "resnet_basic.safetensors")
        expect = "a torchvision ResNet with basic blocks (2, 1, 1, 1)"
    elif case == "not_a_state_dict":
        (tmp_path / "w.npz").write_bytes(b"PK-not-a-zip")
        kwargs = dict(weights=tmp_path / "w.npz")
        expect = "is not a readable npz file"
    elif case == "model":
        kwargs = dict(model="vgg16")
        expect = "--model='vgg16' has no torchvision counterpart"
    else:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        expect = "exists and is not an empty directory"
    r = convert_cmd(out=out, **kwargs)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expect in errors[0], r.stderr
    if case == "out_not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers


# ---------------------------------------------------------------------------------------------
# Evaluation transform


@pytest.mark.parametrize("i", range(len(verify.TRANSFORM_SIZES)))
def test_imagenet_evaluation_transform_is_torchvisions(i):
    from PIL import Image

    from dnjax import data as input_pipeline

    source = np.asarray(Image.open(FIXTURES / f"transform_source{i}.png"))
    assert source.shape[:2] == verify.TRANSFORM_SIZES[i]
    want = np.asarray(Image.open(FIXTURES / f"transform_torchvision{i}.png"))
    with np.load(FIXTURES / "transform_rows.npz") as f:
        crop, row = int(f[f"crop{i}"]), f[f"row{i}"]
    got = input_pipeline.imagenet_eval_transform(source, crop)
    assert got.shape == (crop, crop, 3) and got.dtype == np.float32
    mean = np.asarray(input_pipeline.IMAGENET_MEAN, np.float32)
    std = np.asarray(input_pipeline.IMAGENET_STD, np.float32)
    pixels = np.round((got * std + mean) * 255).astype(np.int16)
    assert np.array_equal(pixels, want), f"{np.sum(pixels != want)} pixel values differ"
    np.testing.assert_allclose(got[crop // 2], row, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Starting a run from other weights (config.init_from)


def _tiny(workdir_steps=2, **fields):
    import tiny_config

    config = tiny_config.get_config()
    config.num_train_steps = workdir_steps
    config.compilation_cache_dir = ""
    for k, v in fields.items():
        node = config
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    from dnjax import train

    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    workdir = tmp_path_factory.mktemp("source")
    try:
        assert train.train_and_evaluate(_tiny(2), workdir).status == "finished"
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
    return workdir


def _start(config, workdir):
    """The state a run of ``config`` starts from (nothing trained)."""
    from dnjax import train
    from dnjax.runtime import checkpoints, resume

    setup = train.Setup(config)
    ckpts = checkpoints.Checkpoints(workdir, training=True)
    try:
        state, resumed = resume.restore_or_init(setup, ckpts, resume.initial_weights(setup))
    finally:
        ckpts.close()
    assert not resumed
    return setup, runs.flat(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))


def test_init_from_loads_weights_bit_exactly(source_run, tmp_path, fast_compile):
    saved = runs.load_state(source_run)
    want = runs.flat({"params": saved["params"], "batch_stats": saved["batch_stats"]})
    _, got = _start(_tiny(init_from=str(source_run), seed=7), tmp_path / "b")
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def test_init_from_reinitialises_only_the_classifier_when_classes_differ(source_run, tmp_path,
                                                                         fast_compile, caplog):
    saved = runs.load_state(source_run)
    want = runs.flat({"params": saved["params"], "batch_stats": saved["batch_stats"]})
    rng = np.random.default_rng(0)
    for split in ("train", "test"):  # 12 classes of 8 x 8 grey images, like the digits
        np.savez(tmp_path / f"{split}.npz", image=rng.integers(0, 17, (24, 8, 8, 1), dtype=np.uint8),
                 label=np.arange(24) % 12)
    config = _tiny(init_from=str(source_run), seed=7, **{
        "data.dataset": "npz", "data.npz_train": str(tmp_path / "train.npz"),
        "data.npz_test": str(tmp_path / "test.npz")})
    with caplog.at_level("WARNING", logger="dnjax"):
        setup, got = _start(config, tmp_path / "b")
    fresh = runs.flat({"params": jax.device_get(setup.init_state().params)})
    assert got["/params/head/kernel"].shape[-1] == 12
    for k in got:
        if k.startswith("/params/head/"):
            assert np.array_equal(got[k], fresh[k]), k  # this run's own initialisation
        else:
            assert np.array_equal(got[k], want[k]), k
    assert "reinitialised the classifier ['head']['bias']" in caplog.text
    assert "['head']['kernel']" in caplog.text and "(10 classes there, 12 here)" in caplog.text


def test_init_from_a_checkpoint_of_another_model_stops_and_writes_nothing(source_run, tmp_path, cache):
    workdir = tmp_path / "other"
    r = runs.run_main(workdir, f"--config.init_from={source_run}", "--config.model.name=resnet_tiny",
                      cache=cache)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "holds a checkpoint of another model (densenet_bc_tiny) than " \
        "config.model (resnet_tiny)" in errors[0], r.stderr
    assert not workdir.exists()
    r = runs.run_main(workdir, f"--config.init_from={tmp_path / 'nowhere'}", cache=cache)
    assert r.returncode == 2 and "config.init_from=" in r.stderr and not workdir.exists()


@pytest.mark.slow
def test_finetune_config_is_valid_and_enlarges_images_on_the_device(tmp_path, fast_compile):
    """The fine-tuning config as written, and its data path (ImageNet normalisation, images
    enlarged inside the step) on small RGB images with a tiny network."""
    from configs import finetune_densenet121
    from dnjax import config_lib, train

    config = finetune_densenet121.get_config(str(tmp_path))
    config_lib.validate(config)
    assert config.init_from == str(tmp_path) and config.data.resize == 224
    train_npz, test_npz = _npz_data(tmp_path, size=12)
    config.model.name = "densenet_bc_tiny"
    config.init_from = None
    config.data.dataset = "npz"
    config.data.npz_train, config.data.npz_test = str(train_npz), str(test_npz)
    config.data.resize = 24
    config.batch_size, config.eval_batch_size = 8, 8
    config.num_train_steps = 2
    config.progress_bar = False
    config.compilation_cache_dir = ""
    setup = train.Setup(config)
    assert setup.info.image_shape == (24, 24, 3)
    assert setup.info.mean == pytest.approx((123.675, 116.28, 103.53))
    result = train.train_and_evaluate(config, tmp_path / "run")
    assert result.status == "finished" and result.metrics["test_count"] == 12
    # The evaluation saw the enlarged images: its loss is that of the model on them, not on the
    # 12 x 12 originals.
    import optax

    from dnjax import data as input_pipeline

    with np.load(test_npz) as f:
        images, labels = f["image"], f["label"]
    state = result.state
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def loss(x):
        logits = setup.model.apply(variables, x, train=False)
        return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())

    x = input_pipeline.normalize(images, setup.info.mean, setup.info.std)
    assert loss(input_pipeline.resize(x, 24)) == pytest.approx(result.metrics["test_loss"], rel=1e-5)
    assert loss(x) != pytest.approx(result.metrics["test_loss"], rel=1e-3)
