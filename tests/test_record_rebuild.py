"""A lost run.json is written again from the task folders by --repair (cljax/record_rebuild.py);
every case it cannot tell is refused in one line, with nothing changed."""

from __future__ import annotations

import json

import pytest

from tests.run_folder_kit import FLAGS, assert_one_error, copy, make_runs, run_cli, state


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


def _edit_metadata(folder, **changes):
    path = folder / "metadata.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_repair_writes_a_lost_record_again_and_the_run_resumes_to_the_same_numbers(made, tmp_path, capsys):
    # Before, a deleted run.json lost the run: "restore it from a copy, or --overwrite".
    run_dir = copy(made, "partial", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").unlink()
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, f"{run_dir / 'run.json'} is missing, and the folder holds 1 task folder(s) of run "
                              f"{record['run_id']}: pass --repair to write it again from them")
    assert state(run_dir) == before
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"], capsys)
    assert rc == 0, err
    assert f"note: {run_dir / 'run.json'} was missing; --repair wrote it again from the task folders" in err
    assert json.loads((run_dir / "run.json").read_text()) == record  # every field, the data's identity included
    finished = made["finished"] / run_dir.relative_to(tmp_path / "r")
    for name in ("metrics.pkl", "weights.npy", "representations.npy"):
        assert (run_dir / "task_001" / name).read_bytes() == (finished / "task_001" / name).read_bytes()
    assert json.loads((run_dir / "task_001" / "metadata.json").read_text())["data"] == record["data"]


def test_repair_writes_the_record_of_a_finished_run_again(made, tmp_path, capsys, monkeypatch):
    # It trains nothing, so it builds no program and checks no device memory or disk for a task:
    # before, a login node could be refused memory or disk that writing run.json does not need.
    from cljax import experiment

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run's repaired record went through the training checks")

    monkeypatch.setattr(experiment, "build_task_program", no_training)
    monkeypatch.setattr(experiment, "_initial_learner", no_training)
    run_dir = copy(made, "finished", tmp_path / "r")
    record = (run_dir / "run.json").read_bytes()
    (run_dir / "run.json").unlink()
    folders = {p: p.read_bytes() for p in run_dir.glob("task_*/*")}
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"], capsys)
    assert rc == 0, err
    assert json.loads((run_dir / "run.json").read_bytes()) == json.loads(record)
    assert {p: p.read_bytes() for p in run_dir.glob("task_*/*")} == folders  # nothing trained again
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)  # now a finished run as any
    assert rc == 0 and "was missing" not in err, err


@pytest.mark.parametrize("case", ["old_folders", "two_runs", "other_settings"])
def test_a_record_that_cannot_be_rebuilt_is_refused_in_one_line(made, tmp_path, capsys, case):
    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "run.json").unlink()
    flags = [*FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"]
    if case == "old_folders":  # written before metadata.json named the data: the data would go unchecked
        for folder in run_dir.glob("task_*"):
            _edit_metadata(folder, data=None)
        expected = "its task folders were written by a cljax that did not record the data's identity in them"
    elif case == "two_runs":
        _edit_metadata(run_dir / "task_000", run_id="0" * 32)
        expected = "the task folders belong to 2 runs"
    else:  # the rebuilt record is checked as run.json is: a resume with other settings is refused
        flags[flags.index("--lr") + 1] = "0.2"
        expected = "holds a run with other settings (lr): lr recorded 0.1, now 0.2"
    before = state(run_dir)
    rc, _, err = run_cli(["run", *flags], capsys)
    assert_one_error(rc, err, expected)
    assert state(run_dir) == before


def test_the_cli_s_device_split_of_a_lost_record_is_the_one_the_folders_record(made, tmp_path):
    # cljax run and a sweep job choose the CPU split from run.json before JAX starts: with it lost,
    # a --repair went on with this host's split, not the run's (other last bits).
    from cljax.checkpoint import recorded_split

    run_dir = copy(made, "partial", tmp_path / "r")
    split = json.loads((run_dir / "run.json").read_text())["split"]
    (run_dir / "run.json").unlink()
    assert recorded_split(run_dir) == split and split is not None
    assert recorded_split(tmp_path / "nothing") is None


def test_a_record_rebuilt_from_a_later_folder_says_so(made, tmp_path, capsys):
    # That folder's settings are those of the command that wrote it (a resume may change the ones
    # that change no number): the note names the folder instead of passing them for the run's first.
    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "run.json").unlink()
    import shutil

    shutil.rmtree(run_dir / "task_000")
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"], capsys)
    assert rc == 0, err
    assert "wrote it again from the task folders (run " in err and ", from task_001's metadata.json, the first " \
        "readable: its settings that change no number are those of the command that wrote that folder" in err
    assert (run_dir / "task_000" / "metrics.pkl").is_file()  # trained again by the repair


@pytest.mark.parametrize("field, value", [("data", ["a", "list"]), ("split_at_run_start", "two devices"),
                                          ("schema", True), ("plugins", [1])])
