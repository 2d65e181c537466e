"""The run folder is never lost or mixed: every check before any write or delete, a lock,
resume that verifies what it resumes, the resume key, the device split, and one line for every
damaged or hostile input (issue 18). One tiny finished run (and its state after task 0, what a
kill after the first task leaves) is made once and copied per test."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from cljax import results
from cljax.cli import main as cli_main
from cljax.errors import CljaxError
from tests.conftest import small_config

TINY = dict(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
            n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1)
FLAGS = ["--dataset", "synthetic", "--synthetic-classes", "4", "--num-tasks", "2", "--n-repeats", "2",
         "--n-train-per-class", "16", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
         "--batch-size", "16", "--log-frequency", "1", "--lr", "0.1", "--no-progress"]
RUN_DIR = Path("synthetic") / "SL_T2"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """{"finished": results root of a finished run, "partial": its state after task 0}."""
    from cljax.experiment import run_experiment

    root = tmp_path_factory.mktemp("made")
    partial = root / "partial"

    def keep_partial(t, info):
        if t == 0:
            shutil.copytree(root / "finished", partial)

    run_experiment(small_config(root / "finished_cfg", results_dir=str(root / "finished"), **TINY), progress=False,
                   on_task_end=keep_partial)
    return {"finished": root / "finished", "partial": partial}


def copy(made, which: str, dest: Path) -> Path:
    shutil.copytree(made[which], dest)
    return dest / RUN_DIR


def state(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def run_cli(args, capsys) -> tuple[int, str, str]:
    try:
        rc = cli_main(args)
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_error(rc, err, *expected):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


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
    monkeypatch.setattr(experiment, "host_available_bytes", lambda: need // 2)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert_one_error(rc, err, "more host memory", "cljax plan")
    assert state(run_dir) == before
    monkeypatch.setattr(experiment, "host_available_bytes", lambda: 2 * need)  # with room, the same command runs
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert rc == 0, err


PEAK_RSS = ("import resource, sys\nfrom cljax.cli import main\nrc = main(sys.argv[1:])\n"
            "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rc)")


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
    # The lock file stays, naming a holder that has ended: the system released its lock.
    assert json.loads((run_dir / RUN_LOCK).read_text())["pid"] == os.getpid()
    rc, out, _ = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out


def test_without_file_locks_the_recorded_holder_is_checked(tmp_path, monkeypatch, capsys):
    import fcntl

    from cljax.run_lock import RUN_LOCK, RunLock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "since": "x"}))
    with pytest.raises(CljaxError, match=f"in use by another cljax run \\(pid {os.getppid()} on"):
        RunLock(tmp_path).__enter__()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": "x"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == os.getpid()
    assert "without file locks" in capsys.readouterr().err


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
    # Data only the compute nodes have is left to the jobs, with one warning.
    rc, _, err = run_cli(["sweep", *FLAGS, "--dataset", "fashion_mnist", "--data-dir", str(tmp_path / "elsewhere"),
                          "--results-dir", str(tmp_path)], capsys)
    assert rc == 0 and len(submitted) == 1 and err.count("\n") == 1 and "not checked here" in err, err


# ---- 4. resume verifies what it resumes ------------------------------------------------------------------
def _flip_byte(path: Path):
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40
    path.write_bytes(bytes(raw))


DAMAGE = {
    "folder_missing": (lambda d: shutil.rmtree(d / "task_000"), "task_000 is missing"),
    "file_missing": (lambda d: (d / "task_001" / "weights.npy").unlink(), "weights.npy is missing"),
    "bit_flip": (lambda d: _flip_byte(d / "task_000" / "representations.npy"), "does not match the sha256"),
    "truncated": (lambda d: (d / "task_001" / "weights.npy").write_bytes((d / "task_001" / "weights.npy")
                                                                          .read_bytes()[:-100]), "is truncated"),
    "unlisted": (lambda d: _unlist(d / "task_000", "representations.npy"), "does not list representations.npy"),
}


def _unlist(task_dir: Path, name: str):
    """A metadata.json edited to leave a file out of "files", the file deleted with it."""
    meta = json.loads((task_dir / "metadata.json").read_text())
    meta["files"] = {k: v for k, v in meta["files"].items() if k != name}
    (task_dir / "metadata.json").write_text(json.dumps(meta))
    (task_dir / name).unlink()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_run_is_never_reported_finished(made, tmp_path, capsys, damage):
    run_dir = copy(made, "finished", tmp_path / "r")
    how, expected = DAMAGE[damage]
    how(run_dir)
    before = state(run_dir)
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, expected, "trained again from task 0", "--overwrite", "deletes")
    assert "already finished" not in out and state(run_dir) == before


def test_a_run_stopped_before_its_last_checkpoint_trains_the_last_task_again(made, tmp_path, capsys):
    """Killed between the last task's folder and the checkpoint after it: every folder is whole,
    the checkpoint is one task behind. The resume redoes that task (the same bytes) and moves the
    checkpoint to the end, as an uninterrupted run leaves it."""
    from cljax.checkpoint import read_checkpoint_header

    run_dir = copy(made, "finished", tmp_path / "r")
    finished_ckpt = (run_dir / "checkpoint.npz").read_bytes()
    shutil.copy(made["partial"] / RUN_DIR / "checkpoint.npz", run_dir / "checkpoint.npz")
    assert read_checkpoint_header(run_dir)[0] == 1
    before = {p.name: p.read_bytes() for p in (run_dir / "task_001").glob("*.npy")}
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "resumed from task 1" in out + err, (out, err)
    assert {p.name: p.read_bytes() for p in (run_dir / "task_001").glob("*.npy")} == before
    assert (run_dir / "checkpoint.npz").read_bytes() == finished_ckpt


def test_overwrite_builds_the_first_state_before_it_deletes(made, tmp_path, capsys, monkeypatch):
    """A failure while building the learner's first state (a seed JAX could not take crashed
    there) came after --overwrite had deleted the old run; now it comes before."""
    import cljax.experiment as experiment

    run_dir = copy(made, "finished", tmp_path / "r")
    before = state(run_dir)

    def fail(program, config):
        raise RuntimeError("cannot build the first state")

    monkeypatch.setattr(experiment, "_initial_learner", fail)
    with pytest.raises(RuntimeError, match="cannot build"):
        cli_main(["run", *FLAGS, "--lr", "0.2", "--overwrite", "--results-dir", str(tmp_path / "r")])
    assert state(run_dir) == before


def test_a_run_that_stopped_in_its_first_task_is_replaced_by_another_without_overwrite(made, tmp_path, capsys,
                                                                                          monkeypatch):
    """A run that died before its first task was written holds only what its seed makes again
    (run.json, initial/): a corrected command replaces it, with one note. A run with one whole
    task folder, or with a file cljax did not write, is still refused."""
    import cljax.experiment as experiment

    class Crash(Exception):
        pass

    def crash_at(point, task):
        if (point, task) == ("train", 0):
            raise Crash

    root = tmp_path / "r"
    monkeypatch.setattr(experiment, "crash_point", crash_at)
    with pytest.raises(Crash):
        cli_main(["run", *FLAGS, "--results-dir", str(root)])
    monkeypatch.undo()
    run_dir = root / RUN_DIR
    first_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["initial", "run.json", "run.lock"]

    (run_dir / "initial" / "notes.txt").write_text("mine")  # a user's file: nothing is deleted
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--lr", "0.2", "--results-dir", str(root)], capsys)
    assert_one_error(rc, err, "initial/notes.txt is not a file cljax writes")
    assert state(run_dir) == before
    (run_dir / "initial" / "notes.txt").unlink()

    rc, _, err = run_cli(["run", *FLAGS, "--lr", "0.2", "--results-dir", str(root)], capsys)
    assert rc == 0, err
    assert err == (f"note: {run_dir} held a run with other settings (lr) that finished no task; it was replaced "
                   f"by this one.\n")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["lr"] == 0.2 and record["run_id"] != first_id
    assert json.loads((run_dir / "task_001" / "metadata.json").read_text())["run_id"] == record["run_id"]

    partial = copy(made, "partial", tmp_path / "p")  # task_000 whole, its checkpoint lost: kept
    (partial / "checkpoint.npz").unlink()
    before = state(partial)
    rc, _, err = run_cli(["run", *FLAGS, "--lr", "0.2", "--results-dir", str(tmp_path / "p")], capsys)
    assert_one_error(rc, err, "other settings (lr)", "--overwrite to replace it (it deletes its 1 task folder(s)")
    assert state(partial) == before


def test_a_rerun_parses_each_metadata_once_and_sees_a_folder_written_between_its_checks(made, tmp_path, capsys,
                                                                                      monkeypatch):
    """A rerun checks the folders before and again after it takes the lock; a long run's
    metadata.json lists its schedule (megabytes), and parsing it twice was most of a finished
    rerun's time. The second check reuses the first's fields unless the file changed."""
    from cljax import run_folder

    run_dir = copy(made, "finished", tmp_path / "r")
    parsed = []
    monkeypatch.setattr(run_folder, "load_metadata", lambda d: parsed.append(Path(d).name) or results.load_metadata(d))
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out + err, (out, err)
    assert sorted(n for n in parsed if n.startswith("task_")) == ["task_000", "task_001"]  # was each twice

    memo: dict = {}
    assert run_folder.verify_task_dir(run_dir / "task_001", 1, "the-run", hashes=False, memo=memo) is not None
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert run_folder.verify_task_dir(run_dir / "task_001", 1, run_id, hashes=False, memo=memo) is None
    meta_path = run_dir / "task_001" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "run_id": "x" * len(run_id)}, indent=1))  # another run's, same size
    os.utime(meta_path, ns=(meta_path.stat().st_atime_ns, meta_path.stat().st_mtime_ns + 1))
    problem = run_folder.verify_task_dir(run_dir / "task_001", 1, run_id, hashes=True, memo=memo)
    assert problem is not None and "belongs to run " + "x" * len(run_id) in problem


@pytest.mark.parametrize("case", ["user_file", "analysis_link", "not_a_file"])
def test_overwrite_deletes_nothing_when_it_would_take_a_file_cljax_did_not_write(made, tmp_path, capsys, case):
    run_dir = copy(made, "finished", tmp_path / "r")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.csv").write_text("a,b")
    if case == "user_file":
        (run_dir / "task_000" / "notes.csv").write_text("a,b")
        expected = "task_000/notes.csv is not a file cljax writes"
    elif case == "analysis_link":
        shutil.rmtree(run_dir / "analysis", ignore_errors=True)
        (run_dir / "analysis").symlink_to(mine)
        expected = "analysis is a symbolic link, which --overwrite does not follow or delete"
    else:
        (run_dir / "initial" / "extra").mkdir()
        expected = "initial/extra is not a file cljax writes"
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert_one_error(rc, err, expected, "move it out of the run folder", "nothing was deleted")
    assert state(run_dir) == before and (mine / "notes.csv").read_text() == "a,b"


@pytest.mark.parametrize("damage", ["bit_flip", "foreign", "initial"])
def test_analyze_refuses_a_damaged_or_foreign_folder_in_one_line(made, tmp_path, capsys, damage):
    """The analysis reads what a resume would trust, no less: a changed byte, another run's
    folder or a damaged initial/ is one error line, not numbers computed from it."""
    run_dir = copy(made, "finished", tmp_path / "r")
    if damage == "bit_flip":
        _flip_byte(run_dir / "task_001" / "representations.npy")
        expected = "task_001/representations.npy does not match the sha256"
    elif damage == "foreign":
        meta = json.loads((run_dir / "task_001" / "metadata.json").read_text())
        (run_dir / "task_001" / "metadata.json").write_text(json.dumps({**meta, "run_id": "another"}))
        expected = "task_001 belongs to run another"
    else:
        _flip_byte(run_dir / "initial" / "weights.npy")
        expected = "initial/weights.npy does not match the sha256"
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert_one_error(rc, err, expected, "the analysis reads only its run's own, whole files")
    assert not (run_dir / "analysis").exists()  # not even an empty folder


# ---- 5. the resume key is what changes the numbers -------------------------------------------------------
def test_paths_and_speed_only_settings_do_not_block_a_resume(made, tmp_path, capsys, monkeypatch):
    run_dir = copy(made, "finished", tmp_path / "moved")  # a copied tree, under another path
    monkeypatch.chdir(tmp_path)
    for extra in (["--results-dir", str(tmp_path / "moved") + "/"], ["--results-dir", "moved"],
                  ["--results-dir", "moved", "--eval-batch-size", "5", "--eval-chunk-tasks", "1"],
                  ["--results-dir", "moved", "--device-memory", str(2**40)],
                  ["--results-dir", "moved", "--data-dir", str(tmp_path)]):  # the same (generated) data
        rc, out, err = run_cli(["run", *FLAGS, *extra], capsys)
        assert rc == 0 and "already finished" in out and "--overwrite would delete it" in out, (extra, err)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", "moved", "--lr", "0.2"], capsys)
    assert_one_error(rc, err, "other settings (lr)", "--overwrite to replace it (it deletes its 2 task folder(s)")
    assert (run_dir / "task_001").is_dir()


def test_the_data_is_compared_by_content_not_by_the_folder_spelling(tmp_path):
    from cljax.data import load_dataset
    from cljax.data.prepared import data_identity
    from cljax.datasets.fashion_mnist import DEFAULT_DIR
    from tests.conftest import FASHION_DIR

    if not Path(DEFAULT_DIR).is_dir() or Path(FASHION_DIR).resolve() != Path(DEFAULT_DIR).resolve():
        pytest.skip("Fashion-MNIST is not at its default place")
    default = small_config(tmp_path, data_dir=None)
    spelled = small_config(tmp_path, data_dir=str(FASHION_DIR) + "/")
    assert data_identity(load_dataset(default)) == data_identity(load_dataset(spelled))


# ---- 6. the device split ---------------------------------------------------------------------------------
def test_the_recorded_cpu_split_is_reproduced_unless_set_otherwise():
    from cljax.devices.cpu_split import cpu_devices_wanted

    two = {"backend": "cpu", "devices": 2, "processes": 1}
    assert cpu_devices_wanted(4, {}, cores=1, recorded=two) == 2  # a host with fewer cores
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "devices": 1}) is None  # one device, as recorded
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "backend": "gpu"}) == 4
    assert cpu_devices_wanted(4, {"CLJAX_CPU_DEVICES": "off"}, cores=8, recorded=two) is None  # said explicitly


def test_a_resume_takes_the_split_it_started_on_and_stays_byte_identical(made, tmp_path):
    """The run started on one CPU device; the CLI would split this host by default; resumed
    from a kill after task 0, it takes one device again and task 1 equals the uninterrupted run's."""
    run_dir = copy(made, "partial", tmp_path / "r")
    assert json.loads((run_dir / "run.json").read_text())["split"]["devices"] == 1
    env = {k: v for k, v in os.environ.items() if k != "CLJAX_CPU_DEVICES"}
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", *FLAGS, "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "resumed from task 1" in proc.stdout, proc.stderr
    # cljax's warnings start a line with "warning:" (on a GPU, a compiler's own lines may say "warning")
    assert not [line for line in proc.stderr.splitlines() if line.startswith("warning:")], proc.stderr
    meta = results.load_metadata(run_dir / "task_001")
    assert len(meta["device"]) == 1 and meta["split"]["devices"] == 1
    finished = made["finished"] / RUN_DIR / "task_001"
    for name in ("representations.npy", "weights.npy", "metrics.pkl", "expert_metrics.pkl"):
        assert (run_dir / "task_001" / name).read_bytes() == (finished / name).read_bytes(), name


