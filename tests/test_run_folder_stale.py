"""The run folder, part 4: nothing stale or misleading left behind or reported: an overwrite's
old analysis, a prepared folder changed in place, folders past the last task, a damaged folder
trained again, the pairing and the speed a resume reports, and the last bad inputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from cljax import results
from cljax.config import Config
from cljax.errors import CljaxError
from tests.conftest import FASHION_DIR, small_config
from tests.run_folder_kit import FLAGS, RUN_DIR, TINY, assert_one_error, copy, make_runs, run_cli, state


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


def another_run(made, dest: Path) -> Path:
    """A copy of the finished run under a run id of its own: a second run of the same flags (the
    same numbers), which compare takes as another run; a plain copy is the same run, refused."""
    run_dir = copy(made, "finished", dest)
    for path in [run_dir / "run.json", *sorted(run_dir.glob("task_*/metadata.json"))]:
        path.write_text(json.dumps({**json.loads(path.read_text()), "run_id": f"another-{dest.name}"}))
    return run_dir


# ---- 8. stale and misleading -------------------------------------------------------------------------------
def test_overwrite_removes_the_previous_analysis_and_starts_a_new_run_id(made, tmp_path, capsys):
    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "summary.json").write_text("{}")
    old_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--overwrite"], capsys)
    assert rc == 0, err
    assert not (run_dir / "analysis").exists()
    new_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert new_id != old_id and results.load_metadata(run_dir / "task_001")["run_id"] == new_id
    assert results.load_metadata(run_dir / "initial")["run_id"] == new_id


def test_sweep_accepts_every_run_flag_and_hands_them_to_its_jobs(tmp_path, monkeypatch, capsys):
    import cljax.experiment as experiment
    import cljax.sweep as sweep

    calls = []
    monkeypatch.setattr(sweep, "make_executor", lambda *a: object())
    monkeypatch.setattr(sweep, "submit", lambda runs, executor, overwrite, allow_nonfinite, repair, progress: calls.append(
        (len(runs), overwrite, allow_nonfinite, repair, progress)) or [])
    monkeypatch.setattr(sweep, "write_manifest", lambda *a: None)
    rc, _, err = run_cli(["sweep", *FLAGS, "--allow-nonfinite", "--overwrite", "--grid", "lr=0.1,0.2",
                          "--results-dir", str(tmp_path)], capsys)
    assert rc == 0 and calls == [(2, True, True, False, False)], err  # FLAGS has --no-progress
    rc, _, err = run_cli(["sweep", *FLAGS, "--repair", "--grid", "lr=0.1,0.2", "--results-dir", str(tmp_path)], capsys)
    assert rc == 0 and calls[-1] == (2, False, False, True, False), err
    seen = {}
    monkeypatch.setattr(experiment, "run_experiment", lambda config, **kw: seen.update(kw) or experiment.RunResult(
        algo_dir=tmp_path, task_class_pairs=np.zeros((2, 2, 2))))
    sweep.run_job(small_config(tmp_path, **TINY).to_dict(), False, True)
    assert seen["allow_nonfinite"] is True and seen["progress"] == "log" and seen["repair"] is False  # lines in its log
    sweep.run_job(small_config(tmp_path, **TINY).to_dict(), False, False, True)
    assert seen["repair"] is True


def test_a_resume_on_a_prepared_folder_changed_in_place_is_refused(tmp_path):
    # A prepared folder's identity is the checksums its meta.json recorded (no pass over the
    # images at every start): images changed in place kept it, and the run resumed on them.
    from cljax.data.prepared import load_prepared, write_prepared
    from cljax.experiment import run_experiment

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    data = write_prepared(tmp_path / "data", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), labels,
                          rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), labels, name="test", source="test",
                          preprocessing={}, n_classes=4)
    config = small_config(tmp_path, **{**TINY, "dataset": "imagenet_28_gray", "data_dir": str(data),
                                       "results_dir": str(tmp_path / "r")})

    def keep_partial(t, info):
        if t == 0:
            shutil.copytree(tmp_path / "r", tmp_path / "partial")

    run_experiment(config, progress=False, on_task_end=keep_partial)
    shutil.rmtree(tmp_path / "r")
    shutil.copytree(tmp_path / "partial", tmp_path / "r")
    original = np.load(data / "train_images.npy")
    np.save(data / "train_images.npy", 255 - original)  # meta.json untouched
    with pytest.raises(CljaxError, match="train_images.npy does not match its checksum in meta.json: the dataset changed "
                                         "after it was prepared, and the run's remaining tasks would train on other data "
                                         "than its first"):
        run_experiment(config, progress=False)  # a resume: it says what continuing would mix, and how to start anew
    fresh = Config.from_flat({**config.to_dict(), "results_dir": str(tmp_path / "new")})  # nor does a new run start
    with pytest.raises(CljaxError, match=r"checksum in meta.json: the dataset changed after it was prepared\. Restore "
                                         r"the folder, or prepare it again \(`cljax prepare-imagenet .*--overwrite`\)\.$"):
        run_experiment(fresh, progress=False)
    assert not (tmp_path / "new").exists()
    np.save(data / "train_images.npy", original)
    shutil.copytree(tmp_path / "partial", tmp_path / "r2")
    other = write_prepared(tmp_path / "other", 255 - original, labels, rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                           labels, name="test", source="test", preprocessing={}, n_classes=4)
    moved = Config.from_flat({**config.to_dict(), "results_dir": str(tmp_path / "r2"), "data_dir": str(other)})
    with pytest.raises(CljaxError, match=r"holds a run made on other data \(the dataset's contents differ from those it "
                                         r"recorded\): pass the --data-dir it was made with"):
        run_experiment(moved, progress=False)  # no "recorded values" to pass
    assert run_experiment(config, progress=False).first_task == 1

    # A damaged description or labels are one line too (IndexError / a misleading count before).
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "class_names": ["a", "b"]}))
    with pytest.raises(CljaxError, match="n_classes 4 and 2 class names"):
        load_prepared(data)
    (data / "meta.json").write_text(json.dumps(meta))
    np.save(data / "test_labels.npy", (labels + 4).astype(meta["files"]["test_labels.npy"]["dtype"]))
    with pytest.raises(CljaxError, match=r"labels from 4 to 7, outside 0 \.\.\. 3"):
        load_prepared(data)


def test_a_folder_past_the_last_task_is_not_deleted_by_a_resume(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    (run_dir / "task_007").mkdir()
    (run_dir / "task_007" / "notes.txt").write_text("mine")
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "task_007 is not a task of this 2-task run", "nothing was deleted")
    assert state(run_dir) == before
    finished = copy(made, "finished", tmp_path / "f")  # a finished run is not reported whole beside it
    shutil.copytree(finished / "task_001", finished / "task_005")
    before = state(finished)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "f")], capsys)
    assert_one_error(rc, err, "task_005 is not a task of this 2-task run: move it out", "to use the run")
    assert state(finished) == before


def test_more_bad_inputs_are_one_line(made, tmp_path, capsys):
    run_dir = copy(made, "partial", tmp_path / "r")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere" / "x")  # a results folder that is a broken link
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "broken")], capsys)
    assert_one_error(rc, err, "a file or a broken link is where a folder is needed: move it, or pass another path")
    for args, expected in ((["analyze", " "], "the run folder is empty: pass a run's folder"),
                           (["compare", str(run_dir), ""], "a run folder is empty: pass each run's folder"),
                           (["analyze", str(run_dir), "--glue-probes", "1"], "--glue-probes must be at least 2"),
                           (["analyze", str(run_dir), "--probe-ridge", "inf"], "--probe-ridge must be a finite number > 0, got inf"),
                           (["analyze", str(run_dir), "--tau", "-0.01"], "--tau must be a finite number >= 0, got -0.01"),
                           (["analyze", str(run_dir), "--tau", "nan"], "--tau must be a finite number >= 0, got nan"),
                           (["run", *FLAGS, "--results-dir", ""], "--results-dir is empty"),
                           (["run", "--data-dir", "", "--results-dir", str(tmp_path / "d")], "--data-dir is empty"),
                           (["data-info", ""], "the folder is empty"),
                           (["plan", "--dataset", "imagenet_28_gray"], "--data-dir is required for imagenet_28_gray"),
                           (["data-info", str(tmp_path), "--png", " "], "--png is empty"),
                           # another image format's name (PNG bytes were written under it), before any work
                           (["compare", str(run_dir), "--out", str(tmp_path / "gap.jpg")],
                            f"--out {tmp_path / 'gap.jpg'}: the plot is a PNG image: give the file a .png name"),
                           (["data-info", str(FASHION_DIR), "--png", str(tmp_path / "grid.pdf")],
                            f"--png {tmp_path / 'grid.pdf'}: the sample grid is a PNG image: give the file a .png name"),
                           # an unwritable place is found before the folder is described (17 lines came first)
                           (["data-info", str(FASHION_DIR), "--png", "/proc/grid.png"],
                            "--png /proc/grid.png: cannot write to /proc (")):
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, expected)
    assert not (Path.cwd() / "synthetic").exists()
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("def rule(:\n")
    rc, _, err = run_cli(["run", "--plugin", str(plugin), *FLAGS, "--results-dir", str(tmp_path / "p")], capsys)
    assert_one_error(rc, err, f"plugin file {plugin} is not valid Python (line 1")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "config": {**record["config"], "not_a_setting": 1}}))
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"{run_dir / 'run.json'}: the recorded settings cannot be read", "not_a_setting",
                     "other files stay")
    assert state(run_dir) == before


def test_a_prepared_folder_whose_splits_differ_in_image_size_is_one_line(tmp_path):
    from cljax.data.prepared import load_prepared, write_prepared

    labels = np.repeat(np.arange(2), 4)
    folder = write_prepared(tmp_path / "data", np.zeros((8, 28, 28), np.uint8), labels, np.zeros((8, 20, 20), np.uint8),
                            labels, name="test", source="test", preprocessing={}, n_classes=2)
    with pytest.raises(CljaxError, match=r"train images are \[28, 28\] and its test images \[20, 20\]"):
        load_prepared(folder)


def test_a_resume_pairs_learner_and_expert_as_the_run_started_with_auto(made, tmp_path, capsys):
    # auto pairs them where a CPU device has a core to itself: a requeue onto a node with other
    # cores switched the pairing mid-run (the last bits moved, against "byte-identical").
    run_dir = copy(made, "partial", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    started = record["split"]["lowering"]["learner_expert"]
    other = {"paired": "separate", "separate": "paired"}[started]
    record["split"]["lowering"]["learner_expert"] = other  # as if started on a host where auto chose the other
    (run_dir / "run.json").write_text(json.dumps(record))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    assert results.load_metadata(run_dir / "task_001")["lowering"]["learner_expert"] == other
    assert results.load_metadata(run_dir / "task_000")["lowering"]["learner_expert"] == started
    # the settings stay as the run was started: auto, in every task, resumed or not
    assert {results.load_metadata(run_dir / f"task_00{t}")["config"]["learner_expert"] for t in (0, 1)} == {"auto"}


def test_a_resume_deletes_a_damaged_folder_it_will_train_again_before_it_trains(made, tmp_path, monkeypatch):
    """task_001 past the checkpoint, not whole (a flipped byte): deleted once the folder is
    locked, before any task is trained, so a run stopped before it reaches task 1 leaves no
    damaged folder behind (which analyze would refuse)."""
    from cljax.cli import main as cli_main
    from tests.run_folder_kit import Crash, crash_at, flip_byte

    run_dir = copy(made, "partial", tmp_path / "r")
    shutil.copytree(made["finished"] / RUN_DIR / "task_001", run_dir / "task_001")
    flip_byte(run_dir / "task_001" / "weights.npy")

    crash_at(monkeypatch, "train", 1)
    with pytest.raises(Crash):
        cli_main(["run", *FLAGS, "--results-dir", str(tmp_path / "r")])
    assert [d.name for d in results.task_dirs(run_dir)] == ["task_000"]


def test_a_task_folder_trained_again_in_place_needs_the_disk_of_both_copies(made, tmp_path, capsys, monkeypatch):
    """The old folder stays until the new one replaces it: a task redone over its whole folder
    (stopped before its checkpoint) is checked for twice the disk of a task done fresh, by the
    check of each task and by the check before anything is written (which counted one copy: the
    resume saved its record and trained the task before it was refused)."""
    import cljax.experiment as experiment

    needs = {}
    check_disk = experiment.check_disk

    def spy(algo_dir, need, what, *rest):
        needs.setdefault(algo_dir.parent.parent.name, {})[what.split(" (")[0]] = need
        return check_disk(algo_dir, need, what, *rest)

    monkeypatch.setattr(experiment, "check_disk", spy)
    monkeypatch.setattr(experiment, "record_fold_disk", lambda *a: 0)  # the last task's record apart (test_disk_checks)
    copy(made, "partial", tmp_path / "fresh")  # task_001 not there yet
    redo = copy(made, "finished", tmp_path / "redo")  # task_001 whole, the checkpoint one task behind
    shutil.copy(made["partial"] / RUN_DIR / "checkpoint.npz", redo / "checkpoint.npz")
    for name in ("fresh", "redo"):
        rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / name)], capsys)
        assert rc == 0 and "resumed from task 1" in out, err
    assert needs["fresh"]["task 1"] > 0 and needs["redo"]["task 1"] == 2 * needs["fresh"]["task 1"]
    assert needs["redo"]["the next task"] == needs["fresh"]["the next task"] + needs["fresh"]["task 1"]


def test_a_resume_says_its_table_is_of_this_call_and_that_the_analysis_is_of_fewer_tasks(made, tmp_path, capsys):
    """A stopped run analysed, then resumed to its end: the run says its analysis/ is of the
    first task only; analysed again, the finished run's rerun says nothing of it."""
    run_dir = copy(made, "partial", tmp_path / "r")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "resumed from task 1: the table has the tasks trained now" in out, err
    assert (f"note: {run_dir / 'analysis'} is of the first 1 tasks, and the run now has 2: run `cljax analyze "
            f"{run_dir}` again for them all.") in out
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out and "note:" not in out, err


