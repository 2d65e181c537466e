"""The QP of :mod:`cljax.analysis.glue`: projection of a probe onto the separating cone.

For manifolds M_mu (points x), a dichotomy y and a probe t, ``v*(y, t) = argmin_v 0.5 ||v - t||^2
s.t. y_mu <v, x> >= 0``; its dual is a non-negative least-squares problem in the multipliers
lambda_x >= 0, v* = t + sum_x lambda_x y_mu(x) x. This module solves it and reads off the anchor
points; :mod:`cljax.analysis.glue` turns them into the capacity and geometry measures.

Solver. The dual NNLS is solved in JAX by a primal-dual interior-point method (Mehrotra
predictor-corrector; Newton steps through an N x N Cholesky factor via the Woodbury identity, so
a step costs O(K N^2) for K points in N dimensions) on row-normalised points (the cone, hence v*,
is unchanged by rescaling each point), in float64 (inside ``jax.enable_x64``; the caller's
setting is untouched). The probes are vmapped together on an accelerator and in small batches,
or one at a time, on the CPU (:func:`probes_at_once`); any leading batch axes (tasks, repeats)
go in chunks. It stops when the scaled KKT error max(lambda.z / K, ||A v - z||_inf) / (1 + ||t||)
<= ``tol`` (``TOL``) or after ``max_iter`` (``MAX_ITER``) steps; the final error and the
fraction of probes that converged are returned. ||v* - t||^2 is read as ||t||^2 - ||v*||^2 (v*
is orthogonal to v* - t), the dual objective, whose error is second order. Its measured accuracy
against an active-set NNLS, its step counts and the size of the Monte-Carlo error beside it are
in ``docs/metrics.md`` (GLUE).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cljax.analysis.order import map_in_chunks

# The solver's defaults: stop at a scaled KKT error of TOL or after MAX_ITER steps.
TOL, MAX_ITER = 1e-7, 100

# ---- the QP: projection of t onto the separating cone, solved on the dual ----------------------
def _solve_dual(A_KN, t_N, max_iter: int, tol: float):
    """Primal-dual interior point (Mehrotra predictor-corrector) for the dual NNLS
    min_{lam >= 0} 0.5 ||t + A^T lam||^2 with slack z = A v (the margins), v = t + A^T lam.

    Each Newton step solves (A A^T + diag(z/lam)) dlam = r: for K > N through the Woodbury identity
    with the N x N Cholesky factor of I + A^T diag(lam/z) A (O(K N^2) a step, well posed however
    degenerate the points are), for K <= N with the K x K factor directly. Stops when
    max(mu, ||A v - z||_inf) / (1 + ||t||) <= tol (mu = lam.z / K) or after ``max_iter`` steps; a
    step that would make the error non-finite or grow tenfold (the float64 floor) is refused and
    ends the loop. Returns (lam, v, error, steps).
    """
    K, N = A_KN.shape
    scale = 1.0 + jnp.linalg.norm(t_N)
    eye = jnp.eye(N, dtype=A_KN.dtype)
    gram = A_KN @ A_KN.T if K <= N else None

    def error(lam, z):
        r_d = A_KN @ (t_N + A_KN.T @ lam) - z
        return jnp.maximum(jnp.dot(lam, z) / K, jnp.max(jnp.abs(r_d))) / scale

    def max_step(x, dx):
        ratio = jnp.where(dx < 0, -x / jnp.where(dx < 0, dx, -1.0), jnp.inf)
        return jnp.minimum(1.0, jnp.min(ratio))

    def body(state):
        lam, z, it, err, _ = state
        r_d = A_KN @ (t_N + A_KN.T @ lam) - z
        mu = jnp.dot(lam, z) / K
        w = lam / z
        if K <= N:  # few points: factor the K x K system A A^T + diag(z / lam) itself
            factor = jax.scipy.linalg.cho_factor(gram + jnp.diag(1.0 / w), lower=True)

            def newton(r_c):  # complementarity target r_c = z dlam + lam dz
                dlam = jax.scipy.linalg.cho_solve(factor, r_c / lam - r_d)
                return dlam, (r_c - z * dlam) / lam
        else:  # Woodbury: (A A^T + D)^-1 = D^-1 - D^-1 A (I + A^T D^-1 A)^-1 A^T D^-1
            factor = jax.scipy.linalg.cho_factor(eye + (A_KN * w[:, None]).T @ A_KN, lower=True)

            def newton(r_c):
                u = w * (r_c / lam - r_d)
                dlam = u - w * (A_KN @ jax.scipy.linalg.cho_solve(factor, A_KN.T @ u))
                return dlam, (r_c - z * dlam) / lam

        dlam_aff, dz_aff = newton(-lam * z)
        a_aff = jnp.minimum(max_step(lam, dlam_aff), max_step(z, dz_aff))
        sigma = (jnp.dot(lam + a_aff * dlam_aff, z + a_aff * dz_aff) / K / mu) ** 3
        dlam, dz = newton(sigma * mu - lam * z - dlam_aff * dz_aff)
        a = 0.99 * jnp.minimum(max_step(lam, dlam), max_step(z, dz))
        lam_new, z_new = lam + a * dlam, z + a * dz
        err_new = error(lam_new, z_new)
        ok = jnp.isfinite(err_new) & (err_new < 10.0 * err)
        return (jnp.where(ok, lam_new, lam), jnp.where(ok, z_new, z), it + 1, jnp.where(ok, err_new, err), ~ok)

    def cond(state):
        return (state[2] < max_iter) & (state[3] > tol) & ~state[4]

    ones = jnp.ones(K, A_KN.dtype)
    init = (ones, ones, jnp.asarray(0), error(ones, ones), jnp.asarray(False))
    lam, _, it, err, _ = jax.lax.while_loop(cond, body, init)
    return lam, t_N + A_KN.T @ lam, err, it



def _qp_anchors(X_PMN, t_KN, y_KP, *, center: bool, max_iter: int, tol: float, probe_chunk: int | None = None):
    """Solve the QP for every probe and read off the anchor points (anchors: :mod:`cljax.analysis.glue`
    docstring); the probes all vmapped (``probe_chunk`` None, or as many as the probes), or
    ``probe_chunk`` at a time (:func:`probes_at_once`)."""
    P, M, N = X_PMN.shape
    if center:
        X_PMN = X_PMN - jnp.mean(X_PMN, axis=(0, 1))
    X_KN = X_PMN.reshape(P * M, N)
    norms = jnp.linalg.norm(X_KN, axis=-1)
    # A point at the origin constrains nothing; its row is zero and its multiplier stays 0.
    Xn_KN = X_KN / jnp.where(norms > 0, norms, 1.0)[:, None]
    sign_nK = jnp.repeat(y_KP, M, axis=1)

    solve = functools.partial(_solve_dual, max_iter=max_iter, tol=tol)

    def one(probe):
        sign_K, t_N = probe
        return solve(sign_K[:, None] * Xn_KN, t_N)

    probes = (sign_nK, t_KN)
    together = probe_chunk is None or probe_chunk >= t_KN.shape[0]  # all of them: one vmap, no loop
    lam_nK, v_nN, res_n, it_n = jax.vmap(one)(probes) if together else map_in_chunks(one, probes, probe_chunk)

    # Interior-point iterates keep every multiplier positive: a point is active when its
    # multiplier exceeds its margin (the ratio tends to infinity on the active set, to 0 off it);
    # the others are set to 0. Multipliers go back to the units of the raw points; anchors are
    # their weighted means.
    margins_nK = sign_nK * (v_nN @ Xn_KN.T)
    lam_nK = jnp.where(lam_nK > margins_nK, lam_nK, 0.0)
    lam_raw = jnp.where(norms > 0, lam_nK / jnp.where(norms > 0, norms, 1.0), 0.0).reshape(-1, P, M)
    active = lam_nK.reshape(-1, P, M).sum(-1) > 0
    wsum = lam_raw.sum(-1)
    weighted = jnp.einsum("kpm,pmn->kpn", lam_raw, X_PMN) / jnp.where(wsum > 0, wsum, 1.0)[..., None]
    margins = y_KP[..., None] * jnp.einsum("kn,pmn->kpm", v_nN, X_PMN)
    touching = X_PMN[jnp.arange(P)[None, :], jnp.argmin(margins, axis=-1)]
    anchors = jnp.where(active[..., None], weighted, touching)
    return {
        "v": v_nN,
        "multipliers": lam_raw,
        "anchors": anchors,
        "active": active,
        "residual": res_n,
        "iterations": it_n,
        "points": X_PMN,
    }



# On the CPU: a Newton step (about this many flops, or more) whose probes are solved one at a
# time, and how many go together below it, where a lone probe's step would be mostly XLA's cost
# per operation (docs/benchmark.md).
LARGE_STEP_FLOPS, SMALL_STEP_PROBES = 50_000, 64


def probes_at_once(K: int, N: int, n_probes: int) -> int:
    """How many probes' QPs the solver runs together (vmapped), for K points in N dimensions. On
    an accelerator all of them: it needs the batch to keep busy. On the CPU one at a time when a
    Newton step is large, else ``SMALL_STEP_PROBES``: a vmapped loop runs every probe of its
    batch to the step count of the slowest one (most stop in 8-35 steps, a few take 100), and
    XLA:CPU's batched small products and LAPACK kernels take longer per matrix than single ones."""
    if jax.default_backend() != "cpu":
        return n_probes
    step = K**3 / 3 + 4 * K * N if K <= N else K * N * N + N**3 / 3 + 4 * K * N
    return min(n_probes, 1 if step >= LARGE_STEP_FLOPS else SMALL_STEP_PROBES)