def test_a_moved_run_resumes_byte_identical_and_another_split_is_warned_and_recorded(made, tmp_path, capsys):
    from cljax.experiment import run_experiment

    first = copy(made, "partial", tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "elsewhere")  # what a kill after task 0 leaves, moved
    run_dir = tmp_path / "elsewhere" / RUN_DIR
    record = json.loads((run_dir / "run.json").read_text())
    record["split"] = {**record["split"], "devices": 2}  # as if started on two devices of this backend
    (run_dir / "run.json").write_text(json.dumps(record))
    config = small_config(tmp_path, results_dir=str(tmp_path / "elsewhere"), **TINY)
    resumed = run_experiment(config, progress=False)
    err = capsys.readouterr().err
    assert resumed.first_task == 1 and not first.exists()
    backend = jax.default_backend()
    assert err.count(f"warning: this run started on 2 {backend} device(s)") == 1
    assert ("CLJAX_CPU_DEVICES=2" in err) == (backend == "cpu")  # how to keep a CPU split; a GPU count is the machine's
    assert results.load_metadata(run_dir / "task_001")["split_at_run_start"]["devices"] == 2
    finished = made["finished"] / RUN_DIR
    for t in ("task_000", "task_001"):
        for name in ("representations.npy", "binary_labels.npy", "weights.npy", "metrics.pkl", "expert_metrics.pkl"):
            assert (run_dir / t / name).read_bytes() == (finished / t / name).read_bytes(), (t, name)


