"""Prints the model zoo: ``python -m dnjax.models [--markdown] [--only NAME ...] [--fields]``.

``--fields`` lists instead the fields each network takes (what ``--config.model.FIELD`` can set).

Every figure is measured on the real module (``jax.eval_shape`` and a jaxpr walk, no compilation)
and printed beside the published count where there is one.
"""

from __future__ import annotations

import argparse
import sys

from dnjax import published
from dnjax.models import GENERIC, ZOO, field_types, get_model, summary
from dnjax.units import human


def rows(names):
    for name in names:
        entry = ZOO[name]
        model = get_model(name)
        d = summary.describe(model, entry.input_shape)
        if name in published.CIFAR_PARAMS:
            paper = published.CIFAR_PARAMS[name][0]
        else:
            paper = published.IMAGENET_PARAMS.get(name)
        yield {
            "name": name,
            "input": "x".join(map(str, entry.input_shape[:2])),
            "classes": entry.num_classes,
            "params": d["params"],
            "paper_params": paper,
            "macs": d["macs"],
            "paper_macs": published.MACS.get(name),
            "layers_per_block": d["layers_per_block"],
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--only", nargs="*", help="model names to show (default: all)")
    parser.add_argument("--fields", action="store_true", help="list each network's config fields and their types")
    args = parser.parse_args(argv)
    names = args.only or [n for n in ZOO if n not in GENERIC]
    for n in names:
        if n not in ZOO:
            parser.error(f"unknown model {n!r}; valid: {', '.join(sorted(ZOO))}")
    if args.fields:
        for n in names:
            fields = ", ".join(f"{k}: {t.__name__}" for k, t in field_types(n).items())
            print(f"{n} ({ZOO[n].family}): {fields}")
        return 0
    header = ["model", "input", "classes", "params", "paper params", "MACs", "paper MACs", "layers per block"]
    fmt_int = lambda v: "" if v is None else f"{v:,}"
    fmt_macs = lambda v: "" if v is None else human(v)
    table = []
    for r in rows(names):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
