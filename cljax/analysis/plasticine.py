"""Plasticity metrics of representations and weights (``plasticine_analysis``).

Representation metrics take ``h`` of shape ``(..., S, H)``: S samples (rows) by H units
(columns), with any leading axes (snapshots L, repeats R, tasks T); they reduce the last two
axes and return shape ``(...)``. Weight metrics take a pytree (nested dict) of arrays whose
first ``batch_ndim`` axes are kept (e.g. (L, R)) and reduce the rest over all P parameters.
Definitions follow ``docs/metrics.md``; where the literature gives one name to two quantities both
are kept under their own names (``stable_rank`` vs ``srank``; ``feature_variance`` vs
``feature_variance_across_units``).

Conventions for degenerate inputs (an all-zero representation, e.g. a fully dead layer):
dormant ratio 1 (every unit is dormant), effective rank, stable rank and srank 0. A matrix that
holds a non-finite value (a diverged network's) has none of them: NaN, which the summaries'
spread leaves out and counts (``cljax.analysis.spread``).
"""

from __future__ import annotations

import functools

import jax
import numpy as np


def _h(h) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    if h.ndim < 2:
        raise ValueError(f"representation must be (..., S, H), got shape {h.shape}")
    return h


def _finite_matrices(fn):
    """``fn`` of h (..., S, H), NaN in place of its value (or values) for each (S, H) matrix that
    holds a non-finite value; the others see exactly what they would alone."""

    def mask(ok, value):
        value = np.asarray(value)
        return value if ok.all() else np.where(ok.reshape(ok.shape + (1,) * (value.ndim - ok.ndim)), value, np.nan)

    @functools.wraps(fn)
    def wrapped(h, *args, **kwargs):
        h = _h(h)
        ok = np.isfinite(h).all(axis=(-2, -1))
        out = fn(np.where(ok[..., None, None], h, 0.0) if not ok.all() else h, *args, **kwargs)
        return {k: mask(ok, v) for k, v in out.items()} if isinstance(out, dict) else mask(ok, out)

    return wrapped


@_finite_matrices
def unit_scores(h) -> np.ndarray:
    """ReDo score s_i = mean_x |h_i(x)| / ((1/H) sum_k mean_x |h_k(x)|), shape (..., H).

    Units of an all-zero representation get score 0. Sokar et al. (2023), "The dormant neuron
    phenomenon in deep reinforcement learning", eq. (1).
    """
    h = _h(h)
    act = np.abs(h).mean(axis=-2)
    norm = act.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, act / np.where(norm > 0, norm, 1.0), 0.0)


@_finite_matrices
def dormant_ratio(h, tau: float = 0.025) -> np.ndarray:
    """Fraction of tau-dormant units: #{i : s_i <= tau} / H, shape (...).

    s_i is the ReDo score (:func:`unit_scores`). tau = 0.025 is the default of Sokar et al.
    (2023); tau = 0 counts exactly dead units (mean |h_i| = 0 over the samples).
    """
    return (unit_scores(h) <= tau).mean(axis=-1)


@_finite_matrices
def active_fraction(h) -> np.ndarray:
    """1 - mean(h == 0) over samples and units, shape (...) (for ReLU features). Plasticine."""
    h = _h(h)
    return 1.0 - (h == 0).mean(axis=(-2, -1))


@_finite_matrices
def singular_values(h) -> np.ndarray:
    """Singular values of each (S, H) matrix, descending, shape (..., min(S, H))."""
    return np.linalg.svd(_h(h), compute_uv=False)


@_finite_matrices
def effective_rank(h) -> np.ndarray:
    """erank = exp(-sum_i p_i log p_i), p_i = sigma_i / sum_k sigma_k, shape (...).

    sigma: singular values of h; 0 log 0 = 0; an all-zero h has erank 0. Roy & Vetterli (2007),
    "The effective rank: a measure of effective dimensionality".
    """
    s = singular_values(h)
    total = s.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, s / np.where(total > 0, total, 1.0), 0.0)
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
    return np.where(total[..., 0] > 0, np.exp(ent), 0.0)


@_finite_matrices
def stable_rank(h) -> np.ndarray:
    """Stable rank sum_i sigma_i^2 / max_i sigma_i^2 = ||h||_F^2 / ||h||_2^2, shape (...).

    Rudelson & Vershynin (2007). Not the quantity LoP/Plasticine call "stable rank" (that is
    :func:`srank`). All-zero h: 0.
    """
    s = singular_values(h)
    top = s[..., 0] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, (s**2).sum(axis=-1) / np.where(top > 0, top, 1.0), 0.0)


