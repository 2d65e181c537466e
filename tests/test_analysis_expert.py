"""The expert's final and best snapshot: one collapsed last snapshot must not flip the plasticity
gap silently."""

import math
import pickle

import numpy as np

from cljax.analysis import analyze_run
from cljax.analysis.cl import plasticity_gap
from tests.test_analysis_driver import E, R_FINAL, write_fake_run


def collapse_one_expert(algo, task=1, repeat=0, snapshots=(0.97, 0.52)):
    """The expert of (repeat, task) reaches 0.97, then falls to 0.52 in its last interval."""
    path = algo / f"task_{task:03d}" / "expert_metrics.pkl"
    expert = pickle.loads(path.read_bytes())
    expert["test_acc"][:, repeat] = snapshots
    path.write_bytes(pickle.dumps(expert, protocol=4))


def test_a_collapsed_expert_is_reported_and_the_best_gap_is_robust(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)  # experts (0.6, E[i]); learner's task-i snapshots (R[i, i] - 0.2, R[i, i])
    collapse_one_expert(algo)
    s = analyze_run(algo, glue=False, make_plots=False)
    diag0 = np.diag(R_FINAL)  # repeat 0; repeat 1 is 0.05 lower, its experts unchanged
    # Gap from the last snapshots, repeat 0: (0.92 - 0.90, 0.52 - 0.95, 0.95 - 0.90): the one
    # collapse turns the repeat's mean negative.
    final0 = np.array([E[0], 0.52, E[2]]) - diag0
    assert final0.mean() < 0
    final1 = E - (diag0 - 0.05)
    assert math.isclose(s["mean_plasticity_gap"]["mean"], (final0.mean() + final1.mean()) / 2)
    # Best snapshots of both: the expert's 0.97 and the learner's R[i, i]; the gap stays positive.
    best0 = np.array([E[0], 0.97, E[2]]) - diag0
    assert math.isclose(s["mean_plasticity_gap_best"]["mean"], (best0.mean() + final1.mean()) / 2)
    assert s["mean_plasticity_gap_best"]["mean"] > 0
    expert = s["expert"]
    assert expert["n_collapsed"] == 1 and expert["n_cells"] == 6
    assert math.isclose(expert["max_drop_from_best"], 0.45, rel_tol=1e-9)
    assert math.isclose(expert["final"]["mean"], ((E[0] + 0.52 + E[2]) / 3 + E.mean()) / 2)
    assert math.isclose(expert["best"]["mean"], ((E[0] + 0.97 + E[2]) / 3 + E.mean()) / 2)
    cl = np.load(algo / "analysis" / "cl.npz")
    np.testing.assert_allclose(cl["expert_acc_best"][0], [E[0], 0.97, E[2]])
    np.testing.assert_allclose(cl["learner_current_acc_best"][0], diag0)
    np.testing.assert_allclose(cl["expert_drop_from_best"][0], [0.0, 0.45, 0.0], atol=1e-12)
    # The plasticity gap of the accuracy matrix itself is the documented E[i] - R[i, i], unchanged.
    np.testing.assert_allclose(cl["final_plasticity_gap"][0], final0, atol=1e-12)


def test_best_gap_compares_best_with_best():
    from cljax.analysis.cl import plasticity_gap_best

    # One task, one repeat, three snapshots: the learner peaks at 0.9, the expert at 0.95.
    learner = [np.array([0.7, 0.9, 0.8]).reshape(3, 1, 1)]
    expert = [np.array([0.95, 0.6, 0.93]).reshape(3, 1)]
    np.testing.assert_allclose(plasticity_gap_best(learner, expert), [[0.05]])
    np.testing.assert_allclose(plasticity_gap(np.array([[[0.8]]]), np.array([[0.93]])), [[0.13]])


def test_a_diverged_expert_is_left_out_and_counted(tmp_path):
    # The expert of (repeat 0, task 1) reaches 0.97, then diverges (kept with --allow-nonfinite):
    # its last snapshot is NaN. The best snapshot is the best finite one, the cell's drop is NaN
    # and left out of the maximum over the cells (a plain max made it null), and counted.
    algo = tmp_path / "run"
    write_fake_run(algo)
    collapse_one_expert(algo, snapshots=(0.97, np.nan))
    collapse_one_expert(algo, task=2, repeat=1, snapshots=(0.9, 0.6))
    s = analyze_run(algo, glue=False, make_plots=False)
    cl = np.load(algo / "analysis" / "cl.npz")
    np.testing.assert_allclose(cl["expert_acc_best"][0], [E[0], 0.97, E[2]])
    assert np.isnan(cl["expert_drop_from_best"][0, 1])
    expert = s["expert"]
    assert math.isclose(expert["max_drop_from_best"], 0.3, rel_tol=1e-9)
    assert expert["n_nonfinite"] == 1 and expert["n_collapsed"] == 1 and expert["n_cells"] == 6
    best0 = np.array([E[0], 0.97, E[2]]) - np.diag(R_FINAL)
    assert math.isclose(s["mean_plasticity_gap_best"]["mean"] * 2 - best0.mean(),
                        np.mean([E[0], E[1], 0.9] - (np.diag(R_FINAL) - 0.05)), rel_tol=1e-9)


