"""The training system end to end: the command line, real data, sharding, multi-process, resume,
and the bad inputs that must stop a run early without touching its workdir."""

from __future__ import annotations

import json
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

from configs import cifar_densenet
from dnjax import config_lib, data, logs, train

import runs

pytestmark = pytest.mark.slow


_assert_close_states = runs.assert_close_states


# ---------------------------------------------------------------------------------------------
# End to end


def test_quickstart_command_trains_and_reports(tmp_path, cache):
    workdir = tmp_path / "qs"
    r = runs.run_main(workdir, "--config.num_train_steps=4", "--config.progress_bar=false",
                      config="configs/quickstart.py", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "Finished 4 steps: test error" in r.stdout
    recs, torn = logs.read_jsonl(workdir / "metrics.jsonl")
    assert not torn
    kinds = [x["type"] for x in recs]
    assert kinds[0] == "event" and kinds[-1] == "final" and "eval" in kinds
    final = recs[-1]
    assert final["test_count"] == 360  # the whole digits test split, no image dropped
    assert 0.0 <= final["test_error"] <= 100.0
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["dataset"] == "digits" and saved["num_train_steps"] == 4
    assert (workdir / "checkpoints" / "4").is_dir()
    assert any(p.name.startswith("events") for p in (workdir / "tensorboard").iterdir())


def test_tfds_cifar100_through_the_real_tfds_code_path(tmp_path, fast_compile):
    tfds = pytest.importorskip("tensorflow_datasets")
    config = cifar_densenet.get_config("c100+")
    config.model.name = "densenet_bc_tiny"
    config.model.dropout_rate = None
    config.batch_size = 8
    config.eval_batch_size = 16
    config.num_train_steps = 2
    config.progress_bar = False
    config.compilation_cache_dir = ""
    with tfds.testing.mock_data(num_examples=40):
        setup = train.Setup(config)
        result = train.train_and_evaluate(config, tmp_path / "c100")
    assert setup.info.num_classes == 100
    assert setup.info.mean == pytest.approx((129.3, 124.1, 112.4))
    assert result.status == "finished" and result.step == 2
    assert result.metrics["test_count"] == setup.info.num_test == 40
    head = result.state.params["head"]["kernel"]
    assert head.shape[-1] == 100


@pytest.mark.skipif(not runs.CIFAR10_DIR.exists(), reason="../shared/data/cifar10 (real CIFAR-10 sample) is absent")
def test_tiny_densenet_learns_real_cifar10_images(tmp_path, cache):
    """Two epochs on 10k real images: a broken pipeline (labels shuffled against images,
    augmentation garbling pixels, eval on the wrong split) stays near the 10% of chance."""
    workdir = tmp_path / "c10"
    r = runs.run_main(
        workdir,
        "--config.data.dataset=npz",
        f"--config.data.npz_train={runs.CIFAR10_DIR / 'train_10k.npz'}",
        f"--config.data.npz_test={runs.CIFAR10_DIR / 'test_10k.npz'}",
        "--config.data.test_limit=2000",
        "--config.data.pad=4",
        "--config.model.name=densenet_tiny",
        "--config.batch_size=64",
        "--config.num_train_steps=-1",
        "--config.num_epochs=2",
        "--config.optim.decay_at=(0.75,)",
        "--config.log_every_steps=50",
        "--config.eval_every_epochs=2",
        cache=cache, extra_env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    final = [x for x in logs.records(workdir, "final")][-1]
    assert final["test_count"] == 2000
    assert final["test_error"] < 70.0, final  # chance is 90% error


# ---------------------------------------------------------------------------------------------
# Sharding and processes


def test_eight_devices_equal_one(tmp_path, cache, reference_run):
    """Global BatchNorm and a global-batch mean loss: 8 simulated devices, 2 images each, must
    give the single device's parameters and statistics. Per-device BatchNorm would not."""
    r = runs.run_main(tmp_path / "d8", devices=8, cache=cache)
    assert r.returncode == 0, r.stderr
    ref, got = runs.load_state(reference_run), runs.load_state(tmp_path / "d8")
    _assert_close_states(ref, got, rtol=2e-4, atol=2e-6)
    # the comparison has teeth: the run moved the statistics far more than the tolerance
    bs = runs.flat(ref["batch_stats"])
    assert max(np.abs(v - (1.0 if k.endswith("var") else 0.0)).max() for k, v in bs.items()) > 1e-2


def test_memory_efficient_mode_on_four_devices_equals_the_plain_mode_on_one(tmp_path, cache,
                                                                            reference_run):
    """The memory-efficient dense blocks (hand-written backward pass) under data parallelism:
    BatchNorm statistics stay global and six training steps end where the plain mode's do."""
    r = runs.run_main(tmp_path / "me4", "--config.model.memory_efficient=True", devices=4,
                      cache=cache)
    assert r.returncode == 0, r.stderr
    _assert_close_states(runs.load_state(reference_run), runs.load_state(tmp_path / "me4"),
                         rtol=2e-4, atol=2e-6)


def test_two_processes_equal_one(tmp_path, cache, reference_run):
    port = runs.free_port()
    workdir = tmp_path / "mp"
    procs = [
        subprocess.Popen(
            runs.main_cmd(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}", cache=cache),
            cwd=runs.REPO, env=runs.env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "Finished 6 steps" in outs[0][0]
    _assert_close_states(runs.load_state(reference_run), runs.load_state(workdir), rtol=2e-4, atol=2e-6)
    # only process 0 writes logs: one start record, not two
    starts = [x for x in logs.records(workdir, "event") if x.get("event") == "started"]
    assert len(starts) == 1 and starts[0]["processes"] == 2 and starts[0]["devices"] == 2


# ---------------------------------------------------------------------------------------------
# Resume


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, cache):
    common = ("--config.num_train_steps=8", "--config.log_every_steps=1", "--config.model.dropout_rate=0.2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    r = runs.run_main(straight, *common, cache=cache)
    assert r.returncode == 0, r.stderr
    r = runs.run_main(resumed, *common, "--config.halt_after_steps=3", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "Halted" in r.stderr and runs.load_state(resumed)["step"] == 3
    r = runs.run_main(resumed, *common, cache=cache)
    assert r.returncode == 0, r.stderr
    a, b = runs.flat(runs.load_state(straight)), runs.flat(runs.load_state(resumed))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # the log of the resumed run has every step once, with the uninterrupted run's losses
    la = {x["step"]: x["loss"] for x in logs.records(straight, "train")}
    lb = [(x["step"], x["loss"]) for x in logs.records(resumed, "train")]
    assert [s for s, _ in lb] == list(range(1, 9))
    assert all(la[s] == loss for s, loss in lb)


# ---------------------------------------------------------------------------------------------
# Bad input


def _tiny_config():
    import tiny_config  # tests/ is on sys.path under pytest

    return tiny_config.get_config()


@pytest.mark.parametrize(
    "override, field",
    [
        ("--config.nonexistent_field=1", "nonexistent_field"),
        ("--config.batch_size=abc", "batch_size"),
        ("--config.optim.schedule=linear", "optim.schedule"),
        ("--config.model.depth=40", "model.depth"),
        ("--config.model.compression=1.5", "compression"),
    ],
)
def test_bad_config_field_fails_fast_naming_it(tmp_path, override, field):
    r = runs.run_main(tmp_path / "w", override, timeout=120)
    assert r.returncode != 0
    assert field in r.stderr
    assert "Traceback" not in r.stderr.split("\n")[-3:]  # a message, not a stack dump at the end
    assert not (tmp_path / "w" / "checkpoints").exists()


def _count_compiles():
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: events.append(name) if "compile" in name else None
    )
    return events


def test_unprepared_tfds_dataset_stops_before_compiling(tmp_path):
    config = _tiny_config()
    config.data.dataset = "cifar100"
    config.data.data_dir = str(tmp_path)
    events = _count_compiles()
    before = len(events)
    with pytest.raises(data.DataError, match="tfds build cifar100") as e:
        train.Setup(config)
    assert str(tmp_path) in str(e.value)
    assert len(events) == before
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or created in data_dir


def test_missing_data_dir_is_named(tmp_path):
    config = _tiny_config()
    config.data.dataset = "cifar10"
    config.data.data_dir = str(tmp_path / "nope")
    with pytest.raises(data.DataError, match="nope"):
        train.Setup(config)


def test_invalid_values_name_their_field():
    config = _tiny_config()
    config.optim.decay_at = (0.75, 0.5)
    with pytest.raises(config_lib.ConfigError, match="optim.decay_at"):
        config_lib.validate(config)
    config = _tiny_config()
    config.model.name = "densenet_999"
    with pytest.raises(config_lib.ConfigError, match="model.name"):
        config_lib.validate(config)


def test_a_config_json_of_the_earlier_layout_reads_as_the_same_config():
    """Workdirs written when config.model held every field of the network's family (unset ones
    as None) resume without a refused change and rebuild the same network."""
    from configs import cifar_densenet

    config = cifar_densenet.get_config("densenet_bc100_k12,c100")
    saved = json.loads(config.to_json_best_effort())
    family_fields = ("depth", "growth_rate", "bottleneck", "bn_size", "compression", "num_init_features",
                     "dropout_placement", "activation", "memory_efficient", "stem")
    saved["model"] = {**{k: None for k in family_fields}, **saved["model"]}
    for field in ("halt_after_steps", "init_from", "profile_steps"):  # fields added since
        del saved[field]
    # Both sides are read completed: the knobs added since at the values they stood for, the
    # network with every field.
    assert config_lib.config_changes(saved, config) == {}
    loaded = config_lib.from_json(saved)
    assert loaded.model.to_dict() == {"name": "densenet_bc100_k12", "dropout_rate": 0.2}
    assert (loaded.halt_after_steps, loaded.init_from, loaded.profile_steps) == (-1, None, "")
    assert config_lib.model_overrides(loaded) == config_lib.model_overrides(config) == {"dropout_rate": 0.2}
    assert loaded.optim.decay_at == (0.5, 0.75)  # JSON lists read back as tuples


def test_a_run_record_rebuilds_its_network_whatever_the_presets_say_later(monkeypatch):
    """config.json holds every field of the network: editing the zoo's preset later does not
    change what an old workdir rebuilds; a record that names only the preset would follow it."""
    import dataclasses
    import functools

    from configs import cifar_densenet
    from dnjax import models
    from dnjax.models import densenet, summary

    config = config_lib.complete(cifar_densenet.get_config("densenet_bc100_k12,c100+"))
    saved = json.loads(config.to_json_best_effort())
    assert {k: saved["model"][k] for k in ("depth", "growth_rate", "bottleneck", "compression")} == {
        "depth": 100, "growth_rate": 12, "bottleneck": True, "compression": 0.5}
    assert sorted(saved["model"]) == sorted(["name", *models.field_types("densenet_bc100_k12")])
    params = lambda c: summary.describe(config_lib.build_model(c, 100), (32, 32, 3))["params"]
    before = params(config_lib.from_json(saved))
    entry = models.ZOO["densenet_bc100_k12"]
    edited = functools.partial(densenet.densenet_cifar, depth=40, growth_rate=24, bottleneck=True, compression=0.5)
    monkeypatch.setitem(models.ZOO, "densenet_bc100_k12", dataclasses.replace(entry, factory=edited))
    assert params(config_lib.from_json(saved)) == before
    assert params(config_lib.from_json(dict(saved, model={"name": "densenet_bc100_k12"}))) != before


def test_a_workdir_of_the_earlier_record_layout_resumes_and_evaluates(tmp_path, reference_run, cache):
    """A config.json that names the network and only the fields its config set (the layout before
    runs recorded every field), and lacks knobs added since, evaluates and resumes: no change is
    refused, and the resumed run records every field again."""
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(reference_run, workdir)
    path = workdir / "config.json"
    saved = json.loads(path.read_text())
    assert saved["model"]["growth_rate"] == 4 and saved["model"]["block_sizes"] == [2, 2, 2]
    saved["model"] = {"name": saved["model"]["name"]}
    del saved["halt_after_steps"], saved["data"]["subset_seed"]
    path.write_text(json.dumps(saved))
    r = subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={workdir}", "--json"],
                       cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    final = list(logs.records(reference_run, "final"))[-1]
    assert json.loads(r.stdout.splitlines()[-1])["test_error"] == pytest.approx(final["test_error"], abs=1e-6)
    r = runs.run_main(workdir, "--config.num_train_steps=8", cache=cache)
    assert r.returncode == 0, r.stderr
    assert "Finished 8 steps" in r.stdout and "num_train_steps: 6 -> 8" in r.stderr
    # The start names the network, its parameters and the steps; without a progress bar
    # (progress_bar=False) each logged step shows its loss.
    from dnjax.models import summary

    params = summary.describe(config_lib.build_model(config_lib.from_json(saved), 10), (8, 8, 1))["params"]
    assert (f"densenet_bc_tiny (densenet_bc), {params:,} parameters, on digits (1,437 training images): 8 steps, "
            "0.09 epochs of 89 steps of 16 images") in r.stderr
    assert "step 8/8: loss " in r.stderr
    assert "model." not in r.stderr.split("changed settings")[-1].split("\n\n")[0]
    assert json.loads(path.read_text())["model"]["block_sizes"] == [2, 2, 2]


def test_batch_not_divisible_by_devices(tmp_path, cache):
    r = runs.run_main(tmp_path / "w", "--config.batch_size=12", devices=8, cache=cache, timeout=120)
    assert r.returncode == 2
    assert "batch_size=12" in r.stderr and "divisible" in r.stderr and "8" in r.stderr


def _snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_workdir_of_a_different_model_is_refused_untouched(tmp_path, cache):
    workdir = tmp_path / "w"
    r = runs.run_main(workdir, "--config.num_train_steps=2", cache=cache)
    assert r.returncode == 0, r.stderr
    before = _snapshot(workdir)
    r = runs.run_main(workdir, "--config.num_train_steps=4", "--config.model.growth_rate=6", cache=cache)
    assert r.returncode == 3
    assert "model.growth_rate: 4 -> 6" in r.stderr and "growth_rate" not in r.stdout
    assert "--workdir" in r.stderr
    assert _snapshot(workdir) == before
    # accepting the change does not make the other model's weights fit
    r = runs.run_main(workdir, "--config.num_train_steps=4", "--config.model.growth_rate=6",
                      "--accept_config_changes=model.growth_rate", cache=cache)
    assert r.returncode == 3
    assert "different model" in r.stderr and "growth_rate" in r.stderr
    assert _snapshot(workdir) == before


def _imagenet_config(steps: int):
    config = _tiny_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 32
    config.batch_size = 4
    config.eval_batch_size = 8
    config.num_train_steps = steps
    config.compilation_cache_dir = ""
    return config


def test_streamed_imagenet_path_trains_and_resumes_at_the_next_batch(tmp_path, fast_compile):
    """grain streaming through tfds.data_source: the iterator position is checkpointed, so a
    halted and resumed run equals an uninterrupted one bit for bit."""
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        straight = train.train_and_evaluate(_imagenet_config(4), tmp_path / "a")
        assert straight.status == "finished" and straight.metrics["test_count"] == 24
        halted_config = _imagenet_config(4)
        halted_config.halt_after_steps = 2
        assert train.train_and_evaluate(halted_config, tmp_path / "b").status == "halted"
        resumed = train.train_and_evaluate(_imagenet_config(4), tmp_path / "b")
        assert resumed.status == "finished"
    assert straight.state.params["head"]["kernel"].shape[-1] == 1000
    a, b = (runs.flat(flax.serialization.to_state_dict(jax.device_get(r.state)))
            for r in (straight, resumed))
    assert len(a) > 10 and a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_profile_steps_write_a_trace_for_tensorboard(tmp_path, fast_compile):
    """--config.profile_steps=A,B: a jax.profiler trace of those steps in the workdir, where
    TensorBoard's profile plugin looks for it (tensorboard/plugins/profile/<run>/*.xplane.pb)."""
    config = _tiny_config()
    config.num_train_steps = 4
    config.compilation_cache_dir = ""
    config.profile_steps = "2,3"
    assert train.train_and_evaluate(config, tmp_path / "w").status == "finished"
    traces = list((tmp_path / "w" / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    for bad in ("3,2", "0,2", "2", "a,b"):
        config.profile_steps = bad
        with pytest.raises(config_lib.ConfigError, match="profile_steps"):
            config_lib.validate(config)


def test_evaluate_command_reproduces_the_logged_final_metrics(reference_run, cache):
    r = subprocess.run(
        [sys.executable, "-m", "dnjax.evaluate", f"--workdir={reference_run}", "--json"],
        cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    final = list(logs.records(reference_run, "final"))[-1]
    assert got["step"] == final["step"] == 6
    assert got["test_count"] == final["test_count"] == 360
    assert got["test_error"] == pytest.approx(final["test_error"], abs=1e-6)
    assert got["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)


def test_evaluate_command_prints_its_result_not_library_logs(reference_run):
    """orbax logs each checkpoint operation at INFO; the tool shows them only with --verbosity."""
    out = {}
    for flags in ((), ("--verbosity=0",)):
        r = subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={reference_run}", *flags],
                           cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        out[flags] = r
    quiet, verbose = out[()], out[("--verbosity=0",)]
    assert quiet.stdout.strip().splitlines() == [quiet.stdout.strip()] and "test error" in quiet.stdout
    assert quiet.stderr.strip() == "", quiet.stderr
    assert len(verbose.stderr.splitlines()) > 5 and "checkpoint" in verbose.stderr.lower()
    assert verbose.stdout == quiet.stdout


def test_evaluate_command_names_a_workdir_without_a_run(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "dnjax.evaluate", f"--workdir={tmp_path}"],
        cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2 and "config.json" in r.stderr and str(tmp_path) in r.stderr
