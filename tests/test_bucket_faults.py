"""Runs on a bucket whose network misbehaves: a fault-injecting proxy (``fault_proxy``) between the
real clients (gcsfs, google-cloud-storage, TensorStore through orbax) and the loopback GCS server.

Transient faults at every place a run touches the bucket are ridden through by the clients' own
retries, and the run ends bitwise equal to a local run. Persistent ones (the server gone, every
commit refused, a request that never returns) stop the run within its storage deadline with one
line naming the path, status 3, nothing left running; the newest committed checkpoint stays the
one a rerun resumes from, and the rerun, once the bucket is back, ends bitwise equal too. A second
Ctrl-C during a save that the bucket holds up aborts at once.

The runs use a short deadline (``--storage_timeout_seconds``) and lease so that each persistent
case takes seconds; the bound with the default settings is derived in docs/fault_tolerance.md.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from dnjax import logs, storage
from dnjax.exits import ExitStatus
from dnjax.runtime import checkpoints

import fault_proxy
import runs
from fault_proxy import Fault

pytestmark = pytest.mark.slow

TOTAL = 12
# 12 steps, a checkpoint every 3, an evaluation (and best save) every 6, every step logged.
SHORT = (
    f"--config.num_train_steps={TOTAL}",
    "--config.log_every_steps=1",
    "--config.model.dropout_rate=0.2",
    "--config.checkpoint_every_epochs=0.0337",
    "--config.eval_every_epochs=0.0674",
)
TIMEOUT = 10  # --storage_timeout_seconds of the runs meeting persistent faults
FAST = (f"--storage_timeout_seconds={TIMEOUT}", "--lock_lease_seconds=8")
# From the fault to the exit: the deadline, the release of the lock (at most 10 s) and a margin
# for a loaded machine.
BOUND = TIMEOUT + 10 + 15


@pytest.fixture(scope="module")
def proxy(gcs):
    p = fault_proxy.Proxy(gcs.url)
    yield p
    p.close()


@pytest.fixture
def faults(proxy):
    proxy.clear()
    proxy.up()
    yield proxy
    proxy.clear()
    proxy.up()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """The short run, local and without faults: what every run through the proxy must equal."""
    workdir = tmp_path_factory.mktemp("short_reference")
    r = runs.run_main(workdir, *SHORT, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert runs.steps(workdir) == [6, 9, 12]
    return workdir


def _cmd(uri, *extra, cache):
    return runs.main_cmd(uri, *SHORT, *extra, config=str(runs.REPO / runs.TINY), cache=cache)


def _run(proxy, uri, *extra, cache, tmp_path, timeout=300):
    return subprocess.run(_cmd(uri, *extra, cache=cache), cwd=tmp_path, env=runs.env(1, **proxy.env),
                          capture_output=True, text=True, timeout=timeout)


def _start(proxy, uri, *extra, cache, tmp_path):
    return subprocess.Popen(_cmd(uri, *extra, cache=cache), cwd=tmp_path, env=runs.env(1, **proxy.env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_committed(uri, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        done = checkpoints.committed_steps(uri)
        if done and done[-1] >= step:
            return done
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no checkpoint {step} committed"
        time.sleep(0.1)


def _one_line_error(err: str, uri: str) -> str:
    """The run's last line: the error, naming the workdir; no traceback or library error before it."""
    assert "Traceback" not in err, err[-4000:]
    lines = err.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:") or ln[:1] == "E"]
    assert errors == [lines[-1]], err[-4000:]
    assert lines[-1].startswith("error: ") and uri in lines[-1], lines[-1]
    assert "rerun the same command" in lines[-1]
    return lines[-1]


