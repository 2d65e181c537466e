"""CL metrics against hand computations on a known 3-task accuracy matrix."""

import math

import numpy as np
import pytest

from cljax.analysis.cl import (
    accuracy_matrix,
    average_accuracy,
    backward_transfer,
    chance_corrected,
    cl_analysis,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    normalised_transfer,
    plasticity_gap,
)

# Repeat 0: R[i, j] after training task i, evaluated on task j.
R0 = np.array([
    [0.90, 0.60, 0.50],
    [0.97, 0.95, 0.55],
    [0.80, 0.75, 0.90],
])
B0 = np.array([0.50, 0.45, 0.52])  # accuracy of the initial network
E0 = np.array([0.92, 0.90, 0.95])  # expert, last snapshot
# By hand:
#   ACC = (0.80 + 0.75 + 0.90) / 3                      = 0.816667
#   BWT = ((0.80 - 0.90) + (0.75 - 0.95)) / 2            = -0.15
#   FWT = ((0.60 - 0.45) + (0.55 - 0.52)) / 2            = 0.09   (GEM's /T with a zero: 0.06)
#   f_0 = max(0.90, 0.97) - 0.80 = 0.17, f_1 = 0.95 - 0.75 = 0.20, F = 0.185
#   G   = E - diag = (0.02, -0.05, 0.05)
HAND0 = {"acc": 2.45 / 3, "bwt": -0.15, "fwt": 0.09, "forgetting": 0.185, "f": [0.17, 0.20]}

# Repeat 1: a second matrix with its own hand values.
R1 = np.array([
    [0.80, 0.50, 0.50],
    [0.60, 0.90, 0.70],
    [0.70, 0.80, 0.85],
])
B1 = np.array([0.50, 0.50, 0.50])
E1 = np.array([0.85, 0.95, 0.85])
#   ACC = 2.35 / 3; BWT = (-0.10 - 0.10) / 2 = -0.10; FWT = (0.00 + 0.20) / 2 = 0.10
#   f_0 = max(0.80, 0.60) - 0.70 = 0.10, f_1 = 0.90 - 0.80 = 0.10, F = 0.10
HAND1 = {"acc": 2.35 / 3, "bwt": -0.10, "fwt": 0.10, "forgetting": 0.10}


def snapshots_per_task():
    """test_acc (L=3, R=2, T=3) per task: snapshots (row - 0.3, row, row) at steps 1, 2, 3, so
    the final row is R."""
    out = []
    for i in range(3):
        row = np.stack([R0[i], R1[i]])  # (R, T)
        out.append(np.stack([row - 0.3, row, row]))
    return out


def starts_per_task():
    """start_test_acc (R=2, T=3) per task: row - 0.6. With the snapshots above the trapezoid
    from step 0 is ((r - 0.6 + r - 0.3) + (r - 0.3 + r) + (r + r)) / 2 / 3 = r - 0.2 (auc)."""
    return [np.stack([R0[i], R1[i]]) - 0.6 for i in range(3)]


def test_accuracy_matrix_variants():
    per_task = snapshots_per_task()
    final = accuracy_matrix(per_task, "final")
    auc = accuracy_matrix(per_task, "auc", starts_per_task())
    assert final.shape == (2, 3, 3)
    np.testing.assert_allclose(final[0], R0)
    np.testing.assert_allclose(final[1], R1)
    np.testing.assert_allclose(auc[0], R0 - 0.2)
    with pytest.raises(ValueError):
        accuracy_matrix(per_task, "best")


def test_metrics_match_hand_values():
    R = np.stack([R0, R1])
    b = np.stack([B0, B1])
    np.testing.assert_allclose(average_accuracy(R), [HAND0["acc"], HAND1["acc"]])
    np.testing.assert_allclose(backward_transfer(R), [HAND0["bwt"], HAND1["bwt"]])
    np.testing.assert_allclose(forward_transfer(R, b), [HAND0["fwt"], HAND1["fwt"]])
    np.testing.assert_allclose(forgetting(R), [HAND0["forgetting"], HAND1["forgetting"]])
    np.testing.assert_allclose(forgetting_per_task(R)[0], HAND0["f"])
    E = np.stack([E0, E1])
    np.testing.assert_allclose(plasticity_gap(R, E)[0], [0.02, -0.05, 0.05], atol=1e-12)
    np.testing.assert_allclose(normalised_transfer(R, E)[0], [-0.02 / 1.82, 0.05 / 1.85, -0.05 / 1.85])
    np.testing.assert_allclose(chance_corrected([0.5, 0.75, 1.0]), [0.0, 0.5, 1.0])


def test_fwt_is_not_averaged_with_a_zero():
    # GEM's code divides by T with a zero for task 0: (0.15 + 0.03) / 3 = 0.06. We use T - 1.
    assert math.isclose(float(forward_transfer(R0, B0)[0]), 0.09)


def test_cl_analysis_per_repeat_and_across_repeats():
    per_task = snapshots_per_task()
    experts = [np.stack([np.array([0.5, E0[i]]), np.array([0.5, E1[i]])], axis=1) for i in range(3)]  # (L=2, R=2)
    b = np.stack([B0, B1])
    out = cl_analysis(per_task, experts, b, variant="final")
    np.testing.assert_allclose(out["average_accuracy"], [HAND0["acc"], HAND1["acc"]])
    np.testing.assert_allclose(out["expert_accuracy"], np.stack([E0, E1]))
    s = out["summary"]
    # mean and sample std (ddof = 1) of two values a, b: (a + b) / 2 and |a - b| / sqrt(2).
    assert math.isclose(s["bwt"]["mean"], -0.125)
    assert math.isclose(s["bwt"]["std"], 0.05 / math.sqrt(2))
    assert math.isclose(s["forgetting"]["mean"], (0.185 + 0.10) / 2)
    assert math.isclose(s["average_accuracy_cc"]["mean"], 2 * (HAND0["acc"] + HAND1["acc"]) / 2 - 1)
    # auc variant (from the task start): every entry 0.2 lower, so ACC and FWT drop by 0.2 and
    # BWT is unchanged.
    auc = cl_analysis(per_task, experts, b, variant="auc", start_acc_per_task=starts_per_task())
    np.testing.assert_allclose(auc["average_accuracy"], out["average_accuracy"] - 0.2)
    np.testing.assert_allclose(auc["fwt"], out["fwt"] - 0.2)
    np.testing.assert_allclose(auc["bwt"], out["bwt"], atol=1e-12)
    # expert_variant="auc" uses the expert's mean over snapshots: (0.5 + E) / 2.
    auc_e = cl_analysis(per_task, experts, b, expert_variant="auc")
    np.testing.assert_allclose(auc_e["expert_accuracy"][0], (0.5 + E0) / 2)


def test_single_task_undefined_metrics_are_nan():
    per_task = [np.full((2, 3, 1), 0.8)]  # L=2, R=3, T=1
    experts = [np.full((2, 3), 0.9)]
    out = cl_analysis(per_task, experts, np.full((3, 1), 0.5))
    np.testing.assert_allclose(out["average_accuracy"], 0.8)
    for key in ("bwt", "fwt", "forgetting"):
        assert np.isnan(out[key]).all()
        assert math.isnan(out["summary"][key]["mean"])
    np.testing.assert_allclose(out["plasticity_gap"], 0.1)
