"""The accuracy band (cljax.analysis.band): the rows as the folders saved them, and the CL metrics
computed from it, against loops over the dense matrix written from the definitions."""

import tracemalloc

import numpy as np
import pytest

from cljax.analysis import analyses, probe
from cljax.analysis.band import Band
from cljax.analysis.cl import cl_metrics_band, cl_metrics_from_matrix
from cljax.analysis.registry import Options, RunContext


def slots(mode: str, n: int, T: int) -> np.ndarray:
    """(n, K) task ids of each folder's slots, as --eval-tasks lays them out (-1: none)."""
    if mode == "all":
        return np.tile(np.arange(T), (n, 1))
    if mode == "current":
        return np.arange(n)[:, None]
    if mode == "seen":
        return np.where(np.arange(T) <= np.arange(n)[:, None], np.arange(T), -1)
    K = int(mode.split(":")[1])  # window:K, the last K tasks up to the current one
    return np.stack([[j if j >= 0 else -1 for j in range(i - K + 1, i + 1)] for i in range(n)])


def random_band(mode, R=3, n=6, T=8, seed=0, nan_at=None) -> Band:
    rng = np.random.default_rng(seed)
    ids = slots(mode, n, T)
    values = np.where(ids >= 0, rng.uniform(0.4, 1.0, (R, *ids.shape)), np.nan)
    if nan_at is not None:  # a diverged repeat: NaN at an evaluated entry
        values[nan_at] = np.nan
    return Band(values, ids, T)


def reference(A, ev, E, b, b_ev):
    """Each metric from its definition (docs/metrics.md) over the evaluated entries, by loops."""
    R, n, _ = A.shape
    out = {k: np.full(R, np.nan) for k in ("average_accuracy", "bwt", "fwt", "forgetting")}
    f = np.full((R, n - 1), np.nan)
    for r in range(R):
        last = [j for j in range(n) if ev[n - 1, j]]
        out["average_accuracy"][r] = np.mean([A[r, n - 1, j] for j in last]) if last else np.nan
        terms = [A[r, n - 1, j] - A[r, j, j] for j in range(n - 1) if ev[n - 1, j] and ev[j, j]]
        out["bwt"][r] = np.mean(terms) if terms else np.nan
        terms = [A[r, j - 1, j] - b[r, j] for j in range(1, n) if ev[j - 1, j] and b_ev[j]]
        out["fwt"][r] = np.mean(terms) if terms else np.nan
        for k in range(n - 1):
            rows = [l for l in range(k, n - 1) if ev[l, k]]
            if ev[n - 1, k] and rows:
                f[r, k] = max(A[r, l, k] for l in rows) if not any(np.isnan(A[r, l, k]) for l in rows) else np.nan
                f[r, k] -= A[r, n - 1, k]
        terms = [f[r, k] for k in range(n - 1) if ev[n - 1, k] and any(ev[l, k] for l in range(k, n - 1))]
        out["forgetting"][r] = np.mean(terms) if terms else np.nan
    out["forgetting_per_task"] = f
    return out


@pytest.mark.parametrize("mode", ["current", "window:1", "window:3", "seen", "all"])
@pytest.mark.parametrize("nan_at", [None, (1, 4, -1)])
def test_band_metrics_follow_the_definitions_over_the_evaluated_entries(mode, nan_at):
    band = random_band(mode, nan_at=nan_at)
    R, n, _ = band.values.shape
    rng = np.random.default_rng(1)
    E, b = rng.uniform(0.5, 1.0, (R, n)), rng.uniform(0.4, 0.6, (R, n))
    b_ev = np.arange(n) < (1 if mode in ("current", "seen") or mode.startswith("window") else n)
    A = band.dense(n)
    ev = np.zeros((n, n), bool)
    for i in range(n):
        ev[i, band.ids[i][(band.ids[i] >= 0) & (band.ids[i] < n)]] = True
    got = cl_metrics_band(band, E, b, b_ev)
    want = reference(A, ev, E, b, b_ev)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
    np.testing.assert_array_equal(got["accuracy_matrix"], A)
    np.testing.assert_allclose(got["plasticity_gap"], E - np.diagonal(A, axis1=1, axis2=2), rtol=1e-12)
    assert got["summary"]["n_terms"]["average_accuracy"] == ev[-1].sum()
    if mode == "current":  # only the diagonal: nothing to forget or transfer is measured
        assert np.isnan(got["bwt"]).all() and np.isnan(got["forgetting"]).all() and np.isnan(got["fwt"]).all()
    if mode == "all":
        full = cl_metrics_from_matrix(A, E, b)
        for key in ("average_accuracy", "bwt", "fwt", "forgetting", "forgetting_per_task"):
            np.testing.assert_allclose(got[key], full[key], rtol=1e-12, err_msg=key)