def test_a_resumed_runs_speed_counts_the_tasks_it_trained_not_the_run(made, tmp_path, monkeypatch):
    """One clock tick per reading: the compile and each task take 1 s, so a run resumed at
    task 1 of 2 trained one task's steps in 1 s (it reported the whole run's steps)."""
    import types

    import cljax.experiment as experiment
    from cljax.experiment import run_experiment

    ticks = iter(range(10**6))
    monkeypatch.setattr(experiment, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    run_dir = copy(made, "partial", tmp_path / "r")
    config = small_config(tmp_path / "cfg", results_dir=str(tmp_path / "r"), **TINY)
    result = run_experiment(config, progress=False)
    assert result.first_task == 1 and result.compile_seconds == 1.0
    assert result.steps_per_second == config.steps_per_task
    timings = results.load_metadata(run_dir / "task_001")["timings"]
    assert timings == {"task_seconds": 1.0, "compile_seconds": 1.0, "steps_per_second": config.steps_per_task}


def test_no_output_of_a_command_goes_over_a_runs_results(made, tmp_path, capsys):
    """compare --out / --json, analyze --out and data-info --png refuse a run's record, checkpoint,
    task folders and initial/ in one line, writing nothing; the run's analysis/ and a file beside
    its own are free. data-info writes the path it is given, suffix or not."""
    run_dir = copy(made, "finished", tmp_path / "r")
    other = another_run(made, tmp_path / "o")
    before = state(run_dir)
    for args, flag, target in [
            (["compare", "--json", str(run_dir / "task_000" / "metrics.pkl"), str(run_dir), str(other)], "--json",
             run_dir / "task_000" / "metrics.pkl"),
            (["compare", "--out", str(run_dir / "run.json"), str(run_dir), str(other)], "--out", run_dir / "run.json"),
            (["analyze", str(run_dir), "--out", str(run_dir / "task_001"), "--no-glue"], "--out", run_dir / "task_001"),
            (["analyze", str(run_dir), "--out", str(run_dir / "initial" / "a"), "--no-glue"], "--out",
             run_dir / "initial" / "a"),
            (["data-info", str(FASHION_DIR), "--png", str(run_dir / "checkpoint.npz")], "--png",
             run_dir / "checkpoint.npz")]:
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, f"{flag} {target} is one of the results of the run in {run_dir}")
    assert state(run_dir) == before
    (run_dir / "analysis").mkdir()
    rc, out, err = run_cli(["compare", "--json", str(run_dir / "analysis" / "gap.json"), "--out",
                            str(run_dir / "gap.png"), str(run_dir), str(other)], capsys)
    assert rc == 0 and (run_dir / "analysis" / "gap.json").is_file() and (run_dir / "gap.png").is_file(), err
    rc, out, err = run_cli(["data-info", str(FASHION_DIR), "--png", str(tmp_path / "grid")], capsys)
    assert rc == 0 and f"samples: {tmp_path / 'grid'}\n" in out and (tmp_path / "grid").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "grid.png").exists()