def test_a_resume_with_another_evaluation_chunk_is_warned_once(made, tmp_path, capsys):
    """--eval-batch-size is a speed setting, so a resume may change it; when it changes the chunks
    the test set is evaluated in (here 16 test images per call, then 4), it says so in one line."""
    from cljax.experiment import run_experiment

    for size, chunk in ((50, 16), (5, 4)):  # 50: still the whole test set of 16 in one call
        copy(made, "partial", tmp_path / str(size))
        resumed = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / str(size)), eval_batch_size=size,
                                              **TINY), progress=False)
        err = capsys.readouterr().err
        assert resumed.first_task == 1
        warned = [line for line in err.splitlines() if "--eval-batch-size" in line]
        assert warned == ([] if chunk == 16 else [
            "warning: this run started with --eval-batch-size 100 (16 test images per evaluation call) and continues "
            "with 5 (4): from task 1 on its test losses and representations can differ from an uninterrupted run's "
            "in the last bits; to keep them, rerun with --eval-batch-size 100."])


def test_a_finished_run_with_a_damaged_initial_state_writes_it_again_and_stays_finished(made, tmp_path, capsys):
    """The analysis refuses a damaged initial/ and says to run the command again: for a finished
    run that writes initial/ again, byte for byte, and touches nothing else."""
    from cljax.experiment import run_experiment
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "finished", tmp_path / "r")
    _flip_byte(run_dir / INITIAL / "weights.npy")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 2 and "run the run's `cljax run` command again" in err
    kept = lambda: {p: p.read_bytes() for p in run_dir.rglob("*")  # noqa: E731 (run.lock names its last holder)
                    if p.is_file() and INITIAL not in p.parts and p.name != "run.lock"}
    before = kept()
    again = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "r"), **TINY), progress=False)
    assert again.already_finished
    assert "initial/weights.npy does not match the sha256" in capsys.readouterr().err
    finished = made["finished"] / RUN_DIR / INITIAL
    for name in ("weights.npy", "metadata.json"):
        assert (run_dir / INITIAL / name).read_bytes() == (finished / name).read_bytes(), name
    assert kept() == before
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_resume_writes_a_missing_or_damaged_initial_state_as_the_run_began(made, tmp_path, damage):
    """A run started before initial/ existed, or whose initial/ is damaged, is not refused: the
    initialisation is a function of the seed, and the resume writes it again, byte for byte."""
    from cljax.experiment import run_experiment
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "partial", tmp_path / "r")
    if damage == "missing":
        shutil.rmtree(run_dir / INITIAL)
    else:
        raw = bytearray((run_dir / INITIAL / "weights.npy").read_bytes())
        raw[-1] ^= 0xFF
        (run_dir / INITIAL / "weights.npy").write_bytes(bytes(raw))
    resumed = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "r"), **TINY), progress=False)
    assert resumed.first_task == 1
    finished = made["finished"] / RUN_DIR / INITIAL
    for name in ("weights.npy", "metadata.json"):
        assert (run_dir / INITIAL / name).read_bytes() == (finished / name).read_bytes(), name


