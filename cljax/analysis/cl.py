"""Continual-learning metrics from per-task accuracy snapshots (``cl_analysis``).

Every function takes plain numpy arrays and works per repeat: the accuracy matrix is laid out
``R_RTT[r, i, j]`` = accuracy of repeat ``r`` on task ``j``'s test set after training task ``i``.
Definitions follow ``docs/metrics.md`` (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018). With a
single task (T = 1) backward transfer, forward transfer and forgetting have no terms: they are
returned as NaN, never as 0.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from cljax.analysis.band import Band
from cljax.analysis.spread import mean_std_axis0, spread, undefined

VARIANTS = ("final", "auc")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def task_accuracy_row(test_acc_LRT: np.ndarray, variant: str = "final", start_acc_RT: np.ndarray | None = None,
                      log_steps: Sequence[float] | None = None) -> np.ndarray:
    """One row of the accuracy matrix from the snapshots of one task, shape (R, T).

    ``final``: the last snapshot, ``acc[L-1]``. ``auc``: the area under the accuracy curve of
    the task divided by its length, by the trapezoid rule from the task-start evaluation
    ``start_acc_RT`` (step 0, ``metrics["start_test_acc"]``) through the L snapshots at
    ``log_steps`` (default 1, ..., L: equally spaced). ``auc`` needs ``start_acc_RT``.
    """
    _check_variant(variant)
    acc = np.asarray(test_acc_LRT, dtype=np.float64)
    if acc.ndim != 3:
        raise ValueError(f"expected test accuracy of shape (L, R, T), got {acc.shape}")
    if variant == "final":
        return acc[-1]
    if start_acc_RT is None:
        raise ValueError("the auc variant integrates from the task-start evaluation: pass start_acc_RT "
                         "(metrics['start_test_acc'] of the task folder)")
    start = np.asarray(start_acc_RT, dtype=np.float64)
    if start.shape != acc.shape[1:]:
        raise ValueError(f"start accuracy must have shape {acc.shape[1:]}, got {start.shape}")
    steps = np.arange(1.0, acc.shape[0] + 1) if log_steps is None else np.asarray(log_steps, dtype=np.float64)
    if steps.shape != acc.shape[:1] or steps[0] <= 0 or np.any(np.diff(steps) <= 0):
        raise ValueError(f"log_steps must be {acc.shape[0]} increasing positive steps, got {steps.tolist()}")
    curve = np.concatenate([start[None], acc])  # (L + 1, R, T), step 0 = the task start
    x = np.concatenate([[0.0], steps])
    widths = np.diff(x)[:, None, None]
    return (widths * (curve[1:] + curve[:-1]) / 2).sum(axis=0) / x[-1]


def accuracy_matrix(test_acc_per_task: Sequence[np.ndarray], variant: str = "final",
                    start_acc_per_task: Sequence[np.ndarray] | None = None,
                    log_steps_per_task: Sequence[Sequence[float]] | None = None) -> np.ndarray:
    """Accuracy matrix R[r, i, j], shape (R, T, T), from one (L, R, T) array per trained task.

    ``test_acc_per_task[i]`` is ``metrics["test_acc"]`` of task folder i: accuracy on every task
    j at each of task i's L snapshots. R[r, i, j] is its last snapshot (``final``) or the
    normalised area under its accuracy curve from the task start (``auc``; needs
    ``start_acc_per_task[i]`` = ``metrics["start_test_acc"]`` (R, T) of each folder, and takes
    ``log_steps_per_task``), see :func:`task_accuracy_row`. Lopez-Paz & Ranzato (2017), sec. 2.
    """
    n = len(test_acc_per_task)
    starts = list(start_acc_per_task) if start_acc_per_task is not None else [None] * n
    steps = list(log_steps_per_task) if log_steps_per_task is not None else [None] * n
    rows = [task_accuracy_row(a, variant, s, ls) for a, s, ls in zip(test_acc_per_task, starts, steps)]
    if not rows:
        raise ValueError("no tasks given")
    T = len(rows)
    if rows[0].shape[1] != T:
        raise ValueError(f"{T} task rows but each row evaluates {rows[0].shape[1]} tasks: the matrix must be square")
    return np.stack(rows, axis=1)


def _as_matrix(R_RTT: np.ndarray) -> np.ndarray:
    R = np.asarray(R_RTT, dtype=np.float64)
    if R.ndim == 2:
        R = R[None]
    if R.ndim != 3 or R.shape[1] != R.shape[2]:
        raise ValueError(f"expected an accuracy matrix (R, T, T), got {np.shape(R_RTT)}")
    return R


def average_accuracy(R_RTT: np.ndarray) -> np.ndarray:
    """ACC = (1/T) sum_j R[T-1, j], per repeat, shape (R,). Lopez-Paz & Ranzato (2017)."""
    R = _as_matrix(R_RTT)
    return R[:, -1, :].mean(axis=-1)


def backward_transfer(R_RTT: np.ndarray) -> np.ndarray:
    """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j]), per repeat; NaN when T = 1.

    Negative BWT is forgetting. Lopez-Paz & Ranzato (2017).
    """
    R = _as_matrix(R_RTT)
    T = R.shape[1]
    if T < 2:
        return np.full(R.shape[0], np.nan)
    diag = np.diagonal(R, axis1=1, axis2=2)
    return (R[:, -1, : T - 1] - diag[:, : T - 1]).mean(axis=-1)


def forward_transfer(R_RTT: np.ndarray, initial_acc_RT: np.ndarray) -> np.ndarray:
    """FWT = 1/(T-1) sum_{j>=1} (R[j-1, j] - b[j]), per repeat; NaN when T = 1.

    ``b[j]`` (``initial_acc_RT``, shape (R, T)) is the accuracy on task j of the initial network,
    before any training (``start_test_acc`` of task_000). Averaged over the T-1 tasks that have
    a previous task, not over T with a zero for task 0 as in the GEM reference code.
    Lopez-Paz & Ranzato (2017).
    """
    R = _as_matrix(R_RTT)
    b = np.asarray(initial_acc_RT, dtype=np.float64)
    if b.ndim == 1:
        b = b[None]
    T = R.shape[1]
    if b.shape != (R.shape[0], T):
        raise ValueError(f"initial accuracy must have shape (R, T) = {(R.shape[0], T)}, got {b.shape}")
    if T < 2:
        return np.full(R.shape[0], np.nan)
    j = np.arange(1, T)
    return (R[:, j - 1, j] - b[:, j]).mean(axis=-1)


def forgetting_per_task(R_RTT: np.ndarray) -> np.ndarray:
    """f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j] for j < T-1, shape (R, T-1).

    Chaudhry et al. (2018), "Riemannian walk for incremental learning", eq. (3) at the end of
    training.
    """
    R = _as_matrix(R_RTT)
    T = R.shape[1]
    out = np.empty((R.shape[0], max(T - 1, 0)))
    for j in range(T - 1):
        out[:, j] = R[:, j : T - 1, j].max(axis=-1) - R[:, -1, j]
    return out


def forgetting(R_RTT: np.ndarray) -> np.ndarray:
    """F = mean_{j<T-1} f_j, per repeat; NaN when T = 1. Chaudhry et al. (2018)."""
    f = forgetting_per_task(R_RTT)
    if f.shape[1] == 0:
        return np.full(f.shape[0], np.nan)
    return f.mean(axis=-1)


def plasticity_gap(R_RTT: np.ndarray, expert_acc_RT: np.ndarray) -> np.ndarray:
    """G[i] = E[i] - R[i, i], shape (R, T).

    ``E[i]`` is the expert's (a fresh network trained on task i alone) test accuracy on task i.
    Positive: the continual learner learns the new task worse than a fresh network.
    """
    R = _as_matrix(R_RTT)
    E = np.asarray(expert_acc_RT, dtype=np.float64).reshape(R.shape[0], R.shape[1])
    return E - np.diagonal(R, axis1=1, axis2=2)


def normalised_transfer(R_RTT: np.ndarray, expert_acc_RT: np.ndarray) -> np.ndarray:
    """NT[i] = (R[i, i] - E[i]) / (R[i, i] + E[i]), shape (R, T); NaN where both are 0."""
    R = _as_matrix(R_RTT)
    return _normalised(np.diagonal(R, axis1=1, axis2=2), np.asarray(expert_acc_RT, dtype=np.float64).reshape(R.shape[:2]))


def _normalised(d, E) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d + E != 0, (d - E) / (d + E), np.nan)


def chance_corrected(acc) -> np.ndarray:
    """A' = 2A - 1: 0 at chance (0.5 for binary tasks), 1 at perfect accuracy."""
    return 2.0 * np.asarray(acc, dtype=np.float64) - 1.0


