"""A run's progress in a log (cljax/progress.py): a line after the first task, then at most one
per interval, and the last; a run's stderr that is a file gets them (before, nothing until it
ended: a SLURM log stayed silent for hours)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from cljax.progress import LogLines
from tests.run_folder_kit import FLAGS


def test_log_lines_are_one_per_interval_with_the_rate_and_what_is_left(capsys):
    now = [0.0]
    lines = LogLines(total=10, done=2, every=60, clock=lambda: now[0])
    for step in range(8):
        now[0] += 20.0  # a task every 20 s
        lines.set_postfix(acc="0.900")
        lines.update(1)
    out = capsys.readouterr().err.splitlines()
    assert out == ["tasks: 2/10 done",
                   # the first task compiles: the rate and what is left are of the tasks after it (8 times too long)
                   "tasks: 3/10 done, acc 0.900, the first in 20 s (compiling included)",
                   "tasks: 6/10 done, acc 0.900, 20.00 s/task, about 80 s left",  # 60 s after the line before
                   "tasks: 9/10 done, acc 0.900, 20.00 s/task, about 20 s left",
                   "tasks: 10/10 done, acc 0.900, 20.00 s/task"]  # the last, whatever the interval


def test_a_run_whose_stderr_is_a_file_writes_progress_lines_there(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "cljax", "run", *[f for f in FLAGS if f != "--no-progress"],
                               "--results-dir", str(tmp_path / "r")], stdout=subprocess.DEVNULL, stderr=err,
                              cwd=Path(__file__).parent.parent, timeout=300,
                              env={**os.environ, "CLJAX_COMPILATION_CACHE": "off"})  # a compile, not a cache hit
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "tasks: 0/2 done, compiling\n" in text and "tasks: 2/2 done, acc " in text, text
    # The first line comes before the compile, so the first task's time includes it (it said so, and did not).
    first = float(re.search(r"the first in (\d+) s \(compiling included\)", text).group(1))
    meta = json.loads(next((tmp_path / "r").glob("*/*/task_000/metadata.json")).read_text())
    assert first >= round(meta["timings"]["compile_seconds"]) > 0, (first, meta["timings"])
    assert "\r" not in text  # no bar's redraws


def test_the_first_line_of_a_repair_says_what_it_trains_again(capsys):
    from cljax.progress import progress_for

    progress_for("log", 5, 1, " (--repair trains tasks 0 to 3 (4 tasks) from the seed again first)")
    assert capsys.readouterr().err == "tasks: 1/5 done (--repair trains tasks 0 to 3 (4 tasks) from the seed again first)\n"
    assert progress_for(False, 5, 0) is None


# `cljax run` whose run is a RunResult made up (no JAX program compiled), its rate that of the tasks'
# task_seconds, each from the task's dispatch to its evaluated results on the host.
_RATE_RUN = """
import sys
import numpy as np
from pathlib import Path
from cljax import cli, experiment
from cljax.run_result import RunResult

def run(config, **kwargs):
    Path(config.results_dir).mkdir(parents=True)
    return RunResult(algo_dir=Path(config.results_dir), task_class_pairs=np.zeros((2, 2, 2), int), compile_seconds=2.0,
                     steps_per_second=12.5)

experiment.run_experiment = run
sys.exit(cli.main(["run", *sys.argv[1:]]))
"""


def test_the_runs_rate_line_says_its_time_holds_the_evaluation_and_where_its_compile_falls(tmp_path):
    # It said "training: 12.5 steps/s", of a time that holds every snapshot's evaluation of the
    # evaluated tasks and, in the first task, the evaluation's compile, which "compile:" leaves out.
    proc = subprocess.run([sys.executable, "-c", _RATE_RUN, *FLAGS, "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("compile:"))
    assert line == ("compile: 2.0 s (the task program; the evaluation's compile falls in the first task), training and "
                    "evaluation: 12.5 steps/s (2 repeats x (learner + expert), batch 16)")


def test_the_bars_time_left_is_of_the_tasks_after_the_first_which_compiles(capsys):
    # The first task's 100 s (its compiles) and then 1 s a task: tqdm's moving average of the
    # seconds per task kept the first task's time, and the bar said several times the time left.
    from cljax.progress import progress_for

    now = [0.0]
    bar = progress_for("bar", 20, 0)
    bar._time = lambda: now[0]
    bar.start_t = bar.last_print_t = 0.0
    now[0] += 100.0
    bar.update(1)
    for _ in range(4):
        now[0] += 1.0
        bar.set_postfix(acc="0.900")  # drawn by the update after it, not beside the count before it
        bar.update(1)
    frames = capsys.readouterr().err.split("\r")
    assert not any("1/20" in frame and "acc=" in frame for frame in frames), frames
    info = bar.format_dict
    rate = info["rate"]
    assert rate is not None and abs(rate - 1.0) < 1e-6, rate  # tasks per second
    assert abs((info["total"] - info["n"]) / rate - 15.0) < 1e-6
    assert info["elapsed"] == 104.0  # the elapsed time is the command's, compiles included
    bar.close()