def test_a_plot_or_comparison_replaces_only_a_file_of_its_own_kind(made, tmp_path, capsys):
    """A mistyped output path that names a dataset's file, an analysis's arrays or any JSON that is
    not a comparison is refused in one line, the file left as it was; the same command run again
    over its own PNG and JSON replaces them."""
    run_dir, other = copy(made, "finished", tmp_path / "r"), another_run(made, tmp_path / "o")
    data = tmp_path / "fashion"
    shutil.copytree(FASHION_DIR, data)
    idx = data / "train-images-idx3-ubyte.gz"
    arrays, meta = tmp_path / "cl.npz", tmp_path / "meta.json"
    np.savez(arrays, a=np.arange(3))
    meta.write_text(json.dumps({"format_version": 1, "classes": ["a", "b"]}))
    kept = {p: p.read_bytes() for p in (idx, arrays, meta)}
    for args, flag, target, what in [
            (["data-info", str(data), "--png", str(idx)], "--png", idx, "a PNG"),
            (["compare", "--out", str(arrays), str(run_dir), str(other)], "--out", arrays, "a PNG"),
            (["compare", "--json", str(meta), str(run_dir), str(other)], "--json", meta,
             "a JSON comparison of cljax compare")]:
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, f"{flag} {target} is a file that is not {what}, and writing there would replace it")
    assert {p: p.read_bytes() for p in kept} == kept
    # a FIFO (as a device file such as /dev/null) was replaced by a regular file, exit 0
    import stat

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args, flag in [(["data-info", str(data), "--png", str(fifo)], "--png"),
                       (["compare", "--out", str(fifo), str(run_dir), str(other)], "--out"),
                       (["compare", "--json", str(fifo), str(run_dir), str(other)], "--json")]:
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, f"{flag} {fifo} is not a regular file (a device, a pipe or a socket)")
        assert stat.S_ISFIFO(fifo.stat().st_mode)
    plot, gap = tmp_path / "gap.png", tmp_path / "gap.json"
    for _ in range(2):  # the second time over the first's outputs
        rc, _, err = run_cli(["compare", "--out", str(plot), "--json", str(gap), str(run_dir), str(other)], capsys)
        assert rc == 0, err
        rc, _, err = run_cli(["data-info", str(data), "--png", str(plot)], capsys)
        assert rc == 0, err
    assert plot.read_bytes()[:4] == b"\x89PNG" and len(json.loads(gap.read_text())) == 2
    # ... but not over a plot an analysis lists as its own: its summary.json would describe another picture.
    analysis = run_dir / "analysis"
    analysis.mkdir()
    (analysis / "accuracy_matrix.png").write_bytes(plot.read_bytes())
    (analysis / "summary.json").write_text(json.dumps({"algo_dir": str(run_dir), "files": ["accuracy_matrix.png"]}))
    for args, flag in [(["compare", "--out", str(analysis / "accuracy_matrix.png"), str(run_dir), str(other)], "--out"),
                       (["data-info", str(data), "--png", str(analysis / "accuracy_matrix.png")], "--png")]:
        rc, _, err = run_cli(args, capsys)
        assert_one_error(rc, err, f"{flag} {analysis / 'accuracy_matrix.png'} is a file of the analysis in {analysis} "
                                  f"(its summary.json lists it)")
    assert (analysis / "accuracy_matrix.png").read_bytes() == plot.read_bytes()


