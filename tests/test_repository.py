"""The repository's structure: what is installed, what the library imports, one source for each
published figure, and the data package's lazy imports."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dnjax import published
from dnjax.units import human

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted((REPO / "dnjax").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (top, function, TYPE_CHECKING)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_only_the_library_is_installed_and_it_never_imports_the_repository_folders():
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    from setuptools import find_packages

    packages = find_packages(str(REPO), include=include)
    assert "dnjax" in packages and "dnjax.data" in packages and "dnjax.models" in packages
    assert not [p for p in packages if p.split(".")[0] in ("configs", "experiments", "tests", "benchmarks")]
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.split(".")[0] in ("configs", "experiments"))
                 for p in LIBRARY}
    assert not {k: v for k, v in offenders.items() if v}
    # The config files import the library and each other (configs/default.py first of all), never
    # the experiments.
    for p in sorted((REPO / "configs").glob("*.py")):
        assert not [m for m in _imports(p) if m.split(".")[0] == "experiments"], p
        if p.name not in ("__init__.py", "default.py", "common.py"):
            assert _imports(p) & {"configs.default", "configs.cifar_densenet", "configs.imagenet"}, p


CONFIG_FILES = sorted(str(p) for p in (REPO / "configs").glob("*.py") if "def get_config" in p.read_text())


def test_every_config_file_loads_by_absolute_path_from_another_directory(tmp_path):
    """As ``python -m dnjax.main --config=/abs/configs/X.py`` does outside the repository: the
    repository's root is not on the path, the config files' package is found from the file."""
    assert len(CONFIG_FILES) >= 8 and not any(p.endswith(("common.py", "__init__.py")) for p in CONFIG_FILES)
    code = (
        "import sys; sys.modules['experiments'] = None\n"
        "from dnjax import config_files, config_lib\n"
        f"for p in {CONFIG_FILES!r}:\n"
        "    c = config_files.load_config_file(p)\n"
        "    config_lib.validate(c)\n"
        "    print(c.model.name)\n"
    )
    lib = tmp_path / "lib"  # the library alone on the path, as an installation has it
    lib.mkdir()
    (lib / "dnjax").symlink_to(REPO / "dnjax")
    env = dict(os.environ, PYTHONPATH=str(lib), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert "densenet_bc100_k12" in r.stdout.split() and "densenet121" in r.stdout.split()


def _graph(paths) -> dict[str, set[str]]:
    names = {str(p.relative_to(REPO).with_suffix("")).replace(os.sep, ".").removesuffix(".__init__"): p
             for p in paths}
    graph = {}
    for name, p in names.items():
        deps = set()
        for m in _imports(p):
            while m and m not in names:
                m = m.rpartition(".")[0]
            if m and m != name:
                deps.add(m)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    found = []

    def visit(node, path):
        if node in path:
            found.append(" -> ".join([*path[path.index(node):], node]))
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])

    for node in sorted(graph):
        visit(node, [])
    return found


def test_the_library_imports_no_cycle():
    """Among dnjax's modules, at any level (top or inside a function): a module's own package
    (``__init__``) is not counted as a dependency of it."""
    graph = _graph(LIBRARY)
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    assert "dnjax.runtime" in graph["dnjax.train"] and "dnjax.storage" in graph["dnjax.logs"]  # read
    assert not _cycles(graph)


# The library's floors, lowest first. A module imports modules of its own floor or of lower ones
# only, at any level (top, inside a function): storage failures, say, are handled on floor 0, so
# the logs (floor 2) need nothing of the runtime (floor 3) to quiet them. A name stands for the
# module and everything under it, unless a longer name places a part elsewhere; "dnjax" stands for
# the package's __init__ alone.
FLOORS = (
    # 0: leaf utilities: paths, writers and storage failures, exit statuses, shardings, profiles,
    # provenance, published figures, units
    ("dnjax", "dnjax.storage", "dnjax.exits", "dnjax.sharding", "dnjax.profiling", "dnjax.provenance",
     "dnjax.published", "dnjax.units"),
    # 1: the networks and the input pipelines
    ("dnjax.models", "dnjax.data"),
    # 2: what a run is configured with (its knobs, their checks, config files), and what it logs
    ("dnjax.knobs", "dnjax.config_lib", "dnjax.config_files", "dnjax.logs"),
    # 3: a run's lifecycle in its workdir: lock, checkpoints, resume, deadlines, signals
    ("dnjax.runtime",),
    # 4: the training loop
    ("dnjax.train",),
    # 5: tools built on training: the weights converter and the benchmarks
    ("dnjax.convert", "dnjax.benchmark"),
    # 6: the command lines
    ("dnjax.main", "dnjax.evaluate", "dnjax.models.__main__", "dnjax.convert.__main__", "dnjax.benchmark.__main__",
     "dnjax.benchmark.gpu", "dnjax.benchmark.memory"),
)
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _floor(module: str) -> int | None:
    """The floor of ``module``'s own name in FLOORS, else of the nearest package above it named
    there; None for a module no name places."""
    name = module
    while name and name != "dnjax":
        if name in FLOOR:
            return FLOOR[name]
        name = name.rpartition(".")[0]
    return FLOOR["dnjax"] if module == "dnjax" else None


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (floor {_floor(m)}) imports {d} (floor {_floor(d)})"
                  for m, deps in graph.items() for d in deps if _floor(d) > _floor(m))


def test_no_library_module_imports_one_of_a_higher_floor():
    graph = _graph(LIBRARY)
    assert not [m for m in graph if _floor(m) is None], "every module of dnjax has a floor in FLOORS"
    assert "dnjax.train" in graph["dnjax.main"]  # read, imports inside functions too
    assert (_floor("dnjax.models.__main__"), _floor("dnjax.models.densenet"), _floor("dnjax")) == (6, 1, 0)
    assert _upward_imports({"dnjax.logs": {"dnjax.storage", "dnjax.runtime.workdir"}}) == [
        "dnjax.logs (floor 2) imports dnjax.runtime.workdir (floor 3)"]
    assert not _upward_imports(graph)


def test_experiments_modules_import_no_cycle():
    graph = _graph(sorted((REPO / "experiments").glob("*.py")))
    assert "experiments.report" in graph["experiments.run"] or graph  # the graph was read

    def visit(node, path):
        assert node not in path, " -> ".join([*path, node])
        for dep in graph.get(node, ()):
            visit(dep, [*path, node])

    for node in graph:
        visit(node, [])
    assert "experiments.report" not in graph["experiments.plots"]


def test_models_page_zoo_table_shows_every_network_and_the_published_figures(capsys):
    """docs/models.md holds the table ``python -m dnjax.models --markdown`` prints: one row per
    network of the zoo, the published columns from dnjax.published, and rows the command prints
    today (re-measured for a few networks that take a second)."""
    from dnjax.models import GENERIC, ZOO, __main__ as zoo_command

    page = (REPO / "docs" / "models.md").read_text()
    rows = re.findall(r"^\| ([a-z0-9_]+) \| (\d+x\d+) \| (\d+) \| ([\d,]+) \| ([\d,]*) \| ([\d.]+[KMG]) \| ([^|]*) \|",
                      page, re.M)
    assert len(rows) > 30
    assert [r[0] for r in rows] == [n for n in ZOO if n not in GENERIC]
    for name, _, _, _, paper_params, _, paper_macs in rows:
        expected = (published.CIFAR_PARAMS.get(name, (None,))[0] if name in published.CIFAR_PARAMS
                    else published.IMAGENET_PARAMS.get(name))
        assert paper_params == ("" if expected is None else f"{expected:,}"), name
        macs = published.MACS.get(name)
        assert paper_macs.strip() == ("" if macs is None else human(macs)), name
    measured = ["densenet_bc_tiny", "preact_resnet_tiny", "vgg_tiny", "resnet20", "densenet_bc100_k12"]
    assert zoo_command.main(["--markdown", "--only", *measured]) == 0
    printed = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| ")]
    assert len(printed) == len(measured) + 1  # the header and one row each
    for line in printed:
        assert line in page.splitlines(), f"docs/models.md is out of date; rerun python -m dnjax.models --markdown: {line}"


def test_a_run_on_in_memory_data_imports_neither_grain_nor_tensorflow_datasets():
    code = (
        "import sys\n"
        "sys.path.insert(0, 'tests')\n"
        "import tiny_config\n"
        "from dnjax import train\n"
        "setup = train.Setup(tiny_config.get_config())\n"
        "assert setup.info.num_train == 1437, setup.info\n"
        "print(sorted(m for m in ('grain', 'tensorflow_datasets', 'dnjax.data.imagenet', 'dnjax.data.tfds')"
        " if m in sys.modules))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("name", ["DATASETS", "NORMALIZATIONS"])
def test_config_checks_and_loaders_share_one_list_of_choices(name):
    from dnjax import knobs
    from dnjax.data import choices

    assert getattr(knobs, name) is getattr(choices, name)
    from dnjax.models import common

    assert knobs.DTYPES is common.DTYPES and "float16" not in common.DTYPES
