"""The run folder is never lost or mixed (issue 18), part 1 continued: a resume verifies what it
resumes (a damaged run is never reported finished; each metadata.json parsed once), an overwrite
builds its first state before it deletes and deletes nothing cljax did not write, and analyze
refuses a damaged or foreign folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cljax import results
from cljax.cli import main as cli_main
from tests.run_folder_kit import (FLAGS, RUN_DIR, Crash, assert_one_error, copy, crash_at, flip_byte, make_runs, run_cli,
                                  state)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


# ---- 4. resume verifies what it resumes ------------------------------------------------------------------
DAMAGE = {
    "folder_missing": (lambda d: shutil.rmtree(d / "task_000"), "task_000 is missing"),
    "file_missing": (lambda d: (d / "task_001" / "weights.npy").unlink(), "weights.npy is missing"),
    "bit_flip": (lambda d: flip_byte(d / "task_000" / "representations.npy"), "does not match the sha256"),
    "truncated": (lambda d: (d / "task_001" / "weights.npy").write_bytes((d / "task_001" / "weights.npy")
                                                                          .read_bytes()[:-100]), "is truncated"),
    "unlisted": (lambda d: _unlist(d / "task_000", "representations.npy"), "does not list representations.npy"),
    # metadata.json has no hash of its own: the slots a reader maps to tasks are checked against the mode
    "slots": (lambda d: _edit_slots(d / "task_001"), "eval_tasks.eval_task_ids [1, 0] are not the task slots"),
}


def _edit_slots(task_dir: Path):
    meta = json.loads((task_dir / "metadata.json").read_text())
    meta["eval_tasks"]["eval_task_ids"] = [1, 0]
    (task_dir / "metadata.json").write_text(json.dumps(meta))


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
    assert_one_error(rc, err, expected, "pass --repair to train", "from the seed again", "--overwrite to train the run "
                     "again from task 0", "deletes")
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
    root = tmp_path / "r"
    crash_at(monkeypatch, "train", 0)
    with pytest.raises(Crash):
        cli_main(["run", *FLAGS, "--results-dir", str(root)])
    monkeypatch.undo()
    run_dir = root / RUN_DIR
    first_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["initial", "run.json", "run.lock", "verified.jsonl"]

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

    # A partial task folder (here a truncated file) is the replaced run's too: deleted with it
    # before this run trains, not left for the task that overwrites it (it would outlive a stop).
    damaged = copy(made, "partial", tmp_path / "d")
    (damaged / "checkpoint.npz").unlink()
    weights = damaged / "task_000" / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:-100])
    crash_at(monkeypatch, "train", 0)
    with pytest.raises(Crash):
        cli_main(["run", *FLAGS, "--lr", "0.2", "--results-dir", str(tmp_path / "d")])
    monkeypatch.undo()
    assert "that finished no task; it was replaced by this one" in capsys.readouterr().err
    assert sorted(p.name for p in damaged.iterdir()) == ["initial", "run.json", "run.lock", "verified.jsonl"]
    assert json.loads((damaged / "run.json").read_text())["config"]["lr"] == 0.2

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
    from cljax import check_record, run_folder

    run_dir = copy(made, "finished", tmp_path / "r")  # a copy: its verified.json vouches for no file
    parsed = []
    monkeypatch.setattr(check_record, "load_metadata", lambda d: parsed.append(Path(d).name) or results.load_metadata(d))
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out + err, (out, err)
    assert sorted(n for n in parsed if n.startswith("task_")) == ["task_000", "task_001"]  # was each twice

    memo: dict = {}
    assert run_folder.verify_task_dir(run_dir / "task_001", 1, "the-run", hashes=False, memo=memo) is not None
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert run_folder.verify_task_dir(run_dir / "task_001", 1, run_id, hashes=False, memo=memo) is None
    padded = run_dir / "task_000" / "metrics.pkl"  # not an .npy with a header: only the recorded size tells
    padded.write_bytes(padded.read_bytes() + b"\0" * 64)
    problem = run_folder.verify_task_dir(run_dir / "task_000", 0, run_id, hashes=False)
    assert problem is not None and "metrics.pkl has" in problem and "bytes" in problem
    meta_path = run_dir / "task_001" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "run_id": "x" * len(run_id)}, indent=1))  # another run's, same size
    os.utime(meta_path, ns=(meta_path.stat().st_atime_ns, meta_path.stat().st_mtime_ns + 1))
    problem = run_folder.verify_task_dir(run_dir / "task_001", 1, run_id, hashes=True, memo=memo)
    assert problem is not None and "belongs to run " + "x" * len(run_id) in problem


@pytest.mark.parametrize("case", ["user_file", "analysis_link", "not_a_file", "analysis_user_file"])
def test_overwrite_deletes_nothing_when_it_would_take_a_file_cljax_did_not_write(made, tmp_path, capsys, case):
    run_dir = copy(made, "finished", tmp_path / "r")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.csv").write_text("a,b")
    if case == "user_file":
        (run_dir / "task_000" / "notes.csv").write_text("a,b")
        expected = "task_000/notes.csv is not a file cljax writes"
    elif case == "analysis_user_file":  # analysis/ holds only .json, .npz and .png of cljax's
        (run_dir / "analysis").mkdir(exist_ok=True)
        (run_dir / "analysis" / "notes.txt").write_text("a,b")
        expected = "analysis/notes.txt is not a file cljax writes"
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
        flip_byte(run_dir / "task_001" / "representations.npy")
        expected = "task_001/representations.npy does not match the sha256"
    elif damage == "foreign":
        meta = json.loads((run_dir / "task_001" / "metadata.json").read_text())
        (run_dir / "task_001" / "metadata.json").write_text(json.dumps({**meta, "run_id": "another"}))
        expected = "task_001 belongs to run another"
    else:
        flip_byte(run_dir / "initial" / "weights.npy")
        expected = "initial/weights.npy does not match the sha256"
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert_one_error(rc, err, expected, "the analysis reads only its run's own, whole files")
    assert not (run_dir / "analysis").exists()  # not even an empty folder