def _finish_and_compare(proxy, uri, reference, *, cache, tmp_path, resumed_from: int) -> None:
    r = _run(proxy, uri, cache=cache, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [e["step"] for e in logs.records(uri, "event") if e["event"] == "resumed"]
    assert resumed[-1] == resumed_from, resumed
    runs.assert_same_run(reference, uri, total=TOTAL)


def test_transient_faults_everywhere_are_ridden_through_bitwise(faults, gcs, reference, cache, tmp_path):
    """503s, 429s, 500s, reset connections, a stalled answer and a response cut short, at each
    place the run touches the bucket: the lock's creation, renewal and release, config.json, the
    checkpoints' arrays, metadata and commit markers, the metrics and TensorBoard uploads, and at
    the rerun the reads of the config, the log and the newest checkpoint. Both launches end as if
    nothing happened, bitwise equal to the local run."""
    uri = gcs.uri("transient")
    first = [
        Fault("status", r"transient/lock", "POST", code=503),  # the lock's create
        Fault("status", r"transient/lock", "POST", times=1, after=2, code=429),  # a renewal
        Fault("reset", r"transient/config\.json", "POST"),
        Fault("status", r"transient/checkpoints/\d+/state/", "POST", code=503),  # arrays
        Fault("status", r"transient/checkpoints/\d+/state/", "POST", times=1, after=6, code=500),
        Fault("reset", r"transient/checkpoints/\d+/.*_CHECKPOINT_METADATA", None, after=1),
        Fault("status", r"transient/checkpoints/\d+/commit_success", "POST", code=429),
        Fault("stall", r"transient/best/", "POST", seconds=2.0, after=2),
        Fault("status", r"transient/metrics\.jsonl", "POST", times=1, after=1, code=503),
        Fault("reset", r"transient/tensorboard/", "POST", after=1),
        Fault("status", r"transient/lock", "DELETE", code=503),  # the release
    ]
    for f in first:
        faults.add(f)
    # (a lease of 8 s is renewed every 2 s)
    r = _run(faults, uri, "--config.halt_after_steps=6", "--lock_lease_seconds=8", cache=cache, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    missed = [f for f in first if f.applied == 0]
    assert not missed, (missed, sorted({(m, t.split("?")[0]) for m, t, _ in faults.log}))  # each met a request
    assert "lock" not in [n.rsplit("/", 1)[-1] for n in gcs.objects("transient")]  # released
    faults.clear()
    second = [
        Fault("status", r"transient/config\.json", "GET", code=503),
        Fault("cut", r"transient/metrics\.jsonl", "GET"),
        Fault("status", r"transient/checkpoints/\d+/state/", "GET", code=503),
        Fault("reset", r"transient/checkpoints/\d+/meta/", "GET"),
    ]
    for f in second:
        faults.add(f)
    _finish_and_compare(faults, uri, reference, cache=cache, tmp_path=tmp_path, resumed_from=6)
    missed = [f for f in second if f.applied == 0]
    assert not missed, missed


@pytest.mark.parametrize("fault", ["server_gone", "commits_refused", "upload_stalls"])
def test_a_persistent_fault_stops_the_run_in_one_line_within_the_bound(faults, gcs, reference, cache, tmp_path,
                                                                       fault):
    """The server goes away after the first committed checkpoint / from the second checkpoint on
    every commit marker is refused with 503 / an upload of the log never gets an answer. The run
    stops with status 3 within the deadline, one line naming the bucket path, no traceback; the
    newest checkpoint committed before the fault is the one the rerun resumes from (a step whose
    commit failed is never restored), and the rerun, once the bucket answers, ends bitwise equal
    to the local run."""
    uri = gcs.uri(fault)
    if fault == "commits_refused":
        faults.add(Fault("status", rf"{fault}/checkpoints/(?!3/)\d+/commit_success", "POST", times=None))
    proc = _start(faults, uri, *FAST, cache=cache, tmp_path=tmp_path)
    try:
        committed = _wait_committed(uri, 3, proc)
        if fault == "server_gone":
            faults.down()
        elif fault == "upload_stalls":
            faults.add(Fault("stall", rf"{fault}/metrics\.jsonl", "POST", times=None, seconds=600, forward=False))
        began = time.monotonic()
        _, err = proc.communicate(timeout=BOUND + 60)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err[-4000:]
    assert took < BOUND, took
    line = _one_line_error(err, uri)
    if fault == "commits_refused":
        assert "checkpoints" in line, line
    if fault == "upload_stalls":
        assert f"did not complete within {TIMEOUT} s" in line and "logs" in line, line
    if fault == "server_gone":  # evaluate, too, stops within the bound
        began = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={uri}", *FAST[:1]], cwd=tmp_path,
                           env=runs.env(1, **faults.env), capture_output=True, text=True, timeout=BOUND + 60)
        assert r.returncode == 3 and time.monotonic() - began < BOUND, (r.returncode, r.stderr[-3000:])
        assert "Nothing was written" in _one_line_error(r.stderr, uri)
    faults.clear()
    faults.up()
    intact = checkpoints.committed_steps(uri)
    assert intact and intact[-1] >= committed[-1]
    if fault == "commits_refused":
        assert intact == [3], intact  # later steps were written but never committed
    print(f"{fault}: stopped {took:.1f} s after the fault: {line}")
    if fault != "upload_stalls":  # (what a stopped run leaves is the same whatever stopped it)
        _finish_and_compare(faults, uri, reference, cache=cache, tmp_path=tmp_path, resumed_from=intact[-1])


def test_a_second_ctrl_c_while_the_bucket_holds_the_save_up_aborts_at_once(faults, gcs, cache, tmp_path):
    """The first Ctrl-C makes the run save; the bucket holds that save's uploads; the second
    Ctrl-C ends the process at once with one line and status 130. The step being saved is not
    committed: the newest checkpoint is the one committed before (what a rerun then does is the
    persistent faults' case)."""
    uri = gcs.uri("ctrl_c")
    proc = _start(faults, uri, cache=cache, tmp_path=tmp_path)
    try:
        _wait_committed(uri, 3, proc)
        stall = faults.add(Fault("stall", r"ctrl_c/checkpoints/\d+/", "POST", times=None, seconds=60,
                                 forward=False))
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while stall.applied == 0:  # the save is being held up
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        before = checkpoints.committed_steps(uri)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitStatus.INTERRUPTED, err[-3000:]
    assert took < 10, took
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("Aborted (second Ctrl-C)")
    faults.clear()
    assert checkpoints.committed_steps(uri) == before  # the save cut short was not committed
    records, torn = logs.read_jsonl(storage.path(uri) / logs.METRICS_FILE)
    assert not torn and not [r for r in records if r.get("event") == "interrupted"]


def test_when_one_process_cannot_write_every_process_stops(faults, gcs, cache, tmp_path):
    """Two processes share a gs:// workdir; from the second checkpoint on, every write of process
    1's part of the checkpoints is refused. Both processes stop within the bound, one of them with
    the one-line error and status 3."""
    uri = gcs.uri("one_process")
    port = runs.free_port()
    procs = [subprocess.Popen(
        _cmd(uri, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
             "--heartbeat_timeout_seconds=10", *FAST, cache=cache),
        cwd=tmp_path, env=runs.env(1, **faults.env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    try:
        _wait_committed(uri, 3, procs[0])
        refused = faults.add(Fault("status", r"one_process/checkpoints/(?!3/)\d+/.*process_1", None, times=None))
        began = time.monotonic()
        errs = [p.communicate(timeout=BOUND + 60)[1] for p in procs]
        took = time.monotonic() - began
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert refused.applied > 0
    assert took < BOUND, took
    # The first process to meet the fault's deadline (process 1, or process 0, whose commit waits
    # for process 1's part) stops with the one line; the other is stopped with it: by its own
    # deadline (3), a failed collective (4), or jax.distributed, which aborts a process whose
    # coordinator (process 0) is gone (SIGABRT).
    codes = [p.returncode for p in procs]
    assert 3 in codes and set(codes) <= {3, 4, -signal.SIGABRT}, (codes, [e[-2000:] for e in errs])
    _one_line_error(errs[codes.index(3)], uri)
    faults.clear()
    assert checkpoints.committed_steps(uri)[-1] >= 3