# ---- 7. one line for every damaged or hostile input --------------------------------------------------------
def test_analyze_a_partial_run_reports_undefined_metrics(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    rc, out, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err
    assert "bwt: undefined" in out


@pytest.mark.parametrize("how", ["truncated", "bit_flip"])
def test_a_damaged_checkpoint_is_one_line(made, tmp_path, capsys, how):
    run_dir = copy(made, "partial", tmp_path / "r")
    ckpt = run_dir / "checkpoint.npz"
    if how == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    else:
        raw = bytearray(ckpt.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        ckpt.write_bytes(bytes(raw))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "checkpoint.npz is damaged", "--overwrite")
    assert state(run_dir) == before


def test_disk_is_checked_in_whole_blocks_and_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import cljax.experiment as experiment
    from cljax.budget import Budget
    from cljax.budget_disk import disk_files_per_task, disk_run_files
    from cljax.checkpoint import CHECKPOINT
    from cljax.program import build_task_program

    from cljax.tasks import make_schedule

    config = small_config(tmp_path, **TINY)
    budget = Budget.of(config, build_task_program(config, (28, 28)), (28, 28))
    names = [f"synthetic_{c}" for c in range(4)]
    # The planner's byte figures for the first task and the checkpoint: enough only if files took no whole blocks.
    exact = sum(disk_files_per_task(budget, make_schedule(4, 2, 2, 0), names).values()) + disk_run_files(budget)[CHECKPOINT]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - exact, exact))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "not enough disk", "bytes", f"({exact:,} bytes) are free")
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r"))

    monkeypatch.setattr(experiment, "write_run_record", full)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "no space left", "free space, then run the same command")


