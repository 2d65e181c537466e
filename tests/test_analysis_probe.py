"""Linear probes of the saved representations beside the head's accuracy (readout vs
representation forgetting)."""

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from cljax import cli
from cljax.analysis import analyze_run
from tests.test_analysis_driver import L, RR, S, T, write_fake_run

H = 6


def gaussian_clouds(rng, batch, n_per_class, H, distance):
    """Two Gaussian clouds (unit variance) whose means are ``distance`` apart along a random
    direction; labels 0, 1, 0, 1, ... as the runner saves them."""
    labels = np.tile([0, 1], n_per_class)
    u = rng.standard_normal(batch + (1, H))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    reps = rng.standard_normal(batch + (2 * n_per_class, H)) + distance * (labels[:, None] - 0.5) * u
    return reps, np.broadcast_to(labels, batch + (2 * n_per_class,))


def test_probe_separates_two_gaussian_clouds():
    from cljax.analysis.probe import probe_accuracy

    reps, labels = gaussian_clouds(np.random.default_rng(0), (3, 2), 32, 16, distance=6.0)
    acc = probe_accuracy(reps, labels)
    assert acc.shape == (3, 2)
    assert acc.min() >= 0.95
    # One task's arrays, (S, H) and (S,), give one number.
    assert np.ndim(probe_accuracy(reps[0, 0], labels[0, 0])) == 0


def test_probe_is_at_chance_on_shuffled_labels():
    from cljax.analysis.probe import probe_accuracy

    rng = np.random.default_rng(1)
    reps, labels = gaussian_clouds(rng, (200,), 32, 16, distance=6.0)
    shuffled = np.stack([rng.permutation(row) for row in labels])
    acc = probe_accuracy(reps, shuffled)
    # 200 probes tested on 64 samples each: the mean is within 0.03 of chance.
    assert abs(acc.mean() - 0.5) < 0.03


def test_probe_of_non_finite_representations_is_nan():
    from cljax.analysis.probe import probe_accuracy

    reps, labels = gaussian_clouds(np.random.default_rng(2), (2,), 8, 4, distance=6.0)
    reps[1, 3, 0] = np.nan  # the second task's network diverged
    acc = probe_accuracy(reps, labels)
    assert acc[0] == 1.0 and np.isnan(acc[1])


def test_probe_folds_halve_each_class():
    from cljax.analysis.probe import probe_folds

    labels = np.array([0, 1, 0, 1, 1, 1, 0, 0])
    fold = probe_folds(labels)
    # class 0 at 0, 2, 6, 7 -> fold 0 for 0, 2; class 1 at 1, 3, 4, 5 -> fold 0 for 1, 3.
    np.testing.assert_array_equal(fold, [False, False, False, False, True, True, True, True])

def test_a_task_with_under_two_samples_of_a_class_has_no_probe():
    """Two saved samples (one per class) leave fold 0 empty: its probe would predict one label for
    both, exactly 0.5 on perfectly separable points. It is NaN, as the run table's probe is; from
    two samples of each class on, both folds hold both classes."""
    from cljax.analysis.probe import fold_sizes, probe_accuracy

    two = np.array([[-5.0, 0.0], [5.0, 0.0]])
    assert np.isnan(probe_accuracy(two, [0, 1])) and np.isnan(probe_accuracy(two, [0, 1], cross_fit=False))
    four = np.array([[-5.0, 0.0], [5.0, 0.0], [-4.0, 1.0], [4.0, 1.0]])
    assert probe_accuracy(four, [0, 1, 0, 1]) == 1.0
    assert np.isnan(probe_accuracy(np.r_[four, [[6.0, 0.0]]], [0, 1, 1, 1, 1]))  # one sample of class 0
    # the fold sizes: S/2 each when each class's count is even, else 2 floor(S/4) and the rest
    assert fold_sizes(np.tile([0, 1], 4)) == (4, 4) and fold_sizes(np.tile([0, 1], 3)) == (2, 4)
    assert fold_sizes(np.tile([0, 1], (3, 1, 2))) == (2, 2) and fold_sizes([0, 1]) == (0, 2)


