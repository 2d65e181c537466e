"""--keep-checkpoints and --repair (cljax/kept_checkpoints.py): a damaged task folder below the
checkpoint, or a missing or damaged checkpoint, is written anew by training the tasks up to it
again, from the nearest kept checkpoint or from the seed, and comes out byte for byte as the
uninterrupted run wrote it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cljax.checkpoint import read_checkpoint_header
from cljax.errors import CljaxError
from cljax.kept_checkpoints import KEPT, keeps, kept_path
from cljax.run_folder import check_clearable, clear_run
from cljax.safe_files import safe_load_pickle
from tests.backend import on_cpu
from tests.conftest import small_config
from tests.run_folder_kit import FLAGS, TINY, assert_one_error, flip_byte, run_cli, state

FLAGS4 = [*FLAGS, "--synthetic-classes", "8", "--num-tasks", "4"]
RUN4 = Path("synthetic") / "SL_T4"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A finished 4-task run that keeps the checkpoint every 2 tasks, and its state after task 2."""
    from cljax.experiment import run_experiment

    root = tmp_path_factory.mktemp("repair")

    def after_task_2(t, info):
        if t == 2:
            shutil.copytree(root / "finished", root / "after2")

    config = small_config(root, results_dir=str(root / "finished"),
                          **{**TINY, "synthetic_classes": 8, "num_tasks": 4, "keep_checkpoints": 2})
    run_experiment(config, progress=False, on_task_end=after_task_2)
    return {"finished": root / "finished", "after2": root / "after2"}


def _copy(made, which: str, dest: Path) -> Path:
    shutil.copytree(made[which], dest)
    return dest / RUN4


