"""The run folder's checks one by one (cljax/run_folder.py): what counts as a temporary, which
task folder verify_task_dir accepts, the folder past the last task, a resume with no checkpoint
after one whole task, and the disk arithmetic. Parts 1-3: test_run_folder*.py."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cljax import budget_disk, run_folder
from cljax.errors import CljaxError
from tests.conftest import small_config
from tests.run_folder_kit import FLAGS, RUN_DIR, TINY, assert_one_error, copy, flip_byte, make_runs, run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


def _run_id(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["run_id"]


def _edit_metadata(task_dir: Path, **fields):
    meta = json.loads((task_dir / "metadata.json").read_text())
    (task_dir / "metadata.json").write_text(json.dumps({**meta, **fields}))


def test_only_dot_named_tmp_files_are_temporaries(tmp_path):
    # A lock and a dead writer's temporaries leave the folder empty for a new run; a user's dotfile
    # or a name with ".tmp-" inside is neither ignored nor removed.
    algo = tmp_path / RUN_DIR
    algo.mkdir(parents=True)
    (algo / ".task_000.tmp-123").mkdir()
    (algo / ".checkpoint.npz.tmp-9").write_bytes(b"half")
    (algo / "run.lock").write_text("{}")
    config = small_config(tmp_path, **TINY)
    found = run_folder.inspect_run(algo, config, None, overwrite=False, hashes=False)
    assert found.record is None and found.next_task == 0 and not found.finished
    (algo / ".keep").write_text("mine")
    (algo / "notes.tmp-1").write_text("mine")
    with pytest.raises(CljaxError, match="holds files that are not a cljax run"):
        run_folder.inspect_run(algo, config, None, overwrite=False, hashes=False)
    run_folder.remove_stale_temporaries(algo)
    assert sorted(p.name for p in algo.iterdir()) == [".keep", "notes.tmp-1", "run.lock"]


def test_verify_task_dir_names_each_way_a_folder_is_not_the_one_it_checks(made, tmp_path):
    run_dir = copy(made, "finished", tmp_path / "r")
    run_id = _run_id(run_dir)
    assert run_folder.verify_task_dir(run_dir / "task_001", 1, run_id, hashes=True) is None
    # Two whole folders swapped: every file matches its own metadata.json, only the task index tells.
    (run_dir / "task_000").rename(run_dir / "swap")
    (run_dir / "task_001").rename(run_dir / "task_000")
    (run_dir / "swap").rename(run_dir / "task_001")
    assert (run_folder.verify_task_dir(run_dir / "task_000", 0, run_id, hashes=True)
            == f"{run_dir / 'task_000' / 'metadata.json'} describes task 1, not task 0")
    task = run_dir / "task_001"  # task 0's folder now: checked as task 0 below
    # A run.json from before run ids beside a folder that names one: not this run's.
    assert (run_folder.verify_task_dir(task, 0, None, hashes=False)
            == f"{task} belongs to run {run_id}, not to this run (which has no run id)")
    # ... and the other way round: a folder without a run id in a run that has one ("belongs to run None").
    (run_dir / "initial" / "metadata.json").write_text("{}")
    assert (run_folder.verify_task_dir(run_dir / "initial", -1, run_id, hashes=False)
            == f"{run_dir / 'initial' / 'metadata.json'} records no run id, and this run has one ({run_id}): it is "
               f"not this run's")
    # A shape other than the one recorded (the file itself untouched, its hash still matches).
    meta = json.loads((task / "metadata.json").read_text())
    recorded = meta["shapes"]["binary_labels"]
    _edit_metadata(task, shapes={**meta["shapes"], "binary_labels": [*recorded[:-1], recorded[-1] + 1]})
    problem = run_folder.verify_task_dir(task, 0, run_id, hashes=True)
    assert problem == (f"{task / 'binary_labels.npy'} has shape {recorded}, metadata.json records "
                       f"{[*recorded[:-1], recorded[-1] + 1]}")
    # A listed file outside the folder, with its true size and hash: never read as part of the task.
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    entry = {"bytes": outside.stat().st_size, "sha256": hashlib.sha256(outside.read_bytes()).hexdigest()}
    for name in (str(outside), "sub/outside.npy"):
        (task / "sub").mkdir(exist_ok=True)
        shutil.copy(outside, task / "sub" / "outside.npy")
        _edit_metadata(task, shapes=meta["shapes"], files={**meta["files"], name: entry})
        assert (run_folder.verify_task_dir(task, 0, run_id, hashes=True)
                == f"{task / 'metadata.json'} lists a file {name!r} that is not in its folder")
    (task / "metadata.json").unlink()
    assert run_folder.verify_task_dir(task, 0, run_id, hashes=False) == f"{task / 'metadata.json'} is missing"


def test_a_folder_with_a_run_id_but_no_file_list_is_refused(made, tmp_path, capsys):
    # The file list is what the sizes and hashes are checked against; folders older than run ids
    # have none, so one that names a run id and lacks it was edited: a resume or an analysis
    # would otherwise read a damaged file unchecked.
    run_dir = copy(made, "finished", tmp_path / "r")
    task = run_dir / "task_001"
    meta = json.loads((task / "metadata.json").read_text())
    (task / "metadata.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    flip_byte(task / "representations.npy")
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"{task / 'metadata.json'} records a run id but not its files' sizes and sha256")
    assert "already finished" not in out
    rc, out, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert_one_error(rc, err, f"{task / 'metadata.json'} records a run id but not its files' sizes and sha256")
    assert not (run_dir / "analysis").exists()


def test_a_task_folder_right_past_the_last_task_is_refused(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    shutil.copytree(run_dir / "task_001", run_dir / "task_002")
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "task_002 is not a task of this 2-task run: move it out", "to use the run")
    assert "already finished" not in out


def test_one_whole_task_and_no_checkpoint_resumes_from_task_0(made, tmp_path, capsys):
    # A stop between the first task's folder and the first checkpoint: nothing is lost, task 0 is
    # trained again and the run ends as the uninterrupted one did.
    run_dir = copy(made, "partial", tmp_path / "r")
    (run_dir / "checkpoint.npz").unlink()
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    finished = made["finished"] / RUN_DIR
    for t in ("task_000", "task_001"):
        for name in ("weights.npy", "representations.npy"):
            assert (run_dir / t / name).read_bytes() == (finished / t / name).read_bytes(), (t, name)


def test_disk_need_is_whole_blocks_and_exactly_enough_free_space_passes(tmp_path, monkeypatch):
    assert budget_disk.on_disk([0, 1, 4096, 4097], 4096) == 3 * 4096 + 4096
    assert budget_disk.on_disk([], 512) == 0
    monkeypatch.setattr(budget_disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 8192, 8192))
    budget_disk.check_disk(tmp_path / "new" / "run", 8192, "the first task")  # a folder not made yet: its parent
    with pytest.raises(CljaxError, match=r"not enough disk at .*: the first task needs .* \(8,193 bytes\), .* "
                                         r"\(8,192 bytes\) are free"):
        budget_disk.check_disk(tmp_path, 8193, "the first task")
    if Path("/proc/self").exists():  # a pseudo filesystem: no storage, not a full disk (it said "0 B are free")
        monkeypatch.undo()
        with pytest.raises(CljaxError, match=r"/proc/x/r is on a filesystem that stores no files \(/proc reports a "
                                             r"size of 0 bytes, as /proc and /sys do\): choose another --results-dir"):
            budget_disk.check_disk(Path("/proc/x/r"), 8192, "the first task")


def test_a_resume_s_disk_check_counts_what_it_writes_and_a_run_too_large_for_the_disk_is_said(made, tmp_path,
                                                                                             capsys, monkeypatch):
    # A resume counted run.json and initial/, which it does not write, and was refused with room for
    # its next task; a run whose tasks need more disk than is free started without a word.
    import cljax.experiment as experiment

    checked = []
    monkeypatch.setattr(experiment, "check_disk", lambda algo_dir, need, what, *rest: checked.append((need, what)))
    monkeypatch.setattr(budget_disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1, 1))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "fresh")], capsys)
    assert rc == 0, err
    assert checked[0][1] == "the first task (its folder, the checkpoint's new copy, run.json, initial/)"
    first_need = checked[0][0]
    assert "warning: the run's 2 tasks left need about " in err and " of disk and 1 B are free at " in err
    copy(made, "partial", tmp_path / "r")
    checked.clear()  # the check before training, then each task's own ("task 1 (its folder and ...)")
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    assert checked[0][1] == "the next task (its folder, the checkpoint's new copy, verified.json)"  # the last
    assert "tasks left" not in err  # one task left: its own check says enough
    assert checked[0][0] < first_need  # initial/ and run.json are there already
