"""What a resume, --repair and a rewrite of initial/ delete: only the files cljax wrote. A folder
they would delete or write anew that holds a user's file, a sub-folder, a link, or another run's
task folder is refused in one line naming it, and nothing is deleted (cljax/rewrites.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cljax.kept_checkpoints import again_note
from tests.run_folder_kit import FLAGS, assert_one_error, copy, make_runs, run_cli, state


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


def _half_written(run_dir):
    """task_001 as a run killed while writing it would leave it: not whole, so the resume redoes it."""
    (run_dir / "task_001").mkdir()
    (run_dir / "task_001" / "weights.npy").write_bytes(b"\x93NUMPY")


def _another_runs(run_dir, made):
    shutil.copytree(made["finished"] / run_dir.relative_to(run_dir.parents[1]) / "task_001", run_dir / "task_001")
    meta = json.loads((run_dir / "task_001" / "metadata.json").read_text())
    (run_dir / "task_001" / "metadata.json").write_text(json.dumps({**meta, "run_id": "another-run"}))


STALE = {
    "a user's file": (lambda d, m: (_half_written(d), (d / "task_001" / "notes.txt").write_text("mine")),
                      "task_001/notes.txt is not a file cljax writes, and the resume (it trains that task again) "
                      "would delete it with"),
    "a sub-folder": (lambda d, m: (_half_written(d), (d / "task_001" / "sub").mkdir()),
                     "task_001/sub is not a file cljax writes"),
    "another run's folder": (lambda d, m: _another_runs(d, m),
                             "task_001 is a task folder of run another-run, not of this run"),
    "a link": (lambda d, m: (d / "task_001").symlink_to(d / "task_000", target_is_directory=True),
               "task_001 is a symbolic link, which the resume (it trains that task again) does not follow"),
    "a file": (lambda d, m: (d / "task_001").write_text("mine"), "task_001 is not a folder, so not one cljax wrote"),
}


@pytest.mark.parametrize("what", sorted(STALE))
def test_a_resume_refuses_to_delete_what_cljax_did_not_write_in_a_task_folder_it_trains_again(made, tmp_path, capsys,
                                                                                              what):
    run_dir = copy(made, "partial", tmp_path / "r")  # the checkpoint after task 0: task 1 is trained again
    how, expected = STALE[what]
    how(run_dir, made)
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, expected, "move it out of the run folder", "(nothing was deleted)")
    assert state(run_dir) == before


def _moved_and_linked(run_dir):
    """task_001 moved out of the run folder, a link to it left in its place."""
    shutil.move(run_dir / "task_001", run_dir.parents[2] / "elsewhere")
    (run_dir / "task_001").symlink_to(run_dir.parents[2] / "elsewhere", target_is_directory=True)


WHOLE = {
    "a user's file": (lambda d: (d / "task_001" / "notes.txt").write_text("mine"),
                      "task_001/notes.txt is not a file cljax writes, and the resume (it trains that task again) "
                      "would delete it with"),
    "a sub-folder": (lambda d: (d / "task_001" / "figures").mkdir(), "task_001/figures is not a file cljax writes"),
    "a link": (_moved_and_linked, "task_001 is a symbolic link, which the resume (it trains that task again) does "
                                  "not follow"),
}


@pytest.mark.parametrize("what", sorted(WHOLE))
def test_a_resume_refuses_to_delete_what_cljax_did_not_write_in_a_whole_task_folder_it_trains_again(made, tmp_path,
                                                                                                    capsys, what):
    # The run stopped between task 1's folder and the checkpoint after it: the folder is whole, and
    # the resume writes it anew. The user's file went with it, and a link gave rmtree's error after
    # the task had trained (its temporary folder left behind).
    run_dir = copy(made, "finished", tmp_path / "r")
    shutil.copy(made["partial"] / run_dir.relative_to(tmp_path / "r") / "checkpoint.npz", run_dir / "checkpoint.npz")
    how, expected = WHOLE[what]
    how(run_dir)
    before = state(tmp_path)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, expected, "move it out of the run folder", "(nothing was deleted)")
    assert state(tmp_path) == before


def test_the_resume_goes_on_once_the_users_file_is_moved_out(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    _half_written(run_dir)
    (run_dir / "task_001" / "notes.txt").write_text("mine")
    rc, _, _ = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 2
    (run_dir / "task_001" / "notes.txt").unlink()
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    assert "resumed from task 1" in out
    assert sorted(p.name for p in (run_dir / "task_001").iterdir()) == sorted(
        p.name for p in (made["finished"] / run_dir.relative_to(tmp_path / "r") / "task_001").iterdir())


def test_repair_and_the_rewrite_of_initial_refuse_to_delete_a_users_file(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    weights = run_dir / "task_000" / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:-100])  # damaged: --repair writes task_000 anew
    (run_dir / "task_000" / "notes.txt").write_text("mine")
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--repair", "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "task_000/notes.txt is not a file cljax writes, and --repair (it writes that folder "
                              "anew) would delete it with")
    assert state(run_dir) == before

    run_dir = copy(made, "finished", tmp_path / "f")
    weights = run_dir / "initial" / "weights.npy"
    weights.write_bytes(weights.read_bytes()[:-100])  # a finished run writes a damaged initial/ again
    (run_dir / "initial" / "notes.txt").write_text("mine")
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "f")], capsys)
    assert_one_error(rc, err, "initial/notes.txt is not a file cljax writes, and writing initial/ again would delete it")
    assert state(run_dir) == before


@pytest.mark.parametrize("task", [0, 1])
def test_a_run_stopped_between_a_tasks_folder_and_the_checkpoint_after_it_trains_the_task_again_and_says_so(
        made, tmp_path, capsys, monkeypatch, task):
    # Not damage: the resume trains that task again from the checkpoint before it (task 0: from the
    # seed, there is none) and writes its folder anew. It did so without a word; on another device
    # split the folder could change silently. A lost checkpoint behind two whole folders or more
    # needs --repair (tests/test_repair.py).
    import cljax.experiment as experiment

    run_dir = copy(made, "partial" if task == 0 else "finished", tmp_path / "r")
    if task == 0:
        (run_dir / "checkpoint.npz").unlink()
    else:  # the checkpoint after task 0 beside the whole folder of task 1
        shutil.copy(made["partial"] / run_dir.relative_to(tmp_path / "r") / "checkpoint.npz", run_dir / "checkpoint.npz")
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    stop = "the first checkpoint" if task == 0 else "the checkpoint after it"
    assert err == (f"note: task {task} was trained again, as the run had stopped between its folder and {stop}; it "
                   f"came out byte for byte as its folder recorded.\n")
    finished = made["finished"] / run_dir.relative_to(tmp_path / "r")
    for t in (0, 1):
        written = json.loads((run_dir / f"task_00{t}" / "metadata.json").read_text())["files"]
        assert written == json.loads((finished / f"task_00{t}" / "metadata.json").read_text())["files"]

    if task == 1:  # another split's last bits: the folder holds the new numbers, which the next tasks train on
        shutil.copy(made["partial"] / run_dir.relative_to(tmp_path / "r") / "checkpoint.npz", run_dir / "checkpoint.npz")
        monkeypatch.setattr(experiment, "same_as_recorded", lambda *args: False)
        rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
        assert rc == 0, err
        assert err.startswith("warning: task 1 was trained again, as the run had stopped between its folder and the "
                              "checkpoint after it, and it came out different from its folder's recorded files: on "
                              "the run's own device split, so a kernel that does not repeat its bits")  # (not the split)
        assert err.rstrip().endswith("(an analysis made before reads the earlier ones: run cljax analyze again).")
        split_moved = again_note(1, same=False, same_split=False)
        assert "the device split or lowering differs from the run's" in split_moved


@pytest.mark.parametrize("action", ["--overwrite", "the resume"])
def test_a_folder_without_the_permission_to_delete_it_is_refused_before_anything_is_deleted(made, tmp_path, capsys,
                                                                                             monkeypatch, action):
    # rmtree would stop half-way, its error naming a bare file name. (This suite may run as root,
    # whom os.access never refuses: the refusal of task_001 is simulated.)
    import os

    run_dir = copy(made, "finished", tmp_path / "r")
    if action == "the resume":
        shutil.copy(made["partial"] / run_dir.relative_to(tmp_path / "r") / "checkpoint.npz", run_dir / "checkpoint.npz")
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "task_001" and access(path, mode))
    before = state(tmp_path)
    flags = ["--overwrite"] if action == "--overwrite" else []
    rc, _, err = run_cli(["run", *FLAGS, *flags, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"{action}", f"cannot delete {run_dir / 'task_001'} (no permission): fix its permissions",
                     "(nothing was deleted)")
    assert state(tmp_path) == before


def test_a_file_that_cannot_be_deleted_after_the_checks_is_named_by_its_whole_path(made, tmp_path, capsys, monkeypatch):
    # An immutable file (chattr +i) passes os.access; rmtree's error then named it 'weights.npy',
    # one of a file in each of thousands of task folders. (The refusal is simulated: see above.)
    import errno
    import os

    run_dir = copy(made, "finished", tmp_path / "r")
    unlink = os.unlink

    def immutable(path, *args, **kwargs):
        if os.fspath(path) == "weights.npy" and Path(f"/proc/self/fd/{kwargs.get('dir_fd')}").resolve().name == \
                "task_001":
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", immutable)
    rc, _, err = run_cli(["run", *FLAGS, "--overwrite", "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"Operation not permitted ({run_dir / 'task_001' / 'weights.npy'}): check the path "
                              f"and its permissions")
    assert (run_dir / "task_001" / "weights.npy").is_file()
