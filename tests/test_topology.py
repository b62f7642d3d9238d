"""Resuming on another topology: a run saved on some devices and processes goes on, or is
evaluated, on others (a pod given back with a different slice).

The global batches of every step are the same whatever the topology (a pure function of the seed
and the step, split over whatever devices there are), and the checkpoint holds the global arrays,
which orbax reads back with the new sharding. What changes is the order of the floating-point
sums across devices (the gradient all-reduce, BatchNorm's global statistics): the continued run
is not bitwise the run that stayed on its topology, but equal to its rounding (the tests ask for
every logged loss to 5 significant digits and the states to rtol 2e-4).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dnjax import logs

import runs

pytestmark = pytest.mark.slow

TOTAL = 12
COMMON = (f"--config.num_train_steps={TOTAL}", "--config.log_every_steps=1", "--config.model.dropout_rate=0.2",
          "--config.checkpoint_every_epochs=0.0449")


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in logs.records(workdir, "train")}


def _assert_same_trajectory(reference, workdir) -> None:
    want, got = _losses(reference), _losses(workdir)
    assert sorted(got) == list(range(1, TOTAL + 1)) == sorted(want)
    for step in want:  # the same batch at every step: 5 significant digits
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), (step, got[step], want[step])
    # The comparison has teeth: the losses move by far more than the tolerance from step to step.
    assert np.ptp(list(want.values())) > 1e-2
    (fw,), (fg,) = list(logs.records(reference, "final")), list(logs.records(workdir, "final"))
    assert fg["test_loss"] == pytest.approx(fw["test_loss"], rel=1e-5)
    runs.assert_close_states(runs.load_state(reference), runs.load_state(workdir), rtol=2e-4, atol=2e-6)


@pytest.fixture(scope="module")
def on_four(tmp_path_factory, cache):
    """The 12-step run on 4 simulated devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("four")
    r = runs.run_main(workdir, *COMMON, devices=4, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_saved_by_two_processes_resumed_on_four_devices_then_on_two_and_evaluated_on_one(tmp_path, cache, on_four):
    """Two processes (one device each) halt at step 4; one process on 4 devices goes on to step 8;
    one on 2 devices finishes. Every launch follows the trajectory of the run that stayed on 4
    devices in one process. That run's last checkpoint, evaluated on one device, gives its final
    record."""
    workdir = tmp_path / "w"
    port = runs.free_port()
    procs = [subprocess.Popen(
        runs.main_cmd(workdir, *COMMON, "--config.halt_after_steps=4", f"--coordinator_address=127.0.0.1:{port}",
                      "--num_processes=2", f"--process_id={i}", cache=cache),
        cwd=runs.REPO, env=runs.env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    started = next(logs.records(workdir, "event"))
    assert started["processes"] == 2 and started["devices"] == 2
    for devices, extra in ((4, ("--config.halt_after_steps=8",)), (2, ())):
        r = runs.run_main(workdir, *COMMON, *extra, devices=devices, cache=cache)
        assert r.returncode == 0, r.stderr[-3000:]
    assert [e["step"] for e in logs.records(workdir, "event") if e["event"] == "resumed"] == [4, 8]
    _assert_same_trajectory(on_four, workdir)

    r = subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={on_four}", "--json"],
                       cwd=runs.REPO, env=runs.env(1), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    (final,) = list(logs.records(on_four, "final"))
    assert m["step"] == TOTAL
    assert m["test_loss"] == pytest.approx(final["test_loss"], rel=1e-5)
    assert abs(m["test_error"] - final["test_error"]) < 1e-6  # the same images counted wrong
