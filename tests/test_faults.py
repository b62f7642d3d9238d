"""Fault injection: crashes at any time, preemption, damaged checkpoints, divergence, bad data,
torn logs, fuzzed configs and a dead process in a multi-process run.

Run alone with ``python3 -m pytest -m faults``. The subprocess runs share one compilation cache and
compile with XLA's optimisations off, so each starts in seconds; the whole module takes a few
minutes on two cores.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dnjax import logs, storage, train
from dnjax.exits import ExitStatus
from dnjax.runtime import checkpoints

import runs

pytestmark = pytest.mark.faults

STEPS, EVAL_EVERY, LONG, TMP_MARK = runs.STEPS, runs.EVAL_EVERY, runs.LONG, runs.TMP_MARK
assert_same_run = runs.assert_same_run


# ---------------------------------------------------------------------------------------------
# Crash at any time


class _Watcher:
    """What one launch of the run has done so far, read from its workdir."""

    def __init__(self, workdir: Path, launched: float):
        self.workdir, self.launched = workdir, launched

    def own_records(self) -> list[dict] | None:
        """This launch's records (those after its own started/resumed event), or None before it
        has written that event."""
        recs, _ = logs.read_jsonl(self.workdir / logs.METRICS_FILE)
        for i in range(len(recs) - 1, -1, -1):
            r = recs[i]
            if r["type"] == "event" and r.get("event") in ("started", "resumed") and r["time"] >= self.launched - 0.01:
                return recs[i + 1:]
        return None

    def last_step(self) -> int:
        recs = self.own_records() or []
        return max((r["step"] for r in recs if r["type"] == "train"), default=-1)

    def new_tmp_dirs(self, sub: str) -> list[str]:
        d = self.workdir / sub
        if not d.exists():
            return []
        out = []
        for p in d.iterdir():
            try:
                if TMP_MARK in p.name and p.stat().st_ctime >= self.launched:
                    out.append(p.name)
            except FileNotFoundError:  # renamed by the finishing save meanwhile
                pass
        return out


def _committed_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _observed_phases(w: _Watcher) -> set[str]:
    """What the killed launch was doing: its main loop's phase, and the asynchronous checkpoint
    writes in flight."""
    recs = w.own_records()
    if recs is None or not any(r["type"] == "train" for r in recs):
        return {"startup (restore, compile)"}
    last = w.last_step()
    if any(r["type"] == "final" for r in recs):
        phases = {"after the final record"}
    elif last % EVAL_EVERY == 0 and not any(r["type"] == "eval" and r["step"] == last for r in recs):
        phases = {"evaluation"}
    else:
        phases = {"training step"}
    if w.new_tmp_dirs("checkpoints"):
        phases.add("checkpoint write")
    if w.new_tmp_dirs("best"):
        phases.add("best checkpoint write")
    return phases


# The interruptions of one run, in order: where each aims to land. One is a SIGTERM (preemption).
PLAN = ["startup", "step", "checkpoint", "eval", "best", "preempt", "checkpoint", "step"]


def test_killed_at_random_points_resumes_bitwise(tmp_path, cache, uninterrupted):
    rng = random.Random(1597)
    workdir = tmp_path / "killed"
    kills, preempted, launches = [], None, 0
    for i, aim in enumerate(PLAN + [None]):
        resumed_from = (_committed_steps(workdir) or [0])[-1]
        target = max(resumed_from + 1, round((i + 1) * (STEPS - 4) / len(PLAN)) + rng.randint(-1, 1))
        launched = time.time()
        err_path = tmp_path / f"stderr{i}.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(runs.main_cmd(workdir, *LONG, cache=cache), cwd=runs.REPO,
                                    env=runs.env(1), stdout=subprocess.DEVNULL, stderr=err)
        launches += 1
        w = _Watcher(workdir, launched)
        startup_delay = rng.uniform(0.5, 3.0)
        fired = False
        while aim is not None and proc.poll() is None:
            last = w.last_step()
            if aim == "startup":  # importing, restoring, or (once the run has logged its
                # start) compiling the first step
                fired = time.time() - launched > startup_delay or w.own_records() is not None
            elif last >= target + 2 * EVAL_EVERY:
                fired = True  # the aimed-at phase was too quick to catch: stop it anyway
            elif last >= target:
                if aim == "step":
                    time.sleep(rng.uniform(0.0, 0.05))
                    fired = True
                elif aim == "eval":
                    fired = last % EVAL_EVERY == 0
                elif aim == "checkpoint":
                    fired = bool(w.new_tmp_dirs("checkpoints"))
                elif aim == "best":
                    fired = bool(w.new_tmp_dirs("best"))
                elif aim == "preempt":
                    fired = True
            if fired:
                break
            time.sleep(0.002)
        if aim == "preempt" and fired:
            sent = time.time()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
            took = time.time() - sent
            text = err_path.read_text()
            assert rc == ExitStatus.PREEMPTED, text[-3000:]
            assert took < 60, took
            stop = [r for r in logs.records(workdir, "event") if r["event"] == "preempted"][-1]["step"]
            assert f"Preempted (SIGTERM) at step {stop}: checkpoint saved" in text
            assert "rerun the same command to resume" in text
            assert _committed_steps(workdir)[-1] == stop
            preempted = (stop, took)
            continue
        if fired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            kills.append((aim, w.last_step(), sorted(_observed_phases(w))))
            continue
        rc = proc.wait(timeout=300)
        text = err_path.read_text()
        assert rc == 0, text[-3000:]
        if aim is not None:  # finished before the aimed-at point: nothing more to interrupt
            break
    print(f"\n{len(kills)} kills (aim, last logged step, phases seen):")
    for k in kills:
        print("   ", k)
    assert preempted is not None
    print(f"preempted at step {preempted[0]}, exited {preempted[1]:.1f}s after SIGTERM; {launches} launches")
    assert len(kills) >= len(PLAN) - 1
    # The launch after the preemption continued from the step it saved.
    resumed = [r["step"] for r in logs.records(workdir, "event") if r["event"] == "resumed"]
    assert preempted[0] in resumed
    phases = {p for _, _, ps in kills for p in ps}
    assert {"startup (restore, compile)", "training step", "evaluation", "checkpoint write"} <= phases, kills
    assert_same_run(uninterrupted, workdir)


def _train_steps(workdir: Path) -> list[int]:
    recs, _ = logs.read_jsonl(workdir / logs.METRICS_FILE)
    return [r["step"] for r in recs if r["type"] == "train"]


def test_ctrl_c_saves_and_exits_130_and_the_rerun_resumes_bitwise(tmp_path, cache, uninterrupted):
    """Ctrl-C (SIGINT) stops the run as SIGTERM does: the step finishes, a checkpoint of it is
    saved, one line, status 130, no traceback. The same command then resumes from that step, and
    the run ends bitwise equal to the uninterrupted one. (A second Ctrl-C, which aborts without
    waiting for the save, is tested in test_bucket_faults.py, where a stalled upload holds the save
    open for it.)"""
    workdir = tmp_path / "w"
    proc = _start(workdir, *LONG, cache=cache)
    try:
        _wait_for(lambda: (_train_steps(workdir) or [0])[-1] >= 10, what="step 10")
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    assert proc.returncode == ExitStatus.INTERRUPTED, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    stop = [e for e in logs.records(workdir, "event") if e["event"] == "interrupted"][-1]["step"]
    last = err.strip().splitlines()[-1]
    assert f"Interrupted (Ctrl-C) at step {stop}: checkpoint saved" in last, last
    assert "rerun the same command to resume" in last
    assert stop >= 10 and _committed_steps(workdir)[-1] == stop
    assert took < 60, took
    r = runs.run_main(workdir, *LONG, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [e["step"] for e in logs.records(workdir, "event") if e["event"] == "resumed"] == [stop]
    assert_same_run(uninterrupted, workdir)


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def _data_files(step_dir: Path) -> list[Path]:
    """The files of the arrays' (compressed) data and B-tree nodes in a checkpoint, largest first.
    Not every one is read on restore: older B-tree versions stay behind as unreferenced files."""
    return sorted((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: (-p.stat().st_size, p.name))


def _restore_breaks(step_dir: Path) -> bool:
    try:
        runs.load_state(step_dir.parent.parent, int(step_dir.name))
    except Exception:
        return True
    return False


def _damage_a_read_file(step_dir: Path, damage) -> None:
    """Applies ``damage`` to the largest data file that the restore really reads (so the damage
    cannot land on an unreferenced file and go unnoticed by chance)."""
    for f in _data_files(step_dir):
        original = f.read_bytes()
        damage(f)
        if _restore_breaks(step_dir):
            return
        f.write_bytes(original)
    pytest.fail(f"no data file of {step_dir} breaks the restore when damaged")


def _truncate(step_dir):
    def cut(f):
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)
    _damage_a_read_file(step_dir, cut)


def _delete(step_dir):
    _damage_a_read_file(step_dir, Path.unlink)


def _garbage(step_dir):
    f = step_dir / "state" / "_METADATA"
    f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))


def _flip_bit(step_dir):
    """Flips one bit of the arrays' compressed data such that orbax still reads the checkpoint
    without complaint, but different values: only the fingerprint in the meta can tell."""
    workdir, step = step_dir.parent.parent, int(step_dir.name)
    before = runs.flat(runs.load_state(workdir, step))
    for data in _data_files(step_dir):
        if _flip_changes_values(workdir, step, before, data):
            return
    pytest.fail(f"no bit of the data files of {step_dir} changes the restored values without breaking the read")


def _flip_changes_values(workdir, step, before, data) -> bool:
    original = data.read_bytes()
    for frac in (0.25, 0.2, 0.3, 0.15, 0.35, 0.1, 0.4, 0.05, 0.45):
        flipped = bytearray(original)
        flipped[int(frac * len(original))] ^= 0x10
        data.write_bytes(bytes(flipped))
        try:
            after = runs.flat(runs.load_state(workdir, step))
        except Exception:
            continue
        if any(not np.array_equal(before[k], after[k]) for k in before):
            return True
    data.write_bytes(original)
    return False


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage_60, damage_57", [(_truncate, _flip_bit), (_delete, _garbage)],
                         ids=["truncated+bitflip", "deleted+garbage"])
def test_damaged_newest_checkpoints_are_skipped_and_kept(tmp_path, cache, uninterrupted, damage_60, damage_57):
    """Checkpoints 60 and 57 are damaged: the run resumes from 54, says why it skipped each, keeps
    them (renamed ``<step>.damaged``) and ends bitwise where the uninterrupted run ended."""
    workdir = tmp_path / "w"
    shutil.copytree(uninterrupted, workdir)
    ckpts = workdir / "checkpoints"
    damage_60(ckpts / "60")
    damage_57(ckpts / "57")
    damaged = {s: _snapshot(ckpts / str(s)) for s in (57, 60)}
    r = runs.run_main(workdir, *LONG, cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    skips = [line for line in r.stderr.splitlines() if "Skipping checkpoint" in line]
    assert len(skips) == 2, r.stderr[-3000:]
    assert f"{ckpts}/60:" in skips[0] and f"{ckpts}/57:" in skips[1]
    assert all(("unreadable" in s or "corrupted data" in s) for s in skips)
    assert "Resumed from checkpoint 54 after skipping damaged 60, 57" in r.stderr
    assert "Traceback" not in r.stderr
    # kept, byte for byte, next to the new ones
    for s, files in damaged.items():
        assert _snapshot(ckpts / f"{s}.damaged") == files
    assert sorted(p.name for p in ckpts.iterdir()) == ["54", "57", "57.damaged", "60", "60.damaged"]
    assert_same_run(uninterrupted, workdir)


def test_no_intact_checkpoint_stops_with_a_clear_error(tmp_path, cache, uninterrupted):
    workdir = tmp_path / "w"
    shutil.copytree(uninterrupted, workdir)
    ckpts = workdir / "checkpoints"
    _truncate(ckpts / "60")
    _garbage(ckpts / "57")
    _flip_bit(ckpts / "54")
    before = _snapshot(workdir)
    r = runs.run_main(workdir, *LONG, cache=cache)
    assert r.returncode == 3, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: No intact checkpoint in")
    for s in (60, 57, 54):
        assert f"step {s}: " in last
    assert "corrupted data" in last and "left in place" in last
    assert "Traceback" not in r.stderr
    assert _snapshot(workdir) == before  # nothing deleted, moved or rewritten


def _exc_info_raised_in(filename: str):
    namespace: dict = {}
    exec(compile("def read():\n    raise ValueError('shard missing')\n", filename, "exec"), namespace)
    try:
        namespace["read"]()
    except ValueError as e:
        return (type(e), e, e.__traceback__)


@pytest.mark.parametrize("filename, dropped", [("/site-packages/orbax/checkpoint/fake.py", True),
                                               ("/site-packages/other/fake.py", False)])
def test_abandoned_orbax_reads_are_quiet_even_when_only_the_traceback_names_orbax(filename, dropped):
    """asyncio reports a Future (not a Task) without its coroutine, so orbax's path is only in the
    traceback; such a read abandoned by a failed restore is dropped, anything else is kept."""
    record = logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1,
        "Future exception was never retrieved\nfuture: <Future finished exception=ValueError()>",
        None, _exc_info_raised_in(filename),
    )
    assert storage.AbandonedReadFilter().filter(record) is not dropped


def test_the_quieted_unraisable_hook_is_given_back_on_close(tmp_path):
    """Restoring quiets orbax's abandoned reads through sys.unraisablehook and the asyncio logger
    while the checkpoints are open; closing them gives both back."""
    before, filters = sys.unraisablehook, list(logging.getLogger("asyncio").filters)
    state = {"w": jnp.ones((2, 2))}
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save(1, state, {"step": 1}, force=True)
    ckpts.wait()
    assert ckpts.restore(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state))[1]["step"] == 1
    assert sys.unraisablehook is not before
    ckpts.close()
    assert sys.unraisablehook is before and logging.getLogger("asyncio").filters == filters


def test_crash_leftovers_and_a_lost_best_save_are_repaired(tmp_path):
    """In-process: an unfinished save's temporary directory is removed when training restarts (a
    reader such as evaluate leaves it), and a best save that a crash cut short (the newest
    checkpoint was committed, its best save was not) is redone from the restored state."""
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.array(6, jnp.int32)}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(3, state, {"step": 3}, test_error=50.0)
    ckpts.save(3, state, {"step": 3}, force=True)
    ckpts.save(6, state, {"step": 6, "test_error": 40.0}, force=True)  # its best save is lost
    ckpts.close()
    leftover = tmp_path / "checkpoints" / f"9{TMP_MARK}"
    leftover.mkdir()  # what a kill during a save leaves
    (tmp_path / "checkpoints" / "5.damaged").mkdir()
    reader = checkpoints.Checkpoints(tmp_path)
    assert reader.restore(abstract)[1]["step"] == 6
    reader.close()
    assert leftover.exists()
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    restored, meta = ckpts.restore(abstract)
    assert meta["step"] == 6 and meta["fingerprint"] == checkpoints.fingerprint(state)
    ckpts.complete_best(restored, meta)
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "5.damaged", "6"]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6"]
    # a worse test error does not displace the best
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.complete_best(restored, {"step": 9, "test_error": 45.0})
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6"]


def test_unreadable_best_checkpoint_is_set_aside_not_fatal(tmp_path):
    state = {"w": jnp.ones((2, 2))}
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(6, state, {"step": 6}, test_error=40.0)
    ckpts.close()
    (tmp_path / "best" / "6" / "metrics" / "metrics").write_text("{garbage")
    with pytest.raises(checkpoints.CheckpointError, match="Cannot read the best checkpoints"):
        checkpoints.Checkpoints(tmp_path)  # a reader refuses, and changes nothing
    assert (tmp_path / "best" / "6").exists()
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)  # training goes on
    ckpts.save_best(9, state, {"step": 9}, test_error=45.0)
    ckpts.close()
    # the test error was written back from the checkpoint's meta: 40% is still the best
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6"]
    (tmp_path / "best" / "6" / "metrics" / "metrics").write_text("{garbage")
    (tmp_path / "best" / "6" / "meta" / "metadata").write_text("{garbage")
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(9, state, {"step": 9}, test_error=45.0)
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6.damaged", "9"]


def test_fingerprint_sees_any_changed_word():
    x = {"a": jnp.arange(1000, dtype=jnp.float32), "b": jnp.ones((3, 3), jnp.bfloat16),
         "c": jnp.array([True, False]), "n": jnp.array(7, jnp.int32)}
    fp = checkpoints.fingerprint(x)
    assert set(fp) == {"['a']", "['b']", "['c']", "['n']"}
    assert checkpoints.fingerprint(jax.tree.map(jnp.copy, x)) == fp
    for i in (0, 1, 511, 999):
        y = dict(x, a=x["a"].at[i].set(np.nextafter(np.float32(i), np.float32(2000))))
        assert checkpoints.fingerprint(y)["['a']"] != fp["['a']"], i
    swapped = dict(x, a=x["a"].at[jnp.array([3, 4])].set(jnp.array([4.0, 3.0])))
    assert checkpoints.fingerprint(swapped)["['a']"] != fp["['a']"]
    assert checkpoints.fingerprint(dict(x, b=x["b"].at[1, 1].set(2)))["['b']"] != fp["['b']"]
    assert checkpoints.fingerprint(dict(x, c=~x["c"]))["['c']"] != fp["['c']"]


# ---------------------------------------------------------------------------------------------
# Divergence


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, cache):
    """A huge learning rate: the loss is NaN by step 4. Steps are checked whenever one is logged
    and before every save, so with logging every 5 steps it is still caught at step 4, before that
    step's checkpoint is written."""
    workdir = tmp_path / "w"
    r = runs.run_main(workdir, "--config.num_train_steps=30", "--config.optim.learning_rate=1e4",
                      "--config.log_every_steps=5", "--config.checkpoint_every_epochs=0.0225",
                      cache=cache)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Non-finite training loss (nan) at step 4 ")
    assert "The newest checkpoint (step 2) predates it and is kept" in last
    assert "learning_rate" in last and "Traceback" not in r.stderr
    assert _committed_steps(workdir) == [2]
    state = runs.flat(runs.load_state(workdir))
    assert all(np.all(np.isfinite(v)) for v in state.values())


