"""Manifold geometry and capacity of class manifolds (``glue_analysis``).

Theory. P manifolds (point clouds) M_mu in R^N, a dichotomy y in {+1, -1}^P and a Gaussian probe
t ~ N(0, I_N). The quadratic program

    v*(y, t) = argmin_v 0.5 ||v - t||^2   s.t.   y_mu <v, x> >= 0   for every x in M_mu, every mu

projects t onto the cone of weight vectors that separate the dichotomy through the origin. Its
dual is a non-negative least-squares problem in the multipliers lambda_x >= 0,
v* = t + sum_x lambda_x y_mu(x) x, and the manifold capacity (Gardner volume, mean-field manifold
theory: Chung, Lee & Sompolinsky, PRX 8, 031003 (2018); Cohen, Chung, Lee & Sompolinsky, Nat.
Commun. 11, 746 (2020); the multi-manifold anchor-point form GLUE: Chou, Chung et al. 2024/2025)
is

    alpha^-1 = (1/P) E_{y,t} ||v*(y, t) - t||^2.

||v* - t||^2 averaged over t is the statistical dimension of the polar cone, so by the conic
kinematic formula (Amelunxen, Lotz, McCoy & Tropp 2014) P alpha^-1 is where a random projection
to n dimensions starts separating the dichotomy: this is what
:func:`~cljax.analysis.glue_reference.simulated_capacity` measures directly. For one point per
manifold and P << N, alpha -> 2 (Cover 1965).

Anchor points. For a manifold with positive total multiplier the anchor point is the
multiplier-weighted mean of its points, s_mu(y, t) = sum_x lambda_x x / sum_x lambda_x, a point of
its convex hull; for a manifold with no active constraint (interior regime) it is the touching
point argmin_x y_mu <v*, x> (Chung et al. 2018). From the anchors S (P x N) of each (y, t):
centre s0_mu = E_{y,t} s_mu, axis part s1_mu = s_mu - s0_mu, G0 = S0 S0^T, G1 = S1 S1^T and

    dimension        D   = (1/P) E_{y,t} t^T S1^T G1^+ S1 t      (t projected on the axis parts)
    radius term      N_R = (1/P) E_{y,t} t^T S1^T (G0 + G1)^+ S1 t
    radius           R   = sqrt(N_R / (D - N_R))
    approx. capacity (1 + R^-2) / D  (= 1 / N_R; the large-D ball approximation, centre-axis
                     correlations dropped: poor at D of a few units)
    anchor radius    sqrt(E ||s1||^2 / E ||s0||^2)   (the plain norm ratio, kept apart)
    centre alignment       mean_{mu != nu} |cos(s0_mu, s0_nu)|
    axis alignment         E_{y,t} mean_{mu != nu} |cos(s1_mu, s1_nu)|
    centre-axis alignment  E_{y,t} mean_{mu != nu} |cos(s0_mu, s1_nu)|

For mutually orthogonal D-dimensional balls of radius R (centre norm 1) the capacity equals the
mean-field ball capacity :func:`~cljax.analysis.glue_reference.ball_capacity` up to the probe
average, D is recovered and R is recovered at R <= 1 (a little low at larger R, where
embedded-regime anchors lie inside the ball); the approximation (1 + R^-2) / D is poor at small
D. Measured agreement: ``docs/metrics.md`` (GLUE).

Solver: :mod:`cljax.analysis.glue_solver` (interior point on the dual NNLS in float64; method
and measured accuracy there). ``N_PROBES`` probes by default, here, in
:func:`~cljax.analysis.driver.analyze_run` and in ``cljax analyze``; the Monte-Carlo error of
the probe average is returned beside the capacity (``capacity_mc_error``). Points are centred on their global mean first
(``center=True``, Cohen et al. 2020), so the separating hyperplanes pass through the centroid of
all manifolds. Ground truth for checks: :mod:`cljax.analysis.glue_reference`.

Dichotomies. ``"random"``: y uniform in {+1, -1}^P, one per probe (the P = 2T grouping across
tasks). For the P = 2 grouping of one binary task use ``"task"`` (y = (+1, -1), the task's own
labels): with two centred manifolds a same-sign dichotomy is not separable by design, and random
dichotomies would measure that instead of the task.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cljax.analysis.glue_solver import MAX_ITER, TOL, _qp_anchors, probes_at_once
from cljax.analysis.order import after, map_in_chunks  # each decomposition waits for the one before it

# The default number of Gaussian probes (y, t) of every GLUE call: the library, the driver, the CLI.
N_PROBES = 256
# A grouping whose probes reach the solver's tolerance less often than this is named by `cljax
# analyze`: its capacity then rests on stalled solves (nearly degenerate points, docs/metrics.md).
GLUE_RELIABLE = 0.9

GLUE_KEYS = (
    "capacity",
    "capacity_mc_error",
    "dimension",
    "radius",
    "radius_anchor",
    "center_alignment",
    "axis_alignment",
    "center_axis_alignment",
    "approx_capacity",
)
DIAGNOSTIC_KEYS = ("max_residual", "converged_fraction", "max_iterations", "inseparable_fraction", "capacity_floor")


# A singular value counts as zero below max(_SV_REL * the largest, the floor the caller gives). The
# largest is read off the small (P, P) Gram matrix: jnp.linalg.norm(B, ord=2) of a wide (P, N)
# matrix allocates N x N, which vmapped over the probes ran out of memory at N = 3136.
_SV_REL = 1e-5


def _largest_singular_value(B):
    """||B||_2 of a wide (P, N) matrix, from the eigenvalues of B B^T (P x P)."""
    return jnp.sqrt(jnp.maximum(jnp.linalg.eigvalsh(B @ B.T)[-1], 0.0))


def _pinv_quadratic(B, z, sv_floor):
    """z^T (B B^T)^+ z for z in the column space of B, via the thin SVD of B; singular values
    below max(``_SV_REL`` ||B||_2, ``sv_floor``) count as zero."""
    U, s, _ = jnp.linalg.svd(B, full_matrices=False)
    keep = s > jnp.maximum(_SV_REL * _largest_singular_value(after(s, B)), sv_floor)
    coef = (U.T @ z) / jnp.where(keep, s, 1.0)
    return jnp.sum(jnp.where(keep, coef, 0.0) ** 2)


def _projection_sq(B, t, sv_floor):
    """||proj of t onto the row space of B||^2; singular values below max(``_SV_REL`` ||B||_2,
    ``sv_floor``) count as zero."""
    _, s, Vt = jnp.linalg.svd(B, full_matrices=False)
    keep = s > jnp.maximum(_SV_REL * _largest_singular_value(after(s, B)), sv_floor)
    return jnp.sum(jnp.where(keep, Vt @ t, 0.0) ** 2)


def _in_span_sq(X_PMN, vs, sv_floor):
    """||each vector of ``vs`` projected on the span of the points||^2, for each array of ``vs``
    ((n, N) each). Singular values as in :func:`_projection_sq`."""
    _, s, Vt = jnp.linalg.svd(X_PMN.reshape(-1, X_PMN.shape[-1]), full_matrices=False)
    keep = s > jnp.maximum(_SV_REL * s[0], sv_floor)
    return [jnp.sum(jnp.where(keep, a @ Vt.T, 0.0) ** 2, axis=-1) for a in vs]


def _mean_offdiag_abs_cos(A, B, zero_below):
    """mean_{mu != nu} |cos(A_mu, B_nu)| of two (P, N) stacks. A vector whose norm is at most
    ``zero_below`` (set relative to the points' scale) is zero and gives cos 0: the axis parts of
    point manifolds are rounding residue, whose cosines would read as a real angle."""
    P = A.shape[0]
    na = jnp.linalg.norm(A, axis=-1)
    nb = jnp.linalg.norm(B, axis=-1)
    both = (na[:, None] > zero_below) & (nb[None, :] > zero_below)
    denom = jnp.where(both, na[:, None] * nb[None, :], 1.0)
    cos = jnp.where(both, (A @ B.T) / denom, 0.0)
    off = 1.0 - jnp.eye(P, dtype=A.dtype)
    return jnp.sum(jnp.abs(cos) * off) / jnp.maximum(P * (P - 1), 1)


def _geometry(X_PMN, t_KN, y_KP, *, center: bool, max_iter: int, tol: float, probe_chunk: int | None):
    """GLUE on one set of manifolds (P, M, N) with probes t (n_t, N) and dichotomies y (n_t, P)."""
    P, M, N = X_PMN.shape
    dtype = X_PMN.dtype
    qp = _qp_anchors(X_PMN, t_KN, y_KP, center=center, max_iter=max_iter, tol=tol, probe_chunk=probe_chunk)
    X_PMN, S_nPN = qp["points"], qp["anchors"]

    # Capacity from the QP value ||v* - t||^2 = ||t||^2 - ||v*||^2 (v* is the projection of t on a
    # cone, so v* is orthogonal to v* - t). The right side is twice the dual objective at the
    # iterate: its error is the dual suboptimality, second order in the multipliers' error, where
    # ||v - t||^2 itself is only first order.
    dist_sq = jnp.maximum(jnp.sum(t_KN**2, axis=-1) - jnp.sum(qp["v"] ** 2, axis=-1), 0.0)
    capacity = 1.0 / (jnp.mean(dist_sq) / P)
    # Standard error of the probe average, carried to alpha = P / mean by the delta method.
    n_t = dist_sq.shape[0]
    mean_sq = jnp.mean(dist_sq)
    se = jnp.std(dist_sq, ddof=1) / jnp.sqrt(n_t) if n_t > 1 else jnp.asarray(jnp.nan, dtype)
    capacity_mc_error = capacity * se / jnp.where(mean_sq > 0, mean_sq, jnp.nan)

    S0 = S_nPN.mean(axis=0)
    S1 = S_nPN - S0
    scale = jnp.sqrt(jnp.mean(jnp.sum(X_PMN**2, axis=-1)))
    sv_floor = 1e-6 * scale

    def per_probe(S1_PN, t_N):
        d_term = _projection_sq(S1_PN, t_N, sv_floor)
        r_term = _pinv_quadratic(after(d_term, jnp.concatenate([S0, S1_PN], axis=1)), S1_PN @ t_N, sv_floor)
        return (d_term, r_term, _mean_offdiag_abs_cos(S1_PN, S1_PN, sv_floor),
                _mean_offdiag_abs_cos(S0, S1_PN, sv_floor))

    d_n, r_n, axis_n, cross_n = jax.vmap(per_probe)(S1, t_KN)
    D = jnp.mean(d_n) / P
    # N_R <= D; with every axis part below the singular-value floor (point manifolds) D is 0 and
    # N_R is rounding residue (~1e-32), which would read as a finite approx_capacity of ~1e32
    NR = jnp.where(D > 0, jnp.mean(r_n) / P, 0.0)
    gap = D - NR
    radius = jnp.where((NR > 0) & (gap > 0), jnp.sqrt(NR / jnp.where(gap > 0, gap, 1.0)), 0.0)
    approx = jnp.where(NR > 0, 1.0 / jnp.where(NR > 0, NR, 1.0), jnp.inf)
    s0_sq = jnp.mean(jnp.sum(S0**2, axis=-1))
    radius_anchor = jnp.sqrt(jnp.mean(jnp.sum(S1**2, axis=-1)) / jnp.where(s0_sq > 0, s0_sq, 1.0))
    nan = jnp.asarray(jnp.nan, dtype)
    multi = P > 1
    res_n = qp["residual"]
    v_span, t_span = _in_span_sq(after((d_n, r_n), X_PMN), (qp["v"], t_KN), sv_floor)  # its SVD after the others
    return {
        "capacity": capacity,
        "capacity_mc_error": capacity_mc_error,
        "dimension": D,
        "radius": radius,
        "radius_anchor": radius_anchor,
        "center_alignment": _mean_offdiag_abs_cos(S0, S0, sv_floor) if multi else nan,
        "axis_alignment": jnp.mean(axis_n) if multi else nan,
        "center_axis_alignment": jnp.mean(cross_n) if multi else nan,
        "approx_capacity": approx,
        "max_residual": jnp.max(res_n),
        "converged_fraction": jnp.mean((res_n <= tol).astype(dtype)),
        "max_iterations": jnp.max(qp["iterations"]),
        # v* separates nothing: margin 0 on every point, no part in their span (every probe of an
        # inseparable dichotomy). Where the points span all N units that is v* ~ 0; where they span
        # fewer (P M <= N after centring, dead units), v* keeps t's part orthogonal to them.
        "inseparable_fraction": jnp.mean((v_span <= 1e-4 * t_span).astype(dtype)),
        # the capacity where every dichotomy is inseparable, ~ P / (the points' rank)
        "capacity_floor": P / jnp.mean(t_span),
    }


_STATIC = ("center", "max_iter", "tol", "batch_chunk", "probe_chunk")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _geometry_batched(X_BPMN, t_KN, y_KP, center, max_iter, tol, batch_chunk, probe_chunk=None):
    # Chunks of the batch (vmapped within a chunk) bound the memory for many tasks.
    one = functools.partial(_geometry, t_KN=t_KN, y_KP=y_KP, center=center, max_iter=max_iter, tol=tol,
                            probe_chunk=probe_chunk)
    return map_in_chunks(one, X_BPMN, batch_chunk)


def unsolvable(manifolds, center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean arrays of the batch shape (...) of manifolds (..., P, M, N): the groupings
    that hold a non-finite value (a diverged network's), and the finite ones whose points are
    all the same after centering (all zero without it) up to rounding: a dead or collapsed
    network's. No hyperplane constraint then binds, v* = t, and the capacity would read
    infinite (or ~1e32 from rounding); GLUE is not solved for either kind."""
    X = np.asarray(manifolds, np.float64)
    axes = (-3, -2, -1)
    nonfinite = ~np.isfinite(X).all(axis=axes)
    with np.errstate(invalid="ignore"):
        spread = np.abs(X - X.mean(axis=(-3, -2), keepdims=True) if center else X).max(axis=axes)
        constant = ~nonfinite & ~(spread > 1e-12 * np.abs(X).max(axis=axes))
    return nonfinite, constant


def glue_geometry(
    manifolds, probes, dichotomies, center: bool = True, max_iter: int = MAX_ITER, tol: float = TOL,
    batch_chunk: int | None = None, probe_chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """:func:`glue_analysis` for given probes t (n, N) and dichotomies y (n, P); manifolds
    (..., P, M, N) with any leading axes (``batch_chunk`` of them solved at once, all sharing the
    probes). Returns float64 arrays of shape (...); NaN in every one of them for a batch element
    that :func:`unsolvable` names (non-finite, or points that do not vary), which is not solved.
    ``probe_chunk``: how many probes' QPs are vmapped together (default: the backend's and the
    problem size's, :func:`~cljax.analysis.glue_solver.probes_at_once`); ``batch_chunk``
    defaults to 8 when all of them are, else to 1."""
    shape = np.shape(manifolds)
    if len(shape) < 3:
        raise ValueError(f"manifolds must be (..., P, M, N), got shape {shape}")
    batch_shape, (P, M, N) = shape[:-3], shape[-3:]
    n_probes = np.shape(probes)[0] if np.ndim(probes) else 1  # (a wrong shape is refused below)
    probe_chunk = probes_at_once(P * M, N, n_probes) if probe_chunk is None else max(1, min(int(probe_chunk), n_probes))
    batch_chunk = (8 if probe_chunk == n_probes else 1) if batch_chunk is None else batch_chunk
    X_np = np.asarray(manifolds, np.float64).reshape((-1, P, M, N))
    finite = ~np.logical_or(*unsolvable(X_np, center))  # the groupings that are solved
    with jax.enable_x64(True):
        t = jnp.asarray(probes, jnp.float64)
        y = jnp.asarray(dichotomies, jnp.float64)
        if t.ndim != 2 or t.shape[1] != N or y.shape != (t.shape[0], P):
            raise ValueError(f"probes must be (n, {N}) and dichotomies (n, {P}); got {t.shape} and {y.shape}")
        X = jnp.asarray(X_np[finite] if not finite.all() else X_np)
        if X.shape[0] == 0:
            names = jax.eval_shape(lambda: _geometry_batched(jnp.zeros((1, P, M, N)), t, y, bool(center), int(max_iter),
                                                             float(tol), 1, probe_chunk))
            return {k: np.full(batch_shape, np.nan) for k in names}
        chunk = max(1, min(int(batch_chunk), X.shape[0]))
        out = _geometry_batched(X, t, y, bool(center), int(max_iter), float(tol), chunk, probe_chunk)
    if finite.all():
        return {k: np.asarray(v).reshape(batch_shape) for k, v in out.items()}
    filled = {k: np.full(finite.shape, np.nan) for k in out}
    for k, v in out.items():
        filled[k][finite] = np.asarray(v)
    return {k: v.reshape(batch_shape) for k, v in filled.items()}


def make_dichotomies(key, n_probes: int, P: int, dichotomies: Any = "random") -> jnp.ndarray:
    """Dichotomies y (n_probes, P) in {+1, -1}.

    ``"random"``: uniform, one per probe. ``"task"``: (+1, -1) for every probe (P must be 2).
    An array (P,) is used for every probe; an array (n_probes, P) as given.
    """
    if isinstance(dichotomies, str):
        if dichotomies == "random":
            return jnp.where(jax.random.bernoulli(key, 0.5, (n_probes, P)), 1.0, -1.0)
        if dichotomies == "task":
            if P != 2:
                raise ValueError(f"dichotomies='task' needs P = 2 manifolds (one binary task), got P = {P}")
            return jnp.tile(jnp.array([1.0, -1.0]), (n_probes, 1))
        raise ValueError(f"dichotomies must be 'random', 'task' or an array, got {dichotomies!r}")
    y = jnp.asarray(dichotomies, jnp.float32)
    if y.shape == (P,):
        y = jnp.tile(y, (n_probes, 1))
    if y.shape != (n_probes, P) or not bool(jnp.all(jnp.abs(y) == 1)):
        raise ValueError(f"dichotomies must be +-1 with shape ({P},) or ({n_probes}, {P}), got {y.shape}")
    return y


def glue_analysis(
    manifolds,
    key=0,
    n_probes: int = N_PROBES,
    dichotomies: Any = "random",
    center: bool = True,
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    batch_chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """Manifold capacity and GLUE geometry of P manifolds, batched over leading axes.

    Solver: primal-dual interior point on the dual of the QP, in float64, stopping at a scaled KKT
    error of ``tol`` = 1e-7 or after ``max_iter`` = 100 steps; ``N_PROBES`` probes by default
    (:mod:`cljax.analysis.glue_solver`: method, measured accuracy).

    Args:
      manifolds: (..., P, M, N) array: P manifolds of M points in N dimensions; leading axes
        (repeats, tasks, snapshots) are vmapped and share the same probes and dichotomies.
      key: a ``jax.random`` key or an int seed for the probes t ~ N(0, I_N) and dichotomies.
      n_probes: number of (y, t) samples (default ``N_PROBES``).
      dichotomies: ``"random"``, ``"task"`` or an array, see :func:`make_dichotomies`.
      center: subtract the mean of all points of all manifolds first (Cohen et al. 2020).
      max_iter, tol: interior-point steps and the scaled KKT tolerance (:mod:`cljax.analysis.glue_solver`).
      batch_chunk: how many batch elements are solved at once (memory bound; default: the
        backend's, :func:`glue_geometry`).

    Returns:
      numpy arrays of shape (...): ``capacity`` (alpha = P / E||v* - t||^2),
      ``capacity_mc_error`` (its Monte-Carlo standard error over the probes, delta method:
      alpha * sd(||v* - t||^2) / (sqrt(n_probes) E||v* - t||^2); NaN for one probe or
      E||v* - t||^2 = 0), ``dimension`` (D),
      ``radius`` (R), ``radius_anchor``, ``center_alignment``, ``axis_alignment``,
      ``center_axis_alignment`` (NaN for P = 1), ``approx_capacity`` ((1 + R^-2)/D = 1/N_R; inf for
      point manifolds, whose D = R = 0), solver diagnostics ``max_residual``,
      ``converged_fraction``, ``max_iterations``; ``inseparable_fraction``: the fraction of
      (y, t) whose v* separates nothing (margin 0 on every point: ||v* in the points' span|| <=
      0.01 ||t in it||), which every probe of an inseparable dichotomy does, and a separable one's
      where t points away from every separating direction; ``capacity_floor``: P / E||t in the
      points' span||^2 (~ P / their rank, N where they span every unit), the capacity when
      every dichotomy is inseparable. A capacity at its floor, with inseparable_fraction ~ 1,
      says "not separable" and measures the rank, not the geometry. Formulas: module docstring.
    """
    shape = np.shape(manifolds)
    if len(shape) < 3:
        raise ValueError(f"manifolds must be (..., P, M, N), got shape {shape}")
    P, N = shape[-3], shape[-1]
    if isinstance(key, int):
        key = jax.random.PRNGKey(key)
    k_t, k_y = jax.random.split(key)
    t = jax.random.normal(k_t, (n_probes, N), jnp.float32)
    y = make_dichotomies(k_y, n_probes, P, dichotomies)
    return glue_geometry(manifolds, t, y, center=center, max_iter=max_iter, tol=tol, batch_chunk=batch_chunk)
