"""Plasticity metrics against hand computations on constructed representations and weights."""

import math

import numpy as np

from cljax.analysis.plasticine import (
    active_fraction,
    dormant_ratio,
    effective_rank,
    feature_norm,
    feature_variance,
    feature_variance_across_units,
    representation_metrics,
    srank,
    stable_rank,
    unit_scores,
    weight_change,
    weight_magnitude,
)


def with_singular_values(s, S, seed):
    """h = U diag(s) V^T with orthonormal U (S x H), V (H x H): singular values exactly s."""
    rng = np.random.default_rng(seed)
    H = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((S, H)))
    V, _ = np.linalg.qr(rng.standard_normal((H, H)))
    return U @ np.diag(s) @ V.T


def erank_by_hand(s):
    p = np.asarray(s, float) / np.sum(s)
    p = p[p > 0]
    return math.exp(-sum(pi * math.log(pi) for pi in p))


def test_ranks_from_known_singular_values():
    s = [4.0, 2.0, 1.0, 0.5]
    h = with_singular_values(s, S=6, seed=0)
    # p = s / 7.5 = (0.533, 0.267, 0.133, 0.067)
    assert math.isclose(float(effective_rank(h)), erank_by_hand(s), rel_tol=1e-10)
    # (16 + 4 + 1 + 0.25) / 16
    assert math.isclose(float(stable_rank(h)), 21.25 / 16, rel_tol=1e-10)
    # cumulative fractions 0.533, 0.800, 0.933, 1.000
    assert int(srank(h, delta=0.01)) == 4
    assert int(srank(h, delta=0.1)) == 3
    assert int(srank(h, delta=0.25)) == 2
    # A rank-2 matrix: one nonzero pair of equal singular values -> erank 2, stable rank 2.
    h2 = with_singular_values([3.0, 3.0, 0.0, 0.0], S=5, seed=1)
    assert math.isclose(float(effective_rank(h2)), 2.0, rel_tol=1e-8)
    assert math.isclose(float(stable_rank(h2)), 2.0, rel_tol=1e-8)
    assert int(srank(h2)) == 2


def test_rank_metrics_are_vectorised_over_leading_axes():
    spectra = [[[4.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]],
               [[3.0, 3.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0], [1.0, 0.5, 0.25, 0.125]]]
    h = np.stack([np.stack([with_singular_values(s, 7, seed=3 * i + j) for j, s in enumerate(row)])
                  for i, row in enumerate(spectra)])  # (L=2, R=3, S=7, H=4)
    er = effective_rank(h)
    assert er.shape == (2, 3)
    expected = np.array([[erank_by_hand(s) for s in row] for row in spectra])
    np.testing.assert_allclose(er, expected, rtol=1e-8)
    assert math.isclose(float(er[0, 1]), 4.0, rel_tol=1e-8)  # flat spectrum
    assert math.isclose(float(er[0, 2]), 1.0, rel_tol=1e-8)  # rank one
    np.testing.assert_array_equal(srank(h), [[4, 4, 1], [2, 2, 4]])
    metrics = representation_metrics(h)
    np.testing.assert_allclose(metrics["effective_rank"], expected, rtol=1e-8)
    np.testing.assert_array_equal(metrics["srank"], [[4, 4, 1], [2, 2, 4]])
    np.testing.assert_allclose(metrics["stable_rank"][0], [21.25 / 16, 4.0, 1.0], rtol=1e-8)


def constructed_units():
    """4 samples x 5 units with mean |h| per unit = (1, 2, 0, 0.02, 1.98): their mean is 1, so
    the ReDo scores equal these means."""
    return np.array([
        [1.0, 2.0, 0.0, 0.04, 1.98],
        [-1.0, 2.0, 0.0, -0.04, 1.98],
        [1.0, -2.0, 0.0, 0.0, 1.98],
        [1.0, 2.0, 0.0, 0.0, -1.98],
    ])