def _npy_with_header(path: Path, header: bytes):
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)


ANALYZE_DAMAGE = {
    "missing_npy": (lambda d: (d / "task_000" / "weights.npy").unlink(), "weights.npy is missing"),
    "truncated_npy": (lambda d: (d / "task_000" / "representations.npy").write_bytes(
        (d / "task_000" / "representations.npy").read_bytes()[:200]), "representations.npy is truncated"),
    "object_npy": (lambda d: np.save(d / "task_000" / "representations.npy", np.array([{}, 1], dtype=object),
                                     allow_pickle=True), "holds Python objects"),
    "huge_header": (lambda d: _npy_with_header(d / "task_000" / "representations.npy", b"{" + b" " * 60000 + b"}\n"),
                    "representations.npy is not a readable .npy file"),
    "metadata_not_json": (lambda d: (d / "task_000" / "metadata.json").write_bytes(b"\xff\xfe{"),
                          "metadata.json is not valid JSON"),
    "metrics_truncated": (lambda d: (d / "task_000" / "metrics.pkl").write_bytes(
        (d / "task_000" / "metrics.pkl").read_bytes()[:40]), "metrics.pkl has 40 bytes"),
}


@pytest.mark.parametrize("damage", sorted(ANALYZE_DAMAGE))
def test_analyze_of_a_damaged_file_is_one_line_naming_it(made, tmp_path, capsys, damage):
    run_dir = copy(made, "finished", tmp_path / "r")
    how, expected = ANALYZE_DAMAGE[damage]
    how(run_dir)
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert_one_error(rc, err, expected, str(run_dir / "task_000"))
    assert "do not trust" not in err  # a damaged file is not reported as a hostile one


