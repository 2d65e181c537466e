"""benchmarks/trace_steps.py: a run's tasks trained again from a kept checkpoint, a snapshot every
step, are the run's own tasks (its snapshots among the trace's), and --with changes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cljax import results
from cljax.cli import main as cli_main
from cljax.errors import CljaxError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import trace_steps  # noqa: E402
from tests.backend import SEPARATELY_COMPILED, assert_same  # noqa: E402

WHY = "the trace's program (a snapshot every step) against the run's, compiled apart"

# The MLP on synthetic data, 96 training images a task in batches of 16: 6 steps; the run keeps
# snapshots at steps 3 and 6, and the checkpoint as every task begins.
RUN = ["--dataset", "synthetic", "--synthetic-classes", "6", "--num-tasks", "3", "--n-repeats", "2",
       "--n-train-per-class", "48", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
       "--batch-size", "16", "--log-frequency", "3", "--lr", "0.1", "--model", "mlp", "--mlp-hidden", "32",
       "--keep-checkpoints", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("trace") / "r"
    flags = [*RUN, "--results-dir", str(out)]
    assert cli_main(["run", *flags, "--no-progress"]) == 0
    return flags, out / "synthetic" / "SL_T3"


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_the_trace_holds_the_runs_snapshots(run):
    flags, algo_dir = run
    got = trace_steps.trace(flags, 1, 2, repeat=1)
    assert got["task"] == [1] * 7 + [2] * 7 and got["steps"] == [0, 1, 2, 3, 4, 5, 6] * 2
    assert set(got["max_abs"]) == {"dense1", "dense2", "head"}
    assert all(len(v) == 14 and np.all(np.isfinite(v)) for v in got["max_abs"].values())
    assert got["train_loss"][0] is None and got["train_loss"][7] is None and np.isfinite(got["train_loss"][1:7]).all()
    for t in (1, 2):
        folder = algo_dir / results.task_dir_name(t)
        saved = results.load_metrics(folder)["train_loss"][:, 1]  # the mean of steps 1-3, and of 4-6
        i = 7 * (t - 1)
        steps = np.asarray(got["train_loss"][i + 1:i + 7])
        # The same training: bit for bit on the CPU (the run's mean in float32 against float64 here:
        # 1e-6); a GPU may compile and tune the two programs (a snapshot every step, or every 3) apart.
        assert_same([steps[:3].mean(), steps[3:].mean()], saved, cpu_rtol=1e-6, **SEPARATELY_COMPILED, why=WHY)
        run_weights = jax.tree.map(lambda w: w[-1, 1], results.load_weights(folder))
        for a, b in zip(_leaves(got["last_weights"][t]), _leaves(run_weights)):
            assert_same(a, b, **SEPARATELY_COMPILED, why=WHY)
        largest = max(np.abs(w).max() for w in _leaves(got["last_weights"][t]))
        assert max(v[i + 6] for v in got["max_abs"].values()) == pytest.approx(largest)


def test_with_other_settings_trains_them_from_the_same_state(run):
    flags, algo_dir = run
    frozen = trace_steps.trace(flags, 1, 1, repeat=0, other=["--lr", "0"])
    before = jax.tree.map(lambda w: w[-1, 0], results.load_weights(algo_dir / "task_000"))  # the kept state
    for a, b in zip(_leaves(frozen["last_weights"][1]), _leaves(before)):
        np.testing.assert_array_equal(a, b)
    trained = trace_steps.trace(flags, 1, 1, repeat=0)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(trained["last_weights"][1]), _leaves(before)))


def test_the_command_prints_a_row_per_step_and_refuses_a_task_without_a_checkpoint(run, tmp_path, capsys):
    flags, algo_dir = run
    assert trace_steps.main(["--from-task", "0", "--to-task", "0", "--json", str(tmp_path / "t.json"), "--", *flags]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("task  step  train_loss") and len(lines) == 1 + 7
    assert lines[1].split()[:3] == ["0", "0", "-"] and "nan" not in lines[1]  # no step taken yet: not a divergence
    assert json.loads((tmp_path / "t.json").read_text())["train_loss"][0] is None
    assert json.loads((tmp_path / "t.json").read_text())["steps"] == [0, 1, 2, 3, 4, 5, 6]
    (algo_dir / "checkpoints" / "start_task_002.npz").rename(tmp_path / "moved.npz")
    try:
        with pytest.raises(CljaxError, match="start_task_002.npz does not exist: .*--keep-checkpoints"):
            trace_steps.trace(flags, 2, 2, repeat=0)
    finally:
        (tmp_path / "moved.npz").rename(algo_dir / "checkpoints" / "start_task_002.npz")
    assert trace_steps.main(["--from-task", "0", "--to-task", "3", "--", *flags]) == 2
    assert "are not of this run (3 tasks" in capsys.readouterr().err


def test_the_commands_help_output_file_and_a_with_that_changes_the_network(run, tmp_path, capsys):
    """--help prints the usage (it said "pass the run's flags after --"); --json into a missing
    folder and --every 0 are refused before any training; a --with that changes the network is
    told to change --with (the checkpoint's own advice was to delete the run)."""
    flags, _ = run
    with pytest.raises(SystemExit) as done:
        trace_steps.main(["--help"])
    assert done.value.code == 0 and "--from-task T --to-task T [options] -- RUN FLAGS" in capsys.readouterr().out
    for bad, expected in [(["--json", str(tmp_path / "none" / "t.json")], "the folder of"),
                          (["--every", "0"], "0 must be at least 1")]:
        with pytest.raises(SystemExit) as refused:
            trace_steps.main(["--from-task", "0", "--to-task", "0", *bad, "--", *flags])
        assert refused.value.code == 2 and expected in capsys.readouterr().err
    with pytest.raises(CljaxError, match="start_task_001.npz does not match this config's learner state: a --with "
                                         "that changes the network"):
        trace_steps.trace(flags, 1, 1, repeat=0, other=["--mlp-hidden", "16"])