def test_compare_reads_only_each_runs_own_whole_files(made, tmp_path, capsys):
    import pickle

    run_dir, other = copy(made, "finished", tmp_path / "r"), another_run(made, tmp_path / "o")
    plain = copy(made, "finished", tmp_path / "c")  # `cp -a`: the same run, which compared as a tie with itself
    rc, _, err = run_cli(["compare", str(run_dir), str(plain)], capsys)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert_one_error(rc, err, f"{run_dir} and {plain} are the same run (run id {run_id}; one is a copy of the other): "
                              f"pass one of them")
    path = other / "task_001" / "expert_metrics.pkl"
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][-1] = 1.0 - metrics["test_acc"][-1]  # the same size, other numbers
    path.write_bytes(pickle.dumps(metrics, protocol=4))
    rc, _, err = run_cli(["compare", str(run_dir), str(other)], capsys)
    assert_one_error(rc, err, f"{path} does not match the sha256 recorded when it was written")
    shutil.copytree(run_dir / "task_001", run_dir / "task_002")  # a folder past the run's two tasks
    rc, _, err = run_cli(["compare", str(run_dir), str(another_run(made, tmp_path / "o2"))], capsys)
    assert_one_error(rc, err, f"{run_dir} holds 3 task folders but its run has 2 tasks: task_002 on")


