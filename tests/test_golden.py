"""The golden run: one short, fixed training run whose every logged number is pinned bit for bit,
so that a change of the training computation (initialisation, data order, augmentation, dropout,
the network's op order, the optimizer) cannot pass unnoticed.

The numbers are those of this machine type with the pinned library versions (XLA's results depend
on the processor, its thread count and the libraries); where the libraries or processor differ
the test is skipped, saying so. A change that alters the numbers on purpose updates them:

    python tests/test_golden.py --update

and its commit says why the numbers changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runs

GOLDEN = Path(__file__).parent / "golden" / "tiny_run.json"
# DenseNet-BC-tiny on the digits, with dropout (its random stream), crop + flip, 8 logged steps and
# an evaluation at the end; one thread, XLA's optimisations on, as in a real run.
OVERRIDES = ("--config.num_train_steps=8", "--config.log_every_steps=1", "--config.model.dropout_rate=0.2")
# What must match for the pinned numbers to apply.
PINNED = ("jax", "jaxlib", "flax", "optax", "numpy", "platform", "cpu", "xla_flags", "threads", "devices")

pytestmark = pytest.mark.slow  # whole runs in subprocesses


def golden_run(workdir: Path) -> tuple[list[dict], dict]:
    """Trains the golden run in ``workdir`` on one core; its numbers and its provenance."""
    from dnjax import logs, provenance

    env = runs.env(1)
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS")
    cmd = runs.main_cmd(workdir, *OVERRIDES, "--config.compilation_cache_dir=")
    proc = subprocess.run(cmd, cwd=runs.REPO, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list(logs.records(workdir))
    numbers = [runs.without_times(r) for r in records if r["type"] in ("train", "eval", "final")]
    return numbers, provenance.recorded(records)


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return golden_run(tmp_path_factory.mktemp("golden") / "run")


def test_the_golden_run_computes_the_pinned_numbers(golden):
    pinned = json.loads(GOLDEN.read_text())
    numbers, here = golden
    differ = {k: (pinned["provenance"].get(k), here.get(k)) for k in PINNED
              if pinned["provenance"].get(k) != here.get(k)}
    if differ:
        pytest.skip(f"the golden numbers were pinned with other libraries or another processor {differ}; "
                    "pin them for this one with `python tests/test_golden.py --update`")
    assert len(numbers) == len(pinned["numbers"]) >= 9
    for got, want in zip(numbers, pinned["numbers"]):
        assert got == want, (
            f"the training computation changed at step {want['step']} ({want['type']}): {got} != {want}. If "
            "the change is intended, run `python tests/test_golden.py --update` and say why in the commit.")


def test_a_runs_provenance_reads_back_as_this_environment(golden):
    """What a run records of what produced it equals what this process sees (same machine, same
    libraries, same checkout; the run had one core), and a change of a library would be named."""
    from dnjax import provenance

    _, then = golden
    now = provenance.collect()
    assert then is not None and then["threads"] == 1
    assert provenance.differences(then, now) == ({} if now["threads"] == 1 else {"threads": (1, now["threads"])})
    assert then["jax"] == now["jax"] and then["cpu"] == now["cpu"] and then["commit"] == now["commit"]
    assert (then["commit"] is None) == (not (runs.REPO / ".git").exists())
    changed = dict(then, jax="0.0.1")
    assert provenance.differences(changed, then) == {"jax": ("0.0.1", then["jax"])}


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_golden.py --update")
    with tempfile.TemporaryDirectory() as d:
        numbers, prov = golden_run(Path(d) / "golden")
    GOLDEN.parent.mkdir(exist_ok=True)
    body = {"command": ["python", "-m", "dnjax.main", f"--config={runs.TINY}", *OVERRIDES],
            "provenance": prov, "numbers": numbers}
    GOLDEN.write_text(json.dumps(body, indent=1) + "\n")
    print(f"{GOLDEN}: {len(numbers)} records pinned with jax {prov['jax']} on {prov['cpu']}")
