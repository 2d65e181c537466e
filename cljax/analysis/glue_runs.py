"""The ``glue`` analysis of :func:`~cljax.analysis.driver.analyze_run` (registered with the other
built-in ones, in their order, by :mod:`cljax.analysis.analyses`): GLUE at the last snapshot of
each task folder, P = 2 per task (the task's two classes) and P = 2k across tasks; ``glue.npz``,
``glue.png``, ``glue_across.png``. Definitions: ``docs/metrics.md``, :mod:`cljax.analysis.glue`.
"""

from __future__ import annotations

import jax
import numpy as np

from cljax.analysis import plots
from cljax.analysis.cl import mean_over_every_task
from cljax.analysis.glue import DIAGNOSTIC_KEYS, GLUE_KEYS, glue_analysis, unsolvable
from cljax.analysis.glue_solver import MAX_ITER, TOL
from cljax.analysis.registry import Result, RunContext, TaskFolder
from cljax.analysis.spread import over_tasks, spread
from cljax.analysis.workers import IN_PROCESS
from cljax.errors import CljaxError


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


def glue_init(ctx: RunContext) -> dict:
    return {"ctx": ctx, "key": np.asarray(jax.random.PRNGKey(ctx.options.glue_seed)), "task": {}, "across": {},
            "folders": [], "tasks": [], "calls": [],
            "diag": {"n_probes_solved": 0, "n_probes_converged": 0, "min_converged_fraction": 1.0, "max_residual": 0.0,
                     "n_groupings_not_finite": 0, "n_groupings_constant": 0}}


def _glue_call(state: dict, X, dichotomies: str, where, keep) -> None:
    """GLUE on the batch of groupings X, sent to the analysis's workers (RunContext.workers), or
    solved here; ``keep(g)`` files its result and the run's solver diagnostics are updated
    (``where``: the text naming a grouping from its batch index, for the worst one), both in the
    order of the calls (:func:`_collect`), whichever process solved them."""
    n_probes = state["ctx"].options.glue_n_probes
    pending = (state["ctx"].workers or IN_PROCESS).submit(glue_analysis, np.asarray(X), state["key"], n_probes=n_probes,
                                                          dichotomies=dichotomies, max_iter=MAX_ITER, tol=TOL)
    state["calls"].append((pending, *unsolvable(X), where, keep))  # (groupings GLUE does not solve: NaN in every array)
    _collect(state, finished_only=True)


def _collect(state: dict, finished_only: bool = False) -> None:
    """File the results of the calls made so far, oldest first (each waited for, or only those
    already answered, up to the first that is not)."""
    calls, diag, n_probes = state["calls"], state["diag"], state["ctx"].options.glue_n_probes
    while calls and (calls[0][0].ready() or not finished_only):
        pending, nonfinite, constant, where, keep = calls.pop(0)
        g = pending.result()
        fractions = np.asarray(g["converged_fraction"], dtype=np.float64)
        solved = ~(nonfinite | constant)
        diag["n_groupings_not_finite"] += int(nonfinite.sum())
        diag["n_groupings_constant"] += int(constant.sum())
        if solved.any():  # over every GLUE call: each (repeat, task) grouping solves n_probes QPs
            diag["n_probes_solved"] += int(solved.sum() * n_probes)
            diag["n_probes_converged"] += int(np.rint(fractions[solved] * n_probes).sum())
            low = np.where(solved, fractions, np.inf)
            if float(low.min()) < diag["min_converged_fraction"]:  # the worst grouping, and where it is
                diag["min_converged_fraction"] = float(low.min())
                diag["min_converged_at"] = where(np.unravel_index(np.argmin(low), low.shape))
            diag["max_residual"] = max(diag["max_residual"], float(np.max(np.asarray(g["max_residual"])[solved])))
        keep(g)


def glue_update(state: dict, folder: TaskFolder) -> dict:
    ctx, i = state["ctx"], folder.index
    opt = ctx.options
    # The evaluated slots only (all of them with --eval-tasks all, where slot k is task k).
    valid = folder.valid_slots
    reps_last, labels_last = np.asarray(folder.representations[-1]), np.asarray(folder.binary_labels[-1])
    if not folder.all_tasks:
        reps_last, labels_last = reps_last[:, valid], labels_last[:, valid]
    manifolds = class_manifolds(reps_last, labels_last, opt.glue_max_points)  # (R, K_valid, 2, M, H)
    current = int(np.flatnonzero(folder.eval_task_ids[valid] == i)[0])
    slot_tasks = folder.eval_task_ids[valid]
    state.setdefault("evaluated", []).append(folder.eval_task_ids[valid])  # the tasks whose values are measured
    to_tasks = (lambda v: v) if opt.glue_tasks == "current" else _slots_to_tasks(folder)

    def keep_task(g):
        for k in GLUE_KEYS + DIAGNOSTIC_KEYS:
            state["task"].setdefault(k, []).append(to_tasks(g[k]))

    _glue_call(state, manifolds[:, current] if opt.glue_tasks == "current" else manifolds, "task",
               lambda at: f"task {i if len(at) == 1 else int(slot_tasks[at[1]])} after task {i}, repeat {at[0]}",
               keep_task)
    distinct = _distinct_pairs(folder, slot_tasks)  # a cycled run's task j + P is task j's pair and images
    # across tasks needs two: one task's P = 2 grouping under random dichotomies only repeats the
    # per-task figure with labels that ignore the task (--eval-tasks current, one task folder)
    if len(distinct) >= 2 and (i == ctx.n_folders - 1 or (opt.glue_across_every and i % opt.glue_across_every == 0)):
        nv = len(distinct)
        chosen = distinct[np.unique(np.linspace(0, nv - 1, min(opt.glue_across_max_tasks, nv)).round().astype(int))]
        sub = manifolds[:, chosen]  # (R, k, 2, M, H)
        R, k_, _, M, H = sub.shape

        def keep_across(g):
            for k in GLUE_KEYS + DIAGNOSTIC_KEYS:
                state["across"].setdefault(k, []).append(g[k])

        _glue_call(state, sub.reshape(R, 2 * k_, M, H), "random",
                   lambda at: f"{k_} tasks together after task {i}, repeat {at[0]}", keep_across)
        state["folders"].append(i)
        state["tasks"] = folder.eval_task_ids[valid][chosen].tolist()  # global task indices
    return state


