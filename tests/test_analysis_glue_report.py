"""What the GLUE analysis reports beside the capacity: one default probe count everywhere, the
solver's convergence and the Monte-Carlo error of the probe average."""

import inspect
import json
import math

import numpy as np

from cljax import cli
from cljax.analysis import analyze_run, glue_runs
from cljax.analysis.glue import glue_analysis, glue_geometry, make_dichotomies
from cljax.analysis.registry import Options
from tests.test_analysis_driver import write_fake_run


def antipodal_pair(seed):
    """Two points c + o and -c + o, six copies each, as in test_analysis_glue (same shapes: one
    compilation): with the task's dichotomy ||v* - t||^2 = min(0, <t, c_hat>)^2 exactly."""
    rng = np.random.default_rng(seed)
    c, o = rng.standard_normal(5), rng.standard_normal(5)
    return np.stack([np.tile(c + o, (6, 1)), np.tile(-c + o, (6, 1))]), c / np.linalg.norm(c)


def test_one_default_probe_count_everywhere(tmp_path, capsys):
    library = inspect.signature(glue_analysis).parameters["n_probes"].default
    assert inspect.signature(analyze_run).parameters["glue_n_probes"].default == library
    assert Options().glue_n_probes == library
    algo = tmp_path / "run"
    write_fake_run(algo)
    assert cli.main(["analyze", str(algo), "--no-plots"]) == 0
    summary = json.loads((algo / "analysis" / "summary.json").read_text())
    assert summary["glue"]["settings"]["n_probes"] == library
    printed = capsys.readouterr().out
    assert f"({library} probes)" in printed and "solver within tolerance on" in printed


def test_capacity_monte_carlo_error_by_hand():
    X, c_hat = antipodal_pair(2)
    n = 100
    t = np.random.default_rng(3).standard_normal((n, 5))
    g = glue_geometry(X, t, np.asarray(make_dichotomies(None, n, 2, "task")))
    d = np.minimum(0.0, t @ c_hat) ** 2  # ||v* - t||^2 per probe
    capacity = 2.0 / d.mean()
    assert math.isclose(float(g["capacity"]), capacity, rel_tol=1e-6)
    hand = capacity * d.std(ddof=1) / math.sqrt(n) / d.mean()
    assert math.isclose(float(g["capacity_mc_error"]), hand, rel_tol=1e-5)


def test_monte_carlo_error_matches_the_spread_over_probe_seeds():
    X, _ = antipodal_pair(2)
    runs = [glue_analysis(X, key=seed, n_probes=100, dichotomies="task") for seed in range(40)]
    caps = np.array([float(g["capacity"]) for g in runs])
    errors = np.array([float(g["capacity_mc_error"]) for g in runs])
    # The delta-method error predicts the spread of the capacity over independent probe draws.
    assert 0.6 < caps.std(ddof=1) / np.median(errors) < 1.6


def test_solver_convergence_is_in_the_summary(tmp_path, monkeypatch):
    algo = tmp_path / "run"
    write_fake_run(algo)  # 3 folders, 2 repeats
    n_probes = 16
    s = analyze_run(algo, glue_n_probes=n_probes, glue_max_points=4, make_plots=False, analyses=("glue",))
    solver = s["glue"]["solver"]
    # One P = 2 grouping per folder and repeat, and the across-task grouping at the last folder.
    assert solver["n_probes_solved"] == (3 * 2 + 2) * n_probes
    assert solver["converged_fraction"] == solver["n_probes_converged"] / solver["n_probes_solved"] == 1.0
    assert s["glue"]["per_task"]["capacity_mc_error"]["last_task"]["mean"] > 0
    assert s["glue"]["across_tasks"]["final"]["capacity_mc_error"]["n"] == 2
    # A solver stopped after one step falls short of the tolerance, and the summary says so.
    monkeypatch.setattr(glue_runs, "MAX_ITER", 1)
    s = analyze_run(algo, glue_n_probes=n_probes, glue_max_points=4, make_plots=False, analyses=("glue",))
    solver = s["glue"]["solver"]
    assert solver["n_probes_converged"] < solver["n_probes_solved"]
    assert solver["converged_fraction"] < 1.0 and solver["min_converged_fraction"] < 1.0
    # the worst grouping is named: the task, the folder after which it was measured, the repeat
    import re

    assert re.fullmatch(r"(task \d after task \d|\d tasks together after task \d), repeat [01]",
                        solver["min_converged_at"]), solver["min_converged_at"]


def test_the_last_task_mean_is_over_the_evaluated_tasks_and_a_diverged_one_is_not_skipped():
    """GLUE's `last_task` (glue_tasks="all"): each repeat's mean over the tasks its last folder
    evaluated. Under --eval-tasks seen/window the other slots are NaN by construction and left
    out; a NaN of an evaluated task (a diverged representation) makes the repeat's mean NaN, as
    under --eval-tasks all, instead of being skipped."""
    evaluated = np.array([False, True, True])
    values = np.array([[np.nan, 1.0, 3.0], [np.nan, np.nan, 3.0]])  # repeat 1: task 1 diverged
    got = glue_runs.mean_over_evaluated(values, evaluated)
    assert got[0] == 2.0 and np.isnan(got[1])
    np.testing.assert_array_equal(glue_runs.mean_over_evaluated(values[:, 1:], [True, True]), [2.0, np.nan])
    assert np.isnan(glue_runs.mean_over_evaluated(values, [False] * 3)).all()


def test_far_above_median_counts_the_cells_past_the_symlog_span():
    """The radius cells that pass the median of the finite positive ones SYMLOG_SPAN times (as a
    near-collapsed manifold gives, D - N_R ~ 0): counted, with the median and the largest; zeros
    (collapsed, R = 0) and NaN (diverged) are not cells of the median."""
    v = np.array([[0.5, 1.0, 2.0], [3.4e7, 0.0, np.nan]])
    far = glue_runs.far_above_median(v)
    assert (far["n_cells"], far["of"], far["median"], far["max"]) == (1, 4, 1.5, 3.4e7)
    assert far["note"].startswith("1 of 4 cells over 1e+04 x the median")
    assert glue_runs.far_above_median(v[:1]) is None  # no long tail: nothing said
    assert glue_runs.far_above_median([[0.0, np.nan]]) is None


def test_a_radius_far_above_its_median_is_flagged_in_the_summary_and_the_terminal(tmp_path, monkeypatch, capsys):
    algo = tmp_path / "run"
    write_fake_run(algo)
    assert cli.main(["analyze", str(algo), "--no-plots", "--glue-probes", "16"]) == 0
    summary = json.loads((algo / "analysis" / "summary.json").read_text())
    assert "far_above_median" not in summary["glue"]["per_task"]["radius"]
    assert "GLUE radius over the run" not in capsys.readouterr().out
    radius = np.load(algo / "analysis" / "glue.npz")["per_task_radius"]  # (folders, R): the current task's
    median = np.median(radius[radius > 0])
    span = 1.2  # the fake run's radii are within a factor 2 of each other: a smaller span makes a tail
    monkeypatch.setattr(glue_runs.plots, "SYMLOG_SPAN", span)
    assert cli.main(["analyze", str(algo), "--no-plots", "--glue-probes", "16"]) == 0
    far = json.loads((algo / "analysis" / "summary.json").read_text())["glue"]["per_task"]["radius"]["far_above_median"]
    assert far["n_cells"] == int((radius > span * median).sum()) >= 1 and far["of"] == radius.size
    assert math.isclose(far["median"], median) and math.isclose(far["max"], radius.max())
    assert f"GLUE radius over the run: {far['note']}" in capsys.readouterr().out
