"""cljax.checkpoint on its own: the run record's kinds, the learner's leaves against the
config's, and the atomic write's clean-up on a failed write. Through the CLI:
tests/test_run_folder_inputs.py and tests/test_reliability.py."""

import errno
import json

import jax
import numpy as np
import pytest

from cljax.checkpoint import CHECKPOINT, RUN_RECORD, load_learner, read_run_record, save_learner, write_run_record
from cljax.errors import CljaxError


@pytest.mark.parametrize("record, problem", [({}, "is not a run record"), ({"config": 5}, "is not a run record"),
                                             ({"config": {}, "schema": True}, "is damaged"),
                                             ({"config": {}, "run_id": 7}, "is damaged"),
                                             ({"config": {}, "schema": 5}, "it has no \"run_id\""),
                                             ({"config": {}, "schema": 3, "run_id": "x", "split": {}},
                                              "it has no \"data\""),
                                             ({"config": {}, "schema": 5, "run_id": "x", "data": "d", "split": None},
                                              "it has no \"split\""),
                                             ({"config": {}, "schema": 99, "run_id": "x"}, "written by a newer cljax"),
                                             ('{"config": {"lr": 0.1}, "sch', "is not valid JSON")])  # truncated
def test_a_record_without_a_config_object_or_with_a_field_of_another_kind_is_refused(tmp_path, record, problem):
    """A JSON bool is an int to Python: a "schema": true is damage, not schema 1."""
    (tmp_path / RUN_RECORD).write_text(record if isinstance(record, str) else json.dumps(record))
    with pytest.raises(CljaxError, match=problem) as exc:
        read_run_record(tmp_path)
    assert "\n" not in str(exc.value) and "--overwrite" in str(exc.value)
    # damage, not a newer cljax's record: --repair writes it again from the task folders once it is deleted
    newer = problem == "written by a newer cljax"
    assert ("delete it and run the run's `cljax run` command with --repair" in str(exc.value)) != newer


def test_a_good_record_reads_back(tmp_path):
    write_run_record(tmp_path, {"lr": 0.1}, 3, run_id="abc", data="d", split={"backend": "cpu"})
    record = read_run_record(tmp_path)
    assert record["config"] == {"lr": 0.1} and record["schema"] == 3 and record["run_id"] == "abc"
    assert record["data"] == "d" and record["split"] == {"backend": "cpu"}
    # a record of schema 2 may come from before run ids, data hashes and splits: it reads back without them
    (tmp_path / RUN_RECORD).write_text(json.dumps({"config": {"lr": 0.1}, "schema": 2}))
    assert read_run_record(tmp_path)["run_id"] is None


def test_a_checkpoint_with_a_leaf_of_another_shape_is_refused(tmp_path):
    """Same number of leaves, one of another shape (another --mlp-hidden, say): one line, not a
    state that crashes later in the task program."""
    state = {"w": np.zeros((2, 3), np.float32), "k": jax.random.key(1)}
    save_learner(tmp_path, state, 2)
    with pytest.raises(CljaxError, match="does not match this config's learner state"):
        load_learner(tmp_path, {"w": np.zeros((2, 4), np.float32), "k": jax.random.key(1)})
    restored, next_task = load_learner(tmp_path, state)
    assert next_task == 2 and restored["w"].shape == (2, 3)


def test_a_failed_write_leaves_the_old_file_and_no_partial_copy(tmp_path, monkeypatch):
    """A full disk during the checkpoint's write: the previous checkpoint stays, byte for byte,
    and the half-written temporary copy is removed."""
    save_learner(tmp_path, {"w": np.ones(3, np.float32)}, 1)
    before = (tmp_path / CHECKPOINT).read_bytes()

    def full(f, **arrays):  # part of the file, then the disk is full
        f.write(b"PK" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError):
        save_learner(tmp_path, {"w": np.zeros(3, np.float32)}, 2)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
