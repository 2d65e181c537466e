"""The spread over repeats (sample std, one NaN rule with a count) and the auc variant from the
task start, against hand computations."""

import json
import math

import numpy as np
import pytest

from cljax.analysis import analyze_run, cl_analysis
from cljax.analysis.spread import over_tasks
from cljax.analysis.cl import accuracy_matrix, cl_metrics_from_matrix, task_accuracy_row
from cljax.analysis.plots import _mean_std
from tests.test_analysis_driver import R_FINAL, write_fake_run

# Four repeats whose average accuracy is 0.60, 0.70, 0.80, 0.95 (one task, R[0, 0] = ACC).
ACC4 = np.array([0.60, 0.70, 0.80, 0.95])
# By hand: mean 0.7625; squared deviations 0.02640625, 0.00390625, 0.00140625, 0.03515625,
# sum 0.066875; sample std sqrt(0.066875 / 3) = 0.149304; population std sqrt(0.066875 / 4) = 0.129302.
HAND_MEAN, HAND_SAMPLE_STD = 0.7625, math.sqrt(0.066875 / 3)


def test_cl_summary_uses_the_sample_std():
    R = ACC4.reshape(4, 1, 1)
    s = cl_metrics_from_matrix(R, np.full((4, 1), 0.9), np.full((4, 1), 0.5))["summary"]["average_accuracy"]
    assert math.isclose(s["mean"], HAND_MEAN)
    assert math.isclose(s["std"], HAND_SAMPLE_STD, rel_tol=1e-12)
    assert not math.isclose(s["std"], math.sqrt(0.066875 / 4), rel_tol=1e-3)
    assert (s["n"], s["n_nonfinite"]) == (4, 0)


def test_one_nan_rule_everywhere_with_a_count():
    from cljax.analysis.spread import spread

    # Repeat 2 is undefined: every summary leaves it out and says so.
    x = np.array([0.60, 0.70, np.nan, 0.95])
    kept = np.array([0.60, 0.70, 0.95])
    hand = {"mean": kept.mean(), "std": kept.std(ddof=1), "n": 3, "n_nonfinite": 1}
    R = x.reshape(4, 1, 1)
    cl = cl_metrics_from_matrix(R, np.full((4, 1), 0.9), np.full((4, 1), 0.5))["summary"]["average_accuracy"]
    per_folder = over_tasks(np.stack([ACC4, x]))  # (n = 2 folders, R = 4)
    for got in (cl, per_folder["last_task"], spread(x)):
        assert got["n"] == hand["n"] and got["n_nonfinite"] == hand["n_nonfinite"]
        assert math.isclose(got["mean"], hand["mean"]) and math.isclose(got["std"], hand["std"])
    assert per_folder["n_nonfinite"] == 1
    # +-inf is left out the same way; one finite value has a mean but no spread.
    assert spread([np.inf, 0.5, -np.inf])["n_nonfinite"] == 2
    one = spread([0.5, np.nan])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and one["n"] == 1
    # The plots' bands follow the same rule.
    mean, std = _mean_std(np.array([[0.0, 1.0], [1.0, np.nan], [2.0, 3.0]]))
    np.testing.assert_allclose(mean, [1.0, 2.0])
    np.testing.assert_allclose(std, [1.0, math.sqrt(2.0)])


def test_undefined_metrics_say_why_and_count_no_repeat_as_left_out():
    # T = 1: BWT has no terms in any repeat. That is no repeat's divergence: n_nonfinite 0 (it
    # counted all 3, as a run whose every repeat diverged would read), and "undefined" says why.
    out = cl_analysis([np.full((2, 3, 1), 0.8)], [np.full((2, 3), 0.9)], np.full((3, 1), 0.5))
    for key in ("bwt", "fwt", "forgetting"):
        got = out["summary"][key]
        assert math.isnan(got["mean"]) and got["n"] == 0 and got["n_nonfinite"] == 0, key
        assert got["undefined"] == "it needs 2 tasks or more: one task folder"
    assert "undefined" not in out["summary"]["average_accuracy"]


def test_auc_integrates_from_the_task_start():
    # L = 3 snapshots at steps 10, 35, 60 (a 10-step remainder first); start 0.5, then 0.7, 0.9, 0.9.
    acc = np.array([0.7, 0.9, 0.9]).reshape(3, 1, 1)
    start = np.full((1, 1), 0.5)
    # Trapezoid: (10 (0.5 + 0.7) / 2 + 25 (0.7 + 0.9) / 2 + 25 (0.9 + 0.9) / 2) / 60 = 48.5 / 60.
    row = task_accuracy_row(acc, "auc", start, [10, 35, 60])
    assert math.isclose(float(row[0, 0]), 48.5 / 60)
    # Not the mean of the snapshots (which leaves the task start out): 2.5 / 3.
    assert not math.isclose(float(row[0, 0]), 2.5 / 3, rel_tol=1e-3)
    with pytest.raises(ValueError, match="task-start"):
        accuracy_matrix([acc], "auc")


def test_driver_summary_spread_and_auc_on_a_fake_tree(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)
    analyze_run(algo, glue=False, make_plots=False)
    s = json.loads((algo / "analysis" / "summary.json").read_text())
    assert "ddof = 1" in s["std"]
    # Two repeats a and a - 0.05: sample std 0.05 / sqrt(2).
    assert math.isclose(s["average_accuracy"]["std"], 0.05 / math.sqrt(2)) and s["average_accuracy"]["n"] == 2
    assert s["cl"]["auc"]["bwt"]["n_nonfinite"] == 0
    rows = np.load(algo / "analysis" / "cl.npz")["accuracy_rows_auc"]  # (R, n, T)
    # Folder 1, repeat 0: snapshots (R[1] - 0.2, R[1]) at steps 5, 10 from start R[0]:
    # (5 (R0 + R1 - 0.2) / 2 + 5 (2 R1 - 0.2) / 2) / 10 = (R0 + 3 R1 - 0.4) / 4.
    np.testing.assert_allclose(rows[0, 1], (R_FINAL[0] + 3 * R_FINAL[1] - 0.4) / 4)


