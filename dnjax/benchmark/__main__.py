"""Train-step benchmark of any config, optionally beside the PyTorch reference of the same network.

    python -m dnjax.benchmark --config=configs/cifar_densenet.py --config.batch_size=64 \
        [--config.model.memory_efficient=True] [--config.dtype=bfloat16] \
        [--torch] [--both_modes] [--variant_xla_option=NAME=VALUE] [--steps=10] [--json=out.json]

Prints one row per framework: throughput (median of the timed steps; the fastest step beside it),
compile time, FLOPs per image, the compiled step's temporary memory, the device and the date.
With ``--torch`` the steps alternate, so the ratio holds on a machine shared with other work;
``--both_modes`` adds the model's other memory mode and ``--variant_xla_option`` a copy of each JAX
step compiled with an XLA option, all timed in the same alternation.
The inputs are synthetic, of the config's image shape; no data set is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import jax
from absl import app, flags

from dnjax import config_files
from dnjax.benchmark import table
from dnjax.exits import ExitStatus

_CONFIG = config_files.ConfigFlag("config", "FILE[:ARG]: the config file, e.g. configs/cifar_densenet.py.")
_TORCH = flags.DEFINE_bool("torch", False, "Also time the PyTorch reference (needs the torch extra).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per framework.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per framework before timing.")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
_CHANNELS_LAST = flags.DEFINE_bool("channels_last", True, "PyTorch in channels_last memory format.")
_CACHE = flags.DEFINE_bool(
    "compilation_cache", False,
    "Use the config's persistent compilation cache (compile time then measures a cache hit).",
)
_BOTH = flags.DEFINE_bool(
    "both_modes", False,
    "Time the model's plain and memory-efficient modes side by side (and PyTorch with --torch).",
)
_VARIANT = flags.DEFINE_multi_string(
    "variant_xla_option", [],
    "NAME=VALUE: also time the JAX step compiled with this XLA option (repeatable), side by side "
    "with the default, e.g. xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT.",
)
flags.mark_flags_as_required(["config"])

def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise app.UsageError(f"--variant_xla_option={item!r}: expected NAME=VALUE")
        options[name] = _option_value(value)
    return options


def _option_value(text: str):
    """XLA wants booleans and numbers typed: 'true' -> True, '3' -> 3, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return text


def ratios(rows) -> dict[str, float]:
    """JAX (first row) over PyTorch (last row) throughput, from the median and the fastest step."""
    return table.speedup(rows[0], rows[-1]) if len(rows) > 1 and rows[-1].framework != rows[0].framework else {}


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from dnjax.benchmark import measure
    from dnjax.runtime import compilation

    config = _CONFIG.value
    if _CACHE.value:
        compilation.use_cache(config.compilation_cache_dir)
    options = parse_options(_VARIANT.value)
    try:
        rows = measure.benchmark(
            config, steps=_STEPS.value, warmup=_WARMUP.value, with_torch=_TORCH.value,
            channels_last=_CHANNELS_LAST.value, both_modes=_BOTH.value, variant_options=options,
        )
    except jax.errors.JaxRuntimeError as e:
        if not options or "option" not in str(e):
            raise
        print(f"error: --variant_xla_option {options}: XLA refused it: {e}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    print(table.format_table(rows, table.CPU_COLUMNS))
    r = ratios(rows)
    timed_against = rows[:-1] if r else []  # every JAX row against the PyTorch one
    per_row = [table.speedup(row, rows[-1]) for row in timed_against]
    for row in timed_against:
        print(table.speedup_line(row, rows[-1]))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"rows": [dataclasses.asdict(x) for x in rows], "ratio": r,
                       "ratios": per_row, "config": config.to_dict()}, f, indent=1, default=str)
    return ExitStatus.OK


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=_CONFIG.parse)
