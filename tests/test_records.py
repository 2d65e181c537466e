"""What one task leaves behind (cljax/records.py), from tiny hand-made host arrays: which
snapshot goes where in the results format, and the run table's row."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from cljax import records
from cljax.records import summary_row, task_arrays

L, R, K, S, H = 2, 3, 2, 4, 5


def _one_task():
    """Arrays of one task whose every value says where it came from: snapshot l (0: the task's
    start), repeat r, slot k."""
    config = SimpleNamespace(n_logs=L, n_repeats=R, n_subsamples=S, log_steps=[5, 10])
    snap = np.arange(L + 1, dtype=np.float32)[:, None, None]
    acc = np.broadcast_to(snap + 0.1 * np.arange(R)[:, None] + 0.01 * np.arange(K), (L + 1, R, K)).copy()
    reps = np.broadcast_to(snap[..., None, None], (L + 1, R, K, S, H)).astype(np.float32)
    w = np.arange(L + 1, dtype=np.float32)[:, None, None] * np.ones((L + 1, R, 2), np.float32)
    trace = {"train_acc": np.ones((L, R)), "train_loss": np.zeros((L, R)), "model_state": {},
             "weights": {"dense": {"kernel": w}},
             **{f"expert_{k}": np.full((L, R), i, np.float32) for i, k in enumerate(records.EXPERT_KEYS)}}
    return config, trace, acc, acc + 100, reps


def test_the_task_start_evaluation_is_kept_apart_from_the_snapshots():
    arrays, shapes = task_arrays(*_one_task())
    m = arrays["metrics"]
    config, trace, acc, loss, reps = _one_task()
    np.testing.assert_array_equal(m["test_acc"], acc[1:])  # snapshots 1..L, not the start
    np.testing.assert_array_equal(m["test_loss"], loss[1:])
    np.testing.assert_array_equal(m["start_test_acc"], acc[0])
    np.testing.assert_array_equal(m["start_test_loss"], loss[0])
    np.testing.assert_array_equal(arrays["representations"][:, 0, 0, 0, 0], [1, 2])
    np.testing.assert_array_equal(arrays["weights"]["dense/kernel"][:, 0], [[1, 1], [2, 2]])
    np.testing.assert_array_equal(arrays["start_weights"]["dense/kernel"], np.zeros((R, 2)))  # snapshot 0
    assert arrays["model_state"] is None and "model_state" not in shapes
    assert m["log_steps"].dtype == np.int64 and m["log_steps"].tolist() == [5, 10]
    assert {k: float(v[0, 0]) for k, v in arrays["expert_metrics"].items()} == {
        "train_loss": 0.0, "train_acc": 1.0, "test_loss": 2.0, "test_acc": 3.0}
    assert shapes["representations"] == [L, R, K, S, H] and shapes["start_weights"] == [R]
    assert shapes["weights"] == [L, R] and shapes["metrics.start_test_acc"] == [R, K]


def test_the_saved_labels_alternate_from_the_first_class_of_a_pair():
    # Test sets are interleaved A, B, A, B: the first class of a pair is label 0 (metadata's label_of).
    arrays, shapes = task_arrays(*_one_task())
    labels = arrays["binary_labels"]
    assert labels.dtype == np.uint8 and shapes["binary_labels"] == [L, R, K, S]
    assert (labels == np.array([0, 1, 0, 1], np.uint8)).all()


def test_an_empty_slot_of_a_window_is_not_counted_as_a_diverged_repeat():
    # --eval-tasks window:3 at task 1: slot 2 holds no task yet (id -1, NaN by design).
    acc = np.array([[[0.6, 0.8, np.nan], [0.7, 0.9, np.nan]]])
    row = summary_row(1, {"metrics": {"test_acc": acc}, "expert_metrics": {"test_acc": np.array([[0.5, 0.5]])}},
                      [0, 1, -1])
    assert row["n_nonfinite"] == 0 and row["n_earlier"] == 1
    assert row["acc_current"] == pytest.approx(0.85) and row["acc_earlier"] == pytest.approx(0.65)


def test_the_run_tables_earlier_mean_leaves_out_a_repeat_not_its_cells():
    # Repeat 0 has one non-finite earlier task: its mean over the earlier tasks is not finite, so
    # the repeat is left out whole (0.8), not averaged in cell by cell ((0.6 + 0.8 + 0.8) / 3).
    acc = np.array([[[np.nan, 0.6, 0.9], [0.8, 0.8, 0.7]]])
    row = summary_row(2, {"metrics": {"test_acc": acc}, "expert_metrics": {"test_acc": np.array([[0.5, 0.5]])}},
                      [0, 1, 2])
    assert row["acc_earlier"] == pytest.approx(0.8) and row["n_nonfinite"] == 1
    assert row["acc_current"] == pytest.approx(0.8)


def _probed(monkeypatch, n_earlier, S=S):
    """The (slot id, snapshot) pairs _probe_earlier hands the probe, and what it returns."""
    import cljax.analysis.probe as probe

    seen = []

    def fake_probe(reps, labels):  # reps (R, slots, S, H): each value is 1000 * snapshot + slot
        seen.append(np.asarray(reps)[0, :, 0, 0])
        return np.ones(reps.shape[:2])

    monkeypatch.setattr(probe, "probe_accuracy", fake_probe)
    value = 1000 * np.arange(2.0)[:, None, None, None, None] + np.arange(n_earlier + 1.0)[None, None, :, None, None]
    reps = np.broadcast_to(value, (2, 1, n_earlier + 1, S, 2))
    labels = np.zeros((2, 1, n_earlier + 1, S), np.uint8)
    got = records._probe_earlier({"representations": reps, "binary_labels": labels}, np.arange(n_earlier))
    return got, (seen[0] if seen else None)


def test_the_probe_reads_the_last_snapshot_of_every_earlier_task_when_they_are_few(monkeypatch):
    got, seen = _probed(monkeypatch, 5)
    assert got == 1.0 and seen.tolist() == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]


def test_the_probe_spreads_its_bounded_tasks_over_all_earlier_tasks(monkeypatch):
    # 40 earlier tasks, PROBE_TASKS (32) probed: the first and the last earlier task among them,
    # the rest evenly between, not the first 32 (which would never see the recent tasks).
    _, seen = _probed(monkeypatch, 40)
    slots = (seen - 1000).astype(int)
    assert len(slots) == records.PROBE_TASKS and slots[0] == 0 and slots[-1] == 39
    assert np.all(np.diff(slots) >= 1) and np.diff(slots).max() <= 2


def test_the_probe_column_leaves_out_a_repeat_with_a_non_finite_earlier_task(monkeypatch):
    import cljax.analysis.probe as probe

    monkeypatch.setattr(probe, "probe_accuracy", lambda reps, labels: np.array([[np.nan, 0.6], [0.8, 0.8]]))
    got = records._probe_earlier({"representations": np.zeros((1, 2, 3, S, 2)),
                                  "binary_labels": np.zeros((1, 2, 3, S), np.uint8)}, np.arange(2))
    assert got == pytest.approx(0.8)  # repeat 0 left out whole; cell by cell it read 0.733


def test_the_probe_needs_four_saved_images(monkeypatch):
    for s, probed in ((2, False), (3, False), (4, True)):
        got, seen = _probed(monkeypatch, 2, S=s)
        assert (seen is not None) == probed and (got == 1.0 if probed else math.isnan(got))


def test_the_run_table_gives_the_spread_over_the_repeats_by_the_analysiss_rule():
    # Three repeats, one diverged: the learner's and the expert's accuracy on the task as mean
    # +- sample std (ddof 1) of the finite repeats, as summary.json's; one finite repeat has no
    # spread (NaN, null in metadata.json), and the table then shows the mean alone.
    from pathlib import Path

    from cljax.run_result import RunResult, format_summary

    acc = np.array([[[0.6, 0.5], [0.7, 0.9], [np.nan, 0.7]]])  # (L, R, K): task 1 is slot 1
    row = summary_row(1, {"metrics": {"test_acc": acc}, "expert_metrics": {"test_acc": np.array([[0.8, np.nan, 0.6]])}},
                      [0, 1])
    assert row["acc_current"] == pytest.approx(0.7) and row["acc_current_std"] == pytest.approx(0.2)
    assert row["expert_acc"] == pytest.approx(0.7)
    assert row["expert_acc_std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    one = summary_row(0, {"metrics": {"test_acc": acc[:, :1]}, "expert_metrics": {"test_acc": np.array([[0.8]])}},
                      [0, 1])
    assert math.isnan(one["acc_current_std"]) and math.isnan(one["expert_acc_std"])
    assert records.stored_row(one)["acc_current_std"] is None
    again = records.row_of_stored(records.stored_row(one))
    assert again["acc_current"] == 0.6 and math.isnan(again["acc_current_std"]) and math.isnan(again["expert_acc_std"])
    table = format_summary(RunResult(algo_dir=Path("x"), task_class_pairs=np.zeros((2, 3, 2)),
                                     summary=[one, row])).splitlines()
    assert table[0].split("  ")[1] == "learner_acc_on_it +- std" and table[0].endswith("expert_acc +- std")
    assert table[2].split() == ["0", "0.600", "0.800"]
    assert table[3].split() == ["1", "0.700", "+-", "0.200", "0.650", "0.700", "+-", "0.141"]
    assert all(len(line) == len(table[1]) for line in table[2:4])  # the columns line up under the header


def test_a_row_kept_before_the_spread_was_is_computed_again_from_the_arrays():
    # A finished run's table is read from its folders' metadata.json; a row kept without the
    # stds is not taken, so the finished run's table shows them too.
    kept = {"task": 0, "acc_current": 0.9, "acc_earlier": None, "expert_acc": 0.8, "probe_earlier": None}
    assert records.row_of_stored(kept) is None
    assert records.row_of_stored({**kept, "acc_current_std": 0.1, "expert_acc_std": None})["expert_acc_std"] != 0


def test_a_divergence_is_warned_at_the_task_it_happens_not_while_it_lasts():
    # The rows of five tasks: repeat 1's learner diverges at task 1 and stays so; repeat 0's expert
    # diverges at tasks 1 and 2, is finite at task 3 and diverges again at task 4; empty slots
    # (-1) are not divergences.
    def row(t, learner_acc, expert_acc, ids):
        acc = np.asarray(learner_acc, np.float64)[None]  # the last snapshot only is read
        arrays = {"metrics": {"test_acc": acc}, "expert_metrics": {"test_acc": np.asarray([expert_acc])},
                  "representations": np.zeros((1, 2, len(ids), 4, 1)), "binary_labels": np.zeros((1, 2, len(ids), 4))}
        return summary_row(t, arrays, ids)

    nan = math.nan
    rows = [row(0, [[0.9, nan], [0.8, nan]], [0.9, 0.9], [0, -1]),
            row(1, [[0.9, 0.7], [nan, nan]], [nan, 0.9], [0, 1]),
            row(2, [[0.9, 0.7], [nan, nan]], [nan, 0.9], [1, 2]),
            row(3, [[0.9, 0.7], [nan, nan]], [0.9, 0.9], [2, 3]),
            row(4, [[0.9, 0.7], [nan, nan]], [nan, 0.9], [3, 4])]
    assert [r["nonfinite_repeats"] for r in rows] == [{"learner": [], "expert": []}] + [
        {"learner": [1], "expert": [0]}] * 2 + [{"learner": [1], "expert": []}, {"learner": [1], "expert": [0]}]
    assert [r["n_nonfinite"] for r in rows] == [0, 2, 2, 1, 2]
    said = [records.divergence_warning(r, None if t == 0 else rows[t - 1]["nonfinite_repeats"])
            for t, r in enumerate(rows)]
    assert said[0] is None and said[2] is None and said[3] is None
    assert said[1].startswith("warning: task 1: the learner in repeat 1 and the expert in repeat 0 diverged ")
    assert said[4].startswith("warning: task 4: the expert in repeat 0 diverged ")
