"""verified.json (cljax/check_record.py): a resume hashes only the files that no earlier resume
verified, or that were written since; a damaged or another run's record means all of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cljax.check_record as check_record
from cljax.check_record import RECORD, CheckRecord
from cljax.errors import CljaxError
from cljax.experiment import run_experiment
from tests.conftest import small_config
from tests.run_folder_kit import TINY, flip_byte

RUN = Path("synthetic") / "SL_T4"


class Stop(Exception):
    pass


def _config(root: Path):
    return small_config(root, results_dir=str(root), **{**TINY, "synthetic_classes": 8, "num_tasks": 4})


def _stop_after(k: int):
    def hook(t, info):
        if t == k:
            raise Stop
    return hook


def _hashed(monkeypatch) -> list:
    """The files the folder checks hash from now on (task folders; initial/ is hashed apart)."""
    seen, real = [], check_record.file_sha256

    def spy(path):
        if Path(path).parent.name.startswith("task_"):
            seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(check_record, "file_sha256", spy)
    return seen


def _task_files(run_dir: Path, tasks) -> set:
    return {p for t in tasks for p in (run_dir / f"task_{t:03d}").iterdir()}


@pytest.fixture
def stopped_twice(tmp_path):
    """A 4-task run stopped after task 0, resumed and stopped after task 1: the resume verified
    task 0 and recorded it."""
    config = _config(tmp_path)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(0))
    assert not (tmp_path / RUN / RECORD).exists()  # a new run has verified nothing
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(1))
    return config, tmp_path / RUN


def test_a_resume_hashes_only_what_no_earlier_resume_verified(stopped_twice, monkeypatch):
    config, run_dir = stopped_twice
    record = json.loads((run_dir / RECORD).read_text())
    assert record["run_id"] == json.loads((run_dir / "run.json").read_text())["run_id"]
    assert {Path(run_dir / name) for name in record["hashed"]} == _task_files(run_dir, [0]) - {
        run_dir / "task_000" / "metadata.json"}  # metadata.json is parsed, not hashed: its fields are kept
    assert set(record["metadata"]) == {"task_000/metadata.json"}
    hashed = _hashed(monkeypatch)
    run_experiment(config, progress=False)
    # Task 1, written since the last resume, is hashed (once: under the lock); task 0 not at all.
    assert sorted(hashed) == sorted(_task_files(run_dir, [1]) - {run_dir / "task_001" / "metadata.json"})
    # Saved as it resumed (tasks 0, 1, verified) and after its last task (tasks 2, 3, as written).
    assert len(json.loads((run_dir / RECORD).read_text())["hashed"]) == 4 * 6


def test_a_file_written_since_it_was_verified_is_hashed_again(stopped_twice, capsys):
    config, run_dir = stopped_twice
    flip_byte(run_dir / "task_000" / "weights.npy")  # same size: only its content tells
    from cljax.cli import main

    argv = ["run", "--dataset", "synthetic", "--synthetic-classes", "8", "--num-tasks", "4", "--n-repeats", "2",
            "--n-train-per-class", "16", "--n-test-per-class", "8", "--n-subsamples", "4", "--epochs", "1",
            "--batch-size", "16", "--log-frequency", "1", "--lr", "0.1", "--model", "mlp", "--mlp-hidden", "32",
            "--no-progress", "--results-dir", str(run_dir.parent.parent)]
    assert main(argv) == 2
    assert "task_000/weights.npy does not match the sha256 recorded" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "another_run", "edited_entry"])
def test_a_damaged_or_foreign_record_means_every_file_is_hashed(stopped_twice, monkeypatch, damage):
    config, run_dir = stopped_twice
    path = run_dir / RECORD
    record = json.loads(path.read_text())
    if damage == "garbage":
        path.write_bytes(b"{\"version\": 1, \"run_id\"")
    elif damage == "another_run":
        path.write_text(json.dumps({**record, "run_id": "0" * 32}))
    else:  # a sha256 that is not the recorded one: the entry does not vouch for the file
        name = "task_000/weights.npy"
        record["hashed"][name][1] = "0" * 64
        path.write_text(json.dumps(record))
    hashed = _hashed(monkeypatch)
    run_experiment(config, progress=False)
    expected = _task_files(run_dir, [1]) - {run_dir / "task_001" / "metadata.json"}
    expected |= {run_dir / "task_000" / "weights.npy"} if damage == "edited_entry" else (
        _task_files(run_dir, [0]) - {run_dir / "task_000" / "metadata.json"})
    assert sorted(hashed) == sorted(expected)
    assert len(json.loads(path.read_text())["hashed"]) == 4 * 6  # written anew, whole: tasks 0, 1 and 2, 3


def test_a_run_notes_what_it_writes_and_a_rerun_of_it_finished_hashes_no_task_file(tmp_path, monkeypatch):
    """Never resumed: the record comes from the run's own writes (each file's sha256 hashed while
    it was written), saved after the last task."""
    config = _config(tmp_path)
    run_experiment(config, progress=False)
    run_dir = tmp_path / RUN
    record = json.loads((run_dir / RECORD).read_text())
    assert record["run_id"] == json.loads((run_dir / "run.json").read_text())["run_id"]
    tasks = _task_files(run_dir, range(4))
    metadata = {p for p in tasks if p.name == "metadata.json"}
    initial = {p for p in (run_dir / "initial").iterdir() if p.name != "metadata.json"}
    assert {run_dir / name for name in record["hashed"]} == (tasks - metadata) | initial
    assert {run_dir / name for name in record["metadata"]} == metadata | {run_dir / "initial" / "metadata.json"}
    for name, (_, sha256) in record["hashed"].items():
        assert sha256 == check_record.file_sha256(run_dir / name)
    kept = CheckRecord(run_dir)  # the run's config, in every folder's fields, is held once in memory
    configs = [entry[1]["config"] for name, entry in kept.metadata.items() if name.startswith("task_")]
    assert len(configs) == 4 and all(c is configs[0] for c in configs) and configs[0]["num_tasks"] == 4
    hashed = _hashed(monkeypatch)
    assert run_experiment(config, progress=False).first_task == 4  # finished: every folder verified, none read
    assert hashed == []


def test_a_stop_keeps_what_was_saved_before_it_and_damage_since_is_found(tmp_path, monkeypatch, capsys):
    import cljax.experiment as experiment

    monkeypatch.setattr(experiment, "SAVE_EVERY_S", 0.0)  # saved after every task
    config = _config(tmp_path)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(1))
    run_dir = tmp_path / RUN
    record = json.loads((run_dir / RECORD).read_text())
    assert {run_dir / name for name in record["hashed"] if name.startswith("task_")} == _task_files(
        run_dir, [0, 1]) - {run_dir / f"task_00{t}" / "metadata.json" for t in (0, 1)}
    monkeypatch.setattr(experiment, "SAVE_EVERY_S", 300.0)
    flip_byte(run_dir / "task_001" / "weights.npy")  # written since it was noted: hashed, and found
    hashed = _hashed(monkeypatch)
    with pytest.raises(CljaxError, match="task_001/weights.npy does not match the sha256 recorded"):
        run_experiment(config, progress=False)
    assert run_dir / "task_001" / "weights.npy" in hashed and not any(p.parent.name == "task_000" for p in hashed)


def test_the_record_keeps_an_entry_only_while_the_file_is_as_it_was(tmp_path):
    folder = tmp_path / "task_000"
    folder.mkdir()
    f = folder / "a.npy"
    f.write_bytes(b"x" * 10)
    record = CheckRecord(tmp_path)
    from cljax.check_record import identity

    key = identity(f)
    record.note(f, key, "s" * 64)
    assert record.matched(f, identity(f), "s" * 64)
    assert not record.matched(f, identity(f), "t" * 64)  # another recorded sha256
    os.utime(f, ns=(key[3] + 1, key[3] + 1))
    assert not record.matched(f, identity(f), "s" * 64)  # touched: its times changed
    record.save("run")
    again = CheckRecord(tmp_path)
    again.for_run("run")
    assert again.hashed == {"task_000/a.npy": [key, "s" * 64]}
    again.for_run("other")
    assert again.hashed == {} and again.metadata == {}
    assert CheckRecord(tmp_path / "nowhere").hashed == {}  # no record: nothing vouched for


def test_overwrite_deletes_the_record(stopped_twice):
    import dataclasses

    config, run_dir = stopped_twice
    assert (run_dir / RECORD).exists()
    with pytest.raises(Stop):
        run_experiment(dataclasses.replace(config), overwrite=True, progress=False, on_task_end=_stop_after(0))
    assert not (run_dir / RECORD).exists()