def _distinct_pairs(folder: TaskFolder, tasks: np.ndarray) -> np.ndarray:
    """The positions in ``tasks`` of the first task of each class pair: under --task-schedule
    cycle, task j + P trains and tests pair j again on the same images, so in one folder their
    manifolds are the same points, and two copies of one manifold given opposite labels by a
    random dichotomy are not separable at any capacity. Every position for other schedules."""
    schedule = folder.metadata.get("schedule") or {}
    P = schedule.get("n_pairs")
    if schedule.get("task_schedule") != "cycle" or not isinstance(P, int) or P < 1:
        return np.arange(len(tasks))
    return np.sort(np.unique(np.asarray(tasks) % P, return_index=True)[1])


def mean_over_evaluated(values_RT, evaluated_T) -> np.ndarray:
    """Each repeat's mean over the tasks the folder evaluated, (R, T) -> (R,): a non-finite value
    of an evaluated task makes the repeat's mean non-finite (``spread`` then counts it apart), as
    under --eval-tasks all; the tasks not evaluated (NaN by construction) are left out."""
    return mean_over_every_task(np.asarray(values_RT, dtype=np.float64)[:, np.asarray(evaluated_T, bool)])


def _slots_to_tasks(folder: TaskFolder):
    """Values over the folder's evaluated slots (last axis) -> over the run's T tasks, NaN where
    none: a function that keeps only the slots' task ids (not the folder and its arrays)."""
    if folder.all_tasks:
        return lambda values: values
    tasks, n_tasks = folder.eval_task_ids[folder.valid_slots], folder.num_tasks

    def to_tasks(values) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        out = np.full((*values.shape[:-1], n_tasks), np.nan)
        out[..., tasks] = values
        return out

    return to_tasks


# approx_capacity = 1 / N_R is +inf where no anchor varies (D = N_R = 0): one point per class
# manifold, as --n-subsamples 2 saves. That is a property of the points, not a divergence.
POINT_MANIFOLDS = ("every anchor is its manifold's one point, as with one image per class (--n-subsamples 2) or "
                   "identical images: dimension and radius 0, 1 / N_R infinite")