def test_analyze_bad_options_and_an_unwritable_output_are_one_line(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    rc, _, err = run_cli(["analyze", str(run_dir), "--glue-probes", "0"], capsys)
    assert_one_error(rc, err, "--glue-probes must be at least 2")
    (tmp_path / "a_file").write_text("x")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots", "--out", str(tmp_path / "a_file" / "out")],
                         capsys)
    assert_one_error(rc, err, "is a file, not a folder", "--out")
    other = copy(made, "finished", tmp_path / "other")
    before = state(tmp_path)
    for out, expected in (("", "--out is empty"), (str(other), "is a run's folder"), (str(run_dir), "run.json")):
        rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots", "--out", out], capsys)
        assert_one_error(rc, err, expected, "--out")  # "" wrote into the current folder, a run's mixed with its files
    for not_a_run in (tmp_path / "r", run_dir / "task_000"):  # the results root, a task folder
        rc, _, err = run_cli(["analyze", str(not_a_run), "--no-glue", "--no-plots"], capsys)
        assert_one_error(rc, err, "results/{dataset}/{algorithm}")
    assert state(tmp_path) == before
    for flag in ("--json", "--out"):  # compare: an output it cannot write is refused before the comparison
        for path, expected in (("", "is empty"), (str(tmp_path / "nowhere" / "c"), "does not exist"),
                               (str(tmp_path), "is a folder")):
            rc, out, err = run_cli(["compare", str(run_dir), flag, path], capsys)
            assert_one_error(rc, err, flag, expected)
            assert out == ""
    if os.geteuid() != 0:  # root writes into read-only folders
        run_dir.chmod(0o555)
        try:
            rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
        finally:
            run_dir.chmod(0o755)
        assert_one_error(rc, err, "analysis", "--out")


@pytest.mark.parametrize("record", ["list", "string", "folder", "huge", "split", "schema", "lowering"])
def test_a_run_record_of_the_wrong_kind_is_one_line(made, tmp_path, capsys, record):
    run_dir = copy(made, "partial", tmp_path / "r")  # a run to resume: every field is read
    path = run_dir / "run.json"
    fields = json.loads(path.read_text())
    path.unlink()
    if record == "list":
        path.write_text("[1, 2]")
    elif record == "string":
        path.write_text('"run"')
    elif record == "folder":
        path.mkdir()
    elif record == "huge":
        path.write_bytes(b" " * (1 << 24) + b"{}")
    else:  # a field of another type (they raised AttributeError / TypeError)
        changed = {"split": {"split": "garbage"}, "schema": {"schema": "3"},
                   "lowering": {"split": {**fields["split"], "lowering": 5}}}[record]
        path.write_text(json.dumps({**fields, **changed}))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "run.json")
    assert state(run_dir) == before


@pytest.mark.parametrize("meta", ["[1, 2]", '{"format_version": 1, "files": {}}'])
def test_data_info_and_plan_of_a_damaged_prepared_folder_are_one_line(tmp_path, capsys, meta):
    from cljax.data.prepared import write_prepared

    folder = tmp_path / "prepared"
    labels = np.repeat(np.arange(4), 5)
    write_prepared(folder, np.zeros((20, 28, 28), np.uint8), labels, np.zeros((20, 28, 28), np.uint8), labels,
                   name="tiny", source="test", preprocessing={})
    (folder / "meta.json").write_text(meta)
    for args in (["data-info", str(folder)],
                 ["plan", "--dataset", "imagenet_28_gray", "--data-dir", str(folder), "--num-tasks", "1"]):
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, str(folder / "meta.json"))


def test_a_synthetic_dataset_too_large_for_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import cljax.devices.memory as memory

    monkeypatch.setattr(memory, "host_available_bytes", lambda: 2**30)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--synthetic-classes", "1000",
                          "--n-train-per-class", "2000"], capsys)
    assert_one_error(rc, err, "synthetic dataset", "--synthetic-classes")
    assert not (tmp_path / "r").exists()


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