def mean_std(per_repeat: np.ndarray) -> dict:
    """Mean and sample standard deviation (ddof = 1) across repeats (axis 0), and ``n``, the
    number of repeats with a finite value. Non-finite entries (undefined metrics) are left out
    and counted, the one rule of :mod:`cljax.analysis.spread`."""
    mean, std, n = mean_std_axis0(per_repeat)
    return {"mean": mean, "std": std, "n": n}


EXPERT_VARIANTS = ("final", "auc", "best")


def snapshot_accuracy(acc_LR_per_task: Sequence[np.ndarray], variant: str = "final") -> np.ndarray:
    """One figure per task from one (L, R) accuracy array per task, (R, T): the last snapshot
    (``final``), the mean over the snapshots (``auc``) or the best snapshot (``best``: the best
    finite one; NaN when none is, as for a network that diverged before its first snapshot)."""
    if variant not in EXPERT_VARIANTS:
        raise ValueError(f"variant must be one of {EXPERT_VARIANTS}, got {variant!r}")
    cols = []
    for a in acc_LR_per_task:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2:
            raise ValueError(f"expected accuracy snapshots of shape (L, R), got {a.shape}")
        cols.append(a[-1] if variant == "final" else a.mean(axis=0) if variant == "auc" else _finite_max(a))
    return np.stack(cols, axis=1)


