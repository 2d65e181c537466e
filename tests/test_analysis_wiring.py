"""Each number of an analysis reads the data it names: the current task's slot, the last
snapshot, the expert's last snapshot, the learner's best one, each metric under its own name.
The shared fake tree is regular (rising snapshots, every slot alike in kind), so these checks
recompute from its files, after making the choices tell apart."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from cljax.analysis import analyze_run
from cljax.analysis import plasticine
from cljax.analysis.spread import over_tasks
from tests.test_analysis_driver import R_FINAL, RR, T, write_fake_run


# Bias of folder i at its snapshots 0 and 1 (4 of the 28 parameters; the kernel is 0): (i + 1) (l + 2).
BIAS = np.array([[2.0, 3.0], [4.0, 6.0], [6.0, 9.0]])


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    algo = tmp_path_factory.mktemp("wiring") / "run"
    write_fake_run(algo)
    # The learner's current task peaks before its last snapshot in task 1, repeat 0.
    path = algo / "task_001" / "metrics.pkl"
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][0, 0, 1] = 0.99
    path.write_bytes(pickle.dumps(metrics, protocol=4))
    # The weights move within each folder: every bias is BIAS[i, l] at snapshot l of folder i (the
    # kernel stays 0), so the first and the last snapshot of a folder tell apart.
    for i in range(T):
        path = algo / f"task_{i:03d}" / "weights.npy"
        weights = np.load(path)
        weights["dense1/bias"] = BIAS[i][:, None, None]
        np.save(path, weights)
    summary = analyze_run(algo, glue=False, make_plots=False)
    return algo, summary, np.load(algo / "analysis" / "cl.npz"), np.load(algo / "analysis" / "plasticity.npz")


def test_the_learners_best_is_its_best_snapshot_and_the_auc_gap_reads_the_experts_last(analysed):
    _, _, cl, _ = analysed
    best = np.diag(R_FINAL).copy()
    best[1] = 0.99
    np.testing.assert_allclose(cl["learner_current_acc_best"][0], best)
    # Both variants compare with the expert's last snapshot (docs/metrics.md); its mean is kept apart.
    np.testing.assert_array_equal(cl["auc_expert_accuracy"], cl["expert_acc_final"])
    assert not np.allclose(cl["expert_acc_auc"], cl["expert_acc_final"])  # the choice matters here


def test_plasticity_metrics_read_the_current_slot_and_the_last_snapshot(analysed):
    algo, _, _, pl = analysed
    for i in range(T):
        reps = np.load(algo / f"task_{i:03d}" / "representations.npy")  # (L, R, T, S, H)
        current = plasticine.representation_metrics(reps[:, :, i])
        np.testing.assert_allclose(pl["current_effective_rank"][i], current["effective_rank"], rtol=1e-6)
        last = [plasticine.representation_metrics(reps[-1, r].reshape(-1, reps.shape[-1])) for r in range(reps.shape[1])]
        np.testing.assert_allclose(pl["all_tasks_effective_rank"][i], [m["effective_rank"] for m in last], rtol=1e-6)
        # the choices differ on this data: another slot or snapshot would give other numbers
        assert not np.allclose(current["effective_rank"],
                               plasticine.representation_metrics(reps[:, :, (i + 1) % T])["effective_rank"])


def test_each_representation_metric_is_the_function_of_its_name():
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(size=(3, 40, 6)) * np.array([1.0, 5.0, 0.1, 2.0, 0.0, 3.0]))  # unequal units, one dead
    metrics = plasticine.representation_metrics(h)
    named = {k: getattr(plasticine, k) for k in metrics if callable(getattr(plasticine, k, None))}
    assert {"feature_variance", "feature_variance_across_units", "effective_rank", "stable_rank"} <= set(named)
    for k, fn in named.items():
        np.testing.assert_allclose(metrics[k], fn(h), rtol=1e-12, err_msg=k)
    assert not np.allclose(metrics["feature_variance"], metrics["feature_variance_across_units"])
    assert metrics["dead_ratio"].tolist() == [1 / 6] * 3


def test_over_tasks_gives_the_mean_over_repeats_of_every_folder():
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, np.nan]])  # (n folders, R)
    s = over_tasks(values)
    assert s["per_task_mean"] == [1.5, 3.5, 5.0]  # non-finite values left out, as everywhere
    assert s["last_task"]["mean"] == 5.0 and s["n_nonfinite"] == 1


def test_weight_change_references_without_initial_or_start_weights(analysed):
    # The fake tree has neither initial/weights.npy nor start_weights.npy: the references are
    # task_000's first snapshot (init) and the previous folder's last snapshot (task start), and
    # the summary reads each folder's last snapshot. Every bias differs by d from its reference:
    # RMS over the 28 parameters d sqrt(4 / 28).
    _, summary, _, pl = analysed
    unit = math.sqrt(4 / 28)
    init = BIAS - BIAS[0, 0]  # (folder, snapshot)
    task_start = BIAS - np.array([BIAS[0, 0], BIAS[0, -1], BIAS[1, -1]])[:, None]
    for key, d in (("weight_change_init", init), ("weight_change_task_start", task_start),
                   ("weight_magnitude", BIAS)):
        np.testing.assert_allclose(pl[key], np.repeat(d[:, :, None], RR, axis=2) * unit, rtol=1e-6, err_msg=key)
        s = summary["plasticity"]["current_task_last_snapshot"][key]
        np.testing.assert_allclose(s["per_task_mean"], d[:, -1] * unit, rtol=1e-6, err_msg=key)
        assert math.isclose(s["last_task"]["mean"], d[-1, -1] * unit, rel_tol=1e-6)
    assert summary["plasticity"]["weight_change_reference"]["task_start"] == [
        "last snapshot of the previous task folder (no start_weights.npy)"]


def test_the_plasticity_summary_reads_each_folders_last_snapshot(analysed):
    _, summary, _, pl = analysed
    for key in ("effective_rank", "feature_norm", "stable_rank"):
        values = pl[f"current_{key}"]  # (n, L, R)
        assert not np.allclose(values[:, -1], values[:, 0])  # the choice matters here
        s = summary["plasticity"]["current_task_last_snapshot"][key]
        np.testing.assert_allclose(s["per_task_mean"], values[:, -1].mean(axis=1), rtol=1e-12, err_msg=key)
        assert math.isclose(s["last_task"]["std"], float(np.std(values[-1, -1], ddof=1)), rel_tol=1e-9)
        all_tasks = summary["plasticity"]["all_tasks_last_snapshot"][key]
        np.testing.assert_allclose(all_tasks["per_task_mean"], pl[f"all_tasks_{key}"].mean(axis=1), rtol=1e-12)


def test_curves_shift_each_folders_steps_by_the_last_step_of_those_before(analysed):
    # log_steps (5, 10) in every folder: folder i's snapshots at 10 i + 5 and 10 i + 10.
    algo, _, _, _ = analysed
    curves = np.load(algo / "analysis" / "curves.npz")
    np.testing.assert_array_equal(curves["steps"], [5, 10, 15, 20, 25, 30])
    np.testing.assert_array_equal(curves["task_boundaries"], [0, 10, 20])
    np.testing.assert_array_equal(curves["task_ids"], np.arange(T))
    acc = [pickle.loads((algo / f"task_{i:03d}" / "metrics.pkl").read_bytes())["test_acc"] for i in range(T)]
    np.testing.assert_allclose(curves["current_task_acc"], np.concatenate([a[:, :, i] for i, a in enumerate(acc)]),
                               rtol=1e-6)
    np.testing.assert_allclose(curves["test_acc"], np.concatenate(acc), rtol=1e-6)


def test_the_dormant_threshold_reaches_the_plasticity_analysis(tmp_path, monkeypatch):
    import cljax.analysis.plots as plots

    algo = tmp_path / "run"
    write_fake_run(algo)
    titles, original = {}, plots.plot_plasticity_over_tasks

    def record(metrics, path, title=None, x=None, notes=None):  # the panels' notes, as the plot gets them
        titles.update(notes)
        return original(metrics, path, title=title, x=x, notes=notes)

    monkeypatch.setattr(plots, "plot_plasticity_over_tasks", record)
    summary = analyze_run(algo, analyses=("plasticity",), tau=0.8)
    assert summary["plasticity"]["tau"] == 0.8
    # srank and the other ranks are capped by the saved images: said with the figures and on the plot
    S, H = np.load(algo / "task_000" / "representations.npy").shape[-2:]
    assert summary["plasticity"]["current_task_images"] == {"saved_per_task": S, "units": H, "rank_at_most": min(S, H)}
    assert titles["srank"] == f"(at most {min(S, H)}: {S} images, {H} units)" and titles["dormant_ratio"] == "(tau 0.8)"
    assert titles["weight_magnitude"] == "(RMS of all the weights)"
    pl = np.load(algo / "analysis" / "plasticity.npz")
    reps = [np.load(algo / f"task_{i:03d}" / "representations.npy")[:, :, i] for i in range(T)]  # (L, R, S, H)
    wide = np.stack([plasticine.dormant_ratio(h, tau=0.8) for h in reps])
    assert not np.allclose(wide, np.stack([plasticine.dormant_ratio(h) for h in reps]))  # tau matters on this data
    np.testing.assert_allclose(pl["current_dormant_ratio"], wide)
    np.testing.assert_allclose(pl["current_dead_ratio"], np.stack([plasticine.dormant_ratio(h, tau=0.0) for h in reps]))
