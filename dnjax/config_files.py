"""Config files and the command-line flag that names one: ``--config=FILE[:ARG]`` with its
``--config.FIELD=VALUE`` overrides, read as :func:`dnjax.config_lib.override` types and checks them.

A config file is a Python file with ``get_config(arg=...)`` that returns a config built on
``configs/default.py`` (every knob at its default) and sets what its recipe changes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

import ml_collections

from dnjax.config_lib import ConfigError, override
from dnjax.exits import ExitStatus


def make_importable(spec: str) -> None:
    """Config files build on each other (``from configs import default``). When a config file's
    folder is a package (it holds ``__init__.py``), the folder above it goes first on ``sys.path``,
    so that ``--config=/path/to/dnjax/configs/x.py`` works from any directory."""
    folder = Path(spec.partition(":")[0]).resolve().parent
    if (folder / "__init__.py").is_file() and str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))


def load_config_file(spec: str, overrides: Sequence[tuple[str, Any]] = ()) -> ml_collections.ConfigDict:
    """The config of ``--config=PATH[:ARG]`` with ``overrides`` (dotted field, value or text)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("dnjax_config_file", path)
    if module_spec is None or not Path(path).is_file():
        raise ConfigError(f"--config={spec}: {path} is not a config file")
    make_importable(spec)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        config = module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # the config file's own check of its argument
        raise ConfigError(f"--config={spec}: {e}") from None
    return override(config, overrides)


def repository_config(name: str) -> str:
    """The path of ``configs/<name>`` in the repository this dnjax runs from (a checkout, as
    ``pip install -e .`` installs it), for tools whose default is one of the paper's recipes."""
    path = Path(__file__).resolve().parent.parent / "configs" / name
    if not path.is_file():
        raise ConfigError(f"configs/{name} is not beside this dnjax ({path.parent.parent}): run dnjax from "
                          f"its repository (pip install -e .) or pass --config=PATH/configs/{name}")
    return str(path)


def split_overrides(argv: Sequence[str], flag: str = "config") -> tuple[list[tuple[str, str]], list[str]]:
    """(the (dotted field, text) of each ``--<flag>.FIELD=VALUE``, ``--<flag>.FIELD VALUE``,
    ``--<flag>.FIELD`` (true) or ``--no<flag>.FIELD`` (false) of ``argv``, the other arguments)."""
    overrides, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        body = next((arg[len(p):] for p in (f"--{flag}.", f"--no{flag}.") if arg.startswith(p)), None)
        if body is None:
            rest.append(arg)
        elif "=" in body:
            overrides.append(tuple(body.split("=", 1)))
        elif arg.startswith("--no"):
            overrides.append((body, "false"))
        else:
            overrides.append((body, args.pop(0) if args and not args[0].startswith("-") else "true"))
    return overrides, rest


class ConfigFlag:
    """``--<name>=FILE[:ARG]`` and its ``--<name>.FIELD=VALUE`` overrides on an absl command line:
    pass :meth:`parse` as ``app.run``'s ``flags_parser``; :attr:`value` is then the checked config
    (None without the flag). A mistake ends the program with status 2 and one line naming it."""

    def __init__(self, name: str, help: str):
        from absl import flags

        self.name, self.value = name, None
        flags.DEFINE_string(name, None, f"{help} Override any field with --{name}.FIELD=VALUE "
                            "(python -m dnjax.knobs lists them; python -m dnjax.models --fields the networks').")

    def parse(self, argv: list[str]) -> list[str]:
        from absl import app, flags

        overrides, rest = split_overrides(argv, self.name)
        rest = app.parse_flags_with_usage(rest)
        spec = flags.FLAGS[self.name].value
        try:
            if spec is None and overrides:
                raise ConfigError(f"--{self.name}.{overrides[0][0]} needs --{self.name}=FILE")
            self.value = load_config_file(spec, overrides) if spec else None
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(ExitStatus.BAD_INPUT)
        return rest
