"""Analyse one run folder ``results/{dataset}/{algorithm}``, one task folder at a time.

Reads only through :mod:`cljax.results`; holds per task folder only its metrics, its weights and
memory-mapped slices of its representations, and across folders only small summaries (accuracy
rows (R, T), per-snapshot scalars), so the memory does not grow with the number of task folders
beyond those summaries. Writes into ``{algo_dir}/analysis`` (or ``out_dir``):

- ``summary.json``: CL metrics (both accuracy-matrix variants), plasticity and GLUE summaries,
  settings and conventions; NaN (undefined) is written as null.
- ``cl.npz``, ``plasticity.npz``, ``glue.npz``, ``curves.npz``: the per-repeat arrays.
- ``accuracy_matrix.png``, ``accuracy_over_time.png``, ``learner_vs_expert.png``,
  ``plasticity.png``, ``glue.png`` (and ``glue_across.png`` when the across-task grouping was
  computed at two or more task folders).

Conventions (also written to the summary):
- Plasticity metrics use the current task's S test samples at every snapshot of its folder
  (``current_*``, shape (n_tasks, L, R)) and all evaluated tasks' samples at the folder's last
  snapshot (``all_tasks_*``, (n_tasks, R)).
- Weight change: "task start" is the last stored snapshot of the previous task folder; the
  results format does not store the initial weights, so "init" (and task 0's "task start") is
  the first stored snapshot of task_000.
- GLUE at the last snapshot of each task folder: the current task's two class manifolds with the
  task's own dichotomy (P = 2, ``glue_tasks="current"``, or every evaluated task with ``"all"``);
  and the 2T class manifolds of (at most ``glue_across_max_tasks``, evenly spaced) tasks with
  random dichotomies (P = 2T), at the last folder and every ``glue_across_every`` folders.
  Manifolds are split by ``binary_labels`` and cut to the same number of points per class, at
  most ``glue_max_points``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from cljax import results
from cljax.analysis import plots
from cljax.analysis.cl import VARIANTS, cl_metrics_from_matrix
from cljax.analysis.glue import DIAGNOSTIC_KEYS, GLUE_KEYS, glue_analysis
from cljax.analysis.plasticine import representation_metrics, weight_change, weight_magnitude
from cljax.errors import CljaxError

WEIGHT_KEYS = ("weight_magnitude", "weight_change_task_start", "weight_change_init")


def class_manifolds(representations_RTSH, labels_RTS, max_points: int | None = None) -> np.ndarray:
    """Split each task's samples by binary label: (R, T, S, H), (R, T, S) -> (R, T, 2, M, H).

    Class 0 is manifold 0, class 1 manifold 1. M is the smallest class count over all (r, t),
    capped at ``max_points``; the first M samples of each class (in stored order) are kept.
    """
    reps = np.asarray(representations_RTSH)
    labels = np.asarray(labels_RTS)
    R, T, S, H = reps.shape
    counts = np.stack([(labels == 0).sum(-1), (labels == 1).sum(-1)])
    M = int(counts.min())
    if M == 0:
        raise CljaxError("a task's saved test samples hold only one class: cannot form its two class manifolds")
    if max_points is not None:
        M = min(M, int(max_points))
    # A stable sort by label puts class 0 first, each class in stored order.
    order = np.argsort(labels, axis=-1, kind="stable")
    n0 = counts[0][..., None]
    idx = np.concatenate([order[..., :M], np.take_along_axis(order, n0 + np.arange(M), axis=-1)], axis=-1)
    picked = np.take_along_axis(reps, idx[..., None], axis=2)  # (R, T, 2M, H)
    return picked.reshape(R, T, 2, M, H)


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return _finite_or_none(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def _mean_std(x_R) -> dict:
    x = np.asarray(x_R, dtype=np.float64)
    x = np.where(np.isfinite(x), x, np.nan)
    if np.all(np.isnan(x)):
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(np.nanmean(x)), "std": float(np.nanstd(x))}


def _over_tasks(values_nR) -> dict:
    """Summary of one metric tracked per task folder, values (n_tasks, R)."""
    v = np.asarray(values_nR, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    with np.errstate(invalid="ignore"):
        per_task = [float(np.nanmean(row)) if not np.all(np.isnan(row)) else math.nan for row in v]
    return {"last_task": _mean_std(v[-1]), "per_task_mean": per_task}


def analyze_run(
    algo_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    variant: str = "final",
    tau: float = 0.025,
    glue: bool = True,
    glue_n_probes: int = 128,
    glue_tasks: str = "current",
    glue_across_every: int | None = None,
    glue_across_max_tasks: int = 16,
    glue_max_points: int | None = 32,
    glue_seed: int = 0,
    curve_tasks: int = 10,
    make_plots: bool = True,
) -> dict:
    """Run cl, plasticine and GLUE analyses on a results folder; write summary, arrays and plots.

    Args:
      algo_dir: ``results/{dataset}/{algorithm}`` with ``task_XXX`` folders.
      out_dir: where to write (default ``{algo_dir}/analysis``).
      variant: accuracy-matrix variant of the headline numbers (``final`` or ``auc``; both are
        computed and saved).
      tau: dormant-unit threshold (ReDo).
      glue: run the GLUE analyses; ``glue_n_probes`` probes each; ``glue_tasks`` ``"current"``
        or ``"all"`` for the P = 2 grouping; ``glue_across_every`` (None: only at the last task
        folder), ``glue_across_max_tasks`` for the P = 2T grouping; ``glue_max_points`` points
        per class manifold; ``glue_seed`` for probes and dichotomies (shared by all folders).
      curve_tasks: at most this many tasks (evenly spaced) in the accuracy-over-time plot.
      make_plots: write the PNGs.

    Returns:
      The summary dict written to ``summary.json`` (with NaN as None).
    """
    if variant not in VARIANTS:
        raise CljaxError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if glue_tasks not in ("current", "all"):
        raise CljaxError(f"glue_tasks must be 'current' or 'all', got {glue_tasks!r}")
    algo_dir = Path(algo_dir)
    dirs = results.task_dirs(algo_dir)
    if not dirs:
        raise CljaxError(f"{algo_dir} holds no complete task folder: run the experiment first.")
    for i, d in enumerate(dirs):
        if d.name != results.task_dir_name(i):
            raise CljaxError(f"task folders are not contiguous: expected {results.task_dir_name(i)}, found {d.name}")
    out = Path(out_dir) if out_dir is not None else algo_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    n = len(dirs)
    glue_key = jax.random.PRNGKey(glue_seed)

    rows = {v: [] for v in VARIANTS}
    expert = {v: [] for v in VARIANTS}
    initial_acc = None
    curves, curve_steps, boundaries = [], [], []
    step_offset = 0.0
    plast_current: dict[str, list] = {}
    plast_all: dict[str, list] = {}
    weights_track = {k: [] for k in WEIGHT_KEYS}
    init_ref = prev_last = None
    glue_task: dict[str, list] = {}
    glue_across: dict[str, list] = {}
    across_folders: list[int] = []
    across_tasks: list[int] = []
    glue_diag = {"min_converged_fraction": 1.0, "max_residual": 0.0}  # over every GLUE call
    config = {}
    T = R = L = None
    curve_ids = None

    for i, d in enumerate(dirs):
        meta = results.load_metadata(d)
        if i == 0:
            config = meta.get("config", {})
        metrics = results.load_metrics(d)
        missing = [k for k in ("test_acc", "start_test_acc") if k not in metrics]
        if missing:
            raise CljaxError(f"{d / 'metrics.pkl'} lacks {missing}: it was not written by cljax's runner.")
        acc = np.asarray(metrics["test_acc"], dtype=np.float64)  # (L, R, T)
        if T is None:
            L, R, T = acc.shape
            curve_ids = np.unique(np.linspace(0, T - 1, min(curve_tasks, T)).round().astype(int))
            initial_acc = np.asarray(metrics["start_test_acc"], dtype=np.float64)
        elif acc.shape[1:] != (R, T):
            raise CljaxError(f"{d}: test_acc has shape {acc.shape}, expected (L, {R}, {T}) like task_000")
        if n > T:
            raise CljaxError(f"{algo_dir} holds {n} task folders but each evaluates only {T} tasks")
        rows["final"].append(acc[-1])
        rows["auc"].append(acc.mean(axis=0))
        e_acc = np.asarray(results.load_expert_metrics(d)["test_acc"], dtype=np.float64)  # (L, R)
        expert["final"].append(e_acc[-1])
        expert["auc"].append(e_acc.mean(axis=0))

        log_steps = np.asarray(meta.get("log_steps", metrics.get("log_steps", np.arange(1, acc.shape[0] + 1))), float)
        boundaries.append(step_offset)
        curves.append(acc[:, :, curve_ids].astype(np.float32))
        curve_steps.append(step_offset + log_steps)
        step_offset += float(log_steps[-1])

        # ---- plasticity of representations
        reps = results.load_representations(d)  # (L, R, T, S, H), memory-mapped
        h_cur = np.asarray(reps[:, :, i])  # (L, R, S, H)
        for k, v in representation_metrics(h_cur, tau=tau).items():
            plast_current.setdefault(k, []).append(v)
        S, H = reps.shape[-2:]
        per_repeat = [representation_metrics(np.asarray(reps[-1, r]).reshape(T * S, H), tau=tau) for r in range(R)]
        for k in per_repeat[0]:
            plast_all.setdefault(k, []).append(np.array([m[k] for m in per_repeat]))

        # ---- weights
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(results.load_weights(d))]
        if init_ref is None:
            init_ref = [x[0].copy() for x in leaves]
        start_ref = prev_last if prev_last is not None else init_ref
        weights_track["weight_magnitude"].append(weight_magnitude(leaves))
        weights_track["weight_change_task_start"].append(weight_change(leaves, start_ref))
        weights_track["weight_change_init"].append(weight_change(leaves, init_ref))
        prev_last = [x[-1].copy() for x in leaves]
        del leaves

        # ---- GLUE at the folder's last snapshot
        if glue:
            labels = results.load_binary_labels(d)
            manifolds = class_manifolds(np.asarray(reps[-1]), np.asarray(labels[-1]), glue_max_points)  # (R,T,2,M,H)
            X = manifolds[:, i] if glue_tasks == "current" else manifolds
            g = glue_analysis(X, glue_key, n_probes=glue_n_probes, dichotomies="task")
            _track_diag(glue_diag, g)
            for k in GLUE_KEYS + DIAGNOSTIC_KEYS:
                glue_task.setdefault(k, []).append(g[k])
            is_last = i == n - 1
            if is_last or (glue_across_every and i % glue_across_every == 0):
                chosen = np.unique(np.linspace(0, T - 1, min(glue_across_max_tasks, T)).round().astype(int))
                sub = manifolds[:, chosen]  # (R, k, 2, M, H)
                Rr, k_, _, M, Hh = sub.shape
                ga = glue_analysis(sub.reshape(Rr, 2 * k_, M, Hh), glue_key, n_probes=glue_n_probes,
                                   dichotomies="random")
                _track_diag(glue_diag, ga)
                for k in GLUE_KEYS + DIAGNOSTIC_KEYS:
                    glue_across.setdefault(k, []).append(ga[k])
                across_folders.append(i)
                across_tasks = chosen.tolist()
        del reps

    # ---- continual-learning metrics on the n x n block of completed tasks
    cl = {}
    for v in VARIANTS:
        A = np.stack(rows[v], axis=1)[:, :, :n]  # (R, n, n)
        # E[i] is the expert's last snapshot for both variants (METRICS.md); its mean is saved too.
        cl[v] = {"variant": v, **cl_metrics_from_matrix(A, np.stack(expert["final"], axis=1), initial_acc[:, :n])}
    headline = cl[variant]

    np.savez(
        out / "cl.npz",
        initial_acc=initial_acc,
        expert_acc_final=np.stack(expert["final"], axis=1),
        expert_acc_auc=np.stack(expert["auc"], axis=1),
        accuracy_rows_final=np.stack(rows["final"], axis=1),
        accuracy_rows_auc=np.stack(rows["auc"], axis=1),
        **{f"{v}_{k}": val for v in VARIANTS for k, val in cl[v].items() if k not in ("summary", "variant")},
    )
    plast_cur_arr = {k: np.stack(v) for k, v in plast_current.items()}  # (n, L, R)
    plast_all_arr = {k: np.stack(v) for k, v in plast_all.items()}  # (n, R)
    weights_arr = {k: np.stack(v) for k, v in weights_track.items()}  # (n, L, R)
    np.savez(
        out / "plasticity.npz",
        **{f"current_{k}": v for k, v in plast_cur_arr.items()},
        **{f"all_tasks_{k}": v for k, v in plast_all_arr.items()},
        **weights_arr,
    )
    curves_arr = np.concatenate(curves, axis=0)
    steps_arr = np.concatenate(curve_steps)
    np.savez(out / "curves.npz", test_acc=curves_arr, steps=steps_arr, task_ids=curve_ids,
             task_boundaries=np.asarray(boundaries))
    glue_task_arr = {k: np.stack(v) for k, v in glue_task.items()}  # (n, R) or (n, R, T)
    glue_across_arr = {k: np.stack(v) for k, v in glue_across.items()}  # (n_across, R)
    if glue:
        np.savez(
            out / "glue.npz",
            **{f"per_task_{k}": v for k, v in glue_task_arr.items()},
            **{f"across_{k}": v for k, v in glue_across_arr.items()},
            across_folders=np.asarray(across_folders, dtype=np.int64),
            across_tasks=np.asarray(across_tasks, dtype=np.int64),
        )

    # ---- summary
    last_snapshot = {k: v[:, -1] for k, v in plast_cur_arr.items()}  # (n, R)
    last_snapshot.update({k: v[:, -1] for k, v in weights_arr.items()})
    summary: dict[str, Any] = {
        "algo_dir": str(algo_dir),
        "n_task_folders": n,
        "n_eval_tasks": T,
        "complete": n == T,
        "n_repeats": R,
        "n_snapshots": L,
        "variant": variant,
        "std": "across repeats, ddof = 0",
        **{k: headline["summary"][k] for k in headline["summary"]},
        "cl": {v: cl[v]["summary"] for v in VARIANTS},
        "plasticity": {
            "current_task_last_snapshot": {k: _over_tasks(v) for k, v in last_snapshot.items()},
            "all_tasks_last_snapshot": {k: _over_tasks(v) for k, v in plast_all_arr.items()},
            "tau": tau,
        },
        "config": config,
        "conventions": {
            "accuracy_matrix": "R[i, j] after task i on task j; final = last snapshot, auc = mean over snapshots",
            "fwt": "mean over j >= 1 of R[j-1, j] - b[j], b = start_test_acc of task_000",
            "expert": "E[i] = expert test accuracy on task i at its last snapshot (both variants)",
            "incomplete_run": "metrics over the n x n block of the completed tasks",
            "weight_change_task_start": "reference = last stored snapshot of the previous task folder",
            "weight_change_init": "reference = first stored snapshot of task_000 (initial weights are not saved)",
            "feature_variance": "mean over units of the variance across samples",
        },
    }
    if glue:
        task_summary = (
            {k: _over_tasks(v) for k, v in glue_task_arr.items()}
            if glue_tasks == "current"
            else {k: {"last_task": _mean_std(v[-1].mean(axis=-1)),
                      "diagonal_per_task_mean": [float(np.nanmean(v[i, :, i])) for i in range(n)]}
                  for k, v in glue_task_arr.items()}
        )
        summary["glue"] = {
            "per_task": task_summary,
            "across_tasks": {
                "final": {k: _mean_std(v[-1]) for k, v in glue_across_arr.items()},
                "folders": across_folders,
                "tasks": across_tasks,
                "n_manifolds": 2 * len(across_tasks),
            },
            "solver": glue_diag,
            "settings": {
                "n_probes": glue_n_probes,
                "per_task": f"P = 2, dichotomy = the task's labels, tasks = {glue_tasks}",
                "across_tasks": "P = 2k, random dichotomies",
                "max_points_per_manifold": glue_max_points,
                "seed": glue_seed,
                "snapshot": "last of each task folder",
                "solver": "primal-dual interior point on the dual NNLS, float64, tol 1e-7 (scaled KKT), max 100 steps",
                "floor": "capacity ~ P / N with inseparable_fraction ~ 1: the dichotomies are not linearly "
                         "separable in the representation at all",
            },
        }

    files = ["summary.json", "cl.npz", "plasticity.npz", "curves.npz"] + (["glue.npz"] if glue else [])
    if make_plots:
        files += _write_plots(out, headline, curves_arr, steps_arr, boundaries, curve_ids, last_snapshot,
                              glue_task_arr if glue else {}, glue_across_arr if glue else {}, across_folders,
                              glue_tasks)
    summary["files"] = files
    summary = _jsonable(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    return summary


def _track_diag(diag: dict, g: dict) -> None:
    diag["min_converged_fraction"] = min(diag["min_converged_fraction"], float(np.min(g["converged_fraction"])))
    diag["max_residual"] = max(diag["max_residual"], float(np.max(g["max_residual"])))


def _write_plots(out, headline, curves_arr, steps_arr, boundaries, curve_ids, last_snapshot,
                 glue_task_arr, glue_across_arr, across_folders, glue_tasks) -> list[str]:
    names = []
    plots.plot_accuracy_matrix(headline["accuracy_matrix"], out / "accuracy_matrix.png",
                               title=f"Accuracy matrix ({headline['variant']})")
    names.append("accuracy_matrix.png")
    plots.plot_accuracy_over_time(curves_arr, out / "accuracy_over_time.png", task_boundaries=boundaries[1:],
                                  task_ids=curve_ids.tolist(), steps=steps_arr)
    names.append("accuracy_over_time.png")
    diag = np.diagonal(headline["accuracy_matrix"], axis1=1, axis2=2)
    plots.plot_learner_vs_expert(diag, headline["expert_accuracy"], out / "learner_vs_expert.png")
    names.append("learner_vs_expert.png")
    plots.plot_plasticity_over_tasks({k: v.T for k, v in last_snapshot.items()}, out / "plasticity.png")
    names.append("plasticity.png")
    if glue_task_arr:
        if glue_tasks == "current":
            per_task = {k: v.T for k, v in glue_task_arr.items()}
        else:  # the diagonal: task i's manifolds after training task i
            per_task = {k: np.stack([v[i, :, i] for i in range(v.shape[0])], axis=1) for k, v in glue_task_arr.items()}
        plots.plot_glue_over_tasks(per_task, out / "glue.png",
                                   title="Capacity and geometry of each task's class manifolds (P = 2)")
        names.append("glue.png")
    if len(across_folders) >= 2:
        plots.plot_glue_over_tasks({k: v.T for k, v in glue_across_arr.items()}, out / "glue_across.png",
                                   x=across_folders, title="Capacity and geometry across tasks (P = 2k)")
        names.append("glue_across.png")
    return names
