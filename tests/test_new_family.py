"""docs/models.md's three steps for a new network family (a model file, a zoo line, a config
file), followed on a copy of the library and the configs with the page's own code, then the new
network counted, overridden and trained from the command line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "models.md"

pytestmark = pytest.mark.slow


def _steps() -> dict[str, str]:
    """{path: code} of the fenced Python blocks of the page's 'Adding a network family' section,
    each headed by a comment naming the file it goes into."""
    text = PAGE.read_text()
    section = text.split("## Adding a network family", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S)
    return {path: code for path, code in blocks}


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_new_family_is_one_model_file_one_zoo_line_and_one_config(tmp_path):
    steps = _steps()
    assert sorted(steps) == ["configs/cifar_plainnet.py", "dnjax/models/__init__.py", "dnjax/models/plainnet.py"]
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "dnjax", tmp_path / "dnjax", ignore=ignore)
    shutil.copytree(REPO / "configs", tmp_path / "configs", ignore=ignore)

    # 1. the model file, 3. the config file: as the page gives them
    for path in ("dnjax/models/plainnet.py", "configs/cifar_plainnet.py"):
        (tmp_path / path).write_text(steps[path])
    # 2. the zoo line, at the end of the table, and the model file's import beside the others
    zoo = tmp_path / "dnjax/models/__init__.py"
    text = zoo.read_text()
    imports = "from dnjax.models import densenet, resnet, vgg\n"
    table_end = "\n    ]\n    role = lambda"
    assert imports in text and text.count(table_end) == 1
    text = text.replace(imports, "from dnjax.models import densenet, plainnet, resnet, vgg\n")
    zoo.write_text(text.replace(table_end, "\n" + steps["dnjax/models/__init__.py"].rstrip("\n") + table_end))

    # Counted from the module: conv 3x3 (no bias) and BatchNorm (scale, bias) per layer, then the
    # classifier (weights and bias).
    widths, classes = (16, 32, 64), 10
    expected = sum(9 * i * o + 2 * o for i, o in zip((3, *widths), widths)) + widths[-1] * classes + classes
    r = _run(tmp_path, "dnjax.models", "--only", "plainnet3")
    assert r.returncode == 0, r.stderr[-3000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("plainnet3"))
    assert f"{expected:,}" in row, (expected, row)

    # Trained from its config on the bundled digits, a field of the new module set on the command
    # line and typed by it; a field it does not have is refused, naming it.
    common = ["dnjax.main", "--config=configs/cifar_plainnet.py:plainnet3,c10+", "--config.data.dataset=digits",
              "--config.data.pad=1", "--config.batch_size=16", "--config.num_train_steps=3",
              "--config.eval_batch_size=120", "--config.progress_bar=false", "--config.compilation_cache_dir="]
    r = _run(tmp_path, *common, f"--workdir={tmp_path / 'w'}", "--config.model.widths=(8,16)")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Finished 3 steps" in r.stdout
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["model"] == {"name": "plainnet3", "widths": [8, 16]}
    r = _run(tmp_path, *common, f"--workdir={tmp_path / 'x'}", "--config.model.growth_rate=12")
    assert r.returncode == 2
    assert "config.model.growth_rate does not exist: model 'plainnet3' has the fields ['widths']" in r.stderr
    assert not (tmp_path / "x").exists()
