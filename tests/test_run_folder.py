"""The run folder is never lost or mixed (issue 18), part 1: every check before any write or
delete, a lock per folder, and sweep folders that never collide. A resume that verifies what it
resumes: test_run_folder_resume.py; parts 2 to 4: test_run_folder_split.py,
test_run_folder_inputs.py, test_run_folder_stale.py."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cljax import results
from cljax.errors import CljaxError
from tests.conftest import FASHION_DIR, small_config
from tests.run_folder_kit import FLAGS, TINY, assert_one_error, copy, make_runs, run_cli, state


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


# ---- 1. every check before any write or delete -------------------------------------------------------
def test_overwrite_that_does_not_fit_deletes_nothing(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite", "--n-repeats", "4",
                          "--device-memory", "1000"], capsys)
    assert_one_error(rc, err, "per device", "--device-memory")
    assert state(run_dir) == before


def test_a_run_that_does_not_fit_writes_nothing(tmp_path, capsys):
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--device-memory", "1000"], capsys)
    assert_one_error(rc, err, "per device")
    assert not (tmp_path / "r").exists()  # no run.json to refuse the corrected command later


def test_plan_names_a_host_that_lacks_memory_as_such_and_a_model_s_own_allowance(tmp_path, capsys, monkeypatch):
    # It said "evaluation: DOES NOT FIT" and named only settings that do not shrink a ResNet's
    # compilation, most of what the host needed (found by the adversarial helper).
    import cljax.devices.memory as memory

    # Well below each plan on any backend: the ResNet's needed 1.9 GiB on the CPU (its device arrays in
    # host memory) and 1.8 GiB where they are not (a GPU's), which 2 GiB held; the MLP's 1.0 and 0.9 GiB.
    monkeypatch.setattr(memory, "host_available", lambda: (int(1.5 * 2**30), "the machine's MemAvailable"))
    plan = ["plan", "--dataset", "fashion_mnist", "--data-dir", str(FASHION_DIR), "--n-repeats", "2", "--results-dir",
            str(tmp_path)]
    rc, out, _ = run_cli([*plan, "--model", "resnet"], capsys)
    assert rc == 2 and "host memory: DOES NOT FIT: the run needs about" in out, out
    assert "--resnet-* settings that make its task programs smaller (compiling them takes 1.7 GiB)" in out, out
    monkeypatch.setattr(memory, "host_available", lambda: (int(0.75 * 2**30), "the machine's MemAvailable"))
    rc, out, _ = run_cli([*plan, "--model", "mlp"], capsys)
    assert rc == 2 and "host memory: DOES NOT FIT" in out and "task programs smaller" not in out, out


def test_a_task_too_large_for_the_device_names_what_lowers_its_largest_part(tmp_path, capsys):
    # It listed the test set, subsamples and snapshots, which left a need dominated by a training
    # step's scratch where it was.
    plan = ["plan", "--dataset", "fashion_mnist", "--data-dir", str(FASHION_DIR), "--n-repeats", "2"]
    for extra, part, fixed in (
            (["--model", "resnet", "--resnet-blocks", "1", "--batch-size", "256", "--device-memory", "1500000000"],
             "most of it is a training step's scratch: lower --batch-size", ["--batch-size", "128"]),
            (["--eval-batch-size", "500", "--device-memory", "7000000"],
             "most of it is an evaluation call's scratch: lower --eval-batch-size", None),
            (["--log-frequency", "1", "--device-memory", "80000000"],  # 310 snapshots: the arrays dominate
             "most of it is the task's snapshots (75.2 MiB of 100.1 MiB of arrays): lower snapshots (raise "
             "--log-frequency)",
             ["--log-frequency", "25"])):
        rc, out, _ = run_cli([*plan, *extra], capsys)
        assert rc == 2 and "DOES NOT FIT" in out and part in out, out
        if fixed:  # the fix it names makes it fit
            rc, out, _ = run_cli([*plan, *extra, *fixed], capsys)
            assert rc == 0 and "DOES NOT FIT" not in out, out


def test_a_run_the_planner_rejects_fails_before_allocating(tmp_path, capsys, monkeypatch):
    import cljax.devices.memory as memory

    monkeypatch.setattr(memory, "device_budget", lambda: (8 * 2**30, "test"))
    started = time.perf_counter()
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--n-repeats", "100000"], capsys)
    assert_one_error(rc, err, "per device")
    assert time.perf_counter() - started < 60 and not (tmp_path / "r").exists()


def test_a_run_too_large_for_host_memory_is_refused_before_anything_is_deleted(made, tmp_path, capsys, monkeypatch):
    # On the CPU the device arrays live in host memory too: a run that needed 30 GiB with 22 GiB
    # free was killed by the kernel after it had written run.json and initial/ (and after
    # --overwrite had deleted the run before it). Now it is one line, and nothing moves.
    import cljax.experiment as experiment
    from cljax.budget import Budget, host_total
    from cljax.data import load_dataset
    from cljax.program import build_task_program

    config = small_config(tmp_path, **TINY)
    data = load_dataset(config)
    budget = Budget.of(config, build_task_program(config, (28, 28)), (28, 28))
    need = host_total(budget, data, 2)
    assert need > budget.pb.n_params * 4 * config.n_repeats  # the learner's copy is one of its parts
    run_dir = copy(made, "finished", tmp_path / "r")
    before = state(run_dir)
    monkeypatch.setattr(experiment, "host_available", lambda: (need // 2, "the machine's MemAvailable"))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert_one_error(rc, err, "more host memory", "cljax plan")
    assert state(run_dir) == before
    monkeypatch.setattr(experiment, "host_available", lambda: (2 * need, "the machine's MemAvailable"))  # with room, the same command runs
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert rc == 0, err


# The run's own peak: VmHWM of its process. Not ru_maxrss: Linux carries the high-water mark of the
# memory a process had before exec into it, and Python starts a subprocess by vfork, so a child's
# ru_maxrss is at least its parent's peak (here the pytest worker's, over 900 MiB late in the suite).
PEAK_RSS = ("import sys\nfrom cljax.cli import main\nrc = main(sys.argv[1:])\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "print('peak', int(hwm.split()[1]) * 1024, rc)")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the run's peak from /proc (Linux)")
def test_the_host_estimate_covers_the_peak_of_a_real_run(tmp_path):
    """What `cljax plan` says a run holds on the host (the runtime it measures now, plus its parts:
    the compilation allowance included) is at least the peak RSS of `cljax run` with the same
    flags, compiling cold; the check that refuses a run too large for the host reads it."""
    env = {**os.environ, "CLJAX_COMPILATION_CACHE": "off"}
    args = [*FLAGS, "--results-dir", str(tmp_path / "r")]
    plan = subprocess.run([sys.executable, "-m", "cljax.cli", "plan", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert plan.returncode == 0, plan.stderr
    figures = json.loads(plan.stdout)
    estimate = figures["host_runtime_rss_now"] + figures["host_bytes_estimate"]
    run = subprocess.run([sys.executable, "-c", PEAK_RSS, "run", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    _, peak, rc = run.stdout.split()[-3:]
    assert rc == "0", run.stderr
    assert 0 < int(peak) <= estimate, (int(peak) / 2**20, estimate / 2**20)


def test_a_task_s_host_copies_are_freed_before_the_next_task_starts(tmp_path, monkeypatch):
    """A task's results on the host (the weights snapshots are the largest) are released when
    they are written, not when the next task's replace them: held over, they were beside the
    next task's fetched outputs and results, the peak of a run at large R (docs/scale.md)."""
    import gc
    import weakref

    import cljax.experiment as experiment

    made, real = {}, experiment.task_arrays

    def spy(*args, **kwargs):
        arrays, shapes = real(*args, **kwargs)
        made[len(made)] = weakref.ref(arrays["weights"])
        return arrays, shapes

    def after(t, info):
        gc.collect()
        alive[t] = made[t]() is not None

    alive: dict = {}
    monkeypatch.setattr(experiment, "task_arrays", spy)
    experiment.run_experiment(small_config(tmp_path, **TINY), progress=False, on_task_end=after)
    assert alive == {0: False, 1: False}