@functools.partial(jax.jit, static_argnames=("center", "max_iter", "tol", "probe_chunk"))
def _qp_anchors_jit(X_PMN, t_KN, y_KP, center, max_iter, tol, probe_chunk):
    return _qp_anchors(X_PMN, t_KN, y_KP, center=center, max_iter=max_iter, tol=tol, probe_chunk=probe_chunk)


def solve_anchor_qp(
    manifolds, probes, dichotomies, center: bool = True, max_iter: int = MAX_ITER, tol: float = TOL
) -> dict[str, np.ndarray]:
    """The QP and anchor points of one set of manifolds for given probes, as numpy arrays (float64).

    Args: manifolds (P, M, N); probes t (n, N); dichotomies y (n, P) in {+1, -1}.
    Returns ``v`` (n, N) = argmin_v 0.5||v - t||^2 s.t. y_mu <v, x> >= 0; ``multipliers``
    (n, P, M) (dual variables in the units of the centred points); ``anchors`` (n, P, N);
    ``active`` (n, P); ``residual`` (n,) (scaled KKT error of the solver); ``iterations`` (n,);
    ``points`` (P, M, N) (centred when ``center``). v* = t + sum y_mu lambda_x x.
    """
    with jax.enable_x64(True):
        X = jnp.asarray(manifolds, jnp.float64)
        t = jnp.asarray(probes, jnp.float64)
        y = jnp.asarray(dichotomies, jnp.float64)
        P, M, N = X.shape
        out = _qp_anchors_jit(X, t, y, bool(center), int(max_iter), float(tol), probes_at_once(P * M, N, t.shape[0]))
        return {k: np.asarray(v) for k, v in out.items()}

