"""The free-disk checks of `cljax run` and `cljax plan` (cljax/budget_disk.py): the first task's
need, the same in both; the last task's, which folds the journal into verified.json; what
--overwrite deletes, counted as free before anything is deleted; and a resumed run's disk left.
The free space is a fake ``shutil.disk_usage``: no test needs a small filesystem."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from cljax import budget_disk
from tests.conftest import small_config
from tests.run_folder_kit import (FLAGS, RUN_DIR, TINY, Crash, assert_one_error, copy, crash_at, make_runs, run_cli,
                                  state)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


def _free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(budget_disk.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - free, free))


def _need(text: str) -> int:
    return int(re.search(r" needs [^(]*\(([\d,]+) bytes\)", text).group(1).replace(",", ""))


def _on_disk(folder: Path) -> int:
    """Allocated bytes of the files under ``folder``, each inode once."""
    inodes = {}
    for p in folder.rglob("*"):
        st = p.lstat()
        if not p.is_dir():
            inodes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(inodes.values())


def test_plan_refuses_as_run_does_when_the_first_or_next_task_does_not_fit(made, tmp_path, capsys, monkeypatch):
    # plan exited 0 ("the run would stop part-way (resumably)") where run refused with exit 2.
    flags = [*FLAGS, "--results-dir", str(tmp_path / "r")]
    _free(monkeypatch, 4096)
    rc, out, first_err = run_cli(["run", *flags], capsys)
    assert_one_error(rc, first_err, "not enough disk", "the first task (its folder, the checkpoint's new copy, "
                     "run.json, initial/) needs")
    need = _need(first_err)
    for free, fits in ((need - 1, False), (need, True)):
        _free(monkeypatch, free)
        rc, out, err = run_cli(["plan", *flags], capsys)
        assert rc == (0 if fits else 2), out + err
        assert ("disk: DOES NOT FIT: the first task (its folder, the checkpoint's new copy, run.json, initial/)" in out) \
            is (not fits), out
        assert ("the run would stop part-way (resumably)" in out) is fits, out  # the first task fits, not the run
        rc, _, err = run_cli(["plan", *flags, "--json"], capsys)
        assert json.loads(_)["disk_bytes_next_task"] == need
        rc, _, err = run_cli(["run", *flags], capsys)
        assert rc == (0 if fits else 2), err
    # A resumed run whose next (and last) task does not fit: the same need in both, verified.json in it.
    copy(made, "partial", tmp_path / "p")
    flags = [*FLAGS, "--results-dir", str(tmp_path / "p")]
    _free(monkeypatch, 1)
    rc, out, _ = run_cli(["plan", *flags], capsys)
    assert rc == 2 and "disk: DOES NOT FIT: the next task (its folder, the checkpoint's new copy, verified.json) " \
        "needs" in out, out
    rc, _, err = run_cli(["run", *flags], capsys)
    assert_one_error(rc, err, "the next task (its folder, the checkpoint's new copy, verified.json) needs",
                     "(the run resumes from its last finished task)")
    assert _need(out) == _need(err)
    # "(the run resumes from its last finished task)" was said where no task was there to resume from
    assert "(nothing was written)" in first_err and "resumes" not in first_err, first_err


def test_the_last_task_counts_the_record_it_writes_and_a_failed_fold_says_the_task_was_saved(made, tmp_path, capsys,
                                                                                           monkeypatch):
    # The last task's check left out the fold of verified.jsonl into verified.json: a disk with
    # room for the task only filled there, "while writing task N", with the task saved.
    import cljax.experiment as experiment
    from cljax.check_record import CheckRecord
    from cljax.checkpoint import read_checkpoint_header

    checked, real = {}, experiment.check_disk
    monkeypatch.setattr(experiment, "check_disk", lambda *a, **k: (checked.setdefault(a[2], a[1]), real(*a, **k)))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    need = {what.split(" (")[0]: n for what, n in checked.items()}
    assert need["task 1"] - need["task 0"] >= (tmp_path / "r" / RUN_DIR / "verified.json").stat().st_size > 0
    assert "task 1 (its folder and the checkpoint's new copy, verified.json)" in checked

    run_dir = copy(made, "partial", tmp_path / "p")
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    save = CheckRecord.save

    def full(self, run_id):
        if (run_dir / "task_001").exists():  # the fold as the run ends (not the resume's save before training)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(self, run_id)

    monkeypatch.setattr(CheckRecord, "save", full)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "p")], capsys)
    assert_one_error(rc, err, "while writing verified.json", "task 1 was saved and the run is finished",
                     "free space, then run the same command")
    assert read_checkpoint_header(run_dir) == (2, run_id) and (run_dir / "verified.jsonl").exists()
    monkeypatch.setattr(CheckRecord, "save", save)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "p")], capsys)
    assert rc == 0, err  # the finished run, its record written
    assert not (run_dir / "verified.jsonl").exists()
    assert any(name.startswith("task_001/") for name in json.loads((run_dir / "verified.json").read_text())["hashed"])


def test_overwrite_counts_what_it_deletes_as_free_and_deletes_nothing_when_refused(made, tmp_path, capsys,
                                                                                monkeypatch):
    # The check counted the free space before the old run was deleted, and said "(the run resumes
    # from its last finished task)" of a run --overwrite replaces.
    run_dir = copy(made, "finished", tmp_path / "r")
    flags = [*FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"]
    _free(monkeypatch, 0)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "new"), "--seed", "1"], capsys)
    need = _need(err)  # a new run of the old one's size, in an empty folder
    _free(monkeypatch, need - 1)  # not enough free, but enough once the old run is deleted
    rc, _, err = run_cli(["run", *flags, "--seed", "1"], capsys)
    assert rc == 0, err
    assert json.loads((run_dir / "run.json").read_text())["config"]["seed"] == 1

    from cljax.rewrites import cleared_bytes

    shutil.rmtree(tmp_path / "r")
    run_dir = copy(made, "finished", tmp_path / "r")
    freed = cleared_bytes(run_dir)
    assert freed >= _on_disk(run_dir) > need // 2  # allocated blocks: at least the files' bytes
    _free(monkeypatch, 0)  # a larger run (R = 8) than the old run's files free
    before = state(tmp_path / "r")
    rc, _, err = run_cli(["run", *flags, "--n-repeats", "8"], capsys)
    assert_one_error(rc, err, "not enough disk", "are free and the old run's files it would delete take",
                     f"({freed:,} bytes)", "(nothing was deleted)")
    assert "resumes" not in err and state(tmp_path / "r") == before
    rc, out, _ = run_cli(["plan", *flags, "--seed", "1", "--json"], capsys)  # plan counts them too
    plan = json.loads(out)
    assert plan["disk_freed_by_deleting_the_old_run"] == freed and plan["disk_bytes_next_task"] == need
    assert plan["fits"], plan["disk_problem"]
    (run_dir / "notes.txt").write_bytes(b"x" * 100_000)  # a user's file, which --overwrite leaves
    os.link(run_dir / "checkpoint.npz", tmp_path / "elsewhere.npz")  # linked from outside: deleting frees nothing
    assert cleared_bytes(run_dir) == freed - (run_dir / "checkpoint.npz").stat().st_blocks * 512


def test_a_resumed_plan_counts_the_checkpoints_it_keeps(tmp_path, monkeypatch):
    # A resumed run with --keep-checkpoints grew by its kept checkpoints too (each parts from
    # checkpoint.npz, which it is linked to, when the next replaces it), which the plan's disk
    # left did not count.
    from cljax.config import algo_dir_of
    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    config = small_config(tmp_path, **{**TINY, "num_tasks": 3, "synthetic_classes": 6, "keep_checkpoints": 1})
    crash_at(monkeypatch, "train", 1)  # stopped as task 1 trains: task 0 and its checkpoints written
    with pytest.raises(Crash):
        run_experiment(config, progress=False)
    monkeypatch.undo()
    algo_dir = algo_dir_of(config)
    plan = make_plan(config)
    before = _on_disk(algo_dir)
    run_experiment(config, progress=False)
    grew = _on_disk(algo_dir) - before
    assert grew <= plan["disk_bytes_left"] < grew + plan["disk_bytes_per_task"] // 10, (grew, plan["disk_bytes_left"])
    assert plan["disk_bytes_left"] - 2 * plan["disk_bytes_per_task"] >= 2 * plan["disk_run_files"]["checkpoint.npz"]


def test_overwrite_counts_the_folders_it_deletes_as_freed(made, tmp_path):
    # cleared_bytes counted the files alone: a folder's link count is 2 or more (its "." and its
    # sub-folders' ".."), so the folders below the trees never counted as freed, and the trees
    # themselves (task_NNN, initial/, checkpoints/, analysis/) were not looked at; each takes a
    # block or more on most filesystems (none on tmpfs).
    from cljax.rewrites import cleared_bytes

    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "analysis" / "plots").mkdir(parents=True)  # a folder below a tree, and a file in it
    (run_dir / "analysis" / "plots" / "a.png").write_bytes(b"x" * 5000)
    (run_dir / "notes.txt").write_bytes(b"x" * 5000)  # a user's file, which --overwrite leaves
    deleted = [run_dir / n for n in ("checkpoint.npz", "verified.json", "verified.jsonl", "run.json")]
    deleted += [p for p in run_dir.iterdir() if p.is_dir()]
    assert {p.name for p in deleted} >= {"task_000", "task_001", "initial", "analysis"}
    inodes = {}
    for top in deleted:
        for p in [top, *(top.rglob("*") if top.is_dir() else ())]:
            if p.exists():
                st = p.lstat()
                inodes[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    folders = sum(p.lstat().st_blocks * 512 for top in deleted if top.is_dir() for p in [top, *top.rglob("*")]
                  if p.is_dir())
    assert cleared_bytes(run_dir) == sum(inodes.values()), (cleared_bytes(run_dir), sum(inodes.values()), folders)


def test_a_resume_counts_the_record_it_saves_before_it_trains(tmp_path, monkeypatch):
    # A resume saves verified.json (what it verified) before it trains, which the next task's
    # check did not count: a disk with room for the task alone filled at that save, "no space
    # left ... while writing task 1", after a check that had said it was enough.
    import cljax.experiment as experiment
    from cljax.check_record import CheckRecord
    from cljax.config import algo_dir_of
    from cljax.errors import CljaxError
    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    config = small_config(tmp_path, **{**TINY, "num_tasks": 3, "synthetic_classes": 6})
    crash_at(monkeypatch, "train", 1)  # stopped as task 1 trains: task 0's folder and its journal line written
    with pytest.raises(Crash):
        run_experiment(config, progress=False)
    monkeypatch.undo()
    algo_dir = algo_dir_of(config)
    shutil.copytree(algo_dir, tmp_path / "stopped")
    plan = make_plan(config)
    checked, saved, real_parts, real_save = [], [], experiment.task_disk_parts, CheckRecord.save
    monkeypatch.setattr(experiment, "task_disk_parts", lambda *a, **k: checked.append(real_parts(*a, **k)) or checked[-1])

    def save(self, run_id):  # the record as the resume wrote it, before its first task
        real_save(self, run_id)
        saved.append((algo_dir / "verified.json").stat().st_blocks * 512 if not (algo_dir / "task_001").exists() else 0)

    monkeypatch.setattr(CheckRecord, "save", save)
    run_experiment(config, progress=False)
    parts = checked[0]
    assert parts["verified.json"] >= saved[0] > 0, (parts, saved)
    assert plan["disk_next_task"] == parts  # plan checks the same figure

    shutil.rmtree(algo_dir)
    shutil.copytree(tmp_path / "stopped", algo_dir)
    before = state(algo_dir)
    _free(monkeypatch, sum(parts.values()) - parts["verified.json"])  # room for the task, not for the record
    with pytest.raises(CljaxError, match=r"not enough disk .* the next task \(its folder, the checkpoint's new copy, "
                       r"verified.json\) needs .*\(the run resumes from its last finished task\)"):
        run_experiment(config, progress=False)
    assert state(algo_dir) == before  # refused before anything was written or deleted


def _stopped_before_the_checkpoint_after(config, task: int, monkeypatch) -> None:
    """Run ``config`` until task ``task``'s folder is written and the checkpoint after it is not
    (a kill between the two); the patch is lifted after."""
    import cljax.experiment as experiment
    from cljax.experiment import run_experiment

    real_save = experiment.save_learner

    def save(algo_dir, learner, next_task, *args, **kwargs):
        if next_task == task + 1:
            raise Crash
        real_save(algo_dir, learner, next_task, *args, **kwargs)

    monkeypatch.setattr(experiment, "save_learner", save)
    with pytest.raises(Crash):
        run_experiment(config, progress=False)
    monkeypatch.undo()


@pytest.mark.parametrize("stop", [0, 1, 2])
def test_plan_resumes_from_the_checkpoint_as_run_does_when_a_task_folder_is_past_it(tmp_path, monkeypatch, stop):
    # A run that stopped between task k's folder and the checkpoint after it resumes from task k
    # and writes its folder again in place. plan counted the task folders instead: its next task
    # was k + 1 (none at all when k was the last: nothing left, while run trains it again), so its
    # next task's parts, its last-task flag and its kept checkpoints were one task off.
    import cljax.experiment as experiment
    from cljax.config import algo_dir_of
    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    config = small_config(tmp_path, **{**TINY, "num_tasks": 3, "synthetic_classes": 6, "keep_checkpoints": 1})
    _stopped_before_the_checkpoint_after(config, stop, monkeypatch)
    algo_dir = algo_dir_of(config)
    assert (algo_dir / f"task_00{stop}").is_dir()
    plan = make_plan(config)
    checked, real_parts = [], experiment.task_disk_parts
    monkeypatch.setattr(experiment, "task_disk_parts", lambda *a, **k: checked.append(real_parts(*a, **k)) or checked[-1])
    before = _on_disk(algo_dir)
    result = run_experiment(config, progress=False)
    grew = _on_disk(algo_dir) - before
    assert result.first_task == stop
    assert plan["disk_next_task"] == checked[0], (plan["disk_next_task"], checked[0])
    assert ("verified.json" in plan["disk_next_task"]) and plan["disk_problem"] is None
    # the folders it adds (task 2 when it stopped after task 1; none after task 2), the checkpoints it keeps
    assert grew <= plan["disk_bytes_left"] < grew + plan["disk_bytes_per_task"] // 10, (grew, plan["disk_bytes_left"])


def test_a_resumed_task_whose_folder_is_there_counts_the_new_folder_beside_it_before_anything_is_written(
        tmp_path, monkeypatch):
    # A run stopped between task 1's folder and the checkpoint after it writes that folder again
    # beside the old one. The run's check of each task counted that, the check before anything is
    # written (and plan) did not: on a disk with room for one copy the resume saved its record,
    # trained task 1 and only then refused it.
    from cljax.config import algo_dir_of
    from cljax.errors import CljaxError
    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    config = small_config(tmp_path, **{**TINY, "num_tasks": 3, "synthetic_classes": 6})
    _stopped_before_the_checkpoint_after(config, 1, monkeypatch)
    algo_dir = algo_dir_of(config)
    assert (algo_dir / "task_001").is_dir()
    plan = make_plan(config)
    again = "a second copy of both beside the old folder"
    parts = plan["disk_next_task"]
    assert parts[again] == parts["its folder"] + parts["the checkpoint's new copy"]
    before = state(algo_dir)
    _free(monkeypatch, sum(parts.values()) - parts[again])  # room for one copy of the folder
    with pytest.raises(CljaxError, match=rf"not enough disk .* the next task \(its folder, the checkpoint's new copy, "
                       rf"{again}, verified.json\) needs"):
        run_experiment(config, progress=False)
    assert state(algo_dir) == before  # refused before anything was written or trained
    _free(monkeypatch, sum(parts.values()))
    assert run_experiment(config, progress=False).first_task == 1


def test_a_stale_folder_the_resume_deletes_first_is_not_counted_twice(tmp_path, monkeypatch):
    # Stopped between task 1's folder and the checkpoint after it, and the folder then damaged:
    # the resume deletes it before it trains, so it writes one copy, and the check (run's and
    # plan's) counts one.
    import cljax.experiment as experiment
    from cljax.config import algo_dir_of
    from cljax.experiment import run_experiment
    from cljax.plan import make_plan

    config = small_config(tmp_path, **{**TINY, "num_tasks": 3, "synthetic_classes": 6})
    _stopped_before_the_checkpoint_after(config, 1, monkeypatch)
    damaged = algo_dir_of(config) / "task_001" / "metrics.pkl"
    damaged.write_bytes(damaged.read_bytes()[:-8])
    plan = make_plan(config)
    checked, real_parts = [], experiment.task_disk_parts
    monkeypatch.setattr(experiment, "task_disk_parts", lambda *a, **k: checked.append(real_parts(*a, **k)) or checked[-1])
    assert run_experiment(config, progress=False).first_task == 1
    assert plan["disk_next_task"] == checked[0] and "a second copy of both beside the old folder" not in checked[0]