def test_the_next_task_trains_while_this_one_is_written(tmp_path, monkeypatch):
    """Task t + 1's training is dispatched (its data put on the device) before task t's folder is
    written, so the device does not wait for the host's writes; the last task has no next one."""
    import cljax.experiment as experiment

    events, put, write = [], experiment.put_repeats, experiment.write_task
    monkeypatch.setattr(experiment, "put_repeats", lambda x, axis: events.append("put") or put(x, axis))
    monkeypatch.setattr(experiment, "write_task", lambda d, t, *a: events.append(f"write {t}") or write(d, t, *a))
    experiment.run_experiment(small_config(tmp_path, **{**TINY, "num_tasks": 3, "task_schedule": "cycle"}),
                              progress=False)
    # two puts (images, labels) for the compile, then two per task's dispatch
    assert events == ["put"] * 2 + ["put"] * 2 + ["put"] * 2 + ["write 0"] + ["put"] * 2 + ["write 1", "write 2"]


def test_an_eval_chunk_that_does_not_fit_is_refused_like_a_chosen_one(tmp_path, capsys):
    args = [*FLAGS, "--results-dir", str(tmp_path / "r"), "--device-memory", "100000", "--eval-chunk-tasks", "1"]
    rc, _, err = run_cli(["run", *args], capsys)
    assert_one_error(rc, err, "--eval-chunk-tasks 1", "per device")
    assert not (tmp_path / "r").exists()
    rc, out, _ = run_cli(["plan", *args], capsys)
    assert rc == 2 and "DOES NOT FIT: --eval-chunk-tasks 1" in out