def _outputs(run_dir: Path) -> dict:
    """Every array and pickle of the task folders, by path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.glob("task_*/*"))
            if p.suffix in (".npy", ".pkl")}


def _run(tmp_path, capsys, *extra):
    return run_cli(["run", *FLAGS4, "--results-dir", str(tmp_path / "r"), *extra], capsys)


def test_only_the_chosen_tasks_starts_are_kept():
    assert [t for t in range(12) if keeps(4, t, 10)] == [4, 8]  # never task 0 (the seed's) nor past the run
    assert not any(keeps(0, t, 10) for t in range(12))


def test_a_damaged_folder_is_written_again_from_the_seed_byte_for_byte(made, tmp_path, capsys):
    original = _outputs(made["finished"] / RUN4)
    run_dir = _copy(made, "finished", tmp_path / "r")
    assert sorted(p.name for p in (run_dir / KEPT).iterdir()) == ["start_task_002.npz"]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert read_checkpoint_header(run_dir, kept_path(run_dir, 2)) == (2, run_id)
    flip_byte(run_dir / "task_001" / "representations.npy")
    before = state(run_dir)
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "task_001", "does not match the sha256",
                     "pass --repair to train tasks 0 to 1 (2 tasks) from the seed again", "--overwrite")
    assert state(run_dir) == before

    rc, out, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert ("note: --repair trained tasks 0 to 1 (2 tasks) from the seed again and wrote task_001 anew; the 1 "
            "other folder(s) it recomputed came out byte for byte as recorded.") in err
    assert "resumed from task" not in out
    assert _outputs(run_dir) == original
    meta = json.loads((run_dir / "task_001" / "metadata.json").read_text())
    assert meta["repaired"] == {"trained_again_from_task": 0}
    assert "repaired" not in json.loads((run_dir / "task_000" / "metadata.json").read_text())
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]
    rc, out, _ = _run(tmp_path, capsys)
    assert rc == 0 and "already finished" in out


def test_the_nearest_whole_kept_checkpoint_is_where_the_repair_starts(made, tmp_path, capsys):
    original = _outputs(made["finished"] / RUN4)
    run_dir = _copy(made, "finished", tmp_path / "r")
    shutil.rmtree(run_dir / "task_003")
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "task_003 is missing", "tasks 2 to 3 (2 tasks) from the checkpoint kept at task 2")

    flip_byte(kept_path(run_dir, 2))  # a damaged kept checkpoint: the seed serves
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "task_003 is missing", "tasks 0 to 3 (4 tasks) from the seed")
    shutil.copy(made["finished"] / RUN4 / KEPT / "start_task_002.npz", kept_path(run_dir, 2))

    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert "trained tasks 2 to 3 (2 tasks) from the checkpoint kept at task 2 again and wrote task_003 anew" in err
    assert _outputs(run_dir) == original


def test_a_repair_writes_again_the_damaged_kept_checkpoint_it_trains_through(made, tmp_path, capsys):
    """task_003 lost and the checkpoint kept at task 2 damaged: the repair trains from the seed
    and, passing task 2's start, writes that kept checkpoint again, byte for byte as the run
    wrote it, so that the next repair starts there, not from the seed."""
    finished = made["finished"] / RUN4
    run_dir = _copy(made, "finished", tmp_path / "r")
    shutil.rmtree(run_dir / "task_003")
    flip_byte(kept_path(run_dir, 2))
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert ("trained tasks 0 to 3 (4 tasks) from the seed again and wrote task_003, checkpoints/start_task_002.npz "
            "anew; the 3 other folder(s) it recomputed came out byte for byte as recorded.") in err
    assert kept_path(run_dir, 2).read_bytes() == kept_path(finished, 2).read_bytes()
    assert _outputs(run_dir) == _outputs(finished)
    shutil.rmtree(run_dir / "task_003")
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "task_003 is missing", "tasks 2 to 3 (2 tasks) from the checkpoint kept at task 2")


def test_the_refusal_names_the_repair_of_every_damage_a_changed_byte_included(made, tmp_path, capsys):
    # A changed byte below a missing file: the refusal (sizes only) offered "tasks 2 to 3 from
    # the checkpoint kept at task 2", and --repair then trained from the seed.
    run_dir = _copy(made, "finished", tmp_path / "r")
    flip_byte(run_dir / "task_000" / "binary_labels.npy")
    (run_dir / "task_003" / "metrics.pkl").unlink()
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "task_000", "(and 1 more below it)", "tasks 0 to 3 (4 tasks) from the seed")
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0 and "trained tasks 0 to 3 (4 tasks) from the seed again" in err, err


def test_changed_bytes_that_leave_no_two_whole_folders_are_not_read_as_a_lost_checkpoint(made, tmp_path, capsys):
    # By sizes tasks 0-2 were whole and the checkpoint lost; hashed, none was: the line offered
    # to go on from checkpoints/start_task_000.npz, which is never kept.
    run_dir = _copy(made, "finished", tmp_path / "r")
    (run_dir / "checkpoint.npz").unlink()
    (run_dir / "task_003" / "metrics.pkl").unlink()
    for t in range(3):
        flip_byte(run_dir / f"task_00{t}" / "binary_labels.npy")
    rc, _, err = _run(tmp_path, capsys)
    assert rc == 0 and "start_task_000" not in err, err  # nothing whole is left to keep: trained again from the seed
    assert _outputs(run_dir) == _outputs(made["finished"] / RUN4)


def test_a_repair_that_trains_to_the_last_task_writes_the_lost_checkpoint_again(made, tmp_path, capsys):
    # The replay took the place of the lost checkpoint but wrote none when no task followed it:
    # the next --repair named checkpoint.npz as missing (found by the adversarial helper).
    import numpy as np

    run_dir = _copy(made, "finished", tmp_path / "r")
    (run_dir / "checkpoint.npz").unlink()
    flip_byte(run_dir / "task_001" / "weights.npy")
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0 and "from the seed again" in err, err
    with np.load(run_dir / "checkpoint.npz") as new, np.load(made["finished"] / RUN4 / "checkpoint.npz") as old:
        assert sorted(new.files) == sorted(old.files) and all(np.array_equal(new[k], old[k]) for k in old.files)
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0 and "note:" not in err, err


def test_repair_of_a_finished_run_names_the_checkpoints_it_leaves_damaged(made, tmp_path, capsys):
    # It exited 0 without a word, though --repair's help promises a missing or damaged checkpoint anew.
    run_dir = _copy(made, "finished", tmp_path / "r")
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0 and "note:" not in err, err  # all whole: nothing to say
    (run_dir / "checkpoint.npz").unlink()
    flip_byte(kept_path(run_dir, 2))
    before = state(run_dir)
    rc, _, err = _run(tmp_path, capsys)
    assert rc == 0 and "note:" not in err, err  # a finished run does not read them
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0 and ("note: the run is finished, and --repair leaves checkpoint.npz, checkpoints/start_task_002.npz "
                        "(missing or damaged) as found: nothing is left to train from them") in err, err
    assert state(run_dir) == before


@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_a_lost_checkpoint_is_trained_again_and_the_run_goes_on(made, tmp_path, capsys, how):
    """Tasks 0-2 finished, the checkpoint after them lost: the repair trains task 2 again from the
    kept checkpoint (its folder compared, not written), then tasks 3 on, as the run would have."""
    finished = made["finished"] / RUN4
    run_dir = _copy(made, "after2", tmp_path / "r")
    if how == "missing":
        (run_dir / "checkpoint.npz").unlink()
        expected = "checkpoint.npz is missing, while tasks 0 to 2 are finished"
    else:
        flip_byte(run_dir / "checkpoint.npz")
        expected = "checkpoint.npz is damaged"
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, expected, "--repair", "--overwrite")

    rc, out, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert ("trained task 2 (1 task) from the checkpoint kept at task 2 again and wrote no folder anew; the 1 other "
            "folder(s) it recomputed came out byte for byte as recorded.") in err
    assert "resumed from task 3" in out
    assert _outputs(run_dir) == _outputs(finished)
    assert (run_dir / "checkpoint.npz").read_bytes() == (finished / "checkpoint.npz").read_bytes()


def test_overwrite_deletes_the_kept_checkpoints_and_no_other_file_in_their_folder(made, tmp_path):
    run_dir = _copy(made, "finished", tmp_path / "r")
    (run_dir / KEPT / "notes.txt").write_text("mine")
    with pytest.raises(CljaxError, match="notes.txt is not a file cljax writes"):
        check_clearable(run_dir)
    (run_dir / KEPT / "notes.txt").unlink()
    check_clearable(run_dir)
    clear_run(run_dir)
    assert not (run_dir / KEPT).exists() and not (run_dir / "checkpoint.npz").exists()


def test_repair_and_overwrite_together_are_refused(tmp_path, capsys):
    rc, _, err = _run(tmp_path, capsys, "--repair", "--overwrite")
    assert_one_error(rc, err, "--repair keeps the run and --overwrite deletes it")
    assert not (tmp_path / "r").exists()


def test_a_recomputed_folder_that_differs_from_its_record_is_reported(made, tmp_path, capsys, monkeypatch):
    """Another device split moves the last bits: the repair says so in one warning line, naming
    the first folder that differs (here its representations are nudged before the comparison)."""
    import cljax.experiment as experiment
    from cljax.kept_checkpoints import same_as_recorded

    def nudged(algo_dir, t, arrays, metadata):
        arrays = {**arrays, "representations": arrays["representations"] + 1e-3}
        return same_as_recorded(algo_dir, t, arrays, metadata)

    monkeypatch.setattr(experiment, "same_as_recorded", nudged)
    run_dir = _copy(made, "finished", tmp_path / "r")
    (run_dir / "task_001" / "weights.npy").unlink()
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert ("warning: --repair trained tasks 0 to 1 (2 tasks) from the seed again and wrote task_001 anew, but "
            "task_000 came out different from its recorded files (1 of 1 recomputed folders differ)") in err
    assert _outputs(run_dir) == _outputs(made["finished"] / RUN4)  # the recorded folder stays as it was


def test_a_sweep_repairs_with_repair_and_refuses_without(made, tmp_path, capsys):
    """cljax sweep checks each run's folder before it queues a job: damage below the checkpoint is
    refused, naming --repair, unless the sweep has it; each job then repairs its run."""
    from cljax import sweep

    original = _outputs(made["finished"] / RUN4)
    run_dir = _copy(made, "finished", tmp_path / "r")
    (run_dir / "task_001" / "representations.npy").unlink()  # the sweep's check reads sizes, not contents
    before = state(run_dir)
    config = small_config(tmp_path, results_dir=str(tmp_path / "r"),
                          **{**TINY, "synthetic_classes": 8, "num_tasks": 4, "keep_checkpoints": 2})
    runs = [sweep.SweepRun(tag="only", settings={}, config=config)]
    with pytest.raises(CljaxError, match=r"run only: .*task_001.*pass --repair to train tasks 0 to 1.*no job was submitted"):
        sweep.check_against_data(runs)
    sweep.check_against_data(runs, repair=True)  # passes: the job repairs
    assert state(run_dir) == before
    seen = []  # a requeue is told where this attempt resumed the run, not the first task it repaired
    out = sweep.run_job(config.to_dict(), repair=True, on_task_end=lambda t, info: seen.append((t, info["first_task"])))
    assert out["first_task"] == 4 and _outputs(run_dir) == original
    assert seen == [(0, 4), (1, 4)] and out["job_first_task"] == 4
    assert out["final_acc_current"] is None  # it trained tasks 0 and 1 again, not the run's last task
    again = sweep.run_job(config.to_dict())  # finished: the last task's accuracy, from its folder
    last = safe_load_pickle(run_dir / "task_003" / "metrics.pkl")["test_acc"][-1][:, 3]  # (R, T) at the end
    assert again["already_finished"] and again["final_acc_current"] == pytest.approx(float(np.mean(last)))
    rc, _, err = run_cli(["sweep", *FLAGS4, "--results-dir", str(tmp_path / "s"), "--repair", "--overwrite"], capsys)
    assert rc == 2 and "--repair keeps the run and --overwrite deletes it" in err


def test_a_repair_under_another_split_names_the_first_task_it_trains(made, tmp_path, capsys):
    """The split warning named the checkpoint's next task (here 4, of a 4-task run): a repair
    trains from its replay's start, where the numbers can first differ."""
    run_dir = _copy(made, "finished", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    record["split"]["backend"] = "gpu" if on_cpu() else "cpu"  # as if started on another backend than this one
    (run_dir / "run.json").write_text(json.dumps(record))
    (run_dir / "task_001" / "weights.npy").unlink()
    rc, _, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    warning = next(line for line in err.splitlines() if "continues on" in line)
    assert "from task 0 on its numbers can differ" in warning, warning


@pytest.mark.parametrize("which, lost, reached", [("finished", "task_000", 3), ("after2", "task_001", 2)])
def test_a_lost_checkpoint_and_a_damaged_folder_below_whole_ones_are_refused_then_repaired(made, tmp_path, capsys,
                                                                                           which, lost, reached):
    """No checkpoint and a folder lost below whole ones: the run trained from task 0 at once and
    wrote the whole folders above it again, without a word (with another split, other bits).
    Now refused in one line, nothing changed; --repair writes the lost folder anew, compares the
    whole ones, and the run goes on as it would have."""
    finished = made["finished"] / RUN4
    run_dir = _copy(made, which, tmp_path / "r")
    shutil.rmtree(run_dir / lost)
    (run_dir / "checkpoint.npz").unlink()
    before = state(run_dir)
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, f"{lost} is missing", f"checkpoint.npz is missing, while task {reached} is finished",
                     f"--repair to train tasks 0 to {reached} ({reached + 1} tasks) from the seed again and write the "
                     f"damaged folders anew", "--overwrite")
    assert state(run_dir) == before

    rc, out, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert (f"wrote {lost} anew; the {reached} other folder(s) it recomputed came out byte for byte as recorded."
            in err), err
    assert _outputs(run_dir) == _outputs(finished)