def test_a_diverged_repeat_is_left_out_and_counted_by_every_analysis(tmp_path):
    # One NaN in repeat 1's last folder (a network that diverged there, as --allow-nonfinite
    # keeps): the SVD-based metrics, GLUE and the probe give NaN for it, not an exception, a 0 or
    # a 0.5, and the summaries leave it out and count it.
    algo = tmp_path / "run"
    write_fake_run(algo)
    path = algo / "task_002" / "representations.npy"
    reps = np.load(path)
    reps[:, 1, 2, 0, 0] = np.nan  # (L, R, T, S, H): repeat 1, task 2 (the current one)
    np.save(path, reps)
    analyze_run(algo, glue_n_probes=16, glue_max_points=4, glue_across_every=1, make_plots=False)
    s = json.loads((algo / "analysis" / "summary.json").read_text())
    for group in ("current_task_last_snapshot", "all_tasks_last_snapshot"):
        for metric in ("effective_rank", "srank", "dormant_ratio", "active_fraction"):
            last = s["plasticity"][group][metric]["last_task"]
            assert (last["n"], last["n_nonfinite"]) == (1, 1), (group, metric)
    assert s["glue"]["per_task"]["capacity"]["last_task"]["n_nonfinite"] == 1
    solver = s["glue"]["solver"]
    assert solver["n_groupings_not_finite"] == 2  # the current task's grouping and the across-task one
    assert 0 < solver["max_residual"] <= solver["tol"] and solver["converged_fraction"] == 1.0
    assert s["probe"]["current_task"]["probe_acc"]["n_nonfinite"] == 1
    erank = np.load(algo / "analysis" / "plasticity.npz")["current_effective_rank"]  # (n, L, R)
    assert np.isnan(erank[-1, :, 1]).all() and np.isfinite(erank[-1, :, 0]).all() and np.isfinite(erank[:-1]).all()


def test_a_dead_network_has_no_glue_capacity_and_is_counted(tmp_path):
    # Repeat 1's last folder: every representation 0 (no unit active on any image, a dead
    # network's). No hyperplane constraint binds, so v* = t and the capacity would read infinite:
    # GLUE leaves such a grouping out (NaN) and counts it, as it does a non-finite one.
    from cljax.analysis.glue import unsolvable

    algo = tmp_path / "run"
    write_fake_run(algo)
    path = algo / "task_002" / "representations.npy"
    reps = np.load(path)
    reps[:, 1] = 0.0  # (L, R, T, S, H): repeat 1, every task and image
    np.save(path, reps)
    analyze_run(algo, glue_n_probes=16, glue_max_points=4, glue_across_every=1, make_plots=False)
    s = json.loads((algo / "analysis" / "summary.json").read_text())
    solver = s["glue"]["solver"]
    assert (solver["n_groupings_constant"], solver["n_groupings_not_finite"]) == (2, 0)  # current task, across tasks
    last = s["glue"]["per_task"]["capacity"]["last_task"]
    assert last["n_nonfinite"] == 1 and np.isfinite(last["mean"])
    # every image at the same point is the same case after centering; a spread of one part in 1e9 is not
    same = np.broadcast_to(np.arange(1.0, 5.0), (2, 3, 2, 5, 4)).copy()
    assert unsolvable(same)[1].all() and not unsolvable(same, center=False)[1].any()
    same[0, 0, 0, 0, 0] *= 1 + 1e-9
    assert unsolvable(same)[1].tolist() == [[False, True, True], [True, True, True]]


def test_infinities_are_counted_over_folders_and_written_as_null():
    from cljax.analysis.spread import jsonable

    values = np.array([[0.5, np.inf], [-np.inf, 0.3], [0.2, np.nan]])  # (n = 3 folders, R = 2)
    s = over_tasks(values)
    assert s["n_nonfinite"] == 3
    assert s["per_task_mean"] == [0.5, 0.3, 0.2] and (s["last_task"]["n"], s["last_task"]["n_nonfinite"]) == (1, 1)
    out = jsonable({"a": np.inf, "b": [np.float32(-np.inf), np.nan, 1.5], "c": np.array([np.inf, 2.0])})
    assert out == {"a": None, "b": [None, None, 1.5], "c": [None, 2.0]}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_readable_json_is_the_same_value_with_a_list_of_numbers_on_one_line():
    import json

    import pytest

    from cljax.analysis.spread import readable_json

    obj = {"a": {"per_task_mean": [0.5, None, 1, True, "x"] * 600, "empty": [], "nested": [[1, 2], {"k": []}, 3]},
           "n": 3, "s": "caf\u00e9", "d": {}, "rows": [{"task": 0}, {"task": 1}]}
    text = readable_json(obj)
    assert json.loads(text) == obj
    assert len(text.splitlines()) == 24 < len(json.dumps(obj, indent=1).splitlines()) - 2990  # 3000 on one line
    assert '  "per_task_mean": [0.5, null, 1, true, "x", 0.5,' in text and '"empty": []' in text
    with pytest.raises(ValueError):
        readable_json({"x": [float("nan")]})  # strict JSON, as json.dumps(allow_nan=False)