def _finite_max(a_LR: np.ndarray) -> np.ndarray:
    """The max over the snapshots of each column's finite values, NaN where there is none."""
    finite = np.isfinite(a_LR)
    return np.where(finite.any(axis=0), np.where(finite, a_LR, -np.inf).max(axis=0), np.nan)


def expert_accuracy(expert_test_acc_per_task: Sequence[np.ndarray], variant: str = "final") -> np.ndarray:
    """E[r, i] from one (L, R) expert test-accuracy array per task, (R, T): its last snapshot
    (``final``), its mean over the snapshots (``auc``; the expert has no task-start evaluation)
    or its best snapshot (``best``)."""
    return snapshot_accuracy(expert_test_acc_per_task, variant)


def current_task_accuracy(test_acc_per_task: Sequence[np.ndarray], variant: str = "best") -> np.ndarray:
    """The learner's accuracy on task i over the snapshots of task i's own folder, (R, T):
    ``final`` (= R[i, i]), ``auc`` (mean over the snapshots) or ``best`` (best snapshot)."""
    return snapshot_accuracy([np.asarray(a)[:, :, i] for i, a in enumerate(test_acc_per_task)], variant)


def plasticity_gap_best(test_acc_per_task: Sequence[np.ndarray],
                        expert_test_acc_per_task: Sequence[np.ndarray]) -> np.ndarray:
    """G_best[i] = max_l E_l[i] - max_l A_l[i, i], (R, T): the best snapshot of the expert on task
    i minus the learner's best snapshot on task i while training it. Both sides pick the best of
    the same number of snapshots, so neither one's late collapse nor the selection favours one."""
    return expert_accuracy(expert_test_acc_per_task, "best") - current_task_accuracy(test_acc_per_task, "best")


