"""Scale, the pieces: exact .npy sizes, the plan command, the devices the repeats split over
(one host and two processes), and the sweep's grid, manifest and error lines. The 100-task run
and the sweep's jobs: test_scale.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from cljax.budget import device_components
from cljax.budget_disk import npy_bytes
from cljax.cli import main
from cljax.config import Config
from cljax.devices import check_repeats, cpu_devices_for, cpu_devices_wanted, put_repeats, wants_distributed
from cljax.errors import CljaxError
from cljax.settings import setting_specs
from cljax.sweep import expand, parse_grid
from cljax.sweep_executor import parse_minutes
from tests.conftest import FASHION_DIR
from tests.process_kit import suite_xla_flags
from tests.test_scale import budget_for_chunk, budget_of


def test_npy_sizes_are_exact(tmp_path):
    structured = np.dtype([("conv1/kernel", np.float32, (3, 3, 1, 16)), ("head/bias", np.float32, (1,))])
    for shape, dtype in [((4, 2, 5, 8, 64), np.float32), ((3, 2), structured), ((7,), np.uint16), ((), np.int64)]:
        path = tmp_path / "a.npy"
        np.save(path, np.zeros(shape, dtype), allow_pickle=False)
        assert npy_bytes(shape, dtype) == path.stat().st_size


def test_plan_cli_prints_text_and_json(tmp_path):
    flags = ["--dataset", "fashion_mnist", "--data-dir", str(FASHION_DIR), "--num-tasks", "5", "--n-repeats", "2",
             "--n-train-per-class", "32", "--n-test-per-class", "16", "--n-subsamples", "8", "--epochs", "1",
             "--batch-size", "16", "--log-frequency", "2", "--results-dir", str(tmp_path)]
    text = io.StringIO()
    with redirect_stdout(text):
        assert main(["plan", *flags]) == 0
    assert "evaluation: resident" in text.getvalue() and "disk for the whole run" in text.getvalue()
    assert "matmul precision highest, float32 compute, 1 step(s) per loop iteration" in text.getvalue()
    config = Config.from_flat(dataset="fashion_mnist", data_dir=str(FASHION_DIR), num_tasks=5, n_repeats=2,
                              n_train_per_class=32, n_test_per_class=16, n_subsamples=8, epochs=1, batch_size=16, log_frequency=2)
    budget = budget_for_chunk(config, 2)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plan", *flags, "--device-memory", str(budget), "--json", "--overwrite"]) == 0
    plan = json.loads(out.getvalue())
    assert plan["evaluation"]["mode"] == "chunked" and plan["evaluation"]["chunk_tasks"] == 2
    assert plan["device_budget_bytes"] == budget and plan["device_budget_source"] == "--device-memory"
    assert plan["disk_bytes_total"] == 5 * plan["disk_bytes_per_task"] + sum(plan["disk_run_files"].values())
    # weights (L+1, R, P) float32 in the snapshot buffers: L = 4 steps // 2 snapshots + the task start
    assert plan["n_logs"] == 2
    assert plan["device_components"]["snapshots.weights"] == 3 * 2 * plan["n_params"] * 4
    with redirect_stdout(io.StringIO()):
        assert main(["plan", *flags, "--device-memory", "1000"]) == 2  # does not fit: says so, exit 2
    # what `run` refuses, the plan refuses in the same line (it planned such a run as fitting)
    for more, expected in [(["--n-train-per-class", "100000"], "class 0 has 6000 training images, the fewest of any class, but 100000 are"),
                           (["--test-source", "train_holdout", "--n-train-per-class", "5000", "--n-test-per-class",
                             "1500"], "class 0 has 6000 training images, the fewest of any class, but 6500 are needed (--n-train-per-class + --n-test-per-class): lower their sum to at most 6000")]:
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            assert main(["plan", *flags, *more]) == 2
        assert err.getvalue().startswith(f"error: {expected}"), err.getvalue()


def test_plan_counts_a_replay_buffer_in_the_learner_state():
    fields = set(setting_specs())  # the flat settings (flags)
    assert {"use_replay", "replay_size"} <= fields
    base = Config.from_flat(dataset="synthetic", synthetic_classes=20, num_tasks=3, n_repeats=2, n_train_per_class=32,
                            n_test_per_class=8, n_subsamples=8, epochs=1, batch_size=16, log_frequency=4)
    with_replay = Config.from_flat({**base.to_dict(), "use_replay": True, "replay_size": 64})
    plain = device_components(budget_of(base), 3)
    replay = device_components(budget_of(with_replay), 3)
    extra = sum(replay.values()) - sum(plain.values())
    assert extra >= 64 * 2 * 28 * 28  # M images per repeat, uint8
    assert any(k.startswith("learner.option:") for k in replay)


def test_the_learner_fetched_for_the_checkpoint_does_not_keep_it_on_one_cpu_device(tmp_path):
    # On one CPU device jax.device_get returned views of the learner's buffers, which kept XLA
    # from donating them to the next task: two learners were live, 1.96x the plan with replay.
    import jax

    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    assert jax.device_count() == 1  # the suite's CPU split (tests/conftest.py)
    config = Config.from_flat(dataset="synthetic", synthetic_classes=8, num_tasks=3, n_repeats=2, n_train_per_class=16,
                              n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=2,
                              use_replay=True, replay_size=20000, model="mlp", mlp_hidden=16, results_dir=str(tmp_path))
    from cljax.devices.memory import live_device_bytes

    predicted = make_plan(config)["device_bytes_per_task_all_devices"]
    infos = {}
    baseline = live_device_bytes()  # arrays other tests of this process still hold
    run_experiment(config, progress=False, on_task_end=lambda t, info: infos.update({t: info}))
    buffer = 2 * 20000 * (28 * 28 + 4)  # the replay buffer, most of the learner (31 MB): held twice, 1.96x the plan
    peaks = [infos[t]["device_bytes_peak"] - baseline for t in range(3)]
    assert abs(max(peaks) - predicted) < buffer // 4, (peaks, predicted)


def test_repeats_must_split_over_devices(monkeypatch):
    import cljax.devices.mesh as mesh

    monkeypatch.setattr(mesh, "device_count", lambda: 4)
    with pytest.raises(CljaxError, match=r"--n-repeats 6 does not split over the 4 visible devices.*4 or 8"):
        check_repeats(6)
    check_repeats(8)
    import jax

    monkeypatch.setattr(jax, "process_count", lambda: 2)  # CLJAX_CPU_DEVICES does nothing there: not advised
    with pytest.raises(CljaxError, match=r"or show fewer devices \(CUDA_VISIBLE_DEVICES; in this multi-process run, "
                                         r"fewer processes or fewer devices each: each shows 2 of them\)"):
        check_repeats(6)
    monkeypatch.undo()
    arr = put_repeats(np.zeros((3, 2, 5), np.float32), 1)  # the real (one) device
    assert arr.sharding.spec[1] == "repeats"


def test_cpu_devices_follow_the_environment_and_divide_r():
    cores4 = {"cores": 4}
    assert cpu_devices_for(32, 2) == 2 and cpu_devices_for(6, 4) == 3 and cpu_devices_for(7, 4) == 1
    assert cpu_devices_wanted(32, {}, **cores4) == 4  # auto is the default
    assert cpu_devices_wanted(6, {"CLJAX_CPU_DEVICES": "auto"}, **cores4) == 3
    assert cpu_devices_wanted(5, {}, **cores4) is None  # a prime R: one device
    assert cpu_devices_wanted(1, {}, **cores4) is None
    assert cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": "2"}, **cores4) == 2
    for off in ("off", "0", "1"):
        assert cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": off}, **cores4) is None
    # the user's own split, and a multi-host run, are left alone
    assert cpu_devices_wanted(8, {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, **cores4) is None
    assert cpu_devices_wanted(8, {"CLJAX_DISTRIBUTED": "1"}, **cores4) is None
    with pytest.raises(CljaxError, match=r"CLJAX_CPU_DEVICES=3 does not divide --n-repeats 8: use a divisor"):
        cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": "3"})
    with pytest.raises(CljaxError, match=r"CLJAX_CPU_DEVICES='many' is not understood: use auto, off"):
        cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": "many"})
    with pytest.raises(CljaxError, match=r"CLJAX_CPU_DEVICES=-1: give a number of devices of at least 1"):
        cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": "-1"})


def test_a_bad_cpu_device_count_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CLJAX_CPU_DEVICES", "3")
    rc = main(["run", "--dataset", "synthetic", "--n-repeats", "4", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "CLJAX_CPU_DEVICES=3 does not divide --n-repeats 4" in err
    assert not any(tmp_path.iterdir())


def test_repeats_that_do_not_split_over_the_visible_devices_are_one_line_before_anything_is_written(tmp_path):
    """Three devices set by XLA_FLAGS (as a user may on a CPU; on a node, 8 GPUs) and R = 4: the run
    stops in one line naming the fix before the program is traced over the devices."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu"}
    env.pop("CLJAX_CPU_DEVICES", None)
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", "--dataset", "synthetic", "--num-tasks", "2",
                           "--n-repeats", "4", "--results-dir", str(tmp_path / "r"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
    assert ("--n-repeats 4 does not split over the 3 visible devices: use a multiple of 3 (e.g. 3 or 6), or show "
            "fewer devices (CUDA_VISIBLE_DEVICES; on the CPU, remove --xla_force_host_platform_device_count from "
            "XLA_FLAGS, which overrides CLJAX_CPU_DEVICES)") in proc.stderr
    assert not (tmp_path / "r").exists()


def test_distributed_only_when_the_environment_asks():
    assert not wants_distributed({})
    assert wants_distributed({"CLJAX_DISTRIBUTED": "1"})
    assert not wants_distributed({"CLJAX_DISTRIBUTED": "0", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "4"})
    assert wants_distributed({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"})
    assert not wants_distributed({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "1"})
    assert not wants_distributed({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})  # sbatch script, not an srun step


def test_a_slurm_task_uses_its_share_of_its_nodes_gpus():
    # JAX alone gives each SLURM task the GPU of its local rank: one task per node with 8 GPUs (the
    # documented multi-node run) used 1 GPU per node and put its 8 shares of the repeats on it.
    from cljax.devices.distributed import slurm_local_device_ids as ids

    node = {"SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_GPUS_ON_NODE": "8"}
    assert ids({**node, "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}) == list(range(8))  # one task per node: all 8
    assert ids({**node, "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_LOCALID": "3"}) == [3]  # one GPU per task
    assert ids({**node, "SLURM_STEP_TASKS_PER_NODE": "4,2", "SLURM_LOCALID": "1"}) == [4, 5, 6, 7]  # node 1: 2 tasks
    assert ids({**node, "SLURM_NTASKS_PER_NODE": "4", "SLURM_LOCALID": "2"}) == [4, 5]
    # the GPUs counted from CUDA_VISIBLE_DEVICES; bound per task (--gpus-per-task): all the task sees
    assert ids({"SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == [2, 3]
    assert ids({**node, "SLURM_NTASKS_PER_NODE": "8", "SLURM_LOCALID": "5", "CUDA_VISIBLE_DEVICES": "5"}) == [0]
    # left to JAX: outside SLURM, named by JAX_LOCAL_DEVICE_IDS, GPUs or tasks unknown, or not dividing
    for env in ({}, {**node, "SLURM_NTASKS_PER_NODE": "1", "JAX_LOCAL_DEVICE_IDS": "0,1"}, {**node},
                {"SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1"}, {**node, "SLURM_NTASKS_PER_NODE": "3"},
                {**node, "SLURM_STEP_TASKS_PER_NODE": "1(x"}):
        assert ids(env) is None, env


def test_a_process_that_joins_a_slurm_steps_run_by_its_environment_says_so_before_it_waits(monkeypatch, capsys):
    # `cljax run` typed in a shell of `srun -n4 --pty bash` waited 5 minutes without a word, then aborted.
    from cljax.devices import distributed

    monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: (_ for _ in ()).throw(RuntimeError("x")))
    for var, value in {"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("CLJAX_DISTRIBUTED", raising=False)
    with pytest.raises(CljaxError, match="CLJAX_DISTRIBUTED=0 for a single-host run"):
        distributed.maybe_initialize_distributed()
    assert capsys.readouterr().err == ("note: this SLURM step has 4 tasks, so this process joins a run of 4 processes "
                                       "and waits for the others (up to 5 minutes; Ctrl-C stops the wait); for a run "
                                       "of this process alone, set CLJAX_DISTRIBUTED=0.\n")
    monkeypatch.setenv("SLURM_PROCID", "2")  # the other processes of the step: the first one says it
    with pytest.raises(CljaxError):
        distributed.maybe_initialize_distributed()
    assert capsys.readouterr().err == ""


def test_a_stop_signal_ends_the_wait_for_a_slurm_steps_other_processes(tmp_path):
    # The wait is in JAX's C++: SIGUSR1 or Ctrl-C did nothing for 5 minutes, then the process aborted.
    import random
    import signal
    import time

    env = {**os.environ, "SLURM_JOB_ID": str(random.randrange(10**6)), "SLURM_STEP_NODELIST": "localhost",
           "SLURM_STEP_NUM_NODES": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0"}
    env.pop("CLJAX_DISTRIBUTED", None)
    proc = subprocess.Popen([sys.executable, "-m", "cljax", "run", "--dataset", "synthetic", "--num-tasks", "1",
                             "--results-dir", str(tmp_path / "r"), "--no-progress"], env=env, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert "joins a run of 2 processes" in proc.stderr.readline()
    time.sleep(1.0)  # inside the wait
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 75 and time.time() - sent < 10, err
    assert "stopped by SIGINT" in err and "Traceback" not in err and not (tmp_path / "r").exists()


MULTI_PROCESS_CHILD = """
import jax, numpy as np
from cljax.devices.distributed import maybe_initialize_distributed
maybe_initialize_distributed()
from cljax.devices.mesh import fetch, shard_repeats
state = {"w": np.arange(8.0, dtype=np.float32).reshape(4, 2), "key": jax.random.split(jax.random.key(3), 4)}
placed = shard_repeats(state)
got = fetch(placed)
print(len(placed["w"].sharding.device_set), jax.process_count(), got["w"].tolist(),
      jax.random.key_data(got["key"]).tolist() == jax.random.key_data(state["key"]).tolist())
"""


def test_two_processes_place_and_fetch_the_repeats_a_key_leaf_included(tmp_path):
    """A multi-host run in miniature: two processes of two CPU devices each (jax.distributed on
    this host) split R = 4 over the four devices and fetch it back whole. A PRNG key array (a
    plugin's state may hold one) has no numpy form: it travels as its key data."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "child.py"
    script.write_text(MULTI_PROCESS_CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("CLJAX_CPU_DEVICES", "JAX_PLATFORMS")}
    env.update(CLJAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", CLJAX_NUM_PROCESSES="2",
               XLA_FLAGS=suite_xla_flags("--xla_force_host_platform_device_count=2"), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "CLJAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "4 2 [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]] True", out


def test_sweep_grid_expands_settings_and_seeds(tmp_path):
    grid = parse_grid(["lr=0.01,0.05", "use-replay=true,false"])
    assert grid == {"lr": [0.01, 0.05], "use_replay": [True, False]}
    base = Config(results_dir=str(tmp_path)).to_dict()
    runs = expand(base, grid, [0, 1])
    assert len(runs) == 8 and len({r.config.results_dir for r in runs}) == 8
    assert runs[0].tag == "lr-0.01_use_replay-True_seed-0"
    assert runs[0].config.results_dir == str(tmp_path / runs[0].tag)
    for bad, match in [(["seed=1,2"], "--seeds"), (["nope=1"], "not a setting"), (["lr=fast"], "not a valid"),
                       (["lr"], "NAME=V1,V2")]:
        with pytest.raises(CljaxError, match=match):
            parse_grid(bad)
    # SLURM's --time formats (seconds round up): M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
    assert [parse_minutes(t) for t in ("600", "30:00", "10:00:00", "2:00:01", "1-02", "1-02:30", "1-00:30:00")] == [
        600, 30, 600, 121, 1560, 1590, 1470]
    assert parse_minutes("365-00") == 525600  # a year: the most (more is a typo)
    for bad in ("0", "0:00", "-5", "1-", "1:2:3:4", "ten", "", "365-00:01", "99999999999"):
        with pytest.raises(ValueError):
            parse_minutes(bad)



def test_sweep_pieces_name_the_error_keep_earlier_sweeps_and_refuse_no_seeds(tmp_path, capsys):
    from types import SimpleNamespace

    from cljax.sweep import expand, write_manifest
    from cljax.sweep_report import job_error_line

    # submitit's text of a failed job: the traceback, then the log paths (which were printed).
    failed = RuntimeError("Job (task=0) failed during processing with trace:\n----------------------\n"
                          "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                          "cljax.errors.CljaxError: results/a holds a run with other settings (lr)\n\n"
                          "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
                          "or at paths:\n  - /logs/25188_0_log.err\n  - /logs/25188_0_log.out")
    assert job_error_line(failed) == "results/a holds a run with other settings (lr)"
    assert job_error_line(RuntimeError("plain\nlast line")) == "last line"
    # submitit's UncompletedJobError for a killed process (out of memory, a time limit, a signal)
    killed = RuntimeError("Job 10433 (task: 0) with path /logs/10433_0_result.pkl\nhas not produced any output "
                          "(state: NO PROCESS AND NO RESULT)\nError stream produced:\n----\nsubmitit INFO (2026) - "
                          "Loading pickle: /logs/10433_submitted.pkl")
    assert job_error_line(killed) == (
        "the job's process ended without a result: killed (a signal such as SIGKILL, or out of memory; submitit records "
        "no signal or exit code); state: NO PROCESS AND NO RESULT: run the same sweep again (without --overwrite) to "
        "resume its run from its last finished task")

    base = Config(dataset="synthetic", results_dir=str(tmp_path)).to_dict()
    path = tmp_path / "sweep.json"
    for seed in (1, 2):
        runs = expand(base, {}, [seed])
        write_manifest(path, runs, [SimpleNamespace(job_id=f"j{seed}")], "local", tmp_path / "logs")
    manifest = json.loads(path.read_text())
    assert [r["job_id"] for r in manifest["runs"]] == ["j2"]
    assert [[r["job_id"] for r in m["runs"]] for m in manifest["earlier"]] == [["j1"]]
    damaged = tmp_path / "damaged" / "sweep.json"
    damaged.parent.mkdir()
    damaged.write_text('{"runs": [{"tag": "a", "job_id": "j0"')  # truncated: the jobs are already submitted
    write_manifest(damaged, runs, [SimpleNamespace(job_id="j3")], "local", tmp_path / "logs")
    kept = list(damaged.parent.glob("sweep.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_text().startswith('{"runs": [{"tag": "a"')
    assert json.loads(damaged.read_text())["earlier"] == [] and "is kept as" in capsys.readouterr().err

    assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--seeds", " "]) == 2
    assert "names no seed" in capsys.readouterr().err
    for seeds in (",", "1,,2", "1,2,"):  # a seed left out by a typo: the sweep would run without it
        assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path), "--seeds", seeds]) == 2
        assert f"--seeds {seeds!r} has an empty item" in capsys.readouterr().err
    with pytest.MonkeyPatch.context() as patch:  # submitit comes with the sweep extra
        patch.setitem(sys.modules, "submitit", None)
        assert main(["sweep", "--dataset", "synthetic", "--results-dir", str(tmp_path / "s"), "--executor", "local"]) == 2
    assert capsys.readouterr().err == "error: cljax sweep needs submitit: pip install 'cljax[sweep]' (or pip install submitit).\n"
    assert not (tmp_path / "s").exists()
    assert json.loads(path.read_text()) == manifest  # the list of the earlier sweeps is not replaced


def test_a_two_process_run_stops_on_sigterm_with_75(tmp_path):
    """jax.distributed.initialize() puts JAX's own SIGTERM handler in place of the process's: a
    two-process run (a multi-node SLURM job in miniature) trained on to its last task through a
    SIGTERM and exited 0. Both processes now stop with 75 and a resumable folder."""
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r"
    flags = ["run", "--dataset", "synthetic", "--model", "mlp", "--mlp-hidden", "32", "--num-tasks", "10",
             "--n-repeats", "4", "--n-train-per-class", "32", "--n-test-per-class", "8", "--n-subsamples", "4",
             "--epochs", "300", "--batch-size", "16", "--log-frequency", "600", "--no-progress", "--results-dir",
             str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("CLJAX_CPU_DEVICES", "JAX_PLATFORMS")}
    env.update(CLJAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", CLJAX_NUM_PROCESSES="2",
               JAX_PLATFORMS="cpu", XLA_FLAGS=suite_xla_flags(), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-m", "cljax.cli", *flags], env={**env, "CLJAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    first = out / "synthetic" / "SL_T10" / "task_000" / "metadata.json"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert first.exists(), outs[0][1][-2000:]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 75 and "stopped by SIGTERM" in err, (p.returncode, err[-2000:])
    assert not (out / "synthetic" / "SL_T10" / "task_009").exists()


def test_bad_process_settings_of_a_multi_process_run_are_one_line(monkeypatch):
    from cljax.devices import distributed

    monkeypatch.setattr(distributed, "_distributed_started", False)
    monkeypatch.setenv("CLJAX_DISTRIBUTED", "1")
    for num, pid, expected in [("abc", "0", "CLJAX_NUM_PROCESSES='abc' is not a whole number of at least 1"),
                               ("2", "-1", "CLJAX_PROCESS_ID='-1' is not a whole number of at least 0"),
                               ("2", "5", "CLJAX_PROCESS_ID=5 is not below CLJAX_NUM_PROCESSES=2: process ids run 0 .. 1")]:
        monkeypatch.setenv("CLJAX_NUM_PROCESSES", num)
        monkeypatch.setenv("CLJAX_PROCESS_ID", pid)
        with pytest.raises(CljaxError, match=expected):
            distributed.maybe_initialize_distributed()


@pytest.mark.parametrize("chunk", [0, 1])
def test_each_task_records_the_evaluation_mode_the_plan_gives(tmp_path, chunk):
    """metadata.json recorded only the --eval-chunk-tasks setting (0: chosen by the budget), so a
    run could not be checked against `cljax plan` afterwards; it now records the mode and K."""
    from cljax.plan import make_plan
    from tests.run_folder_kit import FLAGS, RUN_DIR

    flags = [*FLAGS, "--eval-chunk-tasks", str(chunk), "--results-dir", str(tmp_path / "r")]
    assert main(["run", *flags]) == 0
    config = Config.from_flat(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
                              n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1, lr=0.1,
                              model="mlp", mlp_hidden=32, eval_chunk_tasks=chunk, results_dir=str(tmp_path / "r"))
    planned = make_plan(config)["evaluation"]
    for t in (0, 1):
        recorded = json.loads((tmp_path / "r" / RUN_DIR / f"task_00{t}" / "metadata.json").read_text())["evaluation"]
        assert recorded == {"mode": planned["mode"], "chunk_tasks": planned["chunk_tasks"]}
    assert recorded["mode"] == ("chunked" if chunk else "resident")


def test_a_resume_on_another_cpu_split_names_the_setting_that_decides_it(monkeypatch, capsys):
    # With XLA_FLAGS splitting the host, the advice to set CLJAX_CPU_DEVICES changed nothing.
    from cljax.run_split import warn_if_other_split

    lowering = {"backend": "cpu", "conv": "im2col", "devices": 1}
    recorded = {"backend": "cpu", "devices": 1, "processes": 1, "lowering": lowering}
    now = {**recorded, "devices": 2, "lowering": {**lowering, "devices": 2}}
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    warn_if_other_split(recorded, now, 3)
    assert capsys.readouterr().err.rstrip().endswith("; to keep it, rerun with CLJAX_CPU_DEVICES=1.")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    warn_if_other_split(recorded, now, 3)
    assert capsys.readouterr().err.rstrip().endswith(
        "; to keep it, rerun without --xla_force_host_platform_device_count in XLA_FLAGS (it overrides "
        "CLJAX_CPU_DEVICES).")
    # A multi-process run: CLJAX_CPU_DEVICES is not read there, and 4 is every process's devices.
    monkeypatch.delenv("XLA_FLAGS")
    two_by_two = {**recorded, "devices": 4, "processes": 2}
    warn_if_other_split(two_by_two, {**two_by_two, "devices": 2}, 1)
    assert capsys.readouterr().err.rstrip().endswith(
        "; to keep it, rerun as 2 processes with XLA_FLAGS=--xla_force_host_platform_device_count=2 on each.")
    warn_if_other_split(recorded, {**recorded, "devices": 2, "processes": 2}, 1)
    assert capsys.readouterr().err.rstrip().endswith("; to keep it, rerun as one process with CLJAX_CPU_DEVICES=1.")


def test_plan_s_runtime_figure_leaves_out_the_dataset_it_counts_among_the_parts(tmp_path, monkeypatch):
    # The runtime was this process's RSS, the loaded dataset included, and the parts count the
    # dataset again: 550 MiB twice over for a 1000-class synthetic set.
    import cljax.devices.memory as memory
    from cljax.plan import make_plan

    monkeypatch.setattr(memory, "rss_bytes", lambda: 900 * 2**20)
    config = Config.from_flat(dataset="synthetic", synthetic_classes=8, num_tasks=2, n_repeats=1, n_train_per_class=64,
                              n_test_per_class=16, n_subsamples=4, epochs=1, batch_size=16, log_frequency=2,
                              results_dir=str(tmp_path))
    plan = make_plan(config)
    in_ram = plan["host_components"]["dataset_in_ram"]
    assert in_ram > 0
    assert plan["host_runtime_rss_now"] == 900 * 2**20 - in_ram


def test_plan_in_a_multi_process_environment_says_it_sizes_this_process_alone(monkeypatch, capsys):
    # It printed "2 x cpu (1 process(es))" for a run over 2 processes without a word: memory per
    # device overstated P times, and an R the run refuses (not a multiple of every device) passed.
    from cljax.cli import main

    monkeypatch.setenv("CLJAX_DISTRIBUTED", "1")
    assert main(["plan", "--dataset", "synthetic", "--n-repeats", "2", "--num-tasks", "2"]) == 0
    assert "note: plan does not join the multi-process run this environment asks for: it sizes this process's " \
           "devices alone. For R repeats over P processes, plan --n-repeats R/P here for the memory per device; " \
           "process 0 writes all R repeats, so the run's disk is P times the disk planned." in capsys.readouterr().err


def test_plan_of_a_resume_builds_the_pairing_its_run_started_with(tmp_path):
    # plan built auto's choice for this host, while the resume builds the recorded pairing.
    from cljax.checkpoint import write_run_record
    from cljax.config import SCHEMA_VERSION, Config, algo_dir_of
    from cljax.plan import make_plan

    config = Config.from_flat(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
                              n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=8, log_frequency=2,
                              model="mlp", mlp_hidden=16, results_dir=str(tmp_path))
    chosen = make_plan(config)["lowering"]["learner_expert"]
    other = {"paired": "separate", "separate": "paired"}[chosen]
    algo_dir = algo_dir_of(config)
    algo_dir.mkdir(parents=True)
    from cljax.data.prepared import data_identity
    from cljax.data import load_dataset

    write_run_record(algo_dir, config.to_dict(), SCHEMA_VERSION, run_id="a" * 32, data=data_identity(load_dataset(config)),
                     split={"backend": "cpu", "devices": 1, "processes": 1, "lowering": {"learner_expert": other}},
                     sources={}, dataset_meta={})
    assert make_plan(config)["lowering"]["learner_expert"] == other


def test_plan_says_the_free_disk_and_a_run_larger_than_it(tmp_path, monkeypatch):
    # It gave the whole run's disk and nothing about the free space: a 5-task run on a 3 MiB disk
    # was planned without a word and stopped at task 2.
    import shutil

    from cljax import plan as plan_module
    from cljax.config import Config

    config = Config.from_flat(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
                              n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=8, log_frequency=2,
                              model="mlp", mlp_hidden=16, results_dir=str(tmp_path / "r"))
    monkeypatch.setattr(plan_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 2048, 2048))
    plan = plan_module.make_plan(config)
    assert plan["disk_free_bytes"] == 2048 and plan["disk_free_at"] == str(tmp_path)
    text = plan_module.format_plan(plan)  # not even the first task fits: run refuses it, as plan says
    assert "; 2.0 KiB free at " in text and "disk: DOES NOT FIT: the first task" in text and not plan["fits"]
    assert "part-way" not in text
    free = plan["disk_bytes_next_task"]  # the first task fits, the run does not
    monkeypatch.setattr(plan_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    plan = plan_module.make_plan(config)
    text = plan_module.format_plan(plan)
    assert plan["fits"] and "warning: more than is free there: the run would stop part-way" in text
    assert plan["disk_bytes_left"] == plan["disk_bytes_total"]  # nothing written yet
    # A resumed run needs only its tasks left (it warned of the whole run's total, and then fitted).
    from cljax.experiment import run_experiment

    monkeypatch.undo()
    algo_dir = run_experiment(config, progress=False).algo_dir
    import shutil as sh

    sh.rmtree(algo_dir / "task_001")
    left = plan_module.make_plan(config)
    record = left["disk_run_files"]["verified.json"]  # the task's, and the record folded as the run ends
    assert left["disk_bytes_per_task"] <= left["disk_bytes_left"] <= left["disk_bytes_per_task"] + record
    assert left["disk_bytes_left"] < left["disk_bytes_total"]
    sh.copytree(algo_dir / "task_000", algo_dir / "task_005")  # a folder past T: not one of this run's
    assert plan_module.make_plan(config)["disk_bytes_left"] == left["disk_bytes_left"]
    other = plan_module.make_plan(Config.from_flat({**config.to_dict(), "seed": 3}))  # the folder's run is another
    assert other["folder_holds_a_run_with_other"] == ["seed"] and other["disk_bytes_left"] == other["disk_bytes_total"]
    assert "note: the run's folder holds a run with other settings (seed)" in plan_module.format_plan(other)


def test_plan_compares_a_runs_data_by_content_as_run_does(tmp_path):
    # The run's data in another folder (a copy): run resumes it, and plan said it would refuse it
    # ("holds a run with other settings (data_dir)"), planning the whole run again.
    import shutil

    from cljax import plan as plan_module
    from cljax.experiment import run_experiment
    from tests.conftest import FASHION_DIR, small_config

    # the real data (a copy of its folder is the point) on the small MLP of the test above, not the
    # CNN: the comparison is of the data, not of the network, and the MLP compiles in a fraction
    config = small_config(tmp_path, num_tasks=2, n_train_per_class=16, n_test_per_class=8, n_subsamples=4, epochs=1,
                          batch_size=8, log_frequency=2, model="mlp", mlp_hidden=16)
    algo_dir = run_experiment(config, progress=False).algo_dir
    shutil.rmtree(algo_dir / "task_001")
    copy = shutil.copytree(FASHION_DIR, tmp_path / "copy")
    moved = plan_module.make_plan(Config.from_flat({**config.to_dict(), "data_dir": str(copy)}))
    assert moved["folder_holds_a_run_with_other"] == [] and moved["disk_bytes_left"] < moved["disk_bytes_total"]