def test_a_task_folder_s_record_of_another_type_is_one_line(made, tmp_path, capsys, field, value):
    # A list under "data" raised TypeError (unhashable) from the CLI's first step, before JAX.
    from cljax.checkpoint import recorded_split

    run_dir = copy(made, "finished", tmp_path / "r")
    (run_dir / "run.json").unlink()
    for folder in run_dir.glob("task_*"):
        _edit_metadata(folder, **{field: value})
    assert recorded_split(run_dir) is None
    before = state(run_dir)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"], capsys)
    assert_one_error(rc, err, f"{run_dir / 'run.json'} is missing, and ", "restore run.json from a copy")
    assert state(run_dir) == before


@pytest.mark.parametrize("lr", ["0.1", "0.2"])
def test_a_run_json_changed_by_hand_is_refused_whatever_the_command_says(made, tmp_path, capsys, lr):
    # Edited to lr 0.2, it resumed the run with --lr 0.2 without a word (task 0 trained at 0.1, the
    # rest at 0.2), and a command with the run's own 0.1 was told to pass 0.2.
    run_dir = copy(made, "partial", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["lr"] = 0.2
    (run_dir / "run.json").write_text(json.dumps(record))
    flags = [*FLAGS, "--results-dir", str(tmp_path / "r")]
    flags[flags.index("--lr") + 1] = lr
    before = state(run_dir)
    rc, _, err = run_cli(["run", *flags], capsys)
    assert_one_error(rc, err, f"{run_dir / 'run.json'} records other lr than {run_dir / 'task_000' / 'metadata.json'}, "
                              f"which the run trained with (lr: 0.2 in run.json, 0.1 in the folder): run.json was "
                              f"changed after the run began. Restore it from a copy, delete it and pass --repair")
    assert state(run_dir) == before
    record["config"]["lr"], record["data"] = 0.1, "0" * 64  # the data's identity, edited to other data's
    (run_dir / "run.json").write_text(json.dumps(record))
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert_one_error(rc, err, "records other data (the dataset's contents differ) than")
    (run_dir / "run.json").unlink()  # the fix it names
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r"), "--repair"], capsys)
    assert rc == 0, err


def test_compare_reads_the_settings_a_run_trained_with(made, tmp_path):
    # It pooled and labelled runs by run.json's settings: edited, a run trained at lr 0.1 was "0.2 here".
    from cljax.analysis.compare import method_of
    from cljax.checkpoint import read_run_record
    from cljax.record_rebuild import as_trained

    run_dir = copy(made, "finished", tmp_path / "r")
    as_written = read_run_record(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["lr"] = 0.2
    (run_dir / "run.json").write_text(json.dumps(record))
    edited = read_run_record(run_dir)
    assert method_of(edited) != method_of(as_written)  # what compare pooled by
    assert as_trained(run_dir, edited)["config"]["lr"] == 0.1
    assert method_of(as_trained(run_dir, edited)) == method_of(as_written)


def test_an_older_check_record_without_the_data_still_finds_an_edited_data_identity(made, tmp_path):
    # A verified.json saved before the checks kept "data" answers task_000's fields without it:
    # the data comparison was dropped, and an edited "data" in run.json went unseen.
    from cljax.check_record import checked_metadata
    from cljax.checkpoint import read_run_record
    from cljax.record_rebuild import record_disagreement

    run_dir = copy(made, "finished", tmp_path / "r")
    memo = {}
    checked_metadata(run_dir / "task_000", memo)
    key, fields = memo[run_dir / "task_000" / "metadata.json"]
    memo[run_dir / "task_000" / "metadata.json"] = (key, {k: v for k, v in fields.items() if k != "data"})
    record = {**read_run_record(run_dir), "data": "0" * 64}
    assert "records other data (the dataset's contents differ) than" in record_disagreement(run_dir, record, memo)


def test_another_runs_run_json_in_the_folder_is_named_as_the_odd_one_not_the_task_folders(made, tmp_path, capsys):
    # analyze and compare blamed task_000 ("belongs to run ..."), and initial/, and a resume asked for the other
    # run's settings; the run's own folders all agree, and run.json is the one from elsewhere.
    run_dir = copy(made, "finished", tmp_path / "r")
    record = json.loads((run_dir / "run.json").read_text())
    mine = record["run_id"]
    config = {**record["config"], "use_l2": True}
    (run_dir / "run.json").write_text(json.dumps({**record, "run_id": "another-run", "config": config}))
    before = state(tmp_path)
    line = (f"{run_dir / 'run.json'} records run another-run, and the run's folders task_000 and task_001 and initial "
            f"run {mine}: run.json is another run's. Restore this run's run.json from a copy, or delete it")
    for argv in (["run", *FLAGS, "--results-dir", str(tmp_path / "r")], ["analyze", str(run_dir), "--no-glue"],
                 ["compare", str(run_dir)]):
        rc, _, err = run_cli(argv, capsys)
        assert_one_error(rc, err, line)
    assert state(tmp_path) == before
    (run_dir / "run.json").unlink()  # as the line says: the task folders are read without it, and --repair writes it
    rc, _, err = run_cli(["compare", str(run_dir)], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["run", *FLAGS, "--repair", "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and json.loads((run_dir / "run.json").read_text())["run_id"] == mine, err