def write_fake_run_with_a_head(algo):
    """The fake tree, with representations on which the answers are known: task j's classes sit
    at -5 e_j and +5 e_j (0 on the other tasks' units, noise on the last H - T units), and
    folder i's head reads unit i (kernel e_i, bias 0). The head is right on its own task and
    exactly at chance (logit 0, predicted label 0) on every other; a probe separates every task."""
    write_fake_run(algo)
    rng = np.random.default_rng(0)
    labels = np.tile(np.array([0, 1]), S // 2)
    dtype = np.dtype([("head/bias", np.float32, (1,)), ("head/kernel", np.float32, (H, 1))])
    for i in range(T):
        d = algo / f"task_{i:03d}"
        reps = rng.normal(size=(L, RR, T, S, H))
        reps[..., :T] = 0.0
        for j in range(T):
            reps[:, :, j, :, j] = 5.0 * (2 * labels - 1)
        weights = np.zeros((L, RR), dtype)
        weights["head/kernel"][..., i, 0] = 1.0
        np.save(d / "representations.npy", reps.astype(np.float32))
        np.save(d / "weights.npy", weights)


def test_probe_beside_the_head_on_a_fake_tree(tmp_path):
    algo = tmp_path / "run"
    write_fake_run_with_a_head(algo)
    summary = analyze_run(algo, glue=False)
    out = algo / "analysis"
    p = json.loads((out / "summary.json").read_text())["probe"]
    assert p == summary["probe"]
    assert p["images"]["saved_per_task"] == S and p["images"]["fit_per_probe"] == S // 2
    assert p["images"]["fold_sizes"] == [S // 2, S // 2] and S % 4 == 0
    early = p["earlier_tasks"]
    assert early["n_tasks"] == 2
    assert early["head_acc_probe_images"]["mean"] == 0.5 and early["head_acc_probe_images"]["std"] == 0.0
    assert early["probe_acc"]["mean"] == 1.0
    assert p["current_task"]["head_acc_probe_images"]["mean"] == 1.0
    # The head dropped from 1 to 0.5 on both earlier tasks, the representation not at all.
    assert math.isclose(p["forgetting"]["head"]["mean"], 0.5)
    assert p["forgetting"]["representation"]["mean"] == 0.0
    assert math.isclose(p["forgetting"]["readout"]["mean"], 0.5)
    # The head's accuracy on all test images is metrics["test_acc"], as in the accuracy matrix.
    arrays = np.load(out / "probe.npz")
    assert arrays["probe_acc"].shape == arrays["head_acc"].shape == (RR, T, T)
    np.testing.assert_allclose(arrays["head_acc"], np.load(out / "cl.npz")["accuracy_rows_final"])
    assert "probe.png" in summary["files"]
    img = mpimg.imread(out / "probe.png")
    assert img.ndim == 3 and min(img.shape[:2]) > 100


def test_cli_prints_the_probe_beside_the_head(tmp_path, capsys):
    algo = tmp_path / "run"
    write_fake_run_with_a_head(algo)
    assert cli.main(["analyze", str(algo), "--no-glue", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("accuracy on earlier tasks"))
    # The head on all test images is the fake metrics' R[2, j] (repeat 1 is 0.05 lower).
    head = (0.70 + 0.85) / 2 - 0.025
    assert f"head {head:.4f}" in line and "linear probe 1.0000 +- 0.0000" in line
    assert (f"each of the {S} images per task and repeat tested once, by the probe fit on the other half "
            f"({S // 2} images)") in printed


def test_the_printed_probe_line_says_the_fold_sizes_or_why_there_is_no_probe():
    from cljax.analysis.summary_text import format_summary

    def printed(S, folds, probe_mean):
        earlier = {"n_tasks": 2, "head_acc": {"mean": 0.6, "std": 0.1}, "probe_acc": {"mean": probe_mean, "std": 0.0}}
        images = {"saved_per_task": S, "fit_per_probe": folds[0], "fold_sizes": folds, "tested_per_task": S}
        return format_summary({"probe": {"earlier_tasks": earlier, "images": images}, "config": {"head": "shared"}})

    assert ("each of the 6 images per task and repeat tested once, by the probe fit on the other half (2 or 4 "
            "images)") in printed(6, [2, 4], 0.9)
    text = printed(2, [0, 2], None)
    assert "linear probe not measured" in text and "2 saved images per task; it needs 2 of each class" in text
    assert "fit on" not in text


def test_a_bad_probe_ridge_is_one_error_line(tmp_path, capsys):
    algo = tmp_path / "run"
    write_fake_run(algo)
    assert cli.main(["analyze", str(algo), "--no-glue", "--no-plots", "--probe-ridge", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --probe-ridge must be a finite number > 0, got 0.0."]  # worded as --tau's
    # --glue-probes is unused under --no-glue: a value GLUE would refuse is not an error then
    assert cli.main(["analyze", str(algo), "--no-glue", "--no-plots", "--glue-probes", "1"]) == 0
    assert cli.main(["analyze", str(algo), "--no-plots", "--glue-probes", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("--glue-probes must be at least 2 (its Monte-Carlo error needs two), "
                                                    "got 1.")


def test_probe_folds_round_each_half_down():
    from cljax.analysis.probe import probe_folds

    # class 0 (3 samples: 0, 2, 5) -> fold 0 is its first 1; class 1 (5: 1, 3, 4, 6, 7) -> its first 2.
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(probe_folds(labels), [False, False, True, False, True, True, True, True])


def reference_probe(X, labels, ridge):
    """One task's cross-fitted probe accuracy from the definitions (module docstring), by a loop."""
    y = np.where(labels == 1, 1.0, -1.0)
    fold1 = np.zeros(len(labels), bool)
    for c in (0, 1):
        where = np.flatnonzero(labels == c)
        fold1[where[len(where) // 2:]] = True
    correct = 0
    for fit in (~fold1, fold1):
        mu, y_mean = X[fit].mean(axis=0), y[fit].mean()
        Z = X[fit] - mu
        lam = ridge * (Z**2).sum() / fit.sum()
        w = np.linalg.solve(Z.T @ Z + lam * np.eye(X.shape[1]), Z.T @ (y[fit] - y_mean))
        score = (X[~fit] - mu) @ w + y_mean
        correct += ((score > 0) == (y[~fit] > 0)).sum()
    return correct / len(labels)


@pytest.mark.parametrize("H", [6, 40])  # fewer units than samples (the H x H solve), more (the S x S one)
def test_probe_equals_the_ridge_solve_of_its_definition(H):
    """Many small tasks (11 samples, unbalanced classes of odd sizes, an offset far from 0): every
    accuracy equals the loop's, for three ridges. The centring, the intercept mean(y), the folds'
    rounding and lambda = ridge x mean squared norm of the centred rows each change some."""
    from cljax.analysis.probe import probe_accuracy

    rng = np.random.default_rng(3)
    n_tasks, S = 300, 11
    labels = np.stack([rng.permutation(np.r_[np.zeros(4, int), np.ones(7, int)]) for _ in range(n_tasks)])
    reps = rng.normal(size=(n_tasks, S, H)) + 0.7 * labels[..., None] * rng.normal(size=(n_tasks, 1, H)) + 3.0
    for ridge in (0.03, 0.1, 1.0):
        got = probe_accuracy(reps, labels, ridge=ridge)
        want = [reference_probe(reps[i], labels[i], ridge) for i in range(n_tasks)]
        np.testing.assert_array_equal(got, want, err_msg=f"ridge {ridge}")


def test_a_repeat_bwt_leaves_out_is_left_out_of_the_forgetting_pair_and_the_earlier_tasks(tmp_path):
    # Repeat 1's accuracy on all test images is NaN on task 0 after task 0 (a network whose logits
    # diverged on some image), while its S saved images still give finite numbers: BWT leaves the
    # repeat out, and so do the pair and every column of the probe there (docs/metrics.md: -BWT).
    import pickle

    algo = tmp_path / "run"
    write_fake_run_with_a_head(algo)
    with open(algo / "task_000" / "metrics.pkl", "rb") as f:
        metrics = pickle.load(f)
    metrics["test_acc"][-1, 1, 0] = np.nan
    with open(algo / "task_000" / "metrics.pkl", "wb") as f:
        pickle.dump(metrics, f, protocol=4)
    s = analyze_run(algo, glue=False, make_plots=False)
    assert (s["cl"]["final"]["bwt"]["n"], s["cl"]["final"]["bwt"]["n_nonfinite"]) == (1, 1)
    for k in ("head", "representation", "readout"):
        assert (s["probe"]["forgetting"][k]["n"], s["probe"]["forgetting"][k]["n_nonfinite"]) == (1, 1), k
    assert math.isclose(s["probe"]["forgetting"]["head"]["mean"], 0.5)  # repeat 0's, as before
    probe = np.load(algo / "analysis" / "probe.npz")
    assert np.isnan(probe["probe_acc"][1, 0, 0]) and np.isnan(probe["head_acc_probe_images"][1, 0, 0])
    assert probe["probe_acc"][0, 0, 0] == 1.0


def test_analyze_out_of_device_memory_under_no_glue_does_not_suggest_no_glue():
    import jax

    from cljax.cli_errors import error_line

    exc = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 bytes.")
    line, at_once = error_line(exc, "analyze", ["results/fashion/SL", "--no-glue"])
    assert line == ("out of device memory in `cljax analyze` (Out of memory while trying to allocate 9 bytes): "
                    "analyse on the CPU (JAX_PLATFORMS=cpu cljax analyze ...) or on a device with more memory "
                    "(nothing was written).") and not at_once
    assert "--glue-probes" in error_line(exc, "analyze", ["results/fashion/SL"])[0]


def test_the_kept_share_is_undefined_without_a_gain_and_counts_it_apart_from_divergence(tmp_path):
    """Fake tree: every task is separable in every folder, so the probe is 1.0 before, after and at
    the end: no gain, and no share of it. A repeat without a gain is counted in n_no_gain, not as
    a diverged one."""
    from cljax.analysis.probe import kept_share
    from cljax.analysis.summary_text import format_summary

    algo = tmp_path / "run"
    write_fake_run_with_a_head(algo)
    summary = analyze_run(algo, glue=False, make_plots=False)
    gain = summary["probe"]["trained_gain"]
    assert gain["n_tasks"] == T - 2
    assert [gain[k]["mean"] for k in ("before", "after", "end")] == [1.0, 1.0, 1.0]
    assert (gain["kept"]["n"], gain["kept"]["n_nonfinite"], gain["kept"]["n_no_gain"]) == (0, 0, RR)
    assert gain["kept"]["mean"] is None and gain["kept_of_means"] is None  # NaN, written as null
    assert ("  the probe on task 1 (1 evaluated) before it was trained 1.0000 +- 0.0000, right after 1.0000 +- "
            "0.0000, after the last 1.0000 +- 0.0000: the share kept is undefined: training raised no repeat's probe "
            "by an image per task") in format_summary(summary).splitlines()
    # per repeat: 0.9 -> 1.0 -> 0.95 keeps half; a gain under min_gain is none; a NaN is a divergence
    share, no_gain = kept_share(np.array([0.9, 0.9, np.nan]), np.array([1.0, 0.91, 1.0]), np.array([0.95, 0.9, 1.0]),
                                min_gain=1 / 16)
    assert share[0] == pytest.approx(0.5) and np.isnan(share[1:]).all() and no_gain == 1
