"""The study runner's local executor and its placement: runs packed onto a host's devices, a failing
run among finishing ones, SIGTERM and the rerun, several hosts on one root, seeds on any study.

The end-to-end tests start the real runner, which starts real ``dnjax.main`` processes: four tiny
runs of the smoke budget, each bound to one CPU core, so that their numbers do not depend on how
many run at once (XLA:CPU's results depend on the number of threads a run has, not on its
neighbours). The placement of runs on GPUs and TPU chips is checked as the environment it builds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnjax import logs
from dnjax.exits import ExitStatus
from experiments import hosts, run, studies

REPO = Path(__file__).resolve().parents[1]
STUDY = "pre_vs_post_activation"
RUNS = ("densenet_bc100_k12_pre_c10+_s0", "densenet_bc100_k12_post_c10+_s0",
        "resnet164_pre_c10+_s0", "resnet164_post_c10+_s0")
# 5 epochs of the 64-image digits split at batch 16: 20 steps, evaluated and saved every 4.
LONGER = ("num_epochs=5",)

pytestmark = pytest.mark.slow  # whole runs in subprocesses


# 1. Placement: the environment of each slot (no hardware needed) ----------------------------------


def test_eight_gpus_one_run_each_or_two_gpus_each():
    gpus = hosts.Host("gpu", tuple(range(8)), "test")
    slots, why = hosts.plan(gpus, None)
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(8)]
    assert all(s.cpus is None for s in slots) and "one run per GPU" in why and "8 run(s) at once" in why
    slots, _ = hosts.plan(gpus, 4)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3", "4,5", "6,7"]
    slots, why = hosts.plan(gpus, 3, 2)
    assert [s.share for s in slots] == [(0, 1), (2, 3), (4, 5)] and "2 left idle" in why
    with pytest.raises(hosts.PlacementError, match="need 9 GPUs; this host has 8"):
        hosts.plan(gpus, 3, 3)
    # One run on the whole host is left as a run started by hand: nothing set.
    assert hosts.plan(gpus, 1) == ([hosts.Slot(0, gpus.devices, {}, None, "the whole host")], hosts.plan(gpus, 1)[1])


def test_a_four_chip_tpu_vm_gives_each_process_its_chips_and_controller():
    tpu = hosts.Host("tpu", (0, 1, 2, 3), "test")
    slots, why = hosts.plan(tpu, None)
    assert "one run per TPU chip" in why
    for i, s in enumerate(slots):
        assert s.env == {
            "TPU_VISIBLE_CHIPS": str(i), "TPU_VISIBLE_DEVICES": str(i),
            "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1", "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{8476 + i}", "TPU_MESH_CONTROLLER_PORT": str(8476 + i),
        }
    pairs, _ = hosts.plan(tpu, 2)
    assert [(s.env["TPU_VISIBLE_CHIPS"], s.env["TPU_CHIPS_PER_PROCESS_BOUNDS"]) for s in pairs] == [
        ("0,1", "1,2,1"), ("2,3", "1,2,1")]
    assert len({s.env["TPU_MESH_CONTROLLER_PORT"] for s in pairs}) == 2
    (whole,), _ = hosts.plan(tpu, 1)  # even alone on a VM of a pod slice, a run is given its chips
    assert whole.env["TPU_VISIBLE_CHIPS"] == "0,1,2,3" and whole.env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "2,2,1"
    assert whole.env["TPU_PROCESS_BOUNDS"] == "1,1,1"
    with pytest.raises(hosts.PlacementError, match="1, 2, 4 or 8 chips"):
        hosts.plan(hosts.Host("tpu", tuple(range(6)), "test"), 2)


def test_two_cpu_cores_bind_one_run_to_each_with_one_thread():
    cpu = hosts.Host("cpu", (0, 1), "test")
    slots, why = hosts.plan(cpu, None)
    assert [s.cpus for s in slots] == [(0,), (1,)] and "one run per CPU core" in why
    assert all(s.env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"} for s in slots)
    (alone,), _ = hosts.plan(cpu, 1, 1)  # one at a time, but on one core like the packed runs
    assert alone.cpus == (0,) and alone.env["OMP_NUM_THREADS"] == "1"
    (whole,), _ = hosts.plan(cpu, 1)
    assert whole.cpus is None and whole.env == {}
    shared, why = hosts.plan(cpu, 2, 2)  # a CPU's cores may be shared: each run as if alone
    assert [(s.cpus, s.env) for s in shared] == [(None, {}), (None, {})] and "sharing" in why
    assert [s.cpus for s in hosts.plan(hosts.Host("cpu", (0, 1, 2), "test"), 2, 2)[0]] == [(0, 1), (2, 0)]


def test_tpu_chips_are_found_from_accel_devices_or_googles_pci_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("TPU_VISIBLE_CHIPS", raising=False)
    monkeypatch.delenv("TPU_VISIBLE_DEVICES", raising=False)
    dev, pci = tmp_path / "dev", tmp_path / "pci"
    for d in (dev / "vfio", pci):
        d.mkdir(parents=True)
    (dev / "vfio" / "0").touch()  # a VFIO group alone is not a TPU
    for i, vendor in enumerate(["0x10de", "0x1ae0", "0x1ae0", "0x8086"]):
        (pci / f"0000:00:0{i}.0").mkdir()
        (pci / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
    assert hosts._tpu_chips(dev, pci)[0] == (0, 1)
    for i in range(4):
        (dev / f"accel{i}").touch()
    assert hosts._tpu_chips(dev, pci) == ((0, 1, 2, 3), "/dev/accel*")
    assert hosts._tpu_chips(tmp_path / "none", tmp_path / "none") is None


def test_detect_follows_jax_platforms_and_the_affinity():
    host = hosts.detect({"JAX_PLATFORMS": "cpu"})
    assert host.platform == "cpu" and host.devices == tuple(sorted(os.sched_getaffinity(0)))


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_bad_parallel_values_are_refused(text):
    with pytest.raises(hosts.PlacementError, match="--parallel"):
        hosts.parse_parallel(text)


def test_host_index_from_the_flag_a_tpu_pod_and_slurm():
    assert hosts.parse_host("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "1/0"):
        with pytest.raises(hosts.PlacementError, match="--host"):
            hosts.parse_host(bad)
    pod = {"TPU_WORKER_ID": "3", "TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}
    assert hosts.host_index(pod, tpu_vm=False)[:2] == (3, 4)
    assert hosts.host_index({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, tpu_vm=False)[:2] == (1, 2)
    assert hosts.host_index({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, tpu_vm=False)[:2] == (0, 1)
    assert hosts.host_index({}, tpu_vm=False)[:2] == (0, 1)


def test_every_run_falls_to_exactly_one_host():
    runs = studies.study_runs("table2")
    for count in (1, 2, 3, 5, 40):
        shares = [hosts.host_share(runs, i, count) for i in range(count)]
        names = [r.name for share in shares for r in share]
        assert sorted(names) == sorted(r.name for r in runs) and len(set(names)) == len(runs)


# 2. Seeds on any study --------------------------------------------------------------------------


def test_seeds_on_a_study_without_seeds_of_its_own():
    plain = studies.study_runs("resnet_vs_densenet", "cifar100-cpu")
    assert [r.seed for r in plain] == [0, 0]
    seeded = studies.study_runs("resnet_vs_densenet", "cifar100-cpu", seeds=(0, 1, 2))
    assert [r.name for r in seeded] == [f"{r.name}_s{s}" for r in plain for s in (0, 1, 2)]
    assert [r.seed for r in seeded] == [0, 1, 2] * 2
    assert {r.group for r in seeded} == {r.name for r in plain}  # a setting's seeds are one group
    for r in seeded:
        assert r.args("w")[-1] == f"--config.seed={r.seed}"
        assert r.args("w")[:-1] == next(p for p in plain if p.name == r.group).args("w")[:-1]


def test_seeds_replace_a_studys_own_and_reach_the_subsets():
    own = studies.study_runs(STUDY, "cifar10-sample")
    assert {r.seed for r in own} == set(studies.SAMPLE_SEEDS)
    seeded = studies.study_runs(STUDY, "cifar10-sample", seeds=(3, 4))
    assert len(seeded) == len(own) // len(studies.SAMPLE_SEEDS) * 2
    assert {r.seed for r in seeded} == {3, 4} and all(r.name.endswith(f"_s{r.seed}") for r in seeded)
    data = studies.study_runs("data_efficiency", "smoke", seeds=(5,))
    assert data and all(dict(r.overrides)["data.subset_seed"] == 5 for r in data)
    assert studies.parse_seeds("0-2,7") == (0, 1, 2, 7)
    for bad in ("", "a", "1,1", "-1"):
        with pytest.raises(studies.StudyError, match="--seeds"):
            studies.parse_seeds(bad)


def test_a_root_keeps_its_seeds(tmp_path, capsys):
    assert run.main([STUDY, f"--root={tmp_path}", "--smoke", "--seeds=0", "--only=nothing*"]) == 2
    assert "nothing*" in capsys.readouterr().err
    run.write_manifest(tmp_path, STUDY, "smoke", (0, 1))
    assert run.check_root(tmp_path, STUDY, "smoke", (1, 2)) == (0, 1, 2)  # more seeds may be added
    with pytest.raises(studies.StudyError, match="started with --seeds=0,1"):
        run.check_root(tmp_path, STUDY, "smoke", None)


# 3. The runner end to end -----------------------------------------------------------------------


def env() -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
                PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def command(root: Path, cache: str, *extra: str, runs=RUNS, sets=LONGER) -> list[str]:
    return [sys.executable, "-m", "experiments.run", STUDY, f"--root={root}", "--smoke",
            f"--set=compilation_cache_dir={cache}", *[f"--set={s}" for s in sets],
            *[f"--only={n}" for n in runs], *extra]


def runner(root: Path, cache: str, *extra: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(command(root, cache, *extra, **kw), cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=600)


def numbers(workdir: Path) -> list[tuple]:
    """What a run computed: every training and evaluation record without its times and speeds."""
    out = []
    for r in logs.records(workdir):
        if r["type"] in ("train", "eval", "final"):
            out.append(tuple(sorted((k, v) for k, v in r.items() if k not in ("time", "img_per_s"))))
    return out


def exits(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(root.glob("runner*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory, cache):
    """The four runs one after another, each on one CPU core: what any packing must reproduce."""
    root = tmp_path_factory.mktemp("sequential")
    proc = runner(root, cache, "--parallel=1", "--devices_per_run=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--parallel=1: 1 run(s) at once, each on 1 of this host's" in proc.stdout
    return {name: numbers(root / name) for name in RUNS}


def test_two_at_once_compute_what_one_at_a_time_computes(tmp_path, cache, one_at_a_time):
    proc = runner(tmp_path, cache, "--parallel=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "--parallel=2: 2 run(s) at once, each on 1 of this host's 2 CPU cores" in out
    assert sum(f"{n}: started on CPU core" in out for n in RUNS) == 4
    for name in RUNS:
        assert numbers(tmp_path / name) == one_at_a_time[name], name
        steps = [r["step"] for r in logs.records(tmp_path / name, "eval")]
        assert steps == [4, 8, 12, 16, 20]
        for s in steps:  # without a terminal: one line per evaluation
            assert f"{name}: step {s}/20, test error " in out
        assert f"{name}: finished in " in out
        assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0
    # Both slots were busy at once: a run started before another ended.
    starts = {e["run"]: e["time"] - e["seconds"] for e in exits(tmp_path)}
    ends = {e["run"]: e["time"] for e in exits(tmp_path)}
    assert any(starts[a] < ends[b] and starts[b] < ends[a] for a in RUNS for b in RUNS if a < b)
    again = runner(tmp_path, cache, "--parallel=2")
    assert again.returncode == 0 and again.stdout.count("finished already, skipped") == 4
    assert len(exits(tmp_path)) == 4


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, cache):
    # model.growth_rate is a DenseNet field: the ResNet run refuses it (exit 2), the DenseNets train.
    picked = RUNS[:2] + RUNS[3:]
    proc = runner(tmp_path, cache, "--parallel=2", runs=picked, sets=("model.growth_rate=4",))
    assert proc.returncode == ExitStatus.FAILED, proc.stdout[-3000:] + proc.stderr[-3000:]
    bad = RUNS[3]
    assert f"{bad}: FAILED (exit status 2)" in proc.stdout
    report = proc.stdout.split(f"{bad}: FAILED", 1)[1]
    assert "growth_rate" in report  # the last lines of its log, with dnjax's one-line error
    assert f"1 run(s) did not finish: {bad} (exit status 2)" in proc.stdout
    assert {e["run"]: e["rc"] for e in exits(tmp_path)} == {RUNS[0]: 0, RUNS[1]: 0, bad: 2}
    for name in RUNS[:2]:
        assert any(r["type"] == "final" for r in logs.records(tmp_path / name))


def test_sigterm_stops_every_run_and_the_rerun_ends_identical(tmp_path, cache, one_at_a_time):
    proc = subprocess.Popen(command(tmp_path, cache, "--parallel=2"), cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # both first runs are training
        if all(any(r["type"] == "train" for r in logs.records(tmp_path / n)) for n in RUNS[:2]
               if (tmp_path / n / "metrics.jsonl").exists()) and all(
                   (tmp_path / n / "metrics.jsonl").exists() for n in RUNS[:2]):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == ExitStatus.PREEMPTED, out[-3000:]
    assert "Interrupted:" in out and "rerun the same command to resume" in out
    stopped = {e["run"]: e["rc"] for e in exits(tmp_path)}
    assert set(stopped) == set(RUNS[:2]) and all(rc in (ExitStatus.OK, ExitStatus.PREEMPTED) for rc in stopped.values()), stopped
    assert not any((tmp_path / n).exists() for n in RUNS[2:])  # nothing started after the signal
    assert any(r.get("event") == "preempted" for n in RUNS[:2] for r in logs.records(tmp_path / n))

    again = runner(tmp_path, cache, "--parallel=2")
    assert again.returncode == 0, again.stdout[-3000:]
    for name in RUNS:
        assert numbers(tmp_path / name) == one_at_a_time[name], name


def test_two_hosts_on_one_root_run_every_run_once(tmp_path, cache, one_at_a_time):
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for i in (0, 1):  # each "host" on a core of its own, as two machines would be
        core = cores[i % len(cores)]
        procs.append(subprocess.Popen(["taskset", "-c", str(core), *command(tmp_path, cache, f"--host={i}/2")],
                                      cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "host 0 of 2 takes 2 of them" in outs[0] and "host 1 of 2 takes 2 of them" in outs[1]
    records = exits(tmp_path)
    assert sorted(e["run"] for e in records) == sorted(RUNS)  # each exactly once
    assert {p.name for p in tmp_path.glob("runner*.jsonl")} == {"runner.host0of2.jsonl", "runner.host1of2.jsonl"}
    for name in RUNS:
        events = [r.get("event") for r in logs.records(tmp_path / name, "event")]
        assert events.count("started") == 1 and "resumed" not in events
        assert numbers(tmp_path / name) == one_at_a_time[name], name


def test_two_hosts_share_a_root_in_a_bucket_and_the_report_reads_it(gcs, cache):
    """Two hosts of one study under a gs:// root (a real GCS server on 127.0.0.1): each trains its
    run, the records and logs land in the bucket, and the report reads and writes there."""
    from experiments import report

    root = gcs.uri("packed")
    picked = (RUNS[0], RUNS[2])
    procs = [subprocess.Popen(command(root, cache, f"--host={i}/2", runs=picked, sets=()), cwd=REPO,
                              env={**env(), **gcs.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    names = set(gcs.objects("packed"))
    for i, name in enumerate(picked):
        assert f"{name}: finished in " in outs[i] and name not in outs[1 - i]
        assert {f"packed/{name}/metrics.jsonl", f"packed/logs/{name}.log"} <= names
    assert {"packed/study.json", "packed/runner.host0of2.jsonl", "packed/runner.host1of2.jsonl"} <= names
    assert report.main([STUDY, f"--root={root}", "--no_plots"]) == 0
    md = (report.storage.path(root) / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and any(n in line for n in picked)]
    assert len(rows) == 2 and all("| finished |" in row for row in rows)
