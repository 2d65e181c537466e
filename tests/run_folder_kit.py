"""What the run-folder tests share (tests/test_run_folder*.py): one tiny finished run (and its
state after task 0, what a kill after the first task leaves), made once per test module and
copied per test, the CLI run in-process, and the one-line error check."""

from __future__ import annotations

import shutil
from pathlib import Path

from cljax.cli import main as cli_main
from tests.conftest import small_config

# The MLP: what these tests check is the run folder's, whatever the model, and the MLP compiles
# in a fraction of the CNN's time.
TINY = dict(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
            n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1, model="mlp", mlp_hidden=32)
FLAGS = ["--dataset", "synthetic", "--synthetic-classes", "4", "--num-tasks", "2", "--n-repeats", "2",
         "--n-train-per-class", "16", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
         "--batch-size", "16", "--log-frequency", "1", "--lr", "0.1", "--model", "mlp", "--mlp-hidden", "32",
         "--no-progress"]
RUN_DIR = Path("synthetic") / "SL_T2"


def make_runs(tmp_path_factory) -> dict:
    """{"finished": results root of a finished run, "partial": its state after task 0}; each test
    module's ``made`` fixture makes them once."""
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


class Crash(Exception):
    """What a test's run dies of where ``crash_at`` puts it."""


def crash_at(monkeypatch, point: str, task: int) -> None:
    """The run dies with Crash at ``point`` of task ``task`` (cljax.experiment.crash_point), as a
    kill there would, but inside this process; ``monkeypatch.undo()`` lifts it."""
    import cljax.experiment as experiment

    def crash(at_point, at_task):
        if (at_point, at_task) == (point, task):
            raise Crash

    monkeypatch.setattr(experiment, "crash_point", crash)


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


def flip_byte(path: Path):
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40
    path.write_bytes(bytes(raw))