def test_dense_arrays_are_kept_when_small_or_when_the_band_is_as_wide_as_the_tasks():
    from cljax.analysis.band import DENSE_CELLS, keeps_dense

    assert keeps_dense(1, 2, 2, 10) and not keeps_dense(2, 2**13, 8, DENSE_CELLS)
    assert keeps_dense(1, 2**13, 2**12, 2**12)  # R n T above the limit, but K = T: the band is the dense array


def test_band_views_equal_the_dense_rows():
    band = random_band("window:3", R=2, n=7, T=9, seed=3)
    A = band.dense()
    assert A.shape == (2, 7, 9) and np.isfinite(A).sum() == np.isfinite(band.values).sum()
    for i in range(7):
        row, evaluated = band.row(i)
        np.testing.assert_array_equal(row, A[:, i])
        assert (evaluated == np.isfinite(A[0, i])).all()
    values, found = band.take([0, 3, 6, 2], [0, 1, 6, 5])
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(values[:, :3], A[:, [0, 3, 6], [0, 1, 6]])
    assert np.isnan(values[:, 3]).all()
    earlier = band.mean_earlier()
    for i in range(7):
        expect = np.nanmean(A[:, i, :i], axis=-1) if np.isfinite(A[0, i, :i]).any() else np.full(2, np.nan)
        np.testing.assert_allclose(earlier[:, i], expect, rtol=1e-12)
    assert not band.every_earlier_evaluated() and random_band("seen").every_earlier_evaluated()
    image, block = band.mean_matrix(7)
    assert block == 1
    np.testing.assert_allclose(image, A[:, :, :7].mean(axis=0), rtol=1e-6)
    image, block = band.mean_matrix(7, max_side=3)  # blocks of 3 x 3 entries: the mean of the evaluated ones
    assert block == 3 and image.shape == (3, 3)
    np.testing.assert_allclose(image[1, 0], np.nanmean(A[:, 3:6, 0:3].mean(axis=0)), rtol=1e-6)
    np.testing.assert_allclose(image[2, 2], np.nanmean(A[:, 6:, 6:7].mean(axis=0)), rtol=1e-6)
    assert Band(A, np.tile(np.arange(9), (7, 1)), 9).is_dense and not band.is_dense


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_analysis_of_a_long_current_task_run_holds_the_band_not_the_matrix():
    """5000 folders x 12 repeats evaluating the current task: the (R, n, T) float64 matrix would
    take 2.4 GB, and each of its (R, n, n) metrics as much; the band is 480 KB."""
    R, n = 12, 5000
    ctx = RunContext(algo_dir=None, n_folders=n, n_snapshots=2, n_repeats=R, n_eval_tasks=n, options=Options())
    rng = np.random.default_rng(0)
    ids = [np.array([i]) for i in range(n)]
    rows = [rng.uniform(0.5, 1.0, (R, 1)) for _ in range(n)]
    cl_state = {"ctx": ctx, "rows": {"final": rows, "auc": rows}, "ids": ids, "initial": rng.uniform(size=(R, n)),
                "initial_evaluated": np.arange(n) == 0, "modes": {"current"},
                "expert_LR": [rng.uniform(0.5, 1.0, (2, R)) for _ in range(n)],
                "current_LR": [rng.uniform(0.5, 1.0, (2, R)) for _ in range(n)]}
    probe_state = {**probe.init(ctx), "S": 4, "folds": (2, 2), "ids": ids, "probe": rows, "head_same": rows,
                   "head": rows}  # (init's state, as the folders' updates leave it)
    results = {}
    peak = {"cl": _peak_bytes(lambda: results.setdefault("cl", analyses._cl_finalize(cl_state))),
            "probe": _peak_bytes(lambda: results.setdefault("probe", probe.finalize(probe_state)))}
    for name, bytes_ in peak.items():
        assert bytes_ < 50e6, (name, bytes_ / 1e6)  # far below one (R, n, n) float64 array (2.4 GB)
    arrays = results["cl"].arrays["cl.npz"]
    assert arrays["accuracy_band_final"].shape == (R, n, 1) and "final_accuracy_matrix" not in arrays
    np.testing.assert_array_equal(arrays["final_plasticity_gap"],
                                  arrays["expert_acc_final"] - np.concatenate(rows, axis=1))
    assert results["cl"].summary["cl"]["final"]["n_terms"] == {"average_accuracy": 1, "bwt": 0, "fwt": 0,
                                                              "forgetting": 0}
    assert "probe_acc_band" in results["probe"].arrays["probe.npz"]