def mean_over_tasks(values_RT: np.ndarray) -> np.ndarray:
    """Each repeat's mean over its tasks with a finite value, (R, T) -> (R,); NaN when none is.
    For values that are NaN by design where a folder evaluated no task (the probe's drop under
    ``--eval-tasks window:K``); where every task has a value, :func:`mean_over_every_task`."""
    v = np.asarray(values_RT, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row stays NaN
        return np.nanmean(np.where(np.isfinite(v), v, np.nan), axis=1)


def mean_over_every_task(values_RT: np.ndarray) -> np.ndarray:
    """Each repeat's mean over all its tasks, (R, T) -> (R,): not finite when any of them is not,
    so that the spread leaves the repeat out and counts it; NaN with no task. For values every task
    has (the current task's accuracy, the expert's, their gap): a NaN there is a diverged network
    (kept with ``--allow-nonfinite``), and a mean over the tasks before it would enter the spread
    beside other repeats' means over every task, as if the repeat had not diverged."""
    v = np.asarray(values_RT, dtype=np.float64)
    if not v.shape[-1]:
        return np.full(v.shape[0], np.nan)
    with np.errstate(invalid="ignore"):  # inf and -inf in one row: NaN, non-finite either way
        return v.mean(axis=-1)


def cl_metrics_from_matrix(R_RTT: np.ndarray, expert_acc_RT: np.ndarray, initial_acc_RT: np.ndarray) -> dict:
    """Every CL metric from a ready accuracy matrix (R, T, T), E (R, T) and b (R, T).

    Returns the dict described in :func:`cl_analysis` (without ``variant``).
    """
    R = _as_matrix(R_RTT)
    E = np.asarray(expert_acc_RT, dtype=np.float64)
    if E.shape != R.shape[:2]:
        raise ValueError(f"expert accuracy has shape {E.shape}, expected (R, T) = {R.shape[:2]}")
    acc = average_accuracy(R)
    out = {
        "accuracy_matrix": R,
        "accuracy_matrix_cc": chance_corrected(R),
        "average_accuracy": acc,
        "average_accuracy_cc": chance_corrected(acc),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, initial_acc_RT),
        "forgetting": forgetting(R),
        "forgetting_per_task": forgetting_per_task(R),
        "expert_accuracy": E,
        "plasticity_gap": plasticity_gap(R, E),
        "normalised_transfer": normalised_transfer(R, E),
    }
    scalar_keys = ("average_accuracy", "average_accuracy_cc", "bwt", "fwt", "forgetting")
    summary = {k: spread(out[k]) for k in scalar_keys}
    for k in ("plasticity_gap", "normalised_transfer"):
        summary[f"mean_{k}"] = spread(mean_over_every_task(out[k]))
    out["summary"] = _undefined_metrics(summary, R.shape[1])
    return out


def _undefined_metrics(summary: dict, n: int, n_terms: dict | None = None) -> dict:
    """``summary`` with BWT, FWT and forgetting recorded as :func:`undefined` where every repeat's
    value is NaN by definition (one task; no term evaluated), not counted as repeats left out."""
    for k in ("bwt", "fwt", "forgetting"):
        if n == 1:
            summary[k] = undefined("it needs 2 tasks or more: one task folder")
        elif n_terms is not None and not n_terms[k]:
            summary[k] = undefined("--eval-tasks evaluates none of its terms")
    return summary


def cl_analysis(
    test_acc_per_task: Sequence[np.ndarray],
    expert_test_acc_per_task: Sequence[np.ndarray],
    initial_acc_RT: np.ndarray,
    variant: str = "final",
    expert_variant: str = "final",
    start_acc_per_task: Sequence[np.ndarray] | None = None,
    log_steps_per_task: Sequence[Sequence[float]] | None = None,
) -> dict:
    """All continual-learning metrics of one run, per repeat and as mean/std across repeats.

    Args:
      test_acc_per_task: T arrays (L, R, T), ``metrics["test_acc"]`` of each task folder.
      expert_test_acc_per_task: T arrays (L, R), ``expert_metrics["test_acc"]`` of each folder.
      initial_acc_RT: b[r, j], accuracy of the initial network on every task, (R, T)
        (``start_test_acc`` of task_000).
      variant: ``final`` or ``auc`` row of the accuracy matrix, see :func:`accuracy_matrix`.
      expert_variant: E[i] from the expert's last snapshot (``final``, the docs/metrics.md definition),
        its mean over snapshots (``auc``) or its best snapshot (``best``).
      start_acc_per_task, log_steps_per_task: each folder's ``start_test_acc`` (R, T) and
        logged steps, for ``auc`` (see :func:`task_accuracy_row`).

    Returns:
      A dict with ``variant``; ``accuracy_matrix`` (R, T, T); per-repeat arrays
      ``average_accuracy``, ``bwt``, ``fwt``, ``forgetting`` (R,), ``forgetting_per_task``
      (R, T-1), ``expert_accuracy``, ``plasticity_gap``, ``normalised_transfer`` (R, T) and
      chance-corrected (2A - 1) ``average_accuracy_cc``, ``accuracy_matrix_cc``; and ``summary``:
      {metric: {"mean", "std", "n", "n_nonfinite"}} across repeats (sample std, ddof = 1, over
      the repeats with a finite value: :mod:`cljax.analysis.spread`), including ``mean_plasticity_gap`` and
      ``mean_normalised_transfer`` (each repeat's mean over tasks). BWT, FWT and forgetting are
      NaN for T = 1. Definitions: docs/metrics.md (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018).
    """
    R = accuracy_matrix(test_acc_per_task, variant, start_acc_per_task, log_steps_per_task)
    E = expert_accuracy(expert_test_acc_per_task, expert_variant)
    return {"variant": variant, **cl_metrics_from_matrix(R, E, initial_acc_RT)}


