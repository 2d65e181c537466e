"""Crash safety, bit-identical resume, clean shutdown, clear errors, safe readers."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cljax import results, safe_files
from cljax.cli import main as cli_main
from tests.conftest import FASHION_DIR

# T=3, R=2, 20 steps per task: small enough to run a few times, big enough to be killed mid-task.
RUN_FLAGS = [
    "--num-tasks", "3", "--n-repeats", "2", "--n-train-per-class", "100", "--n-test-per-class", "50",
    "--n-subsamples", "16", "--epochs", "2", "--batch-size", "20", "--log-frequency", "5", "--no-progress",
    "--data-dir", str(FASHION_DIR),
]
ARRAY_FILES = ("representations.npy", "binary_labels.npy", "weights.npy")


def cljax(args: list[str], env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cljax.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


def algo_dir(results_dir: Path) -> Path:
    return results_dir / "fashion_mnist" / "SL_T3"


def assert_complete_task_dirs(run_dir: Path) -> None:
    for d in results.task_dirs(run_dir):
        assert sorted(p.name for p in d.iterdir()) == sorted(results.TASK_FILES), d


def assert_same_arrays(a_dir: Path, b_dir: Path) -> None:
    a_tasks, b_tasks = results.task_dirs(a_dir), results.task_dirs(b_dir)
    assert [d.name for d in a_tasks] == [d.name for d in b_tasks] == ["task_000", "task_001", "task_002"]
    for a, b in zip(a_tasks, b_tasks):
        for name in ARRAY_FILES:
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
        for name in ("metrics.pkl", "expert_metrics.pkl"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"


def run_here(args: list[str]) -> int:
    """`cljax run` in this process: a run that is not about its process (the uninterrupted
    reference, a resume after a killed child, a refusal). The in-process runs build the task
    program once (cljax's built programs) instead of importing JAX and tracing it in a child each."""
    return cli_main(["run", *RUN_FLAGS, *args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert run_here(["--results-dir", str(out)]) == 0
    return algo_dir(out)


@pytest.mark.parametrize("fault", ["train:1", "write:2"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(reference, tmp_path, capsys, fault):
    out = tmp_path / "results"
    killed = cljax(["run", *RUN_FLAGS, "--results-dir", str(out)], env_extra={"CLJAX_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL
    point, task = fault.split(":")
    run_dir = algo_dir(out)
    assert [d.name for d in results.task_dirs(run_dir)] == [f"task_{i:03d}" for i in range(int(task))]
    assert_complete_task_dirs(run_dir)  # no partial task folder is ever visible
    if int(task) >= 2:  # without its checkpoint the run is refused, not trained again from task 0
        checkpoint = run_dir / "checkpoint.npz"
        kept = checkpoint.read_bytes()
        checkpoint.unlink()
        capsys.readouterr()
        assert run_here(["--results-dir", str(out)]) == 2
        assert "checkpoint.npz is missing, while tasks 0 to 1 are finished" in capsys.readouterr().err
        checkpoint.write_bytes(kept)
    out = tmp_path / "moved" / "elsewhere"  # a results tree moved to another path resumes the same
    shutil.move(tmp_path / "results", out)
    run_dir = algo_dir(out)
    capsys.readouterr()
    rc = run_here(["--results-dir", str(out)])
    resumed = capsys.readouterr()
    assert rc == 0, resumed.err
    assert (f"resumed from task {task}" in resumed.out) == (int(task) > 0)
    assert_same_arrays(reference, run_dir)
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]


def test_sigkill_at_a_random_moment_then_rerun_is_identical(reference, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "cljax.cli", "run", *RUN_FLAGS, "--results-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (algo_dir(out) / "task_000").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert_complete_task_dirs(algo_dir(out))
    assert run_here(["--results-dir", str(out)]) == 0
    assert_same_arrays(reference, algo_dir(out))


def test_sigterm_exits_quickly_with_a_resumable_state(reference, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen([sys.executable, "-m", "cljax.cli", "run", *RUN_FLAGS, "--results-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (algo_dir(out) / "task_000").exists() and time.time() < deadline:
        time.sleep(0.05)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == 75, err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert_complete_task_dirs(algo_dir(out))
    assert run_here(["--results-dir", str(out)]) == 0
    assert_same_arrays(reference, algo_dir(out))


SECOND_SIGNAL = """
import os, signal, sys, threading, time
from cljax import stopping

class SlowStderr:  # the first handler is still writing its line (a pipe, a network log) ...
    def write(self, s):
        time.sleep(0.5)
        return sys.__stderr__.write(s)

    def flush(self):
        sys.__stderr__.flush()

sys.stderr = SlowStderr()

def send_two():  # ... when a second SIGTERM comes (SLURM's, or one that timeout passes on)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=send_two, daemon=True).start()
stopping.stoppable(lambda critical: time.sleep(60), "stopped.")
"""


def test_a_second_sigterm_while_stopping_does_not_hang_the_run():
    # The handler ran again inside itself and waited for the lock its outer call held: the
    # process hung until SIGKILL (measured with gdb). Now it exits once, with the resume code.
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.count("stopped by SIGTERM") == 1 and "Traceback" not in proc.stderr


def test_a_finished_run_is_reported_not_rerun(reference, capsys):
    results_dir = reference.parent.parent
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*")}
    rc = cli_main(["run", *RUN_FLAGS, "--results-dir", str(results_dir)])
    out = capsys.readouterr().out
    assert rc == 0 and "already finished" in out
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*")} == before


def test_nonfinite_loss_stops_with_a_record_unless_allowed(tmp_path, capsys, monkeypatch):
    from tests.run_folder_kit import Crash, crash_at

    out = tmp_path / "results"
    rc = cli_main(["run", *RUN_FLAGS, "--lr", "1e12", "--results-dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "non-finite" in err and "--allow-nonfinite" in err
    assert "again with a lower --lr and --overwrite" in err  # task_000 is written: another --lr alone is refused
    meta = results.load_metadata(algo_dir(out) / "task_000")
    assert meta["nonfinite"] and meta["nonfinite"][0]["metric"].endswith("loss")
    assert len(results.task_dirs(algo_dir(out))) == 1
    rc = cli_main(["run", *RUN_FLAGS, "--lr", "1e12", "--allow-nonfinite", "--overwrite", "--results-dir", str(out)])
    assert rc == 0 and len(results.task_dirs(algo_dir(out))) == 3
    # The log says when it happened, once: the experts diverge in every task, the learners stay diverged.
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: task")]
    assert warnings == ["warning: task 0: the learner in repeats 0, 1 and the expert in repeats 0, 1 diverged "
                        "(accuracy not finite); the run goes on (--allow-nonfinite), its means leave them out, and "
                        "a repeat still diverged at the next task is not named again."]
    # A run stopped after task 1 and resumed says the same: the resumed command reads task 1's folder.
    crash_at(monkeypatch, "train", 2)
    with pytest.raises(Crash):
        cli_main(["run", *RUN_FLAGS, "--lr", "1e12", "--allow-nonfinite", "--results-dir", str(tmp_path / "stopped")])
    monkeypatch.undo()
    first = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: task")]
    assert cli_main(["run", *RUN_FLAGS, "--lr", "1e12", "--allow-nonfinite", "--results-dir",
                     str(tmp_path / "stopped")]) == 0
    resumed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: task")]
    assert first == warnings and resumed == []
    # A diverged network has no accuracy: NaN where its logits are not finite (argmax of NaNs is
    # label 0, which scored it at exactly chance, 0.5, and entered the means as a real value).
    last = results.task_dirs(algo_dir(out))[-1]
    metrics, expert = results.load_metrics(last), results.load_expert_metrics(last)
    assert not np.isfinite(metrics["test_loss"][-1]).any() and np.isnan(metrics["test_acc"][-1]).all()
    assert np.isnan(expert["test_acc"][-1]).all()


# ---- one clear line for every bad input --------------------------------------------------------
def _corrupt_fashion(tmp_path: Path, how: str) -> Path:
    d = tmp_path / f"fmnist_{how}"
    shutil.copytree(FASHION_DIR, d)
    target = d / "train-labels-idx1-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if how == "truncated_gz":
        target.write_bytes(target.read_bytes()[:1000])
    elif how == "short_idx":
        target.write_bytes(gzip.compress(raw[:-100]))
    elif how == "bad_magic":
        target.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    elif how == "missing_file":
        target.unlink()
    elif how == "label_past_classes":  # label 12 of 10 classes: its image belonged to no task, silently
        target.write_bytes(gzip.compress(raw[:8] + b"\x0c" + raw[9:]))
    return d


def _malicious_finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "mal"
    assert cli_main(["run", *RUN_FLAGS, "--num-tasks", "1", "--results-dir", str(out)]) == 0

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    task = out / "fashion_mnist" / "SL_T1" / "task_000"
    (task / "metrics.pkl").write_bytes(pickle.dumps({"test_acc": Evil()}))
    return out


BAD_INPUTS = {
    "too_many_tasks": (["--num-tasks", "6"], "at most 5 tasks"),
    "zero_repeats": (["--n-repeats", "0"], "--n-repeats must be at least 1"),
    "zero_tasks": (["--num-tasks", "0"], "--num-tasks must be at least 1"),
    "zero_epochs": (["--epochs", "0"], "--epochs must be at least 1"),
    "zero_batch": (["--batch-size", "0"], "--batch-size must be at least 1"),
    "negative_lr": (["--lr", "-1"], "--lr must be at least 0"),
    "nan_lr": (["--lr", "nan"], "--lr must be finite"),
    "momentum_too_high": (["--momentum", "1.5"], "--momentum must be at most"),
    "out_dim_3": (["--out-dim", "3"], "--out-dim"),
    "repeats_not_int": (["--n-repeats", "two"], "--n-repeats"),
    "tasks_float": (["--num-tasks", "2.5"], "--num-tasks"),
    "unknown_dataset": (["--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    "unknown_algorithm": (["--algorithm", "XYZ"], "unknown algorithm 'XYZ'"),
    "missing_data_dir": (["--data-dir", "/nonexistent/fmnist"], "does not exist"),
    "log_frequency_too_large": (["--log-frequency", "1000"], "--log-frequency 1000 is larger"),
    "odd_subsamples": (["--n-subsamples", "15"], "--n-subsamples 15 must be even (half of each class): use 14 or 16"),
    "odd_subsamples_at_the_limit": (["--n-subsamples", "101"], "--n-subsamples 101 must be even (half of each class): "
                                    "use 100."),  # 102 is over 2 * --n-test-per-class
    "too_many_subsamples": (["--n-subsamples", "102"], "--n-subsamples 102 must be at most 2 * --n-test-per-class = 100"),
    "synthetic_size": (["--dataset", "synthetic", "--synthetic-size", "10"], "use 8 or 12 (--model cnn, the default, needs at least 28)"),
    "too_many_train_images": (["--n-train-per-class", "7000", "--log-frequency", "1"], "training images, the fewest of any class, but 7000"),
    "too_many_test_images": (["--n-test-per-class", "2000"], "test images, the fewest of any class, but --n-test-per-class"),
    "batch_larger_than_task": (["--batch-size", "1000"], "larger than a task's 200 training images"),
    "bad_test_source": (["--test-source", "validation"], "--test-source"),
    "bad_representation_dtype": (["--representation-dtype", "int8"], "--representation-dtype"),
    "negative_seed": (["--seed", "-1"], "--seed must be at least 0"),
    "negative_eval_chunk": (["--eval-chunk-tasks", "-2"], "--eval-chunk-tasks must be at least 0"),
    # JAX keys keep 32 bits: seed 2**32 shared seed 0's initialisation; larger ones crashed
    "seed_past_32_bits": (["--seed", "4294967296"], "--seed must be at most 4294967295"),
    "int_past_32_bits": (["--use-replay", "--replay-size", "1000000000000"], "(a 32-bit integer in the compiled"),
    "int_past_32_bits_below": (["--use-cbp", "--cbp-maturity", "-10000000000000"], "--cbp-maturity must be at least"),
    # the learner's batch with replay's images: the memory check counted --batch-size alone
    "replay_batch_beyond_memory": (["--use-replay", "--replay-batch", "1000000000"], "a task needs about"),
    "unknown_flag": (["--learning-rate", "0.1"], "unrecognized arguments"),
    "imagenet_empty_data_dir": (["--dataset", "imagenet_28_gray", "--data-dir", ""], "--data-dir is empty"),
    "imagenet_incomplete_folder": (["--dataset", "imagenet_28_gray", "--data-dir", "{tmp}"],
                                   "meta.json). Prepare it with `cljax prepare-imagenet"),  # (the fix a sentence)
    "truncated_gz": (["--data-dir", "{truncated_gz}"], "corrupt or truncated; put good copies of the four IDX files in"),
    "short_idx": (["--data-dir", "{short_idx}"], "is truncated"),
    "bad_magic": (["--data-dir", "{bad_magic}"], "is not a uint8 IDX file"),
    "missing_file": (["--data-dir", "{missing_file}"], "not found"),
    "label_past_classes": (["--data-dir", "{label_past_classes}"], "train labels in"),
    "results_dir_is_a_file": (["--results-dir", "{file}/sub"], "is a file, not a folder"),
    "data_dir_is_a_file": (["--data-dir", "{file}"], "{file} is a file, not a folder"),  # said "does not exist"
    "plugin_is_a_folder": (["--plugin", "{tmp}"], "is a folder, not a Python file"),
    "other_config_exists": (["--results-dir", "{existing}", "--lr", "0.2"], "holds a run with other settings (lr)"),
    "malicious_pickle": (["--num-tasks", "1", "--results-dir", "{malicious}"], "refusing to load posix.system"),
    "full_disk": (["--results-dir", "{fulldisk}"], "not enough disk"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch, reference):
    flags, expected = BAD_INPUTS[case]
    fills = {"tmp": str(tmp_path / "empty_prepared"), "file": str(tmp_path / "a_file"),
             "existing": str(reference.parent.parent), "fulldisk": str(tmp_path / "full")}
    (tmp_path / "empty_prepared").mkdir()
    (tmp_path / "a_file").write_text("x")
    for how in ("truncated_gz", "short_idx", "bad_magic", "missing_file", "label_past_classes"):
        if "{" + how + "}" in " ".join(flags):
            fills[how] = str(_corrupt_fashion(tmp_path, how))
    if "{malicious}" in " ".join(flags):
        fills["malicious"] = str(_malicious_finished_run(tmp_path))
        capsys.readouterr()
    if case == "full_disk":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    flags = [f.format(**fills) for f in flags]
    results_dir = tmp_path / "results"
    run_flags = list(RUN_FLAGS)
    if "synthetic" in flags:  # a dataset that reads no folder: --data-dir would be warned of (made, not read)
        del run_flags[run_flags.index("--data-dir"):run_flags.index("--data-dir") + 2]
    args = ["run", *run_flags, "--results-dir", str(results_dir), *flags]
    watched = [Path(fills["existing"]), Path(fills.get("malicious", tmp_path / "none"))]
    before = {p: p.stat().st_mtime_ns for w in watched if w.exists() for p in w.rglob("*")}
    monkeypatch.chdir(tmp_path)
    try:
        rc = cli_main(args)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    captured = capsys.readouterr()
    assert rc not in (0, None)
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert expected.format(**fills) in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not results_dir.exists() or not any(results_dir.rglob("*"))
    assert not (tmp_path / "full").exists()
    assert {p: p.stat().st_mtime_ns for w in watched if w.exists() for p in w.rglob("*")} == before
    assert not (tmp_path / "pwned").exists()


def test_unknown_command_is_one_line(capsys):
    assert cli_main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'frobnicate'" in err


def test_no_command_prints_the_commands_and_fails_while_help_succeeds(capsys):
    assert cli_main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: cljax COMMAND") and "\n  run " in out and "\n  analyze " in out
    for spelled in ("-h", "--help"):
        assert cli_main([spelled]) == 0
        assert capsys.readouterr().out == out


@pytest.mark.parametrize("code, fix", [
    (errno.ENOSPC, "free space, then run the same command (a run resumes from its last finished task)"),
    (errno.EDQUOT, "free space, then run the same command (a run resumes from its last finished task)"),
    (errno.EACCES, "check the path and its permissions"),
])
def test_an_error_of_the_environment_is_one_line_with_its_fix(monkeypatch, capsys, code, fix):
    from cljax import cli

    def fail(argv):
        raise OSError(code, os.strerror(code), "/results/x")

    monkeypatch.setitem(cli.COMMANDS, "run", (fail, "run"))
    assert cli_main(["run"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {os.strerror(code)} (/results/x): {fix}.\n" and captured.out == ""

    def no_memory(argv):
        raise MemoryError

    monkeypatch.setitem(cli.COMMANDS, "run", (no_memory, "run"))
    assert cli_main(["run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory in `cljax run`")



def test_reader_allows_numpy_and_plain_values(tmp_path):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [1, 2.5, "x", None, True], "c": {"d": (1, 2)},
            "e": np.float64(3.5), "f": np.int64(7)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    loaded = safe_files.safe_load_pickle(path)
    assert np.array_equal(loaded["a"], data["a"]) and loaded["b"] == data["b"] and loaded["e"] == 3.5


def test_checkpoint_restores_every_leaf_exactly(tmp_path):
    import jax

    from cljax.checkpoint import load_learner, save_learner

    state = {"w": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32), "n": np.arange(2),
             "k": jax.random.split(jax.random.key(1), 2)}
    save_learner(tmp_path, state, 4)
    restored, next_task = load_learner(tmp_path, state)
    assert next_task == 4
    assert restored["w"].tobytes() == state["w"].tobytes() and np.array_equal(restored["n"], state["n"])
    assert np.array_equal(jax.random.key_data(restored["k"]), jax.random.key_data(state["k"]))


def test_resume_restores_the_whole_learner_with_replay_momentum_and_the_methods(tmp_path, monkeypatch):
    """The checkpoint carries the whole learner: optimiser state (momentum), the replay buffer,
    and the plasticity methods' state (CBP's utilities, ages, counts and, with the adaptable
    utility, running means; ReDo's step count,
    L2-init's theta_0, with LoP's per-step shrink+perturb noise). An interrupted run resumed
    in a new process state equals an uninterrupted one byte for byte."""
    from cljax.experiment import run_experiment
    from tests.conftest import small_config
    from tests.run_folder_kit import Crash, crash_at

    def config(name):
        return small_config(tmp_path / name, use_replay=True, replay_size=40, replay_batch=8, momentum=0.9,
                            epochs=2, log_frequency=5, use_cbp=True, cbp_maturity=3, cbp_rate=0.05, use_redo=True,
                            cbp_utility="adaptable", redo_every=7, use_l2_init=True, l2_init_decay=1e-2, use_l2=True, add_plasticity=True,
                            sp_mode="step", sp_noise="gaussian", sp_lambda=1.0, sp_sigma=1e-4)

    whole = run_experiment(config("whole"), progress=False)

    crash_at(monkeypatch, "train", 2)
    with pytest.raises(Crash):
        run_experiment(config("resumed"), progress=False)
    monkeypatch.undo()
    resumed = run_experiment(config("resumed"), progress=False)
    assert resumed.first_task == 2
    assert_same_arrays(whole.algo_dir, resumed.algo_dir)


STOPPED_BY = """
import os, signal, sys, threading, time
from cljax import stopping
from cljax.run_lock import RunLock

lock = RunLock(sys.argv[2]).__enter__()  # held by the command, as a run holds its folder's
threading.Thread(target=lambda: (time.sleep(1.0), os.kill(os.getpid(), getattr(signal, sys.argv[1]))), daemon=True).start()
stopping.stoppable(lambda critical: time.sleep(60), "run the same command to resume.")
"""


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGUSR2", "SIGHUP"])
def test_a_batch_systems_warning_signal_stops_a_command_as_sigterm_does(sig, tmp_path):
    # `#SBATCH --signal=USR1@90`, submitit's USR2, a closed terminal: each killed a run without a
    # line (exit 138, 140, 129). The lock's record says the command ended (for a filesystem without locks).
    # The child starts with the signal at its default: a suite run under nohup has SIGHUP ignored,
    # which the child would inherit and cljax rightly keep ignored (the next test), so it slept on.
    # (A launcher that resets it and execs: preexec_fn would fork this multithreaded process.)
    at_default = ("import os, signal, sys; signal.signal(getattr(signal, sys.argv[2]), signal.SIG_DFL); "
                  "os.execv(sys.executable, [sys.executable, '-c', *sys.argv[1:]])")
    proc = subprocess.run([sys.executable, "-c", at_default, STOPPED_BY, sig, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.strip() == f"stopped by {sig}: run the same command to resume."
    assert json.loads((tmp_path / "run.lock").read_text())["ended"]


def test_a_stop_signal_the_process_was_started_ignoring_stays_ignored(tmp_path):
    # `nohup cljax run ... &`: the run stopped when the terminal closed, since SIGHUP got cljax's handler.
    script = STOPPED_BY.replace("time.sleep(60)", "time.sleep(3)")
    # started as nohup starts it: SIGHUP ignored, which stays so over exec
    ignoring = ["sh", "-c", 'trap "" HUP; exec "$0" "$@"', sys.executable]
    proc = subprocess.run([*ignoring, "-c", script, "SIGHUP", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "stopped" not in proc.stderr, proc.stderr


def test_a_full_disk_or_no_memory_in_compare_or_plan_gives_that_commands_fix(monkeypatch, capsys):
    # compare on a full disk said "(a run resumes from its last finished task)"; plan out of memory said to
    # shrink the run as `cljax plan` shows, which was the command that ran out.
    from cljax import cli

    def full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setitem(cli.COMMANDS, "compare", (full, "compare"))
    assert cli_main(["compare"]) == 2
    assert capsys.readouterr().err == (f"error: {os.strerror(errno.ENOSPC)}: free space, then run the same command "
                                       f"(or write elsewhere: --out, --json).\n")

    def no_memory(argv):
        raise MemoryError

    monkeypatch.setitem(cli.COMMANDS, "plan", (no_memory, "plan"))
    assert cli_main(["plan"]) == 2
    assert capsys.readouterr().err == ("error: out of memory in `cljax plan`: shrink the run (fewer --n-repeats, "
                                       "--num-tasks or images per class) or use a machine with more memory.\n")