@_finite_matrices
def srank(h, delta: float = 0.01) -> np.ndarray:
    """srank_delta = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}, shape (...) int.

    sigma sorted descending, delta = 0.01. Kumar et al. (2021), "Implicit under-
    parameterization ..."; the "stable rank" of Loss of Plasticity (Dohare et al. 2024) and
    Plasticine. All-zero h: 0.
    """
    s = singular_values(h)
    total = s.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.cumsum(s, axis=-1) / np.where(total > 0, total, 1.0)
    # A slack of 1e-12 on the fraction keeps an exact boundary case (frac == 1 - delta) on the >= side.
    k = (frac < (1.0 - delta) - 1e-12).sum(axis=-1) + 1
    return np.where(total[..., 0] > 0, k, 0).astype(np.int64)


@_finite_matrices
def feature_norm(h) -> np.ndarray:
    """mean_x ||h(x)||_2, the mean over samples of each sample's L2 norm, shape (...). Plasticine."""
    return np.linalg.norm(_h(h), axis=-1).mean(axis=-1)


@_finite_matrices
def feature_variance(h) -> np.ndarray:
    """Mean over units of the variance across samples (ddof = 0), shape (...).

    (1/H) sum_i Var_x[h_i(x)]: how much each unit varies over the inputs. This is our choice;
    Plasticine's variant is :func:`feature_variance_across_units`.
    """
    return _h(h).var(axis=-2).mean(axis=-1)


@_finite_matrices
def feature_variance_across_units(h) -> np.ndarray:
    """Mean over samples of the variance across units within a sample (ddof = 0), shape (...).

    (1/S) sum_x Var_i[h_i(x)], Plasticine's "feature variance".
    """
    return _h(h).var(axis=-1).mean(axis=-1)


@_finite_matrices
def representation_metrics(h, tau: float = 0.025, delta: float = 0.01) -> dict[str, np.ndarray]:
    """Every representation metric above on h (..., S, H), one SVD shared; each value (...)."""
    h = _h(h)
    s = singular_values(h)
    total = s.sum(axis=-1, keepdims=True)
    top = s[..., 0] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, s / np.where(total > 0, total, 1.0), 0.0)
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)
        frac = np.cumsum(s, axis=-1) / np.where(total > 0, total, 1.0)
        stab = np.where(top > 0, (s**2).sum(axis=-1) / np.where(top > 0, top, 1.0), 0.0)
    nonzero = total[..., 0] > 0
    k = (frac < (1.0 - delta) - 1e-12).sum(axis=-1) + 1
    return {
        "dormant_ratio": dormant_ratio(h, tau),
        "dead_ratio": dormant_ratio(h, 0.0),
        "active_fraction": active_fraction(h),
        "effective_rank": np.where(nonzero, np.exp(ent), 0.0),
        "stable_rank": stab,
        "srank": np.where(nonzero, k, 0).astype(np.float64),
        "feature_norm": feature_norm(h),
        "feature_variance": feature_variance(h),
        "feature_variance_across_units": feature_variance_across_units(h),
    }


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _sum_sq(leaves, batch_ndim: int) -> tuple[np.ndarray, int]:
    total, count = 0.0, 0
    for x in leaves:
        x = np.asarray(x, dtype=np.float64)
        axes = tuple(range(batch_ndim, x.ndim))
        total = total + (x**2).sum(axis=axes)
        count += int(np.prod(x.shape[batch_ndim:], dtype=np.int64))
    return np.asarray(total), count


def weight_magnitude(params, batch_ndim: int = 2) -> np.ndarray:
    """sqrt(sum theta^2 / P) over all P parameters, keeping the first ``batch_ndim`` axes.

    ``params``: a pytree (e.g. {layer: {param: array (L, R, ...)}}) or one array (..., P).
    Plasticine (Chen et al. 2025), "weight magnitude".
    """
    total, count = _sum_sq(_leaves(params), batch_ndim)
    return np.sqrt(total / count)


def weight_change(params, reference, batch_ndim: int = 2) -> np.ndarray:
    """sqrt(sum (theta - theta_ref)^2 / P) over all P parameters, first ``batch_ndim`` axes kept.

    ``reference`` has the same tree structure; its leaves broadcast against ``params`` from the
    right (e.g. (R, ...) against (L, R, ...)). theta_ref is the weights at the task start or at
    initialisation. Plasticine (Chen et al. 2025), "weight change".
    """
    leaves, refs = _leaves(params), _leaves(reference)
    if len(leaves) != len(refs):
        raise ValueError(f"params have {len(leaves)} leaves but the reference has {len(refs)}")
    with np.errstate(invalid="ignore", over="ignore"):  # a diverged repeat's inf - inf is NaN, left out and counted
        diffs = [np.asarray(a, np.float64) - np.asarray(b, np.float64) for a, b in zip(leaves, refs)]
        total, count = _sum_sq(diffs, batch_ndim)
        return np.sqrt(total / count)
