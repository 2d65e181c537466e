"""A multi-process run (jax.distributed on this host, two processes) that its processes do not
agree on, or that loses one of them, ends in one line on every process that is left."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.lock_kit import lock_held_elsewhere
from tests.process_kit import suite_xla_flags

FLAGS = ["run", "--dataset", "synthetic", "--model", "mlp", "--mlp-hidden", "32", "--n-repeats", "4",
         "--n-train-per-class", "32", "--n-test-per-class", "8", "--n-subsamples", "4", "--batch-size", "16",
         "--no-progress"]


def _start(flags_of, **env_vars) -> list[subprocess.Popen]:
    """Two processes of one run; ``flags_of(i)``: process i's command line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("CLJAX_CPU_DEVICES", "JAX_PLATFORMS")}
    env.update(CLJAX_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", CLJAX_NUM_PROCESSES="2",
               JAX_PLATFORMS="cpu", XLA_FLAGS=suite_xla_flags(), PYTHONPATH=str(Path(__file__).resolve().parents[1]), **env_vars)
    return [subprocess.Popen([sys.executable, "-m", "cljax", *flags_of(i)], env={**env, "CLJAX_PROCESS_ID": str(i)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if not line.startswith("[Gloo]")]


def test_processes_that_do_not_start_the_same_run_are_refused_by_each(tmp_path):
    # Process 1 with another --lr trained its half of the repeats with it, and process 0 wrote the
    # run as one at process 0's lr; process 1 on another (empty) folder trained task 0 while
    # process 0 resumed at task 1, in the same collectives.
    short = ["--num-tasks", "2", "--epochs", "1", "--log-frequency", "2"]
    procs = _start(lambda i: [*FLAGS, *short, "--results-dir", str(tmp_path / "r"), *(["--lr", "0.01"] if i else [])])
    for i, (p, (_, err)) in enumerate(zip(procs, (p.communicate(timeout=300) for p in procs))):
        assert p.returncode == 2, err[-2000:]
        assert _error_lines(err) == [
            f"error: the processes of this multi-process run do not start the same run: process(es) 1 differ from "
            f"process 0 in --lr (process {i} has --lr {0.01 if i else 0.05}): start every process with the same "
            f"command (nothing was written)."], err[-2000:]
    assert not (tmp_path / "r").exists()
    (tmp_path / "elsewhere").symlink_to(tmp_path / "r", target_is_directory=True)  # a path spelled otherwise
    (tmp_path / "r").mkdir()
    procs = _start(lambda i: [*FLAGS, *short, "--results-dir", str(tmp_path / ("r" if i == 0 else "elsewhere"))])
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs  # one run folder shared: the same state, trained
    assert outs[1][0].strip().endswith("(written by process 0)"), outs[1][0]
    procs = _start(lambda i: [*FLAGS, *short, "--results-dir", str(tmp_path / ("r" if i == 0 else "empty"))])
    for p, (_, err) in zip(procs, (p.communicate(timeout=300) for p in procs)):
        assert p.returncode == 2 and "differ from process 0 in run folder" in err, err[-2000:]
    assert not (tmp_path / "empty").exists()
    # --allow-nonfinite on one process: it went on past a NaN that stopped process 0, and both hung
    # minutes in the next collective; --overwrite on one was said to be another run folder.
    for flag in ("--allow-nonfinite", "--overwrite"):
        procs = _start(lambda i: [*FLAGS, *short, "--results-dir", str(tmp_path / "r"), *([flag] if i else [])])
        for p, (_, err) in zip(procs, (p.communicate(timeout=300) for p in procs)):
            assert p.returncode == 2 and f"differ from process 0 in {flag} (process " in err and \
                "start every process with the same run flags (--allow-nonfinite, --overwrite, --repair)" in err, \
                err[-2000:]


def test_a_process_that_fails_its_own_checks_stops_the_others_at_once(tmp_path):
    # Process 1 cannot read its data (a missing --data-dir on its host): process 0 waited in the
    # first collective until JAX's heartbeat timeout (minutes), then printed JAX's fatal error.
    missing = tmp_path / "no-data"
    start = time.time()
    procs = _start(lambda i: [*FLAGS, "--num-tasks", "2", "--epochs", "1", "--log-frequency", "2",
                              "--results-dir", str(tmp_path / "r"),
                              *(["--dataset", "fashion_mnist", "--data-dir", str(missing)] if i else [])])
    (_, err0), (_, err1) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [2, 2], (err0[-2000:], err1[-2000:])
    assert _error_lines(err0) == [
        "error: process(es) 1 of this multi-process run stopped in its checks before training (the error line of "
        "each says why): fix that and start every process again (nothing was written)."], err0[-2000:]
    assert len(_error_lines(err1)) == 1 and str(missing) in err1, err1[-2000:]
    assert time.time() - start < 90  # JAX's heartbeat timeout is 100 s
    assert not (tmp_path / "r").exists()


def test_a_run_folder_another_run_holds_stops_every_process_at_once(tmp_path):
    # Process 0 alone takes the folder's lock: refused there, the other process waited in the next
    # collective until JAX's heartbeat timeout.
    algo = tmp_path / "r" / "synthetic" / "SL_T2"
    algo.mkdir(parents=True)
    with lock_held_elsewhere(algo):
        start = time.time()
        procs = _start(lambda i: [*FLAGS, "--num-tasks", "2", "--epochs", "1", "--log-frequency", "2",
                                  "--results-dir", str(tmp_path / "r")])
        (_, err0), (_, err1) = (p.communicate(timeout=300) for p in procs)
    assert [p.returncode for p in procs] == [2, 2], (err0[-2000:], err1[-2000:])
    assert "in use by another cljax run" in _error_lines(err0)[-1], err0[-2000:]
    assert _error_lines(err1) == [
        "error: process(es) 0 of this multi-process run stopped in its checks before training (the error line of "
        "each says why): fix that and start every process again (nothing was written)."], err1[-2000:]
    assert time.time() - start < 90  # JAX's heartbeat timeout is 100 s
    assert sorted(p.name for p in algo.iterdir()) == ["run.lock"]


def test_processes_with_other_free_memory_agree_on_the_smallest_evaluation_chunk(tmp_path):
    # Each process chose K from its own devices' memory, and the run was refused when they
    # differed; a host with less free memory (here --device-memory) now sets K for all.
    import math

    from cljax.budget import HEADROOM, Budget, chunk_need
    from cljax.config import Config
    from cljax.program import build_task_program
    from cljax.results import load_metadata

    flags = [*FLAGS, "--num-tasks", "6", "--epochs", "1", "--log-frequency", "2", "--results-dir", str(tmp_path)]
    config = Config.from_flat({"dataset": "synthetic", "model": "mlp", "mlp_hidden": 32, "n_repeats": 4,
                               "n_train_per_class": 32, "n_test_per_class": 8, "n_subsamples": 4, "batch_size": 16,
                               "num_tasks": 6, "epochs": 1, "log_frequency": 2})
    program = build_task_program(config, (28, 28))
    one = math.ceil(chunk_need(Budget.of(config, program, (28, 28)), 1, 2) / HEADROOM)  # two devices in all
    procs = _start(lambda i: [*flags, *(["--device-memory", str(one)] if i else [])], CLJAX_CPU_DEVICES="1")
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    last = tmp_path / "synthetic" / "SL_T6" / "task_005" / "metadata.json"
    assert load_metadata(last.parent)["evaluation"] == {"mode": "chunked", "chunk_tasks": 1}


def test_a_lost_process_is_one_line_for_the_other(tmp_path):
    # The survivor printed JAX's traceback of the failed collective, then JAX's shutdown waited
    # for the lost process and aborted (exit 134).
    out = tmp_path / "r"
    # 300 epochs (1200 steps) a task, as test_scale_pieces.py's SIGTERM test: the nine tasks after
    # task_000 outlast the 50 ms poll and the kill many times over, and neither process trains
    # 3000 epochs of task 0 (and the survivor of task 1) first.
    procs = _start(lambda i: [*FLAGS, "--num-tasks", "10", "--epochs", "300", "--log-frequency", "600",
                              "--results-dir", str(out)])
    first = out / "synthetic" / "SL_T10" / "task_000" / "metadata.json"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    _, err = procs[0].communicate(timeout=200)
    procs[1].communicate()
    assert first.exists(), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    if "another task died" in err:  # the coordinator's heartbeat check came first: JAX's own fatal line
        assert procs[0].returncode != 0
        return
    assert procs[0].returncode == 2, err[-2000:]
    last = _error_lines(err)[-1]
    assert last.startswith("error: a collective with the other processes of this multi-process run failed (") and \
        last.endswith("another process has stopped; every task finished is in the run folder: start the same "
                      "command again on every process to resume."), err[-2000:]