# ---------------------------------------------------------------------------------------------
# Bad data


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good_arrays(n=40, shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    return dict(image=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                label=rng.integers(0, 10, n).astype(np.int64))


BAD_DATA = {
    "label out of range": (dict(label=np.r_[np.arange(9), 12]), ["--config.data.num_classes=10"],
                           ["labels outside [0, 10)", "labels[9] = 12"]),
    "negative label": (dict(label=np.r_[-1, np.arange(9)]), [], ["labels outside", "labels[0] = -1"]),
    "float images": (dict(image=np.zeros((10, 8, 8, 3), np.float32)), [], ["images are float32", "uint8"]),
    "images without channel axis": (dict(image=np.zeros((10, 8, 8), np.uint8)), [],
                                    ["rank 4", "x[..., None]"]),
    "empty split": (dict(image=np.zeros((0, 8, 8, 3), np.uint8), label=np.zeros((0,), np.int64)), [],
                    ["empty"]),
    "no label array": (dict(label=None), [], ["no array(s) ['label']", "np.savez"]),
    "one-hot labels": (dict(label=np.eye(10, dtype=np.int64)), [], ["labels have shape (10, 10)"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_npz_data_stops_before_training(tmp_path, case):
    changes, extra, needles = BAD_DATA[case]
    arrays = _good_arrays(n=10)
    arrays.update(changes)
    if "image" in changes and "label" not in changes:
        arrays["label"] = arrays["label"][: len(arrays["image"])]
    arrays = {k: v for k, v in arrays.items() if v is not None}
    bad = _npz(tmp_path / "bad.npz", **arrays)
    good = _npz(tmp_path / "good.npz", **_good_arrays())
    workdir = tmp_path / "w"
    r = runs.run_main(workdir, "--config.data.dataset=npz", f"--config.data.npz_train={bad}",
                      f"--config.data.npz_test={good}", *extra, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and bad in last, last
    for needle in needles:
        assert needle in last, last
    assert "Traceback" not in r.stderr
    assert not workdir.exists()  # stopped before creating anything, let alone compiling


@pytest.mark.parametrize("case", ["shapes differ", "dtypes differ", "glob matches nothing", "no such label key",
                                  "labels out of range after a key change"])
def test_bad_npz_parts_stop_before_training(tmp_path, case):
    a = _npz(tmp_path / "a.npz", coarse_label=np.zeros(40, np.int64), **_good_arrays())
    b_arrays = dict(_good_arrays(seed=1), coarse_label=np.zeros(40, np.int64))
    extra: list[str] = []
    if case == "shapes differ":
        b_arrays["image"] = b_arrays["image"][:, :4]
        needles = ["b.npz", "(4, 8, 3)", "(8, 8, 3)"]
    elif case == "dtypes differ":
        b_arrays["image"] = b_arrays["image"].astype(np.float32)
        needles = ["b.npz", "float32"]
    elif case == "glob matches nothing":
        needles = ["npz_train", "c_*.npz", "matches no file"]
    elif case == "no such label key":
        extra, needles = ["--config.data.npz_label=fine"], ["a.npz", "'fine'", "npz_label"]
    else:  # the fine labels (0..9) with the class count of a coarser labelling
        extra, needles = ["--config.data.num_classes=5"], ["a.npz", "'label'", "outside [0, 5)"]
    b = _npz(tmp_path / "b.npz", **b_arrays)
    parts = f"{a},{b}" + (f",{tmp_path / 'c_*.npz'}" if case == "glob matches nothing" else "")
    workdir = tmp_path / "w"
    r = runs.run_main(workdir, "--config.data.dataset=npz", f"--config.data.npz_train={parts}",
                      f"--config.data.npz_test={a}", *extra, timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for needle in needles:
        assert needle in last, last
    assert "Traceback" not in r.stderr
    assert not workdir.exists()


def test_padding_larger_than_the_images_is_refused(tmp_path):
    config = _tiny_config()
    config.data.pad = 9  # the digits are 8x8
    with pytest.raises(ValueError, match=r"data.pad=9 is larger than the 8x8 images"):
        train.Setup(config)
    config.data.pad = 8
    assert train.Setup(config).config.data.pad == 8


def test_train_and_test_images_of_different_shapes(tmp_path):
    a = _npz(tmp_path / "a.npz", **_good_arrays(shape=(8, 8, 3)))
    b = _npz(tmp_path / "b.npz", **_good_arrays(shape=(8, 8, 1)))
    r = runs.run_main(tmp_path / "w", "--config.data.dataset=npz", f"--config.data.npz_train={a}",
                      f"--config.data.npz_test={b}", timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "(8, 8, 3)" in last and "(8, 8, 1)" in last and "same image shape" in last


# ---------------------------------------------------------------------------------------------
# Logs


def test_metrics_log_drops_a_torn_line_and_steps_past_the_checkpoint(tmp_path):
    path = tmp_path / logs.METRICS_FILE
    lines = [{"type": "event", "step": 0, "event": "started"}] + [
        {"type": "train", "step": s, "loss": 1.0 / s} for s in range(1, 8)
    ] + [{"type": "eval", "step": 6, "test_error": 50.0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"type": "train", "st')
    recs, torn = logs.read_jsonl(path)
    assert torn and len(recs) == 9  # the report reads the complete lines
    log = logs.MetricsLog(tmp_path, resume_step=5, tensorboard=False)
    log.write("train", 6, loss=0.5)
    log.close()
    recs, torn = logs.read_jsonl(path)
    assert not torn
    assert [(r["type"], r["step"]) for r in recs] == [("event", 0)] + [("train", s) for s in range(1, 7)]
    assert recs[-1]["loss"] == 0.5
    # no checkpoint to resume: the log starts afresh rather than keeping the crashed start
    log = logs.MetricsLog(tmp_path, resume_step=None, tensorboard=False)
    log.write("event", 0, event="started")
    log.close()
    assert [r["type"] for r in logs.read_jsonl(path)[0]] == ["event"]


# ---------------------------------------------------------------------------------------------
# Config fuzzing

_floats = st.one_of(
    st.sampled_from([0.0, -1.0, 1.0, 0.5, 1e-3, 1e30, -1e-9, math.nan, math.inf, -math.inf]),
    st.floats(-2.0, 2.0, allow_nan=False),
)
_ints = st.one_of(st.sampled_from([0, -1, 1, 2, 2**31, -(2**40)]), st.integers(-5, 40))
_maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731

# field -> values: mostly plausible ones, plus the edges and nonsense a command line can carry.
FIELDS = {
    "batch_size": st.one_of(st.sampled_from([8, 16, 32]), _ints, st.just(10**6)),
    "eval_batch_size": st.one_of(st.sampled_from([16, 64, 500]), _ints),
    "num_train_steps": st.one_of(st.integers(1, 4), _ints),
    "num_epochs": _floats,
    "halt_after_steps": st.one_of(st.just(-1), _ints),
    "seed": st.one_of(st.integers(0, 5), _ints),
    "log_every_steps": st.one_of(st.integers(1, 5), _ints),
    "keep_checkpoints": st.one_of(st.integers(1, 4), _ints),
    "eval_every_epochs": st.one_of(st.sampled_from([0.5, 1.0]), _floats),
    "checkpoint_every_epochs": st.one_of(st.sampled_from([0.5, 1.0]), _floats),
    "dtype": st.sampled_from(["float32", "bfloat16", "float16", "int8", ""]),
    "optim.name": st.sampled_from(["sgd", "adamw", "adam", "SGD"]),
    "optim.learning_rate": st.one_of(st.sampled_from([0.1, 0.01]), _floats),
    "optim.momentum": st.one_of(st.sampled_from([0.9, 0.0]), _floats),
    "optim.nesterov": st.booleans(),
    "optim.weight_decay": st.one_of(st.sampled_from([1e-4, 0.0]), _floats),
    "optim.schedule": st.sampled_from(["piecewise", "cosine", "constant", "linear", ""]),
    "optim.decay_at": st.lists(st.one_of(st.floats(0.05, 0.95), _floats), max_size=3).map(tuple),
    "optim.decay_factor": st.one_of(st.just(0.1), _floats),
    "optim.warmup_epochs": st.one_of(st.just(0.0), _floats),
    "optim.warmup_factor": st.one_of(st.just(0.1), _floats),
    "model.name": st.sampled_from(["densenet_bc_tiny", "densenet_tiny", "densenet_cifar", "resnet20",
                                   "resnet_cifar", "vgg11", "densenet_bc_7", "resnet"]),
    "model.depth": _maybe(st.sampled_from([4, 7, 10, 13, 16, 20, 22, 0, -4, 11])),
    "model.growth_rate": _maybe(st.one_of(st.integers(1, 12), _ints)),
    "model.compression": _maybe(st.one_of(st.sampled_from([0.5, 1.0]), _floats)),
    "model.bn_size": _maybe(st.one_of(st.integers(1, 4), _ints)),
    "model.num_init_features": _maybe(st.one_of(st.integers(1, 24), _ints)),
    "model.dropout_rate": _maybe(st.one_of(st.sampled_from([0.0, 0.2]), _floats)),
    "model.bottleneck": _maybe(st.booleans()),
    "model.activation": _maybe(st.sampled_from(["pre", "post", "mid"])),
    "model.dropout_placement": _maybe(st.sampled_from(["torch", "torchvision", "keras"])),
    "model.memory_efficient": _maybe(st.booleans()),
    "data.dataset": st.sampled_from(["digits", "digits", "digits", "npz", "mnist"]),
    "data.pad": st.one_of(st.integers(0, 4), _ints),
    "data.normalization": st.sampled_from(["mean_std", "scale", "minmax"]),
    "data.num_classes": _maybe(st.sampled_from([10, 12, 1, 0, -3, 9])),
    "data.augment": st.booleans(),
    "data.flip": st.booleans(),
    "data.train_limit": _maybe(st.sampled_from([100, 1, 0, -5, 10**9])),
    "data.test_limit": _maybe(st.sampled_from([50, 1, 0, -5])),
}

overrides_strategy = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.just(None), min_size=1,
                                     max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys}))


def _tiny_config():
    import tiny_config

    c = tiny_config.get_config()
    c.compilation_cache_dir = ""
    return c


def _apply(config, overrides) -> None:
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value


# Errors that rightly name the field an override makes necessary rather than the override itself.
NEEDS = {"data.dataset": ("data.npz_train",)}


def _fails_fast(error: Exception, overrides: dict) -> bool:
    """The error names one of the overridden fields: by its dotted name; the model's fields may be
    named by the model builder under their own names, and ml_collections' type errors quote the
    last part of the name."""
    text = str(error)
    for field in overrides:
        leaf = field.split(".")[-1]
        names = (field, *NEEDS.get(field, ()))
        if any(n in text for n in names) or f"'{leaf}'" in text:
            return True
        if field.startswith("model.") and leaf != "name" and leaf in text:
            return True
    return False


def _start_abstractly(setup):
    """Everything a run compiles, traced without compiling or running: the state's creation and
    one train step."""
    state = jax.eval_shape(setup.init_state)
    n, batch = setup.info.num_train, setup.config.batch_size
    images = jax.ShapeDtypeStruct((n, *setup.info.image_shape), jnp.uint8, sharding=setup.replicated)
    labels = jax.ShapeDtypeStruct((n,), jnp.int32, sharding=setup.replicated)
    idx = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=setup.source.batch_sharding)
    new_state, metrics = jax.eval_shape(setup.train_step, train.abstract_state(state, setup.mesh),
                                        images, labels, idx)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].shape == ()


def _cli(field, value) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return f"--config.{field}=({','.join(repr(v) for v in value)}{',' if len(value) == 1 else ''})"
    return f"--config.{field}={value}"


# Each example builds a setup and traces its steps (about a second on two cores); the examples
# are derandomised, so every run of the suite tries the same ones.
FUZZ_EXAMPLES = 40


def test_fuzzed_configs_start_or_fail_fast_naming_a_field(tmp_path, cache, fast_compile):
    """Random overrides of many fields, in-process: each config either builds a setup whose
    state creation and train step trace (everything a run compiles), or is refused with a
    ValueError (ConfigError, DataError) that names an overridden field. Then a few of the valid
    ones run for two steps through the command line."""
    outcomes = {"started": [], "refused": []}

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(overrides_strategy)
    def check(overrides):
        config = _tiny_config()
        try:
            _apply(config, overrides)
        except TypeError as e:  # ml_collections refuses a value of the wrong type, naming the field
            assert _fails_fast(e, overrides), (overrides, e)
            outcomes["refused"].append(overrides)
            return
        try:
            setup = train.Setup(config)
        except ValueError as e:  # ConfigError and DataError are ValueErrors
            assert _fails_fast(e, overrides), (overrides, e)
            outcomes["refused"].append(overrides)
            return
        _start_abstractly(setup)  # anything raised here is a failure deep inside JAX
        outcomes["started"].append(overrides)

    check()
    started, refused = outcomes["started"], outcomes["refused"]
    print(f"\nfuzzed configs: {len(started) + len(refused)} examples, {len(started)} start, "
          f"{len(refused)} refused")
    assert len(started) + len(refused) >= FUZZ_EXAMPLES
    assert len(started) >= FUZZ_EXAMPLES // 10 and len(refused) >= FUZZ_EXAMPLES // 4
    assert not (tmp_path / "w").exists()

    # Through the command line: the valid configs with the most overrides, for two steps.
    skip = {"num_train_steps", "halt_after_steps", "num_epochs", "data.train_limit"}
    candidates = []
    for o in started:
        args = [_cli(k, v) for k, v in o.items() if k not in skip and v is not None]
        if None not in args and len(args) >= 3 and o.get("eval_batch_size", 0) <= 4096:
            candidates.append(args)
    candidates.sort(key=len, reverse=True)
    assert len(candidates) >= 2
    for i, args in enumerate(candidates[:2]):
        r = runs.run_main(tmp_path / f"cli{i}", *args, "--config.num_train_steps=2", cache=cache,
                          timeout=300)
        if r.returncode == 2:  # a valid config may still diverge, and must say so
            assert "Non-finite" in r.stderr.strip().splitlines()[-1], (args, r.stderr[-2000:])
        else:
            assert r.returncode == 0 and "Finished 2 steps" in r.stdout, (args, r.stderr[-3000:])


# ---------------------------------------------------------------------------------------------
# Multi-process


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_survivor_of_a_dead_process_exits_in_bounded_time(tmp_path, cache, how):
    """Two processes; process 1 is SIGKILLed (its sockets close: the next collective fails) or
    SIGSTOPped (it hangs: only the missed heartbeats tell). Process 0 must exit with an error in
    bounded time either way."""
    port = runs.free_port()
    workdir = tmp_path / "mp"
    errs = [open(tmp_path / f"p{i}.txt", "w") for i in range(2)]
    procs = [
        subprocess.Popen(
            runs.main_cmd(workdir, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                          f"--process_id={i}", "--heartbeat_timeout_seconds=10",
                          "--config.num_train_steps=100000", "--config.log_every_steps=1", cache=cache),
            cwd=runs.REPO, env=runs.env(1), stdout=subprocess.DEVNULL, stderr=errs[i],
        )
        for i in range(2)
    ]
    try:
        deadline = time.time() + 240
        while len(list(logs.records(workdir, "train"))) < 3:
            assert time.time() < deadline and all(p.poll() is None for p in procs), "no progress"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        hit = time.time()
        rc = procs[0].wait(timeout=120)
        took = time.time() - hit
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in errs:
            f.close()
    text = (tmp_path / "p0.txt").read_text()
    print(f"\nprocess 1 {how}: process 0 exited with {rc} after {took:.1f}s")
    assert rc != 0
    if how == "killed":
        assert rc == 4, text[-3000:]
        last = text.strip().splitlines()[-1]
        assert last.startswith("error: process 0 of 2 stopped") and "Another process has probably died" in last
        assert took < 30
    else:  # jax.distributed stops it once process 1 has missed heartbeats for 10 s
        assert "another task died" in text or "heartbeat" in text, text[-3000:]
        assert took < 60


# ---------------------------------------------------------------------------------------------
# The workdir: one writer, full and read-only disks, changed configs, finished runs


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A size-limited file system of its own at ``path`` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a size-limited tmpfs needs root: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _wait_for(predicate, timeout=180, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _start(workdir, *overrides, cache):
    return subprocess.Popen(runs.main_cmd(workdir, *overrides, cache=cache), cwd=runs.REPO, env=runs.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_on_a_workdir_in_use_is_refused_and_the_first_is_unharmed(tmp_path, cache, uninterrupted):
    workdir = tmp_path / "w"
    first = _start(workdir, *LONG, cache=cache)
    lock = workdir / "lock"
    try:
        _wait_for(lambda: (_holder(lock) or {}).get("pid") == first.pid, what="the first run's lock")
        first.send_signal(signal.SIGSTOP)  # holds its lock while the second starts, however slow
        second = runs.run_main(workdir, *LONG, cache=cache)
        first.send_signal(signal.SIGCONT)
        assert second.returncode == 3, second.stderr[-3000:]
        line = second.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: --workdir={workdir} is in use by another run: pid {first.pid} on ")
        out, err = first.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert not lock.exists()  # a run that ends removes it
    assert_same_run(uninterrupted, workdir)  # bitwise the lone run


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, cache):
    workdir = tmp_path / "w"
    dead = _start(workdir, "--config.num_train_steps=2", cache=cache)
    lock = workdir / "lock"
    _wait_for(lambda: (_holder(lock) or {}).get("pid") == dead.pid, what="the lock")
    dead.kill()
    dead.communicate()
    assert _holder(lock)["pid"] == dead.pid  # SIGKILL leaves the file, but not the lock
    r = runs.run_main(workdir, "--config.num_train_steps=2", cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Took over the lock {lock} left by pid {dead.pid} on " in r.stderr
    assert not lock.exists()


def _fill(path: Path) -> int:
    """Writes zeros into ``path`` until the file system is full; returns the bytes written."""
    n = 0
    with path.open("wb", buffering=0) as f:
        try:
            while True:
                n += f.write(bytes(1 << 14))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return n


def test_a_full_disk_stops_the_run_cleanly_and_a_rerun_resumes_bitwise(tmp_path, cache, uninterrupted):
    with _tmpfs(tmp_path / "disk", "3m") as disk:
        workdir = disk / "w"
        run = _start(workdir, *LONG, cache=cache)
        try:
            _wait_for(lambda: any(r["step"] >= 20 for r in logs.records(workdir, "train")), what="step 20")
            filled = _fill(disk / "filler")
            out, err = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert filled > 0
        assert run.returncode == 3, err[-3000:]
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: Cannot write to --workdir={workdir}: No space left on device"), line
        committed = checkpoints.committed_steps(workdir)
        assert committed and committed[-1] < STEPS  # the save in flight at the fill may be lost
        assert f"The checkpoints up to step {committed[-1]} are intact" in line
        recs, torn = logs.read_jsonl(workdir / logs.METRICS_FILE)
        assert not torn and recs[-1]["type"] == "train"

        (disk / "filler").unlink()  # space freed: the same command resumes
        r = runs.run_main(workdir, *LONG, cache=cache)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "Skipping checkpoint" not in r.stderr  # the newest committed one was intact
        resumed = [x["step"] for x in logs.records(workdir, "event") if x["event"] == "resumed"]
        assert resumed == [committed[-1]]
        assert_same_run(uninterrupted, workdir)


def test_a_read_only_workdir_is_refused_with_the_path(tmp_path, cache):
    with _tmpfs(tmp_path / "disk", "1m") as disk:
        (disk / "w").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for workdir in (disk / "w", disk / "new" / "w"):  # an existing one, and one it cannot create
            r = runs.run_main(workdir, cache=cache)
            assert r.returncode == 3, r.stderr[-3000:]
            line = r.stderr.strip().splitlines()[-1]
            assert line == (f"error: --workdir={workdir} is not writable (Read-only file system); "
                            "choose a writable directory. Nothing was written.")


# A run halted at step 2 of 4 (unfinished) is the base of each config change.
BASE = ("--config.num_train_steps=4", "--config.optim.schedule=constant", "--config.log_every_steps=1")
HALTED = (*BASE, "--config.halt_after_steps=2")


@pytest.fixture(scope="module")
def halted(tmp_path_factory, cache):
    workdir = tmp_path_factory.mktemp("halted") / "w"
    r = runs.run_main(workdir, *HALTED, cache=cache)
    assert r.returncode == 0 and "Halted" in r.stderr, r.stderr[-3000:]
    return workdir


REFUSED = {  # field: (value in the halted run, new value)
    "batch_size": (16, 8),
    "optim.learning_rate": (0.1, 0.05),
    "optim.schedule": ("constant", "cosine"),
    "seed": (0, 1),
    "dtype": ("float32", "bfloat16"),
    "data.pad": (1, 2),
    "model.dropout_rate": (0.0, 0.1),  # the saved config holds every field of the network
    "num_train_steps": (4, 6),  # lengthening an unfinished run moves its schedule
}


def test_resuming_with_changed_training_fields_is_refused_with_a_diff(tmp_path, halted):
    from tiny_config import get_config

    for field, (old, new) in REFUSED.items():
        workdir = tmp_path / field
        shutil.copytree(halted, workdir)
        before = _snapshot(workdir)
        config = get_config()
        config.num_train_steps, config.halt_after_steps, config.log_every_steps = 4, 2, 1
        config.optim.schedule = "constant"
        section, _, name = field.rpartition(".")
        (config[section] if section else config)[name] = new
        with pytest.raises(checkpoints.CheckpointError) as e:
            train.train_and_evaluate(config, workdir)
        msg = str(e.value)
        assert f"  {field}: {old!r} -> {new!r}" in msg, msg
        assert f"--accept_config_changes={field}" in msg and "Nothing in the workdir was changed" in msg
        assert _snapshot(workdir) == before, field


def test_changed_config_on_the_command_line_refused_then_accepted(tmp_path, cache, halted):
    workdir = tmp_path / "w"
    shutil.copytree(halted, workdir)
    changed = (*BASE, "--config.optim.learning_rate=0.05", "--config.eval_every_epochs=0.5")
    r = runs.run_main(workdir, *changed, cache=cache)
    assert r.returncode == 3
    assert "  optim.learning_rate: 0.1 -> 0.05" in r.stderr and "eval_every_epochs" not in r.stderr
    r = runs.run_main(workdir, *changed, "--accept_config_changes=optim.learning_rate", cache=cache)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Continuing" in r.stderr and "optim.learning_rate: 0.1 -> 0.05" in r.stderr
    event = [x for x in logs.records(workdir, "event") if x["event"] == "config_changed"]
    assert len(event) == 1 and event[0]["step"] == 2
    assert event[0]["changes"] == {"eval_every_epochs": [1000.0, 0.5], "halt_after_steps": [2, -1],
                                   "optim.learning_rate": [0.1, 0.05]}
    assert [x["learning_rate"] for x in logs.records(workdir, "train")] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert json.loads((workdir / "config.json").read_text())["optim"]["learning_rate"] == 0.05


def test_a_finished_run_started_again_is_left_as_it_was_and_can_be_extended(tmp_path, cache, halted):
    workdir = tmp_path / "w"
    shutil.copytree(halted, workdir)
    done = runs.run_main(workdir, *BASE, cache=cache)  # finishes steps 3-4
    assert done.returncode == 0, done.stderr[-3000:]
    before = {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}
    stamps = _snapshot(workdir)
    again = runs.run_main(workdir, *BASE[:2], "--config.log_every_steps=2", cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == done.stdout  # "Finished 4 steps: test error ..." from its log
    assert {p: p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()} == before
    assert _snapshot(workdir) == stamps
    final = list(logs.records(workdir, "final"))
    assert len(final) == 1 and "train_loss" in final[0]

    longer = runs.run_main(workdir, "--config.num_train_steps=6", *BASE[1:], cache=cache)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "num_train_steps: 4 -> 6" in longer.stderr
    assert [x["step"] for x in logs.records(workdir, "train")] == list(range(1, 7))
    assert [x["step"] for x in logs.records(workdir, "final")] == [6]


def test_eval_batch_size_is_bounded_by_the_test_split(fast_compile):
    from tiny_config import get_config

    config = get_config()
    config.eval_batch_size = 10**9
    config.compilation_cache_dir = ""
    setup = train.Setup(config)
    assert setup.eval_batch_size == setup.info.num_test == 360
    assert config.eval_batch_size == 10**9  # the config is not changed
    metrics = setup.evaluate(setup.init_state())
    assert metrics["test_count"] == 360


def test_a_best_checkpoint_without_its_metrics_is_recovered_or_set_aside(tmp_path):
    state = {"w": jnp.ones((2, 2))}
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(6, state, {"step": 6}, test_error=40.0)
    ckpts.close()
    (tmp_path / "best" / "6" / "metrics" / "metrics").unlink()
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(9, state, {"step": 9}, test_error=45.0)  # worse: the recovered 40% stays best
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6"]
    assert json.loads((tmp_path / "best" / "6" / "metrics" / "metrics").read_text()) == {"test_error": 40.0}
    # neither the metrics nor the meta: set aside, and the next evaluation makes a new best
    shutil.rmtree(tmp_path / "best" / "6" / "metrics")
    (tmp_path / "best" / "6" / "meta" / "metadata").write_text("{garbage")
    ckpts = checkpoints.Checkpoints(tmp_path, training=True)
    ckpts.save_best(12, state, {"step": 12}, test_error=45.0)
    ckpts.close()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["12", "6.damaged"]