def test_an_analysis_holds_the_run_and_refuses_to_write_over_a_run_replaced_meanwhile(made, tmp_path, capsys,
                                                                                     monkeypatch):
    # `run --overwrite` during `analyze` deleted the task folders under it, and the deleted run's
    # analysis was written into the new run's folder. The analysis now holds the run's lock shared
    # (no run starts writing meanwhile), and refuses to write when run.json's id changed anyway.
    import cljax.analysis.driver as driver
    import cljax.run_lock as run_lock
    from cljax.analysis import analyze_run
    from cljax.run_lock import RunLock

    monkeypatch.setattr(run_lock, "READER_WAIT_SECONDS", 0.2)
    run_dir = copy(made, "finished", tmp_path / "r")
    import socket  # the run that wrote it has ended (here it was this process: a live writer, refused at once)

    (run_dir / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "since": "x"}))
    started = []
    real_update = driver.TaskFolder.__init__

    def during(self, *args, **kwargs):  # while the analysis reads its task folders, a run tries to start
        real_update(self, *args, **kwargs)
        if not started:
            started.append(True)
            with pytest.raises(CljaxError, match="is being read by another cljax process"):
                RunLock(run_dir).__enter__()

    monkeypatch.setattr(driver.TaskFolder, "__init__", during)
    analyze_run(run_dir, glue=False, make_plots=False)
    assert started
    monkeypatch.undo()
    with RunLock(run_dir):  # released when the analysis ended
        pass

    calls = []
    real = driver.read_run_record

    def replaced(algo_dir):  # the second reading (before writing) finds another run's id
        calls.append(algo_dir)
        record = real(algo_dir)
        return record if len(calls) == 1 else {**record, "run_id": "0" * 32}

    monkeypatch.setattr(driver, "read_run_record", replaced)
    before = state(run_dir)
    with pytest.raises(CljaxError, match=r"now holds another run \(run.json's id changed while it was analysed: a "
                                         r"`cljax run --overwrite`\): nothing was written"):
        analyze_run(run_dir, glue=False, make_plots=False, out_dir=tmp_path / "a")
    assert state(run_dir) == before and not (tmp_path / "a").exists()


def test_an_analysis_of_a_folder_a_run_is_rewriting_says_to_wait_not_to_repair(made, tmp_path, capsys):
    from cljax.run_lock import RunLock

    # An --overwrite rebuilding the folder: run.json is the new run's, task_000 still the old one's
    # (the line said to restore it or --repair), then no task folder yet ('run the experiment first').
    run_dir = copy(made, "finished", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "run_id": "f" * 32}))
    with RunLock(run_dir):  # a run (this process, another descriptor) writes the folder now
        rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
        assert_one_error(rc, err, "belongs to run", f"a run is writing this folder now (pid {os.getpid()} on",
                         "wait for it to write it, then run this command again")
        assert "--repair" not in err
        for t in ("task_000", "task_001"):
            shutil.rmtree(run_dir / t)
        rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
        assert_one_error(rc, err, "holds no finished task folder (task_000, ...): a run is writing this folder now")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)  # no run now
    assert_one_error(rc, err, "holds no finished task folder (task_000, ...): pass a run's folder")