# ---- runs that evaluate a subset of the tasks (--eval-tasks seen, current, window:K) ------------
def masked_mean(values, mask) -> np.ndarray:
    """Mean over the last axis of the entries where ``mask`` (broadcast), per repeat; NaN where
    no entry is. A non-finite value at an evaluated entry stays in (and makes the mean NaN)."""
    mask = np.broadcast_to(mask, np.shape(values))
    count = mask.sum(axis=-1)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def cl_metrics_band(band: Band, expert_acc_RT: np.ndarray, initial_acc_RT: np.ndarray,
                    initial_evaluated_T: np.ndarray, dense: bool = True) -> dict:
    """:func:`cl_metrics_from_matrix` over the n x n block of the entries that were evaluated, from
    the rows as the task folders saved them (:class:`~cljax.analysis.band.Band`, n folders);
    ``initial_evaluated_T``: which tasks task_000's start evaluation saw. Each sum of a definition
    runs over its terms whose entries were all evaluated, and ``n_terms`` says how many; a metric
    with none is NaN (with --eval-tasks current BWT, FWT and forgetting have none: the last task's
    row holds only the last task). With every entry evaluated the numbers equal
    :func:`cl_metrics_from_matrix`'s. The memory grows with the band, R x n x K, not R x n x n;
    ``dense``: also return the (R, n, n) ``accuracy_matrix`` and ``accuracy_matrix_cc``."""
    n = band.values.shape[1]
    b = np.asarray(initial_acc_RT, dtype=np.float64)
    E = np.asarray(expert_acc_RT, dtype=np.float64)
    last, ev_last = band.row(n - 1, n)
    diag, ev_diag = band.diagonal()
    bwt_mask = (np.arange(n) < n - 1) & ev_last & ev_diag
    j = np.arange(1, n)
    previous, ev_previous = band.take(j - 1, j)  # R[j-1, j]
    fwt_mask = ev_previous & np.asarray(initial_evaluated_T, dtype=bool)[j]
    best, seen = band.running_max_before_last()
    f_mask = ev_last[: n - 1] & seen[: n - 1]
    f = np.where(f_mask, best[:, : n - 1] - last[:, : n - 1], np.nan)
    acc = masked_mean(last, ev_last)
    no_value = np.full(band.values.shape[0], np.nan)
    out = {
        **({"accuracy_matrix": (A := band.dense(n)), "accuracy_matrix_cc": chance_corrected(A)} if dense else {}),
        "average_accuracy": acc,
        "average_accuracy_cc": chance_corrected(acc),
        "bwt": masked_mean(last - diag, bwt_mask) if n > 1 else no_value,
        "fwt": masked_mean(previous - b[:, j], fwt_mask) if n > 1 else no_value,
        "forgetting": masked_mean(f, f_mask) if n > 1 else no_value,
        "forgetting_per_task": f,
        "expert_accuracy": E,
        "plasticity_gap": E - diag,
        "normalised_transfer": _normalised(diag, E),
    }
    summary = {k: spread(out[k]) for k in ("average_accuracy", "average_accuracy_cc", "bwt", "fwt", "forgetting")}
    for k in ("plasticity_gap", "normalised_transfer"):
        summary[f"mean_{k}"] = spread(mean_over_every_task(out[k]))
    summary["n_terms"] = {"average_accuracy": int(ev_last.sum()), "bwt": int(bwt_mask.sum()),
                          "fwt": int(fwt_mask.sum()), "forgetting": int(f_mask.sum())}
    out["summary"] = _undefined_metrics(summary, n, summary["n_terms"])
    return out