# ---- 2. a lock per run folder ---------------------------------------------------------------------------
def test_a_locked_folder_is_refused_and_a_dead_holder_is_no_obstacle(made, tmp_path, capsys):
    from cljax.run_lock import RUN_LOCK, RunLock

    run_dir = copy(made, "finished", tmp_path / "r")
    with RunLock(run_dir):  # another run writing this folder (a separate open file: flock conflicts)
        before = state(run_dir)
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite", "--lr", "0.2"],
                             capsys)
        assert_one_error(rc, err, "is in use by another cljax run", f"pid {os.getpid()} on ")
        assert state(run_dir) == before
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
        assert_one_error(rc, err, "is in use")  # even reading a finished run waits for the writer
    # The lock file stays, naming a holder that has ended (and saying so): the system released its lock.
    record = json.loads((run_dir / RUN_LOCK).read_text())
    assert record["pid"] == os.getpid() and record["ended"]
    with RunLock(run_dir, exclusive=False):  # a reader (cljax analyze) of the run: a writer waits for it too
        before = state(run_dir)
        rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite", "--lr", "0.2"],
                             capsys)
        assert_one_error(rc, err, "is being read by another cljax process", f"pid {os.getpid()} on ", "has ended")
        assert state(run_dir) == before
    rc, out, _ = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_left_as_it_is(tmp_path):
    from cljax.run_lock import RUN_LOCK, RunLock

    victim = tmp_path / "notes.txt"
    victim.write_text("mine")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_LOCK).symlink_to(victim)
    for exclusive in (True, False):
        with pytest.raises(CljaxError, match=r"run.lock is a symbolic link, not cljax's lock file: remove the link"):
            RunLock(tmp_path / "run", exclusive=exclusive).__enter__()
    assert victim.read_text() == "mine"
    (tmp_path / "run" / RUN_LOCK).unlink()
    (tmp_path / "run" / RUN_LOCK).mkdir()  # a folder: it was a bare "Is a directory" for a writer
    for exclusive in (True, False):
        with pytest.raises(CljaxError, match=r"run.lock is not a regular file, so not cljax's lock file: remove it"):
            RunLock(tmp_path / "run", exclusive=exclusive).__enter__()


def test_a_task_folder_that_fails_to_write_leaves_no_temporary_folder(tmp_path, monkeypatch):
    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        results.write_folder(tmp_path, "task_000", {"a": np.zeros(3)}, {"m": {}}, {})
    assert list(tmp_path.iterdir()) == []


def test_files_of_two_runs_in_one_folder_are_refused(made, tmp_path, capsys):
    # The second run's run.json beside the first run's checkpoint and task folder.
    run_dir = copy(made, "partial", tmp_path / "a")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "run_id": "0" * 32}))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "a")], capsys)
    assert_one_error(rc, err, f"run.json records run {'0' * 32}, and the run's folders task_000 and initial run "
                              f"{record['run_id']}: run.json is another run's")
    (run_dir / "initial").rename(tmp_path / "initial")  # task_000 alone against run.json: which is the odd one
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "a")], capsys)  # is not known
    assert_one_error(rc, err, "checkpoint.npz belongs to run", "mixes two runs", "--overwrite")
    # A task folder of another run in a finished one.
    run_dir = copy(made, "finished", tmp_path / "b")
    meta = json.loads((run_dir / "task_000" / "metadata.json").read_text())
    (run_dir / "task_000" / "metadata.json").write_text(json.dumps({**meta, "run_id": "1" * 32}))
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "b")], capsys)
    assert_one_error(rc, err, "task_000 belongs to run 111")
    assert "already finished" not in out


