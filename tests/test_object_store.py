"""Runs whose workdir, data and weights live in a bucket (``gs://``), against a real GCS server on
127.0.0.1 (fake-gcs-server, started by the ``gcs`` fixture): the quickstart end to end, a killed
run resumed bitwise, two processes sharing one workdir, the lease lock, and the bad inputs that
must stop a run before anything is written anywhere, locally included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from dnjax import logs, storage
from dnjax.runtime import checkpoints, workdir as workdir_lib

import runs

pytestmark = pytest.mark.slow


def _env(gcs, devices: int = 1, **extra: str) -> dict[str, str]:
    return runs.env(devices, **gcs.env, **extra)


def _local_gs_dirs(*roots: Path) -> list[str]:
    """Any local directory named like a collapsed URL (``gs:``) under ``roots``."""
    found = []
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            found += [os.path.join(dirpath, d) for d in dirnames if d.startswith("gs:")]
            dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__", ".venv")]
    return found


def _cmd(workdir, *overrides, **kw) -> list[str]:
    """``runs.main_cmd`` with the config's absolute path: these runs start outside the repository."""
    kw.setdefault("config", str(runs.REPO / runs.TINY))
    return runs.main_cmd(workdir, *overrides, **kw)


def _run(cmd, cwd, env, timeout=300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# End to end


def test_quickstart_writes_config_metrics_events_and_checkpoints_to_the_bucket(gcs, tmp_path, cache):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    uri = gcs.uri("quickstart")
    cmd = runs.main_cmd(uri, "--config.num_epochs=2", "--config.eval_every_epochs=1",
                        "--config.checkpoint_every_epochs=1",
                        config=str(runs.REPO / "configs" / "quickstart.py"), cache=cache)
    r = _run(cmd, cwd, _env(gcs))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Finished 44 steps" in r.stdout and uri in r.stdout

    names = gcs.objects("quickstart")
    assert "quickstart/config.json" in names and "quickstart/metrics.jsonl" in names
    assert any(n.startswith("quickstart/tensorboard/events.out.tfevents.") for n in names), names
    assert {n.split("/")[2] for n in names if n.startswith("quickstart/checkpoints/")} == {"22", "44"}
    assert "quickstart/checkpoints/44/commit_success.txt" in names
    assert any(n.startswith("quickstart/best/") for n in names)
    assert "quickstart/lock" not in names  # released at the end
    # Nothing on the local disk: no `gs:` directory here, in the repository or anywhere under tmp.
    assert os.listdir(cwd) == []
    assert not _local_gs_dirs(tmp_path, runs.REPO)

    # The log reads back from the bucket, whole: every evaluation, one final record.
    evals = list(logs.records(uri, "eval"))
    final = list(logs.records(uri, "final"))
    assert [e["step"] for e in evals] == [22, 44] and len(final) == 1
    assert final[0]["test_error"] < 60.0, final  # chance is 90%
    assert json.loads((storage.path(uri) / "config.json").read_text())["data"]["dataset"] == "digits"

    # evaluate reads the run's config and checkpoint from the bucket and reproduces the final record.
    r = _run([sys.executable, "-m", "dnjax.evaluate", f"--workdir={uri}", "--json"], cwd, _env(gcs))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["step"] == 44 and m["test_count"] == 360
    assert abs(m["test_error"] - final[0]["test_error"]) < 1e-6
    assert os.listdir(cwd) == []


def test_killed_runs_resume_from_the_bucket_bitwise_and_a_second_run_is_refused(gcs, tmp_path, cache,
                                                                                uninterrupted):
    """SIGKILL twice (once a checkpoint past step 15, then past 39, is committed in the bucket),
    then run to the end: the state, the best checkpoint and the log equal the uninterrupted local
    run's bit for bit. While the first launch runs, a second one on the workdir is refused."""
    uri = gcs.uri("killed")
    cmd = _cmd(uri, *runs.LONG, cache=cache)
    killed = []
    for i, target in enumerate((15, 40)):
        with open(tmp_path / f"err{i}.txt", "w") as err:
            proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(gcs), stdout=subprocess.DEVNULL, stderr=err)
        lock = storage.path(uri) / workdir_lib.LOCK_FILE
        deadline = time.monotonic() + 240
        refused = None
        while proc.poll() is None and time.monotonic() < deadline:
            if i == 0 and refused is None and lock.exists():
                refused = _run(cmd, tmp_path, _env(gcs), timeout=120)
            steps = checkpoints.committed_steps(uri)
            if steps and steps[-1] >= target:
                break
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / f"err{i}.txt").read_text()[-3000:]
        proc.kill()
        proc.wait(timeout=60)
        killed.append(proc.pid)
        if i == 0:
            assert refused is not None and refused.returncode == 3, refused and refused.stderr[-2000:]
            last = refused.stderr.strip().splitlines()[-1]
            assert last.startswith(f"error: --workdir={uri} is in use by another run: pid {proc.pid} on "), last
            assert "Traceback" not in refused.stderr
    r = _run(cmd, tmp_path, _env(gcs))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Took over the lock" in r.stderr and "its process on this host is gone" in r.stderr
    runs.assert_same_run(uninterrupted, uri)
    resumed = [e for e in logs.records(uri, "event") if e["event"] == "resumed"]
    assert len(resumed) == 2 and resumed[0]["step"] >= 15 and resumed[1]["step"] >= 39
    assert not _local_gs_dirs(tmp_path, runs.REPO)
    # The local copies of the log that the killed launches left were swept by the next ones.
    left = [p for pid in killed for p in Path(tempfile.gettempdir()).glob(f"dnjax-staged-{pid}-*")]
    assert not left, left