def test_the_best_snapshot_of_no_finite_snapshot_is_nan():
    from cljax.analysis.cl import snapshot_accuracy

    acc = np.array([[0.6, np.nan, np.nan], [0.8, np.nan, np.inf]])  # (L, R): repeat 1 all NaN
    np.testing.assert_array_equal(snapshot_accuracy([acc], "best")[:, 0], [0.8, np.nan, np.nan])


def test_a_collapse_is_a_drop_of_more_than_a_tenth():
    from cljax.analysis.analyses import COLLAPSE_DROP, _expert_summary

    # Three repeats of one task: best 0.2 -> last 0.1 (a drop of exactly 0.1, in floating point
    # too: not a collapse), 0.9 -> 0.5 (0.4: a collapse), 0.8 -> 0.8 (none).
    expert = np.array([[0.2, 0.9, 0.8], [0.1, 0.5, 0.8]])  # (L, R)
    assert 0.2 - 0.1 == COLLAPSE_DROP
    learner = np.array([[0.7, 0.7, 0.7], [0.75, 0.6, 0.7]])
    out = _expert_summary([expert], [learner])
    s = out["summary"]["expert"]
    assert (s["n_collapsed"], s["n_cells"], s["n_nonfinite"]) == (1, 3, 0)
    assert math.isclose(s["max_drop_from_best"], 0.4)
    np.testing.assert_allclose(out["arrays"]["plasticity_gap_best"], [[0.2 - 0.75], [0.9 - 0.7], [0.8 - 0.7]])
    # As saved, in float32: 0.6 -> 0.5 read 0.10000002 and counted, 0.9 -> 0.8 read 0.09999996 and
    # did not; exactly 0.1 is not more than 0.1 either way. One image of 200 more is.
    saved = np.array([[0.6, 0.9, 0.6], [0.5, 0.8, 0.495]], np.float32)
    assert np.float64(saved[0, 0]) - np.float64(saved[1, 0]) > COLLAPSE_DROP  # (the rounding this is about)
    s = _expert_summary([saved], [saved])["summary"]["expert"]
    assert s["n_collapsed"] == 1


def test_a_learner_that_diverged_leaves_its_repeat_out_of_the_gap_means_and_is_counted(tmp_path):
    # Repeat 1's learner diverges during task 2 (NaN accuracy, kept with --allow-nonfinite). Its
    # plasticity gap was averaged over tasks 0-1 alone and entered the spread beside repeat 0's mean
    # over tasks 0-2, as if it had not diverged; ACC of the same repeat was already left out.
    algo = tmp_path / "run"
    write_fake_run(algo)
    path = algo / "task_002" / "metrics.pkl"
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][:, 1] = np.nan
    path.write_bytes(pickle.dumps(metrics, protocol=4))
    s = analyze_run(algo, glue=False, make_plots=False)
    diag0 = np.diag(R_FINAL)
    for key, value0 in (("mean_plasticity_gap", (E - diag0).mean()), ("mean_plasticity_gap_best", (E - diag0).mean()),
                        ("mean_normalised_transfer", ((diag0 - E) / (diag0 + E)).mean())):
        assert (s[key]["n"], s[key]["n_nonfinite"]) == (1, 1), key
        assert math.isclose(s[key]["mean"], value0, rel_tol=1e-9), key
    assert (s["average_accuracy"]["n"], s["average_accuracy"]["n_nonfinite"]) == (1, 1)
    assert s["expert"]["final"]["n"] == 2  # the experts did not diverge
    collapse_one_expert(algo, task=0, repeat=0, snapshots=(0.9, np.nan))  # and one expert does
    s = analyze_run(algo, glue=False, make_plots=False)
    assert (s["expert"]["final"]["n"], s["expert"]["final"]["n_nonfinite"]) == (1, 1)
    assert math.isclose(s["expert"]["final"]["mean"], E.mean(), rel_tol=1e-9)
    assert s["expert"]["best"]["n"] == 2  # its best snapshot, 0.9, is finite
    # and the printed lines say why the best figures hold a repeat the last ones leave out
    from cljax.analysis.summary_text import format_summary

    keeps = ("(the best snapshots keep 1 repeat left out of the last: a network that diverged during a task has its "
             "best finite snapshot)")
    lines = format_summary(s).splitlines()
    expert_line = next(line for line in lines if line.startswith("expert accuracy:"))
    gap_line = next(line for line in lines if line.startswith("plasticity gap:"))
    assert keeps + ";" in expert_line and gap_line.endswith(keeps), (expert_line, gap_line)
