"""The README and the docs/ pages against the repository they describe.

The README is the front page: short, and opening with the two set-up commands that CI itself
runs. Every page's relative links resolve, and every command a page shows names a module that
exists, a config file that loads with its argument and config fields that exist, so a reader can
paste any of them, and passes the tool's own checks. Nothing here trains or initialises a network.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = ("training", "models", "reproducing", "results", "performance", "fault_tolerance", "pretrained")
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SPAN = re.compile(r"`([^`]+)`")
PYTHON_M = re.compile(r"\bpython3? -m ([A-Za-z_][\w.]*)")
# A placeholder is written in capitals (MODEL,DATASET, CONVERTED_WORKDIR, FIELD): never a real name.
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(,[A-Z][A-Z0-9_]*)*")
SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "<", "do", "done", "then"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (whose lines may start with '#')."""
    return FENCE.sub("", text)


def _slugs(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered."""
    slugs, seen = set(), {}
    for line in _prose(_text(path)).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


# --------------------------------------------------------------------------------------------
# The front page


def test_readme_is_a_front_page_of_at_most_200_lines_linking_every_docs_page():
    lines = _text(README).splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    for page in PAGES:
        assert (REPO / "docs" / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md" in _text(README), f"README.md does not link docs/{page}.md"


def _ci_commands() -> tuple[str, str]:
    """(install, test): the install line of .ci/run without its quietening options, and the test
    command CI runs after it."""
    lines = [l.strip() for l in _text(REPO / ".ci" / "run").splitlines()]
    i = next(i for i, l in enumerate(lines) if re.match(r"python3 -m pip install\b", l))
    words = [w for w in shlex.split(lines[i])[4:] if w in ("-e",) or not w.startswith("-")]
    install = "python3 -m pip install " + " ".join(shlex.quote(w) for w in words)
    test = next(l for l in lines[i + 1:] if l.startswith("python3 -m pytest"))
    return install, test


def test_readme_opens_with_the_two_setup_commands_that_ci_and_the_quickstart_config_give():
    text = _text(README)
    assert text.startswith("# dnjax\n\n```bash\n"), "README.md must open with its heading and the set-up block"
    first_block = FENCE.search(text).group(1).splitlines()
    assert len(first_block) == 2, first_block

    install, test = _ci_commands()
    assert install == "python3 -m pip install -e '.[test]'", install  # the form the README shows
    extras = tomllib.loads(_text(REPO / "pyproject.toml"))["project"]["optional-dependencies"]
    assert any(r.startswith("pytest") for r in extras["test"]) and any(r.startswith("pytest-xdist") for r in extras["test"])
    assert test == "python3 -m pytest -q -n auto tests"  # a worker per core (pytest-xdist)
    assert first_block[1] == f"{install} && {test}"

    # The first command installs the package without extras and runs the quickstart exactly as the
    # config's own docstring says, with the interpreter the install used.
    quickstart = _text(REPO / "configs" / "quickstart.py")
    run = re.search(r"^\s+(python -m dnjax\.main --config=configs/quickstart\.py .*)$", quickstart, re.M).group(1)
    plain_install = install.replace(" '.[test]'", " .")
    assert first_block[0] == f"{plain_install} && {run.replace('python -m', 'python3 -m', 1)}"
    assert first_block[0] == ("python3 -m pip install -e . && python3 -m dnjax.main "
                              "--config=configs/quickstart.py --workdir=/tmp/dnjax-quickstart")


@pytest.mark.parametrize("page", PAGES)
def test_every_docs_page_opens_with_one_sentence_that_links_back_to_the_readme(page):
    text = _text(REPO / "docs" / f"{page}.md")
    heading, first, *_ = text.split("\n\n")
    assert heading.startswith("# ") and "\n" not in heading, page
    assert "](../README.md)" in first, f"docs/{page}.md: its first paragraph must link back to the README"
    assert first.rstrip().endswith(".") and first.count(". ") == 0, f"docs/{page}.md: one sentence first"


# --------------------------------------------------------------------------------------------
# Links


def test_every_relative_link_of_the_readme_and_the_docs_points_to_an_existing_file_and_anchor():
    checked = images = anchors = 0
    for page in DOCS:
        for target in LINK.findall(_prose(_text(page))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: ({target})"
            assert dest.exists(), f"{where} points to a missing file"
            assert dest.is_relative_to(REPO), f"{where} points outside the repository"
            checked += 1
            images += path.endswith(".png")
            if anchor:
                assert dest.suffix == ".md", where
                assert anchor in _slugs(dest), f"{where}: no heading of {dest.name} has the anchor #{anchor}"
                anchors += 1
    # Enough links that a broken extraction cannot pass by finding none.
    assert checked >= 60 and images >= 12 and anchors >= 15, (checked, images, anchors)


def test_anchors_follow_githubs_rule_for_headings():
    page = REPO / "docs" / "results.md"
    assert "small-budget-results-on-a-cifar-10-sample-not-the-papers-runs" in _slugs(page)
    assert "the-seeds-claims-measured" in _slugs(page)
    assert "throughput-densenet-bc-100-k12-batch-64-float32-dnjax-versus-pytorch" in _slugs(
        REPO / "docs" / "performance.md")


# --------------------------------------------------------------------------------------------
# Commands


def _flatten(tokens: list[str]) -> list[str]:
    """Quoted arguments that hold commands themselves (ssh --command="cd dnjax && python ...")
    split again, so that their inner commands are checked too."""
    out = []
    for t in tokens:
        out.extend(_flatten(shlex.split(t)) if " " in t.strip() else [t])
    return out


def _unbracket(token: str) -> str:
    """``[--steps=10]`` -> ``--steps=10``; ``.[test]`` stays."""
    token = token.removeprefix("[")
    return token[:-1] if token.endswith("]") and token.count("]") > token.count("[") else token


def _command_lines() -> list[tuple[str, str]]:
    """(page, command line) for every line of a code block (backslash continuations joined) and
    every inline code span that runs a module or names a config file."""
    found = []
    for page in DOCS:
        text = _text(page)
        name = str(page.relative_to(REPO))
        for block in FENCE.findall(text):
            if block.startswith("# ") and block.split("\n", 1)[0].endswith(".py"):
                continue  # the code of a file (a module, a config), not commands
            found.extend((name, line) for line in block.replace("\\\n", " ").splitlines() if line.strip())
        for span in SPAN.findall(_prose(text)):
            span = " ".join(span.split())
            if PYTHON_M.search(span) or "--config=configs/" in span:
                found.append((name, span))
    return found


def _commands() -> list[tuple[str, str, list[str]]]:
    """(page, module, arguments) for every ``python -m MODULE ...`` a page shows, comments
    dropped; bracketed options ([--which=best]) count as given. A span of options alone
    (``--config=configs/X.py:ARG --config.a=b``) is read as arguments of dnjax.main."""
    found = []
    for page, line in _command_lines():
        try:
            tokens = _flatten(shlex.split(line, comments=True))
        except ValueError as e:
            raise AssertionError(f"{page}: cannot parse the command {line!r}: {e}") from None
        tokens = [_unbracket(t) for t in tokens]
        starts = [i + 2 for i, t in enumerate(tokens[:-2]) if t in ("python", "python3") and tokens[i + 1] == "-m"]
        if not starts:
            if tokens and tokens[0].startswith("--config=configs/"):
                found.append((page, "dnjax.main", tokens))
            continue
        raw = _flatten(shlex.split(line, comments=True))
        for i in starts:
            args, depth = [], 0
            for t, r in zip(tokens[i + 1:], raw[i + 1:]):
                depth += r.count("[") - r.count("]")
                if (t in SEPARATORS and not (t == "|" and depth > 0)) or t in ("python", "python3"):
                    break
                args.append(t.rstrip(";"))
                if t.endswith(";"):
                    break
            found.append((page, tokens[i], args))
    return found


def test_every_python_module_the_docs_run_exists(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # experiments/ is used from the repository root
    modules = [m for page in DOCS for m in PYTHON_M.findall(_text(page))]

    def exists(module: str) -> bool:
        if module == "pip":  # looking pip up through setuptools' import hook unhooks it for the session
            return bool(importlib.metadata.version("pip"))
        return importlib.util.find_spec(module) is not None

    missing = sorted({m for m in modules if not exists(m)})
    assert not missing, f"the docs run modules that do not exist: {missing}"
    assert len(modules) >= 60 and len(set(modules)) >= 14, (len(modules), sorted(set(modules)))


@functools.lru_cache(maxsize=None)
def _config(spec: str):
    from dnjax import config_files

    path, _, arg = spec.partition(":")
    return config_files.load_config_file(str(REPO / path) + (f":{arg}" if arg else ""))


def test_every_documented_command_loads_its_config_and_overrides_only_existing_fields():
    from dnjax import config_files, config_lib

    loaded = overrides = skipped = 0
    for page, module, args in _commands():
        specs = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        given = [a for a in args if a.startswith("--config.")]
        if not specs:
            # The zoo's summary takes a run's model fields without a config file.
            assert not given or (module == "dnjax.models" and all(a.startswith("--config.model.") for a in given)), (
                f"{page}: python -m {module} {' '.join(args)}: --config. overrides without --config=")
            continue
        spec = specs[-1]
        path, _, arg = spec.partition(":")
        if PLACEHOLDER.fullmatch(path) or path == "..." or (arg and PLACEHOLDER.fullmatch(arg)):
            skipped += 1  # --config=FILE, --config=..., configs/imagenet.py:MODEL
            continue
        where = f"{page}: python -m {module} {' '.join(args)}"
        assert path.startswith("configs/") and (REPO / path).is_file(), f"{where}: {path} is not a config file"
        try:
            config = _config(spec)
        except Exception as e:  # the message names the command
            raise AssertionError(f"{where}: --config={spec} does not load: {e!r}") from e
        # Overrides of placeholder fields (--config.FIELD=VALUE) name no field to check.
        real = [a for a in given if not any(PLACEHOLDER.fullmatch(p) for p in a[len("--config."):].split("=")[0].split("."))]
        try:
            config_lib.override(config, config_files.split_overrides(real)[0])
        except config_lib.ConfigError as e:
            raise AssertionError(f"{where}: {e}") from None
        loaded += 1
        overrides += len(real)
    # Enough real commands that a broken extraction cannot pass by checking none.
    assert loaded >= 20 and overrides >= 35 and _config.cache_info().currsize >= 10, (
        loaded, overrides, _config.cache_info())
    assert skipped <= 10, skipped


def _built(config, overrides: list[str]):
    """The config of ``--config.FIELD=VALUE`` overrides as the command line builds it."""
    from dnjax import config_files, config_lib

    return config_lib.override(config, config_files.split_overrides(overrides)[0])


def test_every_documented_training_command_passes_the_tools_own_checks():
    """Not only the names: each dnjax.main command's config, with its overrides, passes the checks
    the tool makes before training (config_lib.validate), so a documented command the tool would
    refuse (a tfds data_dir in a bucket, a value out of range) fails here. Placeholder values
    (BUCKET, DIR, ...) stand for real paths and are checked where their form matters (gs://)."""
    from dnjax import config_lib

    checked = 0
    for page, module, args in _commands():
        if module != "dnjax.main":
            continue
        specs = [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        if not specs or PLACEHOLDER.fullmatch(specs[-1].partition(":")[0]) or \
                PLACEHOLDER.fullmatch(specs[-1].partition(":")[2] or "x"):
            continue
        given = [a for a in args if a.startswith("--config.") and "=" in a
                 and not any(PLACEHOLDER.fullmatch(p) for p in a[len("--config."):].split("=")[0].split("."))
                 and not a.startswith("--config.init_from=")]  # an existing workdir: not on this machine
        where = f"{page}: python -m dnjax.main {' '.join(args)}"
        try:
            config_lib.validate(_built(_config(specs[-1]), given))
        except (config_lib.ConfigError, ValueError, TypeError, KeyError) as e:
            raise AssertionError(f"{where}: the tool refuses it: {e}") from None
        checked += 1
    assert checked >= 20, checked


def test_the_docs_check_refuses_a_command_the_tool_refuses():
    """The check above is able to fail: a tfds data_dir in a bucket, as the tool refuses it."""
    from dnjax import config_lib

    config = _built(_config("configs/cifar_densenet.py:densenet_bc100_k12,c100+"),
                    ["--config.data.data_dir=gs://BUCKET/tensorflow_datasets"])
    with pytest.raises(config_lib.ConfigError, match="array_record"):
        config_lib.validate(config)


def test_every_documented_study_and_analysis_command_parses_with_the_runner(monkeypatch, capsys):
    """A study the runner accepts with the options shown, or an analysis (``python -m
    experiments.run ANALYSIS ...`` or its module's own ``python -m experiments.ANALYSIS ...``)
    whose options parse; ``--list`` lists and exits 0."""
    monkeypatch.syspath_prepend(str(REPO))
    from experiments import run, studies

    checked = reports = analyses = listed = 0
    modules = {a.module.__name__: a for a in run.ANALYSES.values()}
    for page, module, args in _commands():
        positional = [a for a in args if a[0] != "-"]
        if module == "experiments.report" and positional and not PLACEHOLDER.fullmatch(positional[0]):
            assert positional[0] in studies.STUDIES, f"{page}: python -m experiments.report {' '.join(args)}"
            reports += 1
        if module in modules and args:  # python -m experiments.gradient_flow --out=...
            args = [modules[module].name, *args]
            module = "experiments.run"
        if module != "experiments.run" or not args or any(PLACEHOLDER.fullmatch(a) for a in positional):
            continue
        where = f"{page}: python -m experiments.run {' '.join(args)}"
        try:
            parsed = run.parse_args(args)
        except SystemExit as e:
            if e.code == 0 and "--list" in args:
                assert "data_efficiency" in capsys.readouterr().out, where
                listed += 1
                continue
            raise AssertionError(f"{where}: the runner refuses it") from None
        if parsed.analysis is not None:
            analyses += 1
            continue
        assert parsed.study in studies.STUDIES, f"{page}: {parsed.study!r} is not a study"
        checked += 1
    assert checked >= 12 and reports >= 6 and analyses >= 5 and listed >= 1, (checked, reports, analyses, listed)


def test_every_documented_study_command_gives_runs_the_tool_accepts(monkeypatch):
    """Each documented study command as the runner would run it: its runs (budget, --only patterns,
    --seeds) exist, and every run's config, with the command's --set values, passes dnjax's checks."""
    monkeypatch.syspath_prepend(str(REPO))
    from dnjax import config_lib
    from experiments import run, studies

    checked = runs_checked = 0
    for page, module, args in _commands():
        if module != "experiments.run" or not args or args[0] in run.ANALYSES or args[0].startswith("-") \
                or PLACEHOLDER.fullmatch(args[0]) or "--list" in args:
            continue
        where = f"{page}: python -m experiments.run {' '.join(args)}"
        a = run.parse_args(args)
        try:
            seeds = studies.parse_seeds(a.seeds) if a.seeds else None
            selected = studies.study_runs(a.study, "smoke" if a.smoke else a.budget, a.data_dir, a.only, seeds)
        except studies.StudyError as e:
            raise AssertionError(f"{where}: the runner refuses it: {e}") from None
        sets = [f"--config.{kv}" for kv in a.set if not PLACEHOLDER.fullmatch(kv.split("=")[0])]
        for r in selected:
            argv = r.args("w")
            spec = argv[0].split("=", 1)[1]
            try:
                config_lib.validate(_built(_config(spec), [*argv[2:], *sets]))
            except (config_lib.ConfigError, ValueError, TypeError, KeyError) as e:
                raise AssertionError(f"{where}: run {r.name} would be refused: {e}") from None
            runs_checked += 1
        checked += 1
    assert checked >= 12 and runs_checked >= 100, (checked, runs_checked)


def test_the_command_extraction_reads_continuations_comments_and_nested_commands():
    """The extraction itself, on the shapes the pages use, so that the lower bounds above cannot
    hide a reader that drops options."""
    argvs = [" ".join([m, *a]) for _, m, a in _commands()]
    # A backslash-continued command keeps its later lines' options.
    assert any(a.startswith("dnjax.main --config=configs/cifar_resnet.py:resnet110,c10+") and
               a.endswith("--config.model.shortcut=B") for a in argvs)
    # A comment after a command is not an option of it.
    assert not any("paper:" in a or "#" in a for a in argvs)
    # The command inside gcloud's --command="cd dnjax && python -m ..." is found.
    assert any(a.startswith("dnjax.main --config=configs/cifar_densenet.py:densenet_bc250_k24,c100+")
               and "--workdir=gs://BUCKET/bc250_c100+" in a for a in argvs)
    # A span of options alone is read as dnjax.main's.
    assert "dnjax.main --config=configs/cifar_resnet.py:resnet_cifar,c10+ --config.model.depth=56" in argvs