def test_dormant_and_dead_units():
    h = constructed_units()
    np.testing.assert_allclose(unit_scores(h), [1.0, 2.0, 0.0, 0.02, 1.98])
    assert math.isclose(float(dormant_ratio(h)), 2 / 5)  # scores 0 and 0.02 <= 0.025
    assert math.isclose(float(dormant_ratio(h, tau=0.0)), 1 / 5)  # only the dead unit
    # 6 exact zeros (4 in unit 2, 2 in unit 3) out of 20 entries.
    assert math.isclose(float(active_fraction(h)), 1 - 6 / 20)
    # Batched: a second, fully active copy scaled by 10 (scores are scale-free).
    hb = np.stack([h, 10 * np.abs(h) + 1.0])
    np.testing.assert_allclose(dormant_ratio(hb), [0.4, 0.0])
    # An all-zero layer: every unit dormant, ranks 0.
    z = np.zeros((3, 4))
    assert float(dormant_ratio(z)) == 1.0 and float(effective_rank(z)) == 0.0 and int(srank(z)) == 0


def test_feature_norm_and_variances():
    h = np.array([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    assert math.isclose(float(feature_norm(h)), (5 + 0 + 10) / 3)
    h = np.array([[1.0, 2.0], [3.0, 6.0]])
    # Across samples: unit 0 var 1, unit 1 var 4 -> 2.5. Across units: 0.25 and 2.25 -> 1.25.
    assert math.isclose(float(feature_variance(h)), 2.5)
    assert math.isclose(float(feature_variance_across_units(h)), 1.25)


def test_weight_magnitude_and_change():
    # Leaves with leading (L=2, R=1): P = 4 + 3 = 7 parameters.
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])  # (2, 1, 2, 2)
    b = np.array([[[0.0, 0.0, 1.0]], [[1.0, 1.0, 1.0]]])  # (2, 1, 3)
    params = {"dense": {"kernel": w}, "out": {"bias": b}}
    mag = weight_magnitude(params)
    assert mag.shape == (2, 1)
    # snapshot 0: 1 + 4 + 9 + 16 + 1 = 31; snapshot 1: 4 + 3 = 7
    np.testing.assert_allclose(mag[:, 0], [math.sqrt(31 / 7), math.sqrt(7 / 7)])
    # Reference (R=1, ...) broadcast over L: the snapshot-0 weights.
    ref = {"dense": {"kernel": w[0]}, "out": {"bias": b[0]}}
    change = weight_change(params, ref)
    # snapshot 1 - snapshot 0: kernel diffs (-1, -2, -3, -2), bias diffs (1, 1, 0) -> 18 + 2 = 20
    np.testing.assert_allclose(change[:, 0], [0.0, math.sqrt(20 / 7)])


def test_srank_keeps_an_exact_tie_on_the_at_least_side():
    # s = (0.9, 0.3, 0.2, 0.1): the first two hold 1.2 / 1.5 = 0.8 of the sum, exactly 1 - delta at
    # delta = 0.2, so srank is 2; in floating point the fraction reads 0.7999999999999999, and a
    # bare "< 1 - delta" count (no slack) gives 3.
    h = np.diag([0.9, 0.3, 0.2, 0.1])
    assert int(srank(h, delta=0.2)) == 2
    assert float(representation_metrics(h, delta=0.2)["srank"]) == 2.0
    assert float(representation_metrics(h, delta=0.19)["srank"]) == 3.0


def test_representation_metrics_take_tau_for_dormant_and_zero_for_dead():
    # Scores (1, 2, 0, 0.02, 1.98): dormant at tau = 0.025 are units 2 and 3, dead (tau = 0) unit 2
    # only; with tau = 1.5 the units of score 0, 0.02 and 1 are dormant.
    h = constructed_units()
    default = representation_metrics(h)
    assert math.isclose(float(default["dormant_ratio"]), 2 / 5)
    assert math.isclose(float(default["dead_ratio"]), 1 / 5)
    wide = representation_metrics(h, tau=1.5)
    assert math.isclose(float(wide["dormant_ratio"]), 3 / 5)
    assert math.isclose(float(wide["dead_ratio"]), 1 / 5)
