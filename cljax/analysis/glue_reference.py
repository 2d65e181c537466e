"""Ground truth for :mod:`cljax.analysis.glue`: the capacity by simulation and the ball theory.

:func:`simulated_capacity` measures the capacity directly, by random projections and a
separability LP (Cohen et al. 2020; Cover 1965); :func:`ball_capacity` is the mean-field capacity
of L2 balls (Chung, Lee & Sompolinsky 2016, 2018). Both serve to check GLUE on synthetic
manifolds; neither is used by the analysis driver.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from cljax.analysis.glue import make_dichotomies


# ---- ground truth: simulated capacity by random projections --------------------------------------
def _separable(Z_KN: np.ndarray, sign_K: np.ndarray) -> bool:
    """Whether some w has sign_k <w, z_k> > 0 for all k (homogeneous), by the LP
    max delta s.t. sign_k <w, z_k / ||z_k||> >= delta, |w_i| <= 1, delta <= 1 (scipy HiGHS)."""
    from scipy.optimize import linprog

    norms = np.linalg.norm(Z_KN, axis=1)
    if np.any(norms == 0):
        return False  # a point at the origin cannot be on the strict side of any hyperplane
    A = sign_K[:, None] * Z_KN / norms[:, None]
    K, n = A.shape
    c = np.zeros(n + 1)
    c[-1] = -1.0
    A_ub = np.hstack([-A, np.ones((K, 1))])
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(K), bounds=[(-1.0, 1.0)] * n + [(None, 1.0)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"separability LP failed: {res.message}")
    return bool(-res.fun > 1e-6)


def simulated_capacity(
    manifolds,
    seed: int = 0,
    n_reps: int = 40,
    dichotomies: Any = "random",
    center: bool = True,
) -> dict[str, Any]:
    """Capacity by simulation: P / n*, n* the dimension where a dichotomy becomes separable w.p. 1/2.

    For each of ``n_reps`` repetitions draw a dichotomy y (as in :func:`make_dichotomies`) and a
    Gaussian projection Pi (N x N); project the points to the first n rows of Pi and find, by
    bisection over n in [1, N], the smallest n at which the P manifolds are linearly separable
    through the origin under y (an LP, scipy ``linprog``/HiGHS; nested projections make
    separability monotone in n). p(n) is the fraction of repetitions separable at n (p(0) = 0);
    n* is where p crosses 1/2, linearly interpolated between integers; capacity = P / n*. If fewer
    than half of the repetitions are separable even at n = N, n* is undefined and capacity is
    NaN. Separable means an LP margin > 1e-6 on unit-normalised points with |w_i| <= 1. Cohen et
    al. (2020), methods ("simulation capacity"); Cover (1965).

    Agreement with :func:`glue_analysis`, measured on 8 random sphere and Gaussian manifolds
    (D = 3, R = 1, M = 12, N = 40): 2.6% and 3.1% with 4096 probes and 400 repetitions (n* about
    0.45 below P / alpha_GLUE, a finite-size offset of order one dimension); 6-7% at 512 probes
    and 60 repetitions, where both Monte-Carlo errors are a few percent.

    Returns a dict with ``capacity``, ``n_star``, ``n_values`` (0..N), ``p_separable`` and the
    per-repetition minimal dimensions ``n_min`` (N + 1 where never separable).
    """
    X = np.asarray(manifolds, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"manifolds must be (P, M, N), got shape {X.shape}")
    P, M, N = X.shape
    if center:
        X = X - X.mean(axis=(0, 1))
    X_KN = X.reshape(P * M, N)
    rng = np.random.default_rng(seed)
    y_all = np.asarray(make_dichotomies(jax.random.PRNGKey(seed), n_reps, P, dichotomies))
    n_min = np.empty(n_reps, dtype=np.int64)
    for rep in range(n_reps):
        sign_K = np.repeat(y_all[rep], M)
        Z_KN = X_KN @ rng.standard_normal((N, N)).T  # all N projected coordinates; prefixes nest
        if not _separable(Z_KN, sign_K):
            n_min[rep] = N + 1
            continue
        lo, hi = 0, N  # invariant: not separable at lo (0 dims never is), separable at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _separable(Z_KN[:, :mid], sign_K):
                hi = mid
            else:
                lo = mid
        n_min[rep] = hi
    n_values = np.arange(N + 1)
    p = (n_min[None, :] <= n_values[:, None]).mean(axis=1)
    above = np.nonzero(p >= 0.5)[0]
    if above.size == 0:
        n_star = math.nan
    else:
        hi = int(above[0])
        lo = hi - 1
        n_star = lo + (0.5 - p[lo]) / (p[hi] - p[lo])
    return {
        "capacity": P / n_star if np.isfinite(n_star) else math.nan,
        "n_star": n_star,
        "n_values": n_values,
        "p_separable": p,
        "n_min": n_min,
    }


# ---- mean-field theory of balls, for checks on synthetic manifolds ---------------------------
def ball_capacity(radius: float, dim: int) -> float:
    """Mean-field capacity (margin 0) of D-dimensional L2 balls of radius R (centre norm 1).

    alpha_Ball^-1 = E_{r ~ chi_D, t0 ~ N(0,1)} F(r, t0) with
    F = 0 if t0 > R r (interior), (R r - t0)^2 / (1 + R^2) if -r/R < t0 < R r (touching),
    t0^2 + r^2 if t0 < -r/R (embedded). Chung, Lee & Sompolinsky, PRE 93, 060301 (2016) and
    PRX 8, 031003 (2018). R = 0 or D = 0 gives the point capacity 2.
    """
    from scipy import integrate, special, stats

    R, D = float(radius), int(dim)
    if R == 0.0 or D == 0:
        return 2.0
    Phi, phi = special.ndtr, stats.norm.pdf

    def inner(r):
        a, b = -r / R, R * r
        # int_a^b phi(t0) (b - t0)^2 dt0 with the moments of the standard normal on [a, b]
        touch = (b**2 + 1.0) * (Phi(b) - Phi(a)) - 2.0 * b * (phi(a) - phi(b)) + a * phi(a) - b * phi(b)
        touch /= 1.0 + R**2
        embed = (1.0 + r**2) * Phi(a) - a * phi(a)
        return stats.chi.pdf(r, D) * (touch + embed)

    inv, _ = integrate.quad(inner, 0.0, np.inf, limit=200)
    return 1.0 / inv
