"""Each number of an analysis reads the data it names: the current task's slot, the last
snapshot, the expert's last snapshot, the learner's best one, each metric under its own name.
The shared fake tree is regular (rising snapshots, every slot alike in kind), so these checks
recompute from its files, after making the choices tell apart."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cljax.analysis import analyze_run
from cljax.analysis import plasticine
from cljax.analysis.spread import over_tasks
from tests.test_analysis_driver import R_FINAL, T, write_fake_run


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    algo = tmp_path_factory.mktemp("wiring") / "run"
    write_fake_run(algo)
    # The learner's current task peaks before its last snapshot in task 1, repeat 0.
    path = algo / "task_001" / "metrics.pkl"
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][0, 0, 1] = 0.99
    path.write_bytes(pickle.dumps(metrics, protocol=4))
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