def test_a_resume_keeps_the_checkpoint_it_starts_from_when_its_keep_checkpoints_asks(made, tmp_path, capsys):
    """Stopped after task 2 under --keep-checkpoints 2, resumed with 3: the learner as task 3
    begins is the checkpoint the resume starts from, so it is kept (it was not: the next repair
    would have gone back further)."""
    run_dir = _copy(made, "after2", tmp_path / "r")
    start = (run_dir / "checkpoint.npz").read_bytes()
    assert not kept_path(run_dir, 3).exists()
    rc, out, err = _run(tmp_path, capsys, "--keep-checkpoints", "3")
    assert rc == 0 and "resumed from task 3" in out, err
    assert kept_path(run_dir, 3).read_bytes() == start
    assert sorted(p.name for p in (run_dir / KEPT).iterdir()) == ["start_task_002.npz", "start_task_003.npz"]


def test_a_lost_checkpoint_whose_copy_is_kept_is_gone_on_from_without_training(made, tmp_path, capsys):
    """Tasks 0-1 whole (a finished run's later folders removed), the checkpoint lost, and the start
    of task 2 kept: that kept file is the lost checkpoint. The line said '--repair to train task 2
    (1 task) ... again' (nothing is trained); it now says what --repair does, and the run goes on."""
    finished = made["finished"] / RUN4
    run_dir = _copy(made, "finished", tmp_path / "r")
    for t in (2, 3):
        shutil.rmtree(run_dir / f"task_00{t}")
    (run_dir / "checkpoint.npz").unlink()
    rc, _, err = _run(tmp_path, capsys)
    assert_one_error(rc, err, "checkpoint.npz is missing, while tasks 0 to 1 are finished",
                     "start_task_002.npz holds the learner as task 2 begins, a copy of it: pass --repair to go on "
                     "from it (nothing is trained again)")
    rc, out, err = _run(tmp_path, capsys, "--repair")
    assert rc == 0, err
    assert "note: --repair went on from the checkpoint kept at task 2, a copy of the lost checkpoint." in err
    assert _outputs(run_dir) == _outputs(finished)