def _jax_loaded(pid: int) -> bool:
    try:
        return "jaxlib" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_right_after_start_exits_75_with_one_line(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "cljax.cli", "run", *FLAGS, "--results-dir", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The signal goes as soon as the process handles SIGTERM: that must be before it even loads
    # JAX (Python alone handles SIGINT as KeyboardInterrupt and leaves SIGTERM to kill it).
    early, deadline = False, time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _catches_sigterm(proc.pid):
            early = not _jax_loaded(proc.pid)
            break
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert early, "SIGTERM was handled only after JAX was loaded"
    assert proc.returncode == 75, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    assert not any((tmp_path / "r" / RUN_DIR).glob("task_*"))


def test_the_readers_raise_the_project_error_naming_the_file(tmp_path):
    task = tmp_path / "task_000"
    task.mkdir()
    (task / "metadata.json").write_text("[1, 2]")
    with pytest.raises(CljaxError, match="metadata.json holds a JSON list"):
        results.load_metadata(task)
    (task / "metadata.json").write_bytes(b"\x80\x81")
    with pytest.raises(CljaxError, match="metadata.json is not valid JSON"):
        results.load_metadata(task)
    np.save(task / "binary_labels.npy", np.zeros((2, 3), np.uint8))
    size = (task / "binary_labels.npy").stat().st_size
    (task / "binary_labels.npy").write_bytes((task / "binary_labels.npy").read_bytes()[:-2])
    with pytest.raises(CljaxError, match=rf"binary_labels.npy is truncated \({size - 2} bytes, {size} expected\)"):
        results.load_binary_labels(task)
    np.save(task / "weights.npy", np.zeros(3, np.float32))
    with pytest.raises(CljaxError, match="not the structured array"):
        results.load_weights(task)
    good = pickle.dumps({"test_acc": np.zeros(3)}, protocol=4)
    (task / "metrics.pkl").write_bytes(good[:-10])
    with pytest.raises(CljaxError, match="metrics.pkl is truncated or damaged") as truncated:
        results.load_metrics(task)
    assert "do not trust" not in str(truncated.value)
    (task / "metrics.pkl").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CljaxError, match="holds a list, not the dict"):
        results.load_metrics(task)
    (task / "metrics.pkl").write_bytes(pickle.dumps({"x": os.system}))
    with pytest.raises(CljaxError, match="refusing to load posix.system.*do not trust it"):
        results.load_metrics(task)


# ---- 8. stale and misleading -------------------------------------------------------------------------------
def test_overwrite_removes_the_previous_analysis_and_starts_a_new_run_id(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "summary.json").write_text("{}")
    old_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert rc == 0, err
    assert not (run_dir / "analysis").exists()
    new_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert new_id != old_id and results.load_metadata(run_dir / "task_001")["run_id"] == new_id
    assert results.load_metadata(run_dir / "initial")["run_id"] == new_id


def test_sweep_accepts_every_run_flag_and_hands_them_to_its_jobs(tmp_path, monkeypatch, capsys):
    import cljax.experiment as experiment
    import cljax.sweep as sweep

    calls = []
    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda runs, executor, overwrite, allow_nonfinite: calls.append(
        (len(runs), overwrite, allow_nonfinite)) or [])
    monkeypatch.setattr(sweep, "write_manifest", lambda *a: None)
    rc, _, err = run_cli(["sweep", *FLAGS, "--allow-nonfinite", "--overwrite", "--grid", "lr=0.1,0.2",
                          "--results-dir", str(tmp_path)], capsys)
    assert rc == 0 and calls == [(2, True, True)], err
    seen = {}
    monkeypatch.setattr(experiment, "run_experiment", lambda config, **kw: seen.update(kw) or experiment.RunResult(
        algo_dir=tmp_path, task_class_pairs=np.zeros((2, 2, 2))))
    sweep.run_job(small_config(tmp_path, **TINY).to_dict(), False, True)
    assert seen["allow_nonfinite"] is True and seen["progress"] is False


