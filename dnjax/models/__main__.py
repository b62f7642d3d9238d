"""Prints the model zoo: ``python -m dnjax.models [--markdown] [--only NAME ...] [--fields]``.

``--fields`` lists instead the fields each network takes (what ``--config.model.FIELD`` can set).
Those fields are set here as in a run, for a network the zoo has no preset for:

    python -m dnjax.models --only densenet_cifar --config.model.depth=28 --config.model.growth_rate=16

prints its parameters and MACs per image (``--num_classes`` for another classifier) and every
field of the network built, as a run's ``config.json`` records them.

Every figure is measured on the real module (``jax.eval_shape`` and a jaxpr walk, no compilation)
and printed beside the published count where there is one.
"""

from __future__ import annotations

import argparse
import sys

from dnjax import knobs, published
from dnjax.exits import ExitStatus
from dnjax.models import GENERIC, ZOO, built_fields, field_types, get_model, summary
from dnjax.units import human


def rows(names, fields=None, num_classes=None):
    """A row per network: ``fields`` (``{name: {field: value}}``) and ``num_classes`` build it
    other than the zoo's entry does (no published figure is shown for it then)."""
    fields = fields or {}
    for name in names:
        entry = ZOO[name]
        model = get_model(name, num_classes=num_classes, **fields.get(name, {}))
        d = summary.describe(model, entry.input_shape)
        changed = bool(fields.get(name) or num_classes)
        if changed:
            paper = None
        elif name in published.CIFAR_PARAMS:
            paper = published.CIFAR_PARAMS[name][0]
        else:
            paper = published.IMAGENET_PARAMS.get(name)
        yield {
            "name": name + "*" if changed else name,
            "input": "x".join(map(str, entry.input_shape[:2])),
            "classes": num_classes or entry.num_classes,
            "params": d["params"],
            "paper_params": paper,
            "macs": d["macs"],
            "paper_macs": None if changed else published.MACS.get(name),
            "layers_per_block": d["layers_per_block"],
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--only", nargs="*", help="model names to show (default: all)")
    parser.add_argument("--fields", action="store_true", help="list each network's config fields and their types")
    parser.add_argument("--num_classes", type=int, help="the classifier's classes (default: the network's own)")
    parser.epilog = ("--config.model.FIELD=VALUE sets a field of the networks shown, as in a run "
                     "(python -m dnjax.main); they are marked * in the table.")
    from dnjax import config_files, config_lib

    overrides, rest = config_files.split_overrides(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    names = args.only or [n for n in ZOO if n not in GENERIC]
    for n in names:
        if n not in ZOO:
            parser.error(f"unknown model {n!r}; valid: {', '.join(sorted(ZOO))}")
    fields = {}
    try:
        if any(not path.startswith("model.") or path == "model.name" for path, _ in overrides):
            raise config_lib.ConfigError("only the network's fields can be set here: --config.model.FIELD=VALUE "
                                         "(choose the network with --only)")
        for n in names if overrides else ():
            fields[n] = config_lib.model_overrides(config_lib.override(knobs.defaults(n), overrides))
            get_model(n, **fields[n])  # a value the module refuses fails here, before any row
    except (config_lib.ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    if args.fields:
        for n in names:
            listed = ", ".join(f"{k}: {t.__name__}" for k, t in field_types(n).items())
            print(f"{n} ({ZOO[n].family}): {listed}")
        return ExitStatus.OK
    header = ["model", "input", "classes", "params", "paper params", "MACs", "paper MACs", "layers per block"]
    fmt_int = lambda v: "" if v is None else f"{v:,}"
    fmt_macs = lambda v: "" if v is None else human(v)
    table = []
    for r in rows(names, fields, args.num_classes):
        table.append([
            r["name"], r["input"], str(r["classes"]), fmt_int(r["params"]), fmt_int(r["paper_params"]),
            fmt_macs(r["macs"]), fmt_macs(r["paper_macs"]), "-".join(map(str, r["layers_per_block"])),
        ])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for t in table:
            print("| " + " | ".join(t) + " |")
    else:
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for t in table:
            print("  ".join(c.ljust(w) for c, w in zip(t, widths)))
    for n, given in fields.items():
        built = ", ".join(f"{k}={v!r}" for k, v in built_fields(n, **given).items())
        print(f"{n}*: {built}")
    return ExitStatus.OK


if __name__ == "__main__":
    sys.exit(main())
