"""A run's config: knobs declared once, one way to override them, one-line mistakes, and the
command lines that read them (the zoo's summary, evaluate's data fields)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from configs import default
from dnjax import config_files, config_lib, knobs, models
from dnjax.data import DataSpec

import runs


def _error(config, overrides) -> str:
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.override(config, overrides)
    return str(e.value)


def test_every_knob_has_one_declaration_that_the_config_the_data_spec_and_resumes_read():
    config = default.get_config()
    leaves = config_lib._leaves(config.to_dict())
    assert {k: v for k, v in leaves.items() if k != "model.name"} == {p: k.default for p, k in knobs.KNOBS.items()}
    assert {f.name for f in dataclasses.fields(DataSpec)} == {
        p.removeprefix("data.") for p in knobs.KNOBS if p.startswith("data.")}
    free = [p for p, k in knobs.KNOBS.items() if k.resume == "free"]
    assert "eval_every_epochs" in free and "seed" not in free
    changes = {p: (1, 2) for p in ("eval_every_epochs", "num_epochs", "seed", "model.growth_rate")}
    allowed, refused = config_lib.resume_policy(changes, finished=False)
    assert sorted(allowed) == ["eval_every_epochs"] and sorted(refused) == ["model.growth_rate", "num_epochs", "seed"]
    allowed, refused = config_lib.resume_policy(changes, finished=True)
    assert sorted(refused) == ["model.growth_rate", "seed"]


def test_a_knob_added_in_one_place_is_defaulted_typed_checked_resumed_and_read_from_older_workdirs(monkeypatch):
    knob = knobs.knob(3, knobs.at_least(1), older=1, doc="a new knob")
    monkeypatch.setitem(knobs.KNOBS, "optim.new_knob", knob)
    config = default.get_config("densenet_tiny")
    assert config.optim.new_knob == 3
    assert config_lib.override(config, [("optim.new_knob", "5")]).optim.new_knob == 5
    assert "config.optim.new_knob='abc' is invalid: it takes an integer" in _error(config, [("optim.new_knob", "abc")])
    bad = config_lib.override(config, [("optim.new_knob", "0")])
    with pytest.raises(config_lib.ConfigError, match=r"config\.optim\.new_knob=0 is invalid: it must be >= 1"):
        config_lib.validate(bad)
    saved = json.loads(config.to_json_best_effort())
    del saved["optim"]["new_knob"]  # a workdir written before the knob existed
    assert config_lib.from_json(saved).optim.new_knob == 1
    changes = config_lib.config_changes(saved, config)
    assert changes == {"optim.new_knob": (1, 3)} and config_lib.resume_policy(changes, finished=True)[1] == changes


def test_overrides_are_typed_by_their_field_and_mistakes_name_the_field_and_the_fix():
    config = default.get_config("densenet_cifar")
    c = config_lib.override(config, [("model.depth", "28"), ("model.bottleneck", "true"), ("data.augment", "false"),
                                     ("optim.decay_at", "[0.3, 0.6]"), ("num_epochs", "2"), ("data.train_limit", "None")])
    assert (c.model.depth, c.model.bottleneck, c.data.augment) == (28, True, False)
    assert c.optim.decay_at == (0.3, 0.6) and c.num_epochs == 2.0 and isinstance(c.num_epochs, float)
    assert config.model.to_dict() == {"name": "densenet_cifar"}  # a copy: the file's config is untouched
    assert "config.optim.learnin_rate does not exist (did you mean 'learning_rate'?); config.optim has [" in _error(
        config, [("optim.learnin_rate", "0.2")])
    assert "(did you mean 'batch_size'?)" in _error(config, [("batch_sise", "8")])
    message = _error(config, [("model.growth_rat", "8")])
    assert message.startswith("config.model.growth_rat does not exist: model 'densenet_cifar' has the fields [")
    assert message.endswith("no network of the zoo has it (did you mean 'growth_rate'?)")
    assert "networks that have it: densenet40_k12, densenet100_k12, densenet100_k24, densenet_bc100_k12, ... " \
        "(choose one in the config file's argument)" in _error(default.get_config("vgg11"), [("model.growth_rate", "8")])
    assert _error(config, [("model.depth", "4x")]) == "config.model.depth='4x' is invalid: it takes an integer or None"
    assert _error(config, [("batch_size", "1.5")]) == "config.batch_size=1.5 is invalid: it takes an integer"
    assert "config.data is a section" in _error(config, [("data", "x")])
    assert "did you mean 'densenet_cifar'" in _error(config, [("model.name", "densenet_cifr")])


def test_validate_refuses_npz_files_without_the_npz_data_set():
    config = config_lib.override(default.get_config("densenet_tiny"), [("data.npz_train", "/x/a.npz")])
    with pytest.raises(config_lib.ConfigError, match=r"config\.data\.dataset='cifar10' is invalid: npz files are given "
                       r".*read only with --config\.data\.dataset=npz"):
        config_lib.validate(config)


def test_the_command_line_splits_every_spelling_of_an_override():
    overrides, rest = config_files.split_overrides(
        ["prog", "--config=c.py", "--config.a=1", "--config.b", "2", "--config.c", "--noconfig.d", "--workdir=w"])
    assert overrides == [("a", "1"), ("b", "2"), ("c", "true"), ("d", "false")]
    assert rest == ["prog", "--config=c.py", "--workdir=w"]


@pytest.mark.parametrize("args, needle", [
    (["--config=configs/cifar_densenet.py:densenet_bc28_k16"],
     "error: --config=configs/cifar_densenet.py:densenet_bc28_k16: config argument 'densenet_bc28_k16': "
     "'densenet_bc28_k16' is neither a model of this config"),
    (["--config=configs/quickstart.py", "--config.data.npz_train=a.npz", "--config.data.npz_test=b.npz"],
     "read only with --config.data.dataset=npz"),
    (["--config=configs/quickstart.py", "--config.optim.learnin_rate=0.2"], "(did you mean 'learning_rate'?)"),
])
def test_config_mistakes_end_the_run_with_one_line_and_status_2(tmp_path, args, needle):
    r = subprocess.run([sys.executable, "-m", "dnjax.main", *args, f"--workdir={tmp_path / 'w'}"],
                       cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert needle in r.stderr and not (tmp_path / "w").exists()


def test_the_zoo_summary_takes_the_model_fields_of_a_run(capsys):
    from dnjax.models import __main__ as zoo, summary

    assert zoo.main(["--only", "densenet_cifar", "--config.model.depth=28", "--config.model.growth_rate=16"]) == 0
    out = capsys.readouterr().out
    expected = summary.describe(models.get_model("densenet_cifar", depth=28, growth_rate=16), (32, 32, 3))
    row = next(line for line in out.splitlines() if line.startswith("densenet_cifar*"))
    assert f"{expected['params']:,}" in row and "8-8-8" in row
    assert "densenet_cifar*: activation='pre'," in out and "depth=28" in out and "growth_rate=16" in out
    assert zoo.main(["--only", "densenet_cifar", "--config.model.deph=28"]) == 2
    assert "did you mean 'depth'" in capsys.readouterr().err


def test_evaluate_re_evaluates_on_changed_data_fields_and_says_so(reference_run):
    def evaluate(*args):
        return subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={reference_run}", *args],
                              cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=300)

    r = evaluate("--config.data.test_limit=100", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.splitlines()[-1])
    assert m["test_count"] == 100 and m["data_changes"] == {"data.test_limit": 100} and m["dataset"] == "digits"
    r = evaluate("--config.data.test_limit=100")
    assert "over 100 images of the digits test split, data.test_limit=100" in r.stdout
    r = evaluate("--config.seed=1")
    assert r.returncode == 2 and "config.seed cannot change for an evaluation" in r.stderr


def test_the_knobs_command_lists_every_knob_with_its_default_and_resume_policy():
    r = subprocess.run([sys.executable, "-m", "dnjax.knobs"], cwd=runs.REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(knobs.KNOBS)
    row = next(line for line in lines if line.startswith("optim.learning_rate "))
    assert "= 0.1" in row and "[fixed]" in row
    assert "[free]" in next(line for line in lines if line.startswith("eval_every_epochs "))