def test_two_processes_write_one_bucket_workdir_and_resume_together(gcs, tmp_path, cache, reference_run):
    """The 2-process CPU run on a gs:// workdir, halted at step 3 and resumed by both processes:
    only process 0 writes the logs, both take part in every checkpoint, and the result equals the
    single-process local run's."""
    uri = gcs.uri("two_processes")
    for launch in ("halt", "resume"):
        port = runs.free_port()
        extra = ("--config.halt_after_steps=3",) if launch == "halt" else ()
        procs = [subprocess.Popen(
            _cmd(uri, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}", *extra, cache=cache),
            cwd=tmp_path, env=_env(gcs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        assert checkpoints.committed_steps(uri)[-1] == (3 if launch == "halt" else 6)
    assert "Finished 6 steps" in outs[0][0]
    events = [e["event"] for e in logs.records(uri, "event")]
    assert events == ["started", "halted", "resumed", "config_changed"], events  # halt_after_steps dropped
    assert [r["step"] for r in logs.records(uri, "train")] == [2, 4, 6]  # each once, by process 0
    runs.assert_close_states(runs.load_state(reference_run), runs.load_state(uri), rtol=2e-4, atol=2e-6)


def test_npz_data_and_init_from_in_the_bucket(gcs, tmp_path, cache):
    """Data files and the weights a run starts from are read from the bucket too; the converter's
    workdir writer puts its step-0 checkpoint there."""
    from sklearn.datasets import load_digits

    from dnjax import train
    from dnjax.convert import workdir as convert_workdir

    import tiny_config

    digits = load_digits()
    images = np.repeat(digits.images[..., None] * (255 / 16), 3, axis=-1).astype(np.uint8)  # RGB, as converted weights
    labels = digits.target.astype(np.int32)
    for name, sl in (("train_a.npz", slice(0, 600)), ("train_b.npz", slice(600, 1400)),
                     ("test.npz", slice(1400, None))):
        local = tmp_path / name
        np.savez(local, image=images[sl], label=labels[sl])
        storage.path(gcs.uri("data", name)).write_bytes(local.read_bytes())

    config = tiny_config.get_config()
    setup = train.Setup(tiny_config.get_config())
    variables = train.init_variables(setup.model, (8, 8, 3), seed=5)
    out = convert_workdir.write_workdir(gcs.uri("converted"), variables, config)
    assert str(out) == gcs.uri("converted")
    params, stats, meta = checkpoints.read_weights(gcs.uri("converted"))
    want = runs.flat(jax.device_get(variables["params"]))
    assert all(np.array_equal(v, runs.flat(params)[k]) for k, v in want.items()) and meta["step"] == 0

    uri = gcs.uri("from_bucket_data")
    r = _run(_cmd(uri, "--config.data.dataset=npz", f"--config.data.npz_train={gcs.uri('data', 'train_*.npz')}",
                           f"--config.data.npz_test={gcs.uri('data', 'test.npz')}",
                           f"--config.init_from={gcs.uri('converted')}", cache=cache), tmp_path, _env(gcs))
    assert r.returncode == 0, r.stderr[-3000:]
    started = next(logs.records(uri, "event"))
    assert started["init_from"] == gcs.uri("converted") and started["event"] == "started"
    assert list(logs.records(uri, "final"))[0]["test_count"] == len(labels) - 1400
    assert started["steps_per_epoch"] == 1400 // config.batch_size  # both parts of the glob


def test_a_damaged_newest_checkpoint_in_the_bucket_is_skipped_and_set_aside(gcs):
    """In-process on a gs:// workdir: the newest step's array metadata overwritten with garbage;
    a training restore falls back to the step before and moves the damaged one to
    ``<step>.damaged`` (a copy, then a delete: an object store has no rename)."""
    import jax.numpy as jnp

    uri = gcs.uri("damaged")
    state = {"w": jnp.arange(12.0).reshape(3, 4)}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    ckpts = checkpoints.Checkpoints(uri, training=True)
    for step in (1, 2):
        ckpts.save(step, jax.tree.map(lambda x, s=step: x + s, state), {"step": step}, force=True)
    ckpts.close()
    before = {n for n in gcs.objects("damaged/checkpoints/2")}
    meta = storage.path(gcs.uri("damaged/checkpoints/2/state/_METADATA"))
    meta.write_bytes(np.random.default_rng(0).bytes(len(meta.read_bytes())))
    ckpts = checkpoints.Checkpoints(uri, training=True)
    try:
        restored, got = ckpts.restore(abstract)
    finally:
        ckpts.close()
    assert got["step"] == 1 and np.array_equal(np.asarray(restored["w"]), np.arange(12.0).reshape(3, 4) + 1)
    assert gcs.objects("damaged/checkpoints/2") == []
    moved = set(gcs.objects("damaged/checkpoints/2.damaged"))
    assert moved == {n.replace("checkpoints/2/", "checkpoints/2.damaged/") for n in before}
    assert checkpoints.committed_steps(uri) == [1]


# ---------------------------------------------------------------------------------------------
# The lease lock


def test_the_lease_lock_refuses_renews_and_is_taken_over_only_when_stale(gcs):
    uri = gcs.uri("lease")
    first = workdir_lib.LeaseLock(uri, lease_seconds=4)
    first.acquire()
    try:
        record = json.loads((storage.path(uri) / "lock").read_text())
        assert record["pid"] == os.getpid() and record["lease_seconds"] == 4
        with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by another run: pid {os.getpid()} on "):
            workdir_lib.LeaseLock(uri, lease_seconds=4).acquire()
        generation = first.generation
        time.sleep(2.5)  # renewed every quarter lease
        assert first.generation != generation and first.lost is None
        first.check()
    finally:
        first.release()
    assert not (storage.path(uri) / "lock").exists()

    # A record of another host: refused while its lease runs, taken over once it expired.
    lock = storage.path(uri) / "lock"
    other = {"host": "elsewhere", "pid": 1, "started": "2026-01-01T00:00:00+00:00", "command": "x",
             "lease_seconds": 60}
    lock.write_text(json.dumps(dict(other, renewed=time.time() - 10)))
    with pytest.raises(workdir_lib.WorkdirError, match=r"pid 1 on elsewhere.*runs 50 s more"):
        workdir_lib.LeaseLock(uri).acquire()
    lock.write_text(json.dumps(dict(other, renewed=time.time() - 61)))
    taker = workdir_lib.LeaseLock(uri, lease_seconds=4)
    taker.acquire()
    try:
        assert json.loads(lock.read_text())["host"] != "elsewhere"
        # Someone overwrites the lock behind its back: its next renewal notices, check() stops it.
        lock.write_text(json.dumps(dict(other, renewed=time.time())))
        deadline = time.monotonic() + 10
        while taker.lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(workdir_lib.WorkdirError, match="taken over by another run"):
            taker.check()
    finally:
        taker.release()
    assert json.loads(lock.read_text())["host"] == "elsewhere"  # a lost lock is not deleted


def _take(locks, i, results, barrier):
    barrier.wait()
    try:
        locks[i].acquire()
        results[i] = "won"
    except workdir_lib.WorkdirError as e:
        results[i] = str(e)


def test_of_runs_racing_for_a_free_or_expired_lease_exactly_one_wins(gcs):
    for case in ("free", "expired"):
        uri = gcs.uri(f"race_{case}")
        if case == "expired":
            (storage.path(uri) / "lock").write_text(json.dumps(
                {"host": "elsewhere", "pid": 1, "lease_seconds": 5, "renewed": time.time() - 60}))
        locks = [workdir_lib.LeaseLock(uri, lease_seconds=30) for _ in range(6)]
        results = [None] * len(locks)
        barrier = threading.Barrier(len(locks))
        threads = [threading.Thread(target=_take, args=(locks, i, results, barrier)) for i in range(len(locks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        try:
            assert results.count("won") == 1, (case, results)
            assert all("in use by another run" in r for r in results if r != "won"), results
        finally:
            for lock in locks:
                lock.release()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing written anywhere


def _no_credentials_env(tmp_path) -> dict[str, str]:
    env = runs.env(1, HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
                   GCE_METADATA_HOST=f"127.0.0.1:{runs.free_port()}",
                   GCE_METADATA_IP=f"127.0.0.1:{runs.free_port()}", NO_GCE_CHECK="true")
    for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
              "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(k, None)
    return env


BAD = {
    "missing bucket": (["--workdir=gs://no-such-bucket/run"], 3,
                       "error: --workdir=gs://no-such-bucket/run: the bucket gs://no-such-bucket does not exist"),
    "no client library": (["--workdir=gs://bucket/nolib"], 3,
                          "error: --workdir=gs://bucket/nolib: gs:// needs the gcsfs package, which is not installed: "
                          "pip install 'dnjax[gcs]'"),
    "no credentials": (["--workdir=gs://bucket/nocreds"], 3,
                       "error: --workdir=gs://bucket/nocreds: no Google Cloud credentials were found"),
    "init_from not there": (["--config.init_from=gs://bucket/not-a-run"], 2,
                            "error: config.init_from='gs://bucket/not-a-run' is invalid: it must be the workdir of a run"),
    "data in a missing bucket": (["--config.data.dataset=npz", "--config.data.npz_train=gs://no-such-bucket/a.npz",
                                  "--config.data.npz_test=gs://no-such-bucket/b.npz"], 2,
                                 "error: data.npz_train=gs://no-such-bucket/a.npz: the bucket gs://no-such-bucket does not exist"),
    "tfds data in a bucket": (["--config.data.dataset=cifar10", "--config.data.data_dir=gs://bucket/tfds"], 2,
                              "error: data.data_dir=gs://bucket/tfds: tfds data sources read array_record files, "
                              "whose reader opens local files only"),
    "evaluate, missing bucket": (None, 2, "error: --workdir=gs://no-such-bucket/run: the bucket gs://no-such-bucket does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_object_store_input_stops_in_one_line_writing_nothing(gcs, tmp_path, cache, case):
    args, status, message = BAD[case]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _no_credentials_env(tmp_path) if case == "no credentials" else _env(gcs)
    if args is None:
        cmd = [sys.executable, "-m", "dnjax.evaluate", "--workdir=gs://no-such-bucket/run"]
    else:
        workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), str(tmp_path / "local_run"))
        cmd = _cmd(workdir, *[a for a in args if not a.startswith("--workdir=")], cache=cache)
    if case == "no client library":  # gcsfs made unimportable, as where it is not installed
        cmd = [sys.executable, "-c", "import sys, runpy; sys.modules['gcsfs'] = None; "
               "sys.argv = ['dnjax.main'] + sys.argv[1:]; runpy.run_module('dnjax.main', run_name='__main__')",
               *cmd[3:]]
    r = _run(cmd, cwd, env, timeout=180)
    assert r.returncode == status, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert os.listdir(cwd) == [] and not (tmp_path / "local_run").exists()
    assert not _local_gs_dirs(tmp_path, runs.REPO)
    if case in ("no client library", "no credentials"):
        assert gcs.objects(args[0].split("/")[-1]) == []


def test_paths_keep_their_scheme_and_local_ones_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(storage.path("gs://b/run/x")) == "gs://b/run/x"
    assert str(storage.path("gs://b/run") / "checkpoints" / "3") == "gs://b/run/checkpoints/3"
    assert storage.path("runs/a") == storage.path(tmp_path / "runs" / "a")
    assert storage.scheme("gs://b/x") == "gs" and storage.scheme("/tmp/x") is None
    assert storage.bucket("gs://my-bucket/a/b") == "my-bucket"
    with pytest.raises(storage.StorageError, match="ftp:// is not supported"):
        storage.path("ftp://host/x")
    assert not (tmp_path / "gs:").exists()