def test_a_resume_on_a_prepared_folder_changed_in_place_is_refused(tmp_path):
    # A prepared folder's identity is the checksums its meta.json recorded (no pass over the
    # images at every start): images changed in place kept it, and the run resumed on them.
    from cljax.data.prepared import load_prepared, write_prepared
    from cljax.experiment import run_experiment

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    data = write_prepared(tmp_path / "data", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), labels,
                          rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), labels, name="test", source="test",
                          preprocessing={}, n_classes=4)
    config = small_config(tmp_path, **{**TINY, "dataset": "imagenet_28_gray", "data_dir": str(data),
                                       "results_dir": str(tmp_path / "r")})

    def keep_partial(t, info):
        if t == 0:
            shutil.copytree(tmp_path / "r", tmp_path / "partial")

    run_experiment(config, progress=False, on_task_end=keep_partial)
    shutil.rmtree(tmp_path / "r")
    shutil.copytree(tmp_path / "partial", tmp_path / "r")
    original = np.load(data / "train_images.npy")
    np.save(data / "train_images.npy", 255 - original)  # meta.json untouched
    with pytest.raises(CljaxError, match="train_images.npy does not match its checksum in meta.json"):
        run_experiment(config, progress=False)
    np.save(data / "train_images.npy", original)
    assert run_experiment(config, progress=False).first_task == 1

    # A damaged description or labels are one line too (IndexError / a misleading count before).
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "class_names": ["a", "b"]}))
    with pytest.raises(CljaxError, match="n_classes 4 and 2 class names"):
        load_prepared(data)
    (data / "meta.json").write_text(json.dumps(meta))
    np.save(data / "test_labels.npy", (labels + 4).astype(meta["files"]["test_labels.npy"]["dtype"]))
    with pytest.raises(CljaxError, match=r"labels from 4 to 7, outside 0 \.\.\. 3"):
        load_prepared(data)


def test_a_folder_past_the_last_task_is_not_deleted_by_a_resume(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    (run_dir / "task_007").mkdir()
    (run_dir / "task_007" / "notes.txt").write_text("mine")
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "task_007 is not a task of this 2-task run", "nothing was deleted")
    assert state(run_dir) == before
    finished = copy(made, "finished", tmp_path / "f")  # a finished run is not reported whole beside it
    shutil.copytree(finished / "task_001", finished / "task_005")
    before = state(finished)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "f")], capsys)
    assert_one_error(rc, err, "task_005 is not a task of this 2-task run: move it out", "to use the run")
    assert state(finished) == before


def test_more_bad_inputs_are_one_line(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    for args, expected in ((["analyze", str(run_dir), "--glue-probes", "1"], "--glue-probes must be at least 2"),
                           (["analyze", str(run_dir), "--probe-ridge", "inf"], "(--probe-ridge) must be a finite number > 0"),
                           (["run", *FLAGS, "--results-dir", ""], "--results-dir is empty"),
                           (["run", "--data-dir", "", "--results-dir", str(tmp_path / "d")], "--data-dir is empty"),
                           (["data-info", ""], "the folder is empty"),
                           (["data-info", str(tmp_path), "--png", " "], "--png is empty")):
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, expected)
    assert not (Path.cwd() / "synthetic").exists()
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def rule(:\n")
    rc, _, err = run_cli(["run", "--plugin", str(plugin), *FLAGS, "--results-dir", str(tmp_path / "p")], capsys)
    assert_one_error(rc, err, f"plugin file {plugin} is not valid Python (line 1")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "config": {**record["config"], "not_a_setting": 1}}))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"{run_dir / 'run.json'}: the recorded settings cannot be read", "not_a_setting",
                     "other files stay")
    assert state(run_dir) == before


def test_a_prepared_folder_whose_splits_differ_in_image_size_is_one_line(tmp_path):
    from cljax.data.prepared import load_prepared, write_prepared

    labels = np.repeat(np.arange(2), 4)
    folder = write_prepared(tmp_path / "data", np.zeros((8, 28, 28), np.uint8), labels, np.zeros((8, 20, 20), np.uint8),
                            labels, name="test", source="test", preprocessing={}, n_classes=2)
    with pytest.raises(CljaxError, match=r"train images are \[28, 28\] and its test images \[20, 20\]"):
        load_prepared(folder)


def test_a_resume_pairs_learner_and_expert_as_the_run_started_with_auto(made, tmp_path, capsys):
    # auto pairs them where a CPU device has a core to itself: a requeue onto a node with other
    # cores switched the pairing mid-run (the last bits moved, against "byte-identical").
    run_dir = copy(made, "partial", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    started = record["split"]["lowering"]["learner_expert"]
    other = {"paired": "separate", "separate": "paired"}[started]
    record["split"]["lowering"]["learner_expert"] = other  # as if started on a host where auto chose the other
    (run_dir / "run.json").write_text(json.dumps(record))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    assert results.load_metadata(run_dir / "task_001")["lowering"]["learner_expert"] == other
    assert results.load_metadata(run_dir / "task_000")["lowering"]["learner_expert"] == started
    # the settings stay as the run was started: auto, in every task, resumed or not
    assert {results.load_metadata(run_dir / f"task_00{t}")["config"]["learner_expert"] for t in (0, 1)} == {"auto"}
