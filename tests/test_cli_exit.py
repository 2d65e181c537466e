"""How the command line ends: the line a stopped run prints, and the exit code of a command that
has finished when a stop signal comes in the interpreter's shutdown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.run_folder_kit import FLAGS, RUN_DIR

# `cljax run` whose training is a wait (no JAX program compiled): stopped by SIGTERM once it has
# started; with "replaced", it has first written its own run.json, as --overwrite does once it has
# deleted the earlier run; with "saved", the checkpoint after task 0.
STOPPED_RUN = """
import sys, time
import numpy as np
from pathlib import Path
from cljax import cli, experiment

mode = sys.argv.pop(1)

def training(config, **kwargs):
    run_dir = Path(config.results_dir) / "synthetic" / "SL_T2"
    if mode == "replaced":
        (run_dir / "run.json").write_text("{}")
    if mode == "saved":
        run_dir.mkdir(parents=True, exist_ok=True)
        np.savez(run_dir / "checkpoint.npz", next_task=np.asarray(1, np.int64))
    print("training", flush=True)
    time.sleep(60)

experiment.run_experiment = training
sys.exit(cli.main(["run", *sys.argv[1:]]))
"""
NONE = "no task had finished, so none is saved; run the same command to start from task 0."
RESUME = "task 0 (1 of 2) is saved; run the same command to resume from task 1."
OVERWRITTEN = ("task 0 (1 of 2) is saved; run the same command without --overwrite to resume from task 1 (with it, the "
               "run starts again from task 0).")


@pytest.mark.parametrize("case", ["a run", "a run, task 0 saved", "--overwrite, no earlier run",
                                  "--overwrite, the earlier run replaced", "--overwrite, task 0 saved",
                                  "--overwrite, the earlier run as it was"])
def test_a_stopped_run_says_how_to_go_on(tmp_path, case):
    # It said "run the same command to resume" under --overwrite too, and that command deletes the
    # finished tasks: a SLURM requeue of it never got past a preemption. A stop before --overwrite
    # had deleted the earlier run then said to run it without --overwrite, which went on with the
    # earlier run, where a restart was asked for. It said "the finished tasks are saved" when none
    # had finished, and named none when some had (a log's last progress line can be a minute old).
    run_dir = tmp_path / "r" / RUN_DIR
    if case.startswith("--overwrite, the earlier run"):
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text('{"run_id": "earlier"}')
    argv = [*FLAGS, "--results-dir", str(tmp_path / "r")] + (["--overwrite"] if "overwrite" in case else [])
    mode = "replaced" if "replaced" in case else "saved" if "saved" in case else "-"
    proc = subprocess.Popen([sys.executable, "-c", STOPPED_RUN, mode, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "training\n"
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 75, err
    said = {"a run": NONE, "a run, task 0 saved": RESUME, "--overwrite, task 0 saved": OVERWRITTEN,
            "--overwrite, the earlier run as it was":
            f"--overwrite had deleted nothing yet, and the earlier run in {run_dir} is as it was; run the same command "
            f"to start again from task 0."}.get(case, NONE)
    assert err.strip() == f"stopped by SIGTERM: {said}"


# `python -m cljax.cli` (no command: the usage, exit code 2) as the shell starts it, then what the
# interpreter's shutdown runs first, its exit functions: the stop signals' handlers after them.
_HANDLERS_AT_EXIT = """
import atexit, runpy, signal, sys
from cljax.command import STOP_SIGNALS
sys.argv = ["cljax"]
try:
    runpy.run_module("cljax.cli", run_name="__main__", alter_sys=True)
except SystemExit:
    atexit._run_exitfuncs()
    print(*(signal.getsignal(sig) is signal.SIG_IGN for sig in STOP_SIGNALS))
"""

# A signal in the shutdown's C teardown, after the exit functions: an object of __main__ whose
# finalizer, run as the interpreter clears its modules, sends it.
_SIGNAL_IN_THE_TEARDOWN = """
import os, runpy, signal, sys, time
sig = signal.Signals[sys.argv[1]]

class SendsAtTeardown:
    def __del__(self):
        os.kill(os.getpid(), sig)
        time.sleep(0.5)

sent_at_teardown = SendsAtTeardown()
sys.argv = ["cljax"]
runpy.run_module("cljax.cli", run_name="__main__", alter_sys=True)
"""


def test_the_stop_signals_are_ignored_once_the_interpreter_shuts_down():
    # CPython's shutdown resets a signal with a Python handler to the default action (and runs no
    # Python handler in its C teardown), but keeps one ignored.
    proc = subprocess.run([sys.executable, "-c", _HANDLERS_AT_EXIT], capture_output=True, text=True, timeout=60)
    ignored = proc.stdout.splitlines()[-1].split()  # after the usage
    assert ignored and set(ignored) == {"True"}, (proc.stdout, proc.stderr)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_the_interpreters_teardown_keeps_the_commands_exit_code(sig):
    # JAX's teardown at a command's end: the default action killed the process (143 for SIGTERM) as
    # if the command had not finished.
    proc = subprocess.run([sys.executable, "-c", _SIGNAL_IN_THE_TEARDOWN, sig], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