# ---- 3. sweep folders never collide -----------------------------------------------------------------------
def test_sweep_tags_are_distinct_and_duplicates_stop_the_sweep_before_any_job(tmp_path, monkeypatch, capsys):
    import cljax.sweep as sweep

    base = {**small_config(tmp_path, **TINY).to_dict(), "results_dir": str(tmp_path)}
    runs = sweep.expand(base, sweep.parse_grid(["lr=0.1234567,0.1234568"]), [0])
    assert len({r.tag for r in runs}) == 2
    runs = sweep.expand(base, {"data_dir": ["/x/a_b", "/x/a/b"]}, [0])  # one folder-name character for both once
    assert len({r.tag for r in runs}) == 2
    submitted = []
    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda *a, **k: submitted.append(a) or [])
    for grid, seeds in ((["lr=0.1,0.10"], "0"), (["lr=0.1"], "0,0")):
        rc, _, err = run_cli(["sweep", *FLAGS, "--grid", *grid, "--seeds", seeds, "--results-dir", str(tmp_path)],
                             capsys)
        assert_one_error(rc, err, "two runs of the sweep would write the same folder")
    # What a job would refuse about its data, or a cluster setting that cannot be, is refused before any job:
    # each such job used to be queued, then fail (on SLURM, every array job).
    for extra, expected in ((["--grid", "num_tasks=2,3"], "run num_tasks-3_seed-0: --num-tasks 3 needs 6 classes"),
                            (["--grid", "n_train_per_class=16,99"], "run n_train_per_class-99_seed-0: class 0 has"),
                            (["--slurm-gpus", "-1"], "--slurm-gpus must be a positive number"),
                            (["--slurm-mem-gb", "nan"], "--slurm-mem-gb must be a positive number")):
        rc, _, err = run_cli(["sweep", *FLAGS, *extra, "--results-dir", str(tmp_path)], capsys)
        assert_one_error(rc, err, expected)
    assert not submitted
    # A sweep over runs already there with other settings: refused here, not by every job.
    from cljax.experiment import run_experiment

    job = sweep.expand({**small_config(tmp_path, **TINY).to_dict(), "results_dir": str(tmp_path / "s")}, {}, [0])[0]
    run_experiment(job.config, progress=False)
    rc, _, err = run_cli(["sweep", *FLAGS, "--lr", "0.2", "--results-dir", str(tmp_path / "s")], capsys)
    assert_one_error(rc, err, "run seed-0: ", "holds a run with other settings (lr)", "(no job was submitted)")
    assert not submitted
    # Data only the compute nodes have is left to the jobs, with one warning.
    rc, _, err = run_cli(["sweep", *FLAGS, "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "elsewhere"),
                          "--results-dir", str(tmp_path)], capsys)
    assert rc == 0 and len(submitted) == 1 and err.count("\n") == 2 and "not checked here" in err, err
    assert err.startswith("warning: --synthetic-classes 4 has no effect in any run of the sweep: it is a setting "
                          "of dataset synthetic, and this run's --dataset is fashion_mnist."), err  # FLAGS' synthetic


def test_a_compilation_cache_that_is_not_a_writable_folder_is_one_warning_and_not_used(tmp_path, capsys):
    # JAX printed its own two-line warning at each compilation and cached nothing, naming no setting.
    import jax

    import cljax

    before = jax.config.jax_compilation_cache_dir
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, reason in ((afile, "it is not a folder"), (afile / "under", "Not a directory")):
        assert cljax.enable_compilation_cache(str(path)) is None
        assert capsys.readouterr().err == (f"warning: the compilation cache {path} cannot be used ({reason}): compiling "
                                           f"without it; set CLJAX_COMPILATION_CACHE (or the cache folder given) to a "
                                           f"writable folder, or to off.\n")
        assert jax.config.jax_compilation_cache_dir == before
    assert afile.read_text() == "x"