def point_manifold_spread(values) -> dict:
    """:func:`spread` of approx_capacity values, +inf (point manifolds) counted apart as
    ``n_infinite``, not in ``n_nonfinite`` (a diverged representation's NaN); with no finite value
    but some infinite, ``undefined`` says why."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    infinite = np.isposinf(v)
    out = spread(np.where(infinite, np.nan, v))
    out["n_nonfinite"] -= int(infinite.sum())
    out["n_infinite"] = int(infinite.sum())
    if out["n"] == 0 and infinite.any():
        out["undefined"] = POINT_MANIFOLDS
    return out


def _approx_capacity_summary(entry: dict, last_R, values) -> dict:
    """The summary of approx_capacity: ``entry`` with its last-task spread and counts taking +inf
    as point manifolds (:func:`point_manifold_spread`)."""
    v = np.asarray(values, dtype=np.float64)
    infinite = int(np.isposinf(v).sum())
    return {**entry, "last_task": point_manifold_spread(last_R), "n_nonfinite": entry["n_nonfinite"] - infinite,
            "n_infinite": infinite}


def far_above_median(values) -> dict | None:
    """The cells of a radius array (any shape) whose value passes the median of the finite positive
    ones ``plots.SYMLOG_SPAN`` times (the rule that puts glue.png's panel on a symlog axis): manifolds
    near collapse, where ``D - N_R -> 0`` sends R without bound and a mean over repeats is theirs.
    None when there is none."""
    size, median = plots.span_cells(values)  # (a radius is >= 0: its non-zero cells are its positive ones)
    if size.size == 0:
        return None
    far = int((size > plots.SYMLOG_SPAN * median).sum())
    if not far:
        return None
    return {"n_cells": far, "of": int(size.size), "median": median, "max": float(size.max()),
            "note": f"{far} of {size.size} cells over {plots.SYMLOG_SPAN:.0e} x the median: manifolds near collapse "
                    f"(D - N_R ~ 0); a mean over repeats is theirs, read the radius per repeat (glue.npz) or "
                    f"by its median"}


def glue_finalize(state: dict) -> Result:
    _collect(state)
    ctx = state["ctx"]
    opt, n = ctx.options, ctx.n_folders
    task = {k: np.stack(v) for k, v in state["task"].items()}  # (n, R) or (n, R, T)
    across = {k: np.stack(v) for k, v in state["across"].items()}  # (n_across, R)
    folders, tasks = state["folders"], state["tasks"]
    if opt.glue_tasks == "current":
        task_summary = {k: over_tasks(v) for k, v in task.items()}
        per_task_plot = {k: v.T for k, v in task.items()}
    else:  # the diagonal: task i's manifolds after training task i
        evaluated = np.zeros((n, next(iter(task.values())).shape[-1]), bool)  # (n, T): folder i measured task j
        for i, ids in enumerate(state["evaluated"]):
            evaluated[i, ids] = True
        task_summary = {k: {"last_task": spread(mean_over_evaluated(v[-1], evaluated[-1])),
                            "diagonal_per_task_mean": [spread(v[i, :, i])["mean"] for i in range(n)],
                            "n_nonfinite": int((~np.isfinite(v) & evaluated[:, None, :]).sum())}
                        for k, v in task.items()}
        per_task_plot = {k: np.stack([v[i, :, i] for i in range(v.shape[0])], axis=1) for k, v in task.items()}
    if "approx_capacity" in task:
        v = task["approx_capacity"]
        last = v[-1] if opt.glue_tasks == "current" else mean_over_evaluated(v[-1], evaluated[-1])
        measured = v if opt.glue_tasks == "current" else np.where(evaluated[:, None, :], v, np.nan)
        task_summary["approx_capacity"] = _approx_capacity_summary(task_summary["approx_capacity"], last, measured)
    if "radius" in task and (far := far_above_median(
            task["radius"] if opt.glue_tasks == "current" else np.where(evaluated[:, None, :], task["radius"], np.nan))):
        task_summary["radius"]["far_above_median"] = far
    across_final = {k: (point_manifold_spread if k == "approx_capacity" else spread)(v[-1]) for k, v in across.items()}
    if "radius" in across and (far := far_above_median(across["radius"][-1])):
        across_final["radius"]["far_above_median"] = far
    summary = {
        "per_task": task_summary,
        "across_tasks": {
            "final": across_final,
            "folders": folders,
            "tasks": tasks,
            "n_manifolds": 2 * len(tasks),
            **({} if folders else {"undefined": "fewer than two distinct tasks evaluated (one task folder, or "
                                                "--eval-tasks current): no grouping across tasks"}),
        },
        "solver": {
            "converged_fraction": (state["diag"]["n_probes_converged"] / state["diag"]["n_probes_solved"]  # None: none solved
                                   if state["diag"]["n_probes_solved"] else None),
            **state["diag"],
            **({} if state["diag"]["n_probes_solved"] else {"min_converged_fraction": None}),
            "tol": TOL,
            "converged": f"scaled KKT error <= {TOL} within {MAX_ITER} steps",
        },
        "settings": {
            "n_probes": opt.glue_n_probes,
            "per_task": f"P = 2, dichotomy = the task's labels, tasks = {opt.glue_tasks}",
            "across_tasks": "P = 2k, random dichotomies",
            "max_points_per_manifold": opt.glue_max_points,
            "seed": opt.glue_seed,
            "snapshot": "last of each task folder",
            "solver": f"primal-dual interior point on the dual NNLS, float64, tol {TOL} (scaled KKT), "
                      f"max {MAX_ITER} steps",
            "capacity_mc_error": "standard error of the probe average (delta method); the probes are shared by "
                                 "every repeat and folder, so this error is common to them and not in their std",
            "floor": "capacity ~ capacity_floor (P / E||t in the points' span||^2 ~ P / their rank) with "
                     "inseparable_fraction ~ 1: the dichotomies are not linearly separable in the representation, "
                     "and the capacity measures its rank, not the manifolds' geometry",
        },
    }
    figures = {"glue.png": lambda p: plots.plot_glue_over_tasks(
        per_task_plot, p, title="Capacity and geometry of each task's class manifolds (P = 2)")}
    if len(folders) >= 2:
        figures["glue_across.png"] = lambda p: plots.plot_glue_over_tasks(
            {k: v.T for k, v in across.items()}, p, x=folders, title="Capacity and geometry across tasks (P = 2k)")
    arrays = {**{f"per_task_{k}": v for k, v in task.items()}, **{f"across_{k}": v for k, v in across.items()},
              "across_folders": np.asarray(folders, dtype=np.int64), "across_tasks": np.asarray(tasks, dtype=np.int64)}
    return Result(summary={"glue": summary}, arrays={"glue.npz": arrays}, plots=figures)
