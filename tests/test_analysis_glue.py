"""GLUE / manifold capacity against hand computations, Cover's theorem, ball theory and simulation.

Agreement measured here (seeds fixed; tolerances leave room for the Monte-Carlo error of the probe
average, 2-3% relative at these sizes):
- QP solution vs scipy's active-set NNLS on the same probes: |v - v_ref| <= 1e-3 (1 + ||t||).
- exact hand values: antipodal pair (capacity 2 / E min(0, <t, c>)^2) and an inseparable pair
  (floor 2 / E||t||^2, or 2 / E||t's part in the points' span||^2 with dead units), to 1e-6
  relative.
- points (P = 10, N = 100, 1024 probes): capacity 2.09 vs 2 (Cover 1965), tolerance 8%.
- simulated capacity of points: separability curve within 0.15 of Cover's function-counting
  formula at every n, capacity 2.02 vs 2.
- orthogonal segments (exact D = 1 balls, R = 0.5, 2): 1.227 vs 1.258 and 0.818 vs 0.830 from the
  mean-field ball theory (tolerance 6%); D = 0.998, R = 0.497 for 0.5. 16-gons (D = 2, R = 1):
  0.673 vs 0.667 (tolerance 8%).
- random sphere and Gaussian manifolds (P = 8, D = 3, R = 1, N = 40): GLUE / simulated = 0.93 and
  0.94 at 512 probes and 60 repetitions (tolerance 10%); 0.974 and 0.969 with 4096 probes and
  400 repetitions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls

from cljax.analysis.glue import glue_analysis, glue_geometry, make_dichotomies
from cljax.analysis.glue_reference import ball_capacity, simulated_capacity
from cljax.analysis.glue_solver import solve_anchor_qp


def orthogonal_balls(P, R, D, kind, M=None, seed=0):
    """P manifolds, each in its own (D+1)-dim block: centre e0 (norm 1) + R * (points of the unit
    D-sphere) along the other D axes of the block."""
    rng = np.random.default_rng(seed)
    N = P * (D + 1)
    Q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    if kind == "segment":
        u = np.array([[1.0], [-1.0]])
    elif kind == "polygon":
        ang = 2 * np.pi * np.arange(M) / M
        u = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    else:
        raise ValueError(kind)
    X = np.zeros((P, u.shape[0], N))
    for mu in range(P):
        block = Q[:, mu * (D + 1) : (mu + 1) * (D + 1)]
        X[mu] = block[:, 0] + R * u @ block[:, 1:].T
    return X


def random_manifolds(P, M, N, R, D, kind, seed):
    """Random centre directions (norm 1), random D-dim axes, points on the sphere of radius R or
    Gaussian with RMS radius R."""
    rng = np.random.default_rng(seed)
    X = np.zeros((P, M, N))
    for mu in range(P):
        c = rng.standard_normal(N)
        c /= np.linalg.norm(c)
        B, _ = np.linalg.qr(rng.standard_normal((N, D)))
        u = rng.standard_normal((M, D))
        u = u / np.linalg.norm(u, axis=1, keepdims=True) if kind == "sphere" else u / np.sqrt(D)
        X[mu] = c + R * u @ B.T
    return X


def test_qp_matches_nnls_and_anchor_identities():
    rng = np.random.default_rng(1)
    P, M, N, n = 3, 5, 7, 16
    X = rng.standard_normal((P, M, N)) * 0.6 + rng.standard_normal((P, 1, N))
    t = rng.standard_normal((n, N))
    y = rng.choice([-1.0, 1.0], size=(n, P))
    out = solve_anchor_qp(X, t, y, center=True)
    Xc = (X - X.mean(axis=(0, 1))).reshape(P * M, N)
    np.testing.assert_allclose(out["points"].reshape(P * M, N), Xc, atol=1e-5)
    for k in range(n):
        A = np.repeat(y[k], M)[:, None] * Xc  # rows y_mu x
        lam, _ = nnls(A.T, -t[k], maxiter=10000)  # min_{lam>=0} ||t + A^T lam||
        v_ref = t[k] + A.T @ lam
        scale = 1 + np.linalg.norm(t[k])
        assert np.linalg.norm(out["v"][k] - v_ref) <= 1e-3 * scale
        # v* is feasible: every margin y <v, x> >= 0 (up to the solver tolerance).
        assert (A @ out["v"][k]).min() >= -1e-3 * scale
        # Active anchors sit on the hyperplane and v* - t is the projection of -t onto their span.
        act = out["active"][k]
        S = out["anchors"][k][act] * y[k][act][:, None]
        np.testing.assert_allclose(S @ out["v"][k], 0.0, atol=2e-3 * scale)
        if act.any():
            coef, *_ = np.linalg.lstsq(S.T, t[k], rcond=None)
            proj_sq = np.sum((S.T @ coef) ** 2)
            assert math.isclose(np.sum((out["v"][k] - t[k]) ** 2), proj_sq, rel_tol=2e-3, abs_tol=1e-4)
        # Anchors are convex combinations of the manifold's points.
        w = out["multipliers"][k]
        assert (w >= 0).all()


def test_antipodal_pair_task_dichotomy_exact():
    # Two points c + o and -c + o (each repeated 6 times: duplicates add no constraint): centring
    # removes o; with y = (+1, -1) both constraints read <v, c> >= 0, so
    # ||v* - t||^2 = min(0, <t, c_hat>)^2 and capacity = 2 / E[that].
    rng = np.random.default_rng(2)
    N, n = 5, 100
    c, o = rng.standard_normal(N), rng.standard_normal(N)
    X = np.stack([np.tile(c + o, (6, 1)), np.tile(-c + o, (6, 1))])  # (2, 6, N)
    t = rng.standard_normal((n, N))
    y = np.asarray(make_dichotomies(None, n, 2, "task"))
    g = glue_geometry(X, t, y)
    proj = t @ (c / np.linalg.norm(c))
    expected = 2.0 / np.mean(np.minimum(0.0, proj) ** 2)
    assert math.isclose(float(g["capacity"]), expected, rel_tol=1e-6)
    # One point per manifold: no axis part, D = R = 0; two centred points are anti-aligned.
    assert float(g["dimension"]) == 0.0 and float(g["radius"]) == 0.0
    assert float(g["approx_capacity"]) == math.inf  # 1 / N_R with N_R = 0, not 1 / (rounding residue)
    assert math.isclose(float(g["center_alignment"]), 1.0, rel_tol=1e-9)
    # v* = t's part orthogonal to c where <t, c> < 0: margin 0 on both points, it separates nothing
    assert float(g["inseparable_fraction"]) == np.mean(proj < 0) > 0
    assert math.isclose(float(g["capacity_floor"]), 2.0 / np.mean(proj**2), rel_tol=1e-9)  # the span: c alone
    # The axis parts are rounding residue (norm ~1e-17 at points of norm ~1): zero vectors, cos 0,
    # not the cosine of the residue's direction (0.15-0.24 in a run with one image per class).
    assert float(g["axis_alignment"]) == 0.0 and float(g["center_axis_alignment"]) == 0.0


def test_identical_manifolds_with_opposite_labels_are_inseparable():
    # The same cloud labelled +1 and -1: only v = 0 is feasible, so ||v* - t||^2 = ||t||^2 and the
    # capacity is at its floor 2 / mean ||t||^2.
    rng = np.random.default_rng(7)
    cloud = rng.standard_normal((6, 5))  # same shapes as the antipodal test: one compilation
    t = rng.standard_normal((100, 5))
    g = glue_geometry(np.stack([cloud, cloud]), t, np.tile([1.0, -1.0], (100, 1)))
    assert math.isclose(float(g["capacity"]), 2.0 / np.mean(np.sum(t**2, axis=1)), rel_tol=1e-6)
    assert float(g["inseparable_fraction"]) == 1.0
    assert math.isclose(float(g["capacity_floor"]), float(g["capacity"]), rel_tol=1e-6)


def test_an_inseparable_dichotomy_of_points_spanning_fewer_units_is_counted_and_its_floor_is_their_rank():
    # The same cloud, 5 units of 8 (3 dead ones): v* keeps t's part in the dead units (norm ~0.6
    # ||t||), which separates nothing; the capacity's floor is P / E||t's part in the 5 units||^2.
    rng = np.random.default_rng(7)
    cloud = np.concatenate([rng.standard_normal((6, 5)), np.zeros((6, 3))], axis=1)
    t = rng.standard_normal((100, 8))
    g = glue_geometry(np.stack([cloud, cloud]), t, np.tile([1.0, -1.0], (100, 1)))
    floor = 2.0 / np.mean(np.sum(t[:, :5] ** 2, axis=1))
    assert math.isclose(float(g["capacity"]), floor, rel_tol=1e-6)
    assert float(g["inseparable_fraction"]) == 1.0
    assert math.isclose(float(g["capacity_floor"]), floor, rel_tol=1e-9)
    # separable (the two clouds apart along a live unit): above the floor, few probes separate nothing
    apart = np.stack([cloud + 3 * np.eye(8)[0], cloud - 3 * np.eye(8)[0]])
    g = glue_geometry(apart, t, np.tile([1.0, -1.0], (100, 1)))
    assert float(g["capacity"]) > 2 * float(g["capacity_floor"]) and float(g["inseparable_fraction"]) < 0.5


def test_point_capacity_is_two_cover():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((10, 1, 100))
    g = glue_analysis(X, key=0, n_probes=1024, center=False)
    assert abs(float(g["capacity"]) - 2.0) < 0.16
    assert float(g["converged_fraction"]) == 1.0


def test_simulated_capacity_of_points_follows_cover_counting():
    rng = np.random.default_rng(4)
    P, N = 10, 30
    X = rng.standard_normal((P, 1, N))
    sim = simulated_capacity(X, seed=1, n_reps=120, center=False)
    n = sim["n_values"]
    # Cover (1965): P(separable through the origin in n dims) = 2^(1-P) sum_{k<n} C(P-1, k).
    cover = np.array([2.0 ** (1 - P) * sum(math.comb(P - 1, k) for k in range(m)) for m in n])
    assert np.max(np.abs(sim["p_separable"] - cover)) < 0.15
    assert abs(sim["capacity"] - 2.0) < 0.2  # measured 2.03


def test_ball_capacity_closed_forms():
    # D = 1: the segment spans a planar wedge of angle 2 atan(R); the statistical dimension of a
    # wedge of angle phi is phi / pi + 1/2, so alpha = 1 / (1/2 + 2 atan(R) / pi).
    for R in (0.5, 1.0, 2.0):
        assert math.isclose(ball_capacity(R, 1), 1.0 / (0.5 + 2.0 * math.atan(R) / math.pi), rel_tol=1e-6)
    assert ball_capacity(0.0, 5) == 2.0
    # R -> inf: the cone of the ball becomes a half-space of R^(D+1), the feasible set the ray
    # along the centre (statistical dimension 1/2), so alpha -> 1 / (D + 1 - 1/2).
    assert math.isclose(ball_capacity(1e4, 3), 1.0 / 3.5, rel_tol=1e-3)


def test_glue_matches_ball_theory_on_orthogonal_segments():
    radii = (0.5, 2.0)
    X = np.stack([orthogonal_balls(10, R, 1, "segment") for R in radii])  # one batched call
    g = glue_analysis(X, key=1, n_probes=1024, center=False)
    for b, R in enumerate(radii):
        theory = ball_capacity(R, 1)
        assert abs(float(g["capacity"][b]) / theory - 1.0) < 0.06
        assert abs(float(g["dimension"][b]) - 1.0) < 0.1
        if R <= 1.0:
            assert abs(float(g["radius"][b]) - R) < 0.1 * R
    # Orthogonal blocks: centres and axes of different manifolds do not align.
    assert float(np.max(g["center_alignment"])) < 1e-3
    assert float(np.max(g["axis_alignment"])) < 1e-3
    assert float(np.max(g["center_axis_alignment"])) < 1e-3


def test_glue_matches_ball_theory_on_orthogonal_polygons():
    # A 16-gon inscribed in a circle of radius 1 (in-radius cos(pi/16) = 0.98): capacity a bit
    # above that of the disc.
    X = orthogonal_balls(8, 1.0, 2, "polygon", M=16)
    g = glue_analysis(X, key=2, n_probes=512, center=False)
    theory = ball_capacity(1.0, 2)
    assert abs(float(g["capacity"]) / theory - 1.0) < 0.08
    assert abs(float(g["dimension"]) - 2.0) < 0.2


@pytest.mark.parametrize("kind", ["sphere", "gauss"])
def test_glue_agrees_with_simulated_capacity(kind):
    X = random_manifolds(P=8, M=12, N=40, R=1.0, D=3, kind=kind, seed=5)
    g = glue_analysis(X, key=3, n_probes=512)
    sim = simulated_capacity(X, seed=3, n_reps=60)
    assert abs(float(g["capacity"]) / sim["capacity"] - 1.0) < 0.10


def test_anchor_summaries_equal_their_numpy_recomputation():
    # The anchor radius and the three alignments, by hand from the solver's anchors S (n, P, N):
    # S0 = mean over probes, S1 = S - S0; radius sqrt(E||S1||^2 / E||S0||^2); alignments the mean
    # |cos| over pairs mu != nu (centres, axes per probe then averaged, centre vs axis).
    rng = np.random.default_rng(3)
    P, M, N, n = 4, 6, 10, 48
    X = rng.standard_normal((P, M, N)) * 0.5 + 2.0 * rng.standard_normal((P, 1, N))
    t = rng.standard_normal((n, N))
    y = rng.choice([-1.0, 1.0], size=(n, P))
    S = solve_anchor_qp(X, t, y, center=True)["anchors"]
    S0 = S.mean(axis=0)
    S1 = S - S0
    off = ~np.eye(P, dtype=bool)

    def abs_cos(A, B):
        cos = (A @ B.T) / np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1))
        return np.abs(cos)[off].mean()

    got = glue_geometry(X, t, y)
    radius = np.sqrt(np.mean(np.sum(S1**2, axis=-1)) / np.mean(np.sum(S0**2, axis=-1)))
    assert 0.05 < radius < 5  # neither term vanishes: both sides of the ratio are tested
    np.testing.assert_allclose(got["radius_anchor"], radius, rtol=1e-6)
    np.testing.assert_allclose(got["center_alignment"], abs_cos(S0, S0), rtol=1e-6)
    np.testing.assert_allclose(got["axis_alignment"], np.mean([abs_cos(s, s) for s in S1]), rtol=1e-6)
    np.testing.assert_allclose(got["center_axis_alignment"], np.mean([abs_cos(S0, s) for s in S1]), rtol=1e-6)


def test_batched_equals_single_calls():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 3, 4, 6, 9))  # (repeats, tasks, P, M, N)
    n = 64
    t = rng.standard_normal((n, 9))
    y = rng.choice([-1.0, 1.0], size=(n, 4))
    batched = glue_geometry(X, t, y, batch_chunk=4)  # chunks of 4 and a remainder of 2
    assert batched["capacity"].shape == (2, 3)
    for r, j in ((0, 0), (1, 2)):
        # The same element repeated over the whole batch: every entry must equal the batched one.
        alone = glue_geometry(np.broadcast_to(X[r, j], X.shape), t, y, batch_chunk=4)
        for key in ("capacity", "dimension", "radius", "axis_alignment"):
            np.testing.assert_allclose(alone[key], batched[key][r, j], rtol=1e-9, atol=1e-12)


def test_the_probes_one_at_a_time_or_in_chunks_give_what_the_vmapped_probes_give():
    # The CPU's lowerings (each probe's QP alone, or a few at a time, in a loop) against the
    # accelerator's (all vmapped), on groupings where every probe converges: the same solution up
    # to rounding. Both solve the direct (K <= N) and the Woodbury (K > N) Newton step here; 20
    # at a time leaves a remainder of 8 probes.
    from cljax.analysis.glue_solver import probes_at_once

    rng = np.random.default_rng(11)
    for P, M, N in ((2, 8, 24), (6, 8, 12)):
        X = rng.standard_normal((3, P, 1, N)) + 0.3 * rng.standard_normal((3, P, M, N))
        t = rng.standard_normal((48, N))
        y = np.where(rng.standard_normal((48, P)) > 0, 1.0, -1.0)
        vmapped = glue_geometry(X, t, y, probe_chunk=48, batch_chunk=2)
        assert np.all(vmapped["converged_fraction"] == 1)
        for chunk in (1, 20):
            looped = glue_geometry(X, t, y, probe_chunk=chunk, batch_chunk=2)
            for key in ("capacity", "dimension", "radius", "axis_alignment", "center_axis_alignment", "max_iterations"):
                np.testing.assert_allclose(looped[key], vmapped[key], rtol=1e-9, atol=1e-12, err_msg=key)
    # The CPU's choice: one at a time for a large Newton step, 64 for a small one, never more
    # than the probes; an accelerator vmaps them all.
    cpu = jax.default_backend() == "cpu"
    assert probes_at_once(64, 64, 256) == (1 if cpu else 256)
    assert probes_at_once(4, 16, 256) == (64 if cpu else 256)
    assert probes_at_once(4, 16, 10) == 10


def test_the_compiled_geometry_grows_linearly_with_the_representation_width():
    """Temporary memory of one chunk of the GLUE program (8 groupings x 256 probes): an N x N
    buffer per probe (what jnp.linalg.norm(B, ord=2) of a wide matrix allocates) needed 161 GB at
    N = 3136, the width of a wide MLP; the thin SVDs need memory linear in N."""
    from cljax.analysis.glue import _geometry_batched
    from cljax.analysis.glue_solver import MAX_ITER, TOL

    def temp_bytes(N):
        with jax.enable_x64(True):
            X = jax.ShapeDtypeStruct((8, 2, 4, N), jnp.float64)
            t, y = jax.ShapeDtypeStruct((256, N), jnp.float64), jax.ShapeDtypeStruct((256, 2), jnp.float64)
            return _geometry_batched.lower(X, t, y, True, MAX_ITER, TOL, 8).compile().memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(256), temp_bytes(2048)
    assert large < 12 * small, (small, large)  # 8x the width: about 8x the memory, not 64x


def test_the_compiled_geometry_runs_again_on_the_same_shapes():
    """Its second call (the cached program) must return: with the singular-value threshold taken
    from the thin SVD's own values it hung on XLA:CPU, on the second call or the first of a
    second shape. In a child process, so a hang fails the test instead of stopping the suite."""
    import subprocess
    import sys

    code = ("import numpy as np\nfrom cljax.analysis.glue import glue_analysis\nrng = np.random.default_rng(0)\n"
            "for shape in [(4, 1, 2, 4, 64), (3, 5, 2, 16, 64)]:\n"
            "    m = rng.normal(size=shape)\n"
            "    for _ in range(3):\n"
            "        glue_analysis(m, 0, n_probes=64)\nprint('done')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "done", proc.stderr[-2000:]


def test_analyze_out_of_device_memory_is_one_line_naming_glue_probes():
    # --glue-probes 1000000000 asked 256 GB at once: a 60-line traceback.
    import jax

    from cljax.cli_errors import error_line

    exc = jax.errors.JaxRuntimeError("INTERNAL: Error dispatching computation: Out of memory allocating 256 bytes.")
    assert error_line(exc, "analyze") == ("out of device memory in `cljax analyze` (Out of memory allocating 256 bytes): "
                                          "lower --glue-probes, or pass --no-glue (nothing was written).", False)
    assert error_line(exc, "run") == (None, False)  # the run's budget should have refused it: a bug, with its traceback
