"""verified.json and its journal (cljax/check_record.py): a resume hashes only the files that no
earlier resume verified and no run noted as it wrote them, or that were written since; a
damaged or another run's record means all of those it held."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cljax.check_record as check_record
from cljax.check_record import JOURNAL, RECORD, CheckRecord
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
    """A 4-task run stopped after task 0, resumed and stopped after task 1: the resume folded the
    journal's notes of initial/ and task 0 into the record; task 1's note is in the journal."""
    config = _config(tmp_path)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(0))
    assert not (tmp_path / RUN / RECORD).exists()  # a new run saves the record after its last task
    assert _journal(tmp_path / RUN) == [{"initial/metadata.json"}, {"task_000/metadata.json"}]
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(1))
    return config, tmp_path / RUN


def _journal(run_dir: Path) -> list:
    """The metadata.json each line of the journal notes."""
    return [set(json.loads(line)["metadata"]) for line in (run_dir / JOURNAL).read_text().splitlines()]


def _initial_files(run_dir: Path) -> set:
    return {p for p in (run_dir / "initial").iterdir() if p.name != "metadata.json"}


def test_a_resume_hashes_nothing_that_was_verified_or_noted_as_written(stopped_twice, monkeypatch):
    config, run_dir = stopped_twice
    record = json.loads((run_dir / RECORD).read_text())
    assert record["run_id"] == json.loads((run_dir / "run.json").read_text())["run_id"]
    assert {Path(run_dir / name) for name in record["hashed"]} == (_task_files(run_dir, [0]) - {
        run_dir / "task_000" / "metadata.json"}) | _initial_files(run_dir)  # metadata.json is parsed: its fields kept
    assert set(record["metadata"]) == {"task_000/metadata.json", "initial/metadata.json"}
    assert _journal(run_dir) == [{"task_001/metadata.json"}]  # written after the resume's save
    hashed = _hashed(monkeypatch)
    run_experiment(config, progress=False)
    assert hashed == []  # task 0 verified by the last resume, task 1 noted as written: neither read
    record = json.loads((run_dir / RECORD).read_text())  # and tasks 2, 3 folded in after the last task
    assert len(record["hashed"]) == 4 * 6 + len(_initial_files(run_dir)) and not (run_dir / JOURNAL).exists()


def test_without_the_journal_a_resume_hashes_what_was_written_since_the_record(stopped_twice, monkeypatch):
    config, run_dir = stopped_twice
    (run_dir / JOURNAL).unlink()  # as a run of a cljax before the journal left it
    hashed = _hashed(monkeypatch)
    run_experiment(config, progress=False)
    # Task 1, written since the last resume, is hashed (once: under the lock); task 0 not at all.
    assert sorted(hashed) == sorted(_task_files(run_dir, [1]) - {run_dir / "task_001" / "metadata.json"})
    assert len([n for n in json.loads((run_dir / RECORD).read_text())["hashed"] if n.startswith("task_")]) == 4 * 6


def test_a_line_cut_by_a_stop_is_skipped_and_the_next_line_starts_on_its_own(stopped_twice, monkeypatch):
    config, run_dir = stopped_twice
    journal = run_dir / JOURNAL
    journal.write_text(journal.read_text()[:-40])  # task 1's note, cut short
    record = CheckRecord(run_dir)
    assert not any(name.startswith("task_001") for name in [*record.hashed, *record.metadata])
    assert any(name.startswith("task_000") for name in record.hashed)  # the record's entries stand
    record.note_written(run_dir / "task_001")
    lines = journal.read_text().splitlines()  # the new note starts after a newline: it parses
    assert len(lines) == 2 and set(json.loads(lines[1])["metadata"]) == {"task_001/metadata.json"}
    journal.write_text(journal.read_text().splitlines()[0] + "\n")  # only the cut line: task 1 is hashed
    hashed = _hashed(monkeypatch)
    run_experiment(config, progress=False)
    assert sorted(hashed) == sorted(_task_files(run_dir, [1]) - {run_dir / "task_001" / "metadata.json"})


def test_the_fold_holds_each_repeated_field_once_whatever_it_was_read_from(stopped_twice):
    """The record's and the journal's entries alike hold one copy of the run's config (a long run's
    fold held one per task: 83 MiB at 4000 tasks, docs/benchmark.md), and the record saved is the
    same JSON as the entries it folded."""
    config, run_dir = stopped_twice
    record = CheckRecord(run_dir)
    record.for_run(json.loads((run_dir / "run.json").read_text())["run_id"])
    journal = [json.loads(line) for line in (run_dir / JOURNAL).read_text().splitlines()]
    record.save(record.run_id)
    configs = [fields["config"] for _, fields in record.metadata.values() if "config" in fields]
    assert len(configs) == 2 and len({id(c) for c in configs}) == 1  # task 0 (from the record), task 1 (journal)
    saved = json.loads((run_dir / RECORD).read_text())
    assert saved["metadata"]["task_001/metadata.json"] == journal[0]["metadata"]["task_001/metadata.json"]
    assert not (run_dir / JOURNAL).exists()


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
    # task 1 is noted in the journal (this run's id): the damage costs only what the record held
    expected = {run_dir / "task_000" / "weights.npy"} if damage == "edited_entry" else (
        _task_files(run_dir, [0]) - {run_dir / "task_000" / "metadata.json"})
    assert sorted(hashed) == sorted(expected)
    # written anew, whole: tasks 0, 1 and 2, 3
    assert len([n for n in json.loads(path.read_text())["hashed"] if n.startswith("task_")]) == 4 * 6


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
    assert hashed == [] and (run_dir / RECORD).stat().st_mtime_ns == os.stat(run_dir / RECORD).st_mtime_ns
    # The record lost (deleted after a disk scare, or a copied run): the rerun that hashes every
    # file saves what it verified, so the next one hashes none (each rerun hashed everything).
    (run_dir / RECORD).unlink()
    assert run_experiment(config, progress=False).first_task == 4
    saved = json.loads((run_dir / RECORD).read_bytes())["hashed"]
    assert set(hashed) == tasks - metadata == {run_dir / name for name in saved if name.startswith("task_")}
    assert all(sha256 == record["hashed"][name][1] for name, (_, sha256) in saved.items())
    written = (run_dir / RECORD).stat().st_mtime_ns
    hashed.clear()
    assert run_experiment(config, progress=False).first_task == 4
    assert hashed == [] and (run_dir / RECORD).stat().st_mtime_ns == written  # nothing new: not written again
    # A save killed mid-write left its temporary (megabytes in a long run) and the journal beside the
    # record, for good: a rerun of the finished run saved nothing, so it never cleaned them.
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = run_dir / f".{RECORD}.tmp-{dead.pid}"
    left.write_bytes(b"{")
    (run_dir / JOURNAL).write_text((run_dir / RECORD).read_text() + "\n")
    assert run_experiment(config, progress=False).first_task == 4
    assert not left.exists() and not (run_dir / JOURNAL).exists() and hashed == []


def test_a_stop_keeps_every_note_and_damage_since_is_found(tmp_path, monkeypatch, capsys):
    config = _config(tmp_path)
    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=_stop_after(1))
    run_dir = tmp_path / RUN
    record = CheckRecord(run_dir)  # the journal alone: no save before the last task
    assert not (run_dir / RECORD).exists()
    assert {run_dir / name for name in record.hashed if name.startswith("task_")} == _task_files(
        run_dir, [0, 1]) - {run_dir / f"task_00{t}" / "metadata.json" for t in (0, 1)}
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
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]  # the journal holds the new run's notes alone
    assert [json.loads(line)["run_id"] for line in (run_dir / JOURNAL).read_text().splitlines()] == [run_id] * 2


def test_a_check_reads_no_header_the_record_vouches_for_and_a_rerun_reads_the_kept_rows(tmp_path, monkeypatch):
    """A rerun of a finished run parses no .npy header of a file the record holds unchanged, and
    prints the rows its folders kept (no array loaded). An edited metadata.json is read whole
    again, also by the same command's second check of it; a folder without a kept row has it
    computed from its arrays, the same row."""
    import math

    import cljax.run_folder as run_folder
    import cljax.run_result as run_result
    from cljax.run_folder import verify_task_dir

    config = _config(tmp_path)
    first = run_experiment(config, progress=False).summary
    run_dir = tmp_path / RUN
    kept = json.loads((run_dir / "task_002" / "metadata.json").read_text())["summary"]
    assert kept["task"] == 2 and kept["n_earlier"] == 2 and 0.0 <= kept["acc_current"] <= 1.0

    def same(a, b):
        return a.keys() == b.keys() and all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
                                            for x, y in ((a[k], b[k]) for k in a))

    headers, real_header = [], run_folder.npy_header
    monkeypatch.setattr(run_folder, "npy_header",  # the task folders' (initial/ is checked apart, whole)
                        lambda path: (path.parent.name.startswith("task_") and headers.append(path)) or real_header(path))
    real_load = run_result._load_summary_arrays
    monkeypatch.setattr(run_result, "_load_summary_arrays", lambda d: pytest.fail(f"{d}'s arrays were loaded"))
    again = run_experiment(config, progress=False)
    assert again.already_finished and headers == []
    assert len(again.summary) == 4 and all(same(a, b) for a, b in zip(first, again.summary))
    assert math.isnan(again.summary[0]["acc_earlier"])  # NaN kept as null, read back as NaN

    # A folder written before the rows were kept: its row computed from its arrays, the same.
    meta_path = run_dir / "task_002" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["summary"]
    meta_path.write_text(json.dumps(meta, indent=1))
    monkeypatch.setattr(run_result, "_load_summary_arrays", real_load)
    again = run_experiment(config, progress=False)
    assert same(again.summary[2], first[2]) and {p.parent.name for p in headers} == {"task_002"}

    # An edited shape: found by the rerun, and by a second check with the same memo.
    meta["shapes"]["binary_labels"] = [9, 9, 9, 9]
    meta_path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(CljaxError, match=r"task_002/binary_labels.npy has shape .* metadata.json records \[9, 9, 9, 9\]"):
        run_experiment(config, progress=False)
    memo, run_id = CheckRecord(run_dir), meta["run_id"]
    for _ in range(2):
        assert "metadata.json records [9, 9, 9, 9]" in verify_task_dir(run_dir / "task_002", 2, run_id, False, memo=memo)