def test_fwt_leaves_out_a_task_whose_initial_accuracy_was_not_evaluated():
    """Every task evaluated after every folder, but task_000's start evaluation saw tasks 0 and 2
    only (b[1] is NaN): FWT is the one term R[1, 2] - b[2]."""
    A = np.array([[[0.9, 0.6, 0.5], [0.8, 0.9, 0.7], [0.7, 0.8, 0.9]]])  # (R=1, n=3, T=3)
    band = Band(A, np.tile(np.arange(3), (3, 1)), 3)
    b = np.array([[0.5, np.nan, 0.4]])
    got = cl_metrics_band(band, np.full((1, 3), 0.9), b, np.array([True, False, True]))
    np.testing.assert_allclose(got["fwt"], [0.7 - 0.4], rtol=1e-12)
    assert got["summary"]["n_terms"]["fwt"] == 1
    # With no initial accuracy evaluated after task 0, FWT has no term: NaN.
    none = cl_metrics_band(band, np.full((1, 3), 0.9), np.array([[0.5, 0.45, 0.4]]), np.array([True, False, False]))
    assert np.isnan(none["fwt"]).all() and none["summary"]["n_terms"]["fwt"] == 0


def test_a_diverged_earlier_task_leaves_its_repeat_out_of_the_earlier_mean_and_the_probe_drop_as_of_bwt():
    # Repeat 1 diverged after task 1 (NaN from folder 2 on): its earlier-task mean at the last
    # folder and its drop (-BWT) are NaN, so the spread leaves the repeat out, as BWT does; a mean
    # over its finite tasks would enter beside repeat 0's mean over all of them.
    from cljax.analysis.band import Band
    from cljax.analysis.cl import cl_metrics_band
    from cljax.analysis.probe import _drop

    A = np.array([[[0.9, 0.5, 0.5], [0.7, 0.8, 0.5], [0.6, 0.7, 0.9]],
                  [[0.9, 0.5, 0.5], [0.8, 0.9, 0.5], [np.nan, 0.6, 0.8]]])  # (R, n, T)
    band = Band(A, np.tile(np.arange(3), (3, 1)), 3)
    np.testing.assert_allclose(band.mean_earlier()[0], [np.nan, 0.7, 0.65])
    np.testing.assert_allclose(band.mean_earlier()[1], [np.nan, 0.8, np.nan])
    bwt = cl_metrics_band(band, np.ones((2, 3)), np.full((2, 3), 0.5), np.ones(3, bool))["bwt"]
    np.testing.assert_allclose(_drop(band), -bwt)
    np.testing.assert_allclose(_drop(band), [0.2, np.nan])
