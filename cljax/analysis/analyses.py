"""The built-in analyses of :func:`~cljax.analysis.driver.analyze_run`, in the order they run.

- ``cl``: accuracy matrix (``final`` and ``auc`` rows), expert accuracy, the CL metrics on the
  n x n block of completed tasks; ``cl.npz``, the headline numbers, ``accuracy_matrix.png``,
  ``learner_vs_expert.png``.
- ``plasticity``: representation metrics of the current task at every snapshot (``current_*``,
  (n, L, R)) and of all evaluated tasks at the folder's last snapshot (``all_tasks_*``, (n, R));
  weight magnitude and change (n, L, R); ``plasticity.npz``, ``plasticity.png``.
- ``curves``: test accuracy of at most ``curve_tasks`` tasks and of the current task over the
  whole run; ``curves.npz``, ``accuracy_over_time.png`` (with the current task's curve when some
  task is not evaluated at every snapshot: --eval-tasks seen, current, window:K).
- ``run``: the run's config (metadata of task_000) and the conventions.
- ``glue``: GLUE at the last snapshot of each folder (P = 2 per task, P = 2k across tasks);
  ``glue.npz``, ``glue.png``, ``glue_across.png`` (:mod:`cljax.analysis.glue_runs`).
- ``probe``: a linear probe of every evaluated task's saved representations beside the head's
  accuracy, at the last snapshot of each folder (:mod:`cljax.analysis.probe`); ``probe.npz``,
  ``probe.png``.

Definitions: ``docs/metrics.md``; conventions: :mod:`cljax.analysis.driver`.
"""

from __future__ import annotations

import jax
import numpy as np

from cljax.analysis import plots, probe
from cljax.analysis.band import DENSE_CELLS, Band
from cljax.analysis.chance import near_chance, near_chance_plot_note
from cljax.analysis.cl import (VARIANTS, cl_metrics_band, cl_metrics_from_matrix, mean_over_every_task, snapshot_accuracy,
                               task_accuracy_row)
from cljax.analysis.glue_runs import glue_finalize, glue_init, glue_update
from cljax.analysis.plasticine import representation_metrics, weight_change, weight_magnitude
from cljax.analysis.plot_parts import left_out_text
from cljax.analysis.registry import Analysis, Result, RunContext, TaskFolder, register
from cljax.analysis.spread import over_tasks, spread
from cljax.initial_state import load_initial_weights

WEIGHT_KEYS = ("weight_magnitude", "weight_change_task_start", "weight_change_init")


# ---- cl --------------------------------------------------------------------------------------
# A snapshot this far below the same run's best one counts as a collapse (summary["expert"]).
COLLAPSE_DROP = 0.1
# The accuracies are saved in float32: a drop of exactly 20 of 200 images read 0.09999996 (0.9 ->
# 0.8) or 0.10000002 (0.6 -> 0.5). "More than 0.1" is then more than 0.1 by over this, far below
# one image of any test set (1e-6: a million test images).
COLLAPSE_ROUNDING = 1e-6


def _cl_init(ctx: RunContext) -> dict:
    return {"ctx": ctx, "rows": {v: [] for v in VARIANTS}, "ids": [], "expert_LR": [], "current_LR": [],
            "initial": None, "modes": set()}


def _cl_update(state: dict, folder: TaskFolder) -> dict:
    if state["initial"] is None:
        state["initial"] = folder.start_test_acc
        state["initial_evaluated"] = folder.to_tasks(np.ones(folder.eval_task_ids.shape), fill=0.0) > 0
    state["modes"].add((folder.metadata.get("eval_tasks") or {}).get("mode", "all"))
    start = np.asarray(folder.metrics["start_test_acc"], dtype=np.float64)  # (R, K), the saved slots
    for v in VARIANTS:  # kept as saved, (R, K): the memory grows with the band (cljax.analysis.band)
        state["rows"][v].append(task_accuracy_row(folder.test_acc_slots, v, start, folder.log_steps))
    state["ids"].append(folder.eval_task_ids)
    state["expert_LR"].append(np.asarray(folder.expert_metrics["test_acc"], dtype=np.float64))
    state["current_LR"].append(folder.test_acc_slots[:, :, folder.slot_of(folder.index)])
    return state


def _expert_summary(expert_LR: list, current_LR: list) -> dict:
    """The expert's final, best and last-snapshot drop, and the best-vs-best plasticity gap."""
    final, best = (snapshot_accuracy(expert_LR, v) for v in ("final", "best"))  # (R, n)
    learner_best = snapshot_accuracy(current_LR, "best")
    drop, gap_best = best - final, best - learner_best
    return {
        "arrays": {"expert_acc_best": best, "learner_current_acc_best": learner_best,
                   "plasticity_gap_best": gap_best, "expert_drop_from_best": drop},
        "summary": {
            "expert": {
                "final": spread(mean_over_every_task(final)),
                "best": spread(mean_over_every_task(best)),
                "max_drop_from_best": float(np.max(drop, where=np.isfinite(drop), initial=-np.inf))
                if np.isfinite(drop).any() else float("nan"),
                "n_collapsed": int((drop > COLLAPSE_DROP + COLLAPSE_ROUNDING).sum()),
                "n_cells": int(drop.size),
                "n_nonfinite": int((~np.isfinite(drop)).sum()),  # left out of the max and of n_collapsed
                "collapse": f"last snapshot more than {COLLAPSE_DROP} below the best snapshot of the same "
                            "(repeat, task)",
            },
            "mean_plasticity_gap_best": spread(mean_over_every_task(gap_best)),
        },
    }


def _cl_finalize(state: dict) -> Result:
    ctx, initial = state["ctx"], state["initial"]
    n = ctx.n_folders
    bands = {v: Band.stack(r, state["ids"], ctx.n_eval_tasks) for v, r in state["rows"].items()}  # (R, n, K)
    band = bands["final"]
    dense = band.keeps_dense
    expert = {v: snapshot_accuracy(state["expert_LR"], v) for v in ("final", "auc")}  # (R, n)
    # E[i] is the expert's last snapshot for both variants (docs/metrics.md); its mean is saved too.
    every = band.every_evaluated(n)
    if every:  # the n x n block is whole (R x n x n <= the band)
        cl = {v: {"variant": v, **cl_metrics_from_matrix(bands[v].dense(n), expert["final"], initial[:, :n])}
              for v in VARIANTS}
    else:  # --eval-tasks seen / current / window:K: the metrics over the evaluated entries
        cl = {v: {"variant": v, **cl_metrics_band(bands[v], expert["final"], initial[:, :n],
                                                  state["initial_evaluated"][:n], dense=dense)} for v in VARIANTS}
    headline = cl[state["ctx"].options.variant]
    robust = _expert_summary(state["expert_LR"], state["current_LR"])
    chance = near_chance(snapshot_accuracy(state["current_LR"], "final"), expert["final"])
    arrays = {
        "initial_acc": initial,
        "expert_acc_final": expert["final"],
        "expert_acc_auc": expert["auc"],
        **robust["arrays"],
        **({f"accuracy_rows_{v}": bands[v].dense() for v in VARIANTS} if dense else {}),
        **({f"accuracy_band_{v}": bands[v].values for v in VARIANTS} if not band.is_dense else {}),
        **({"band_task_ids": band.ids} if not band.is_dense else {}),
        **{f"{v}_{k}": val for v in VARIANTS for k, val in cl[v].items() if k not in ("summary", "variant")},
    }
    variant = headline["variant"]
    diagonal = bands[variant].diagonal()[0]
    image, block = bands[variant].mean_matrix(n)
    return Result(
        summary={**headline["summary"], **robust["summary"], "near_chance": chance,
                 "cl": {v: cl[v]["summary"] for v in VARIANTS},
                 "matrices": _matrices_note(dense, band),
                 **({} if every else {"evaluated_entries": {
                     "eval_tasks": sorted(state["modes"]), "fraction": band.evaluated_count(n) / n**2,
                     "how": "the accuracy matrix is NaN where a task was not evaluated; each metric is taken over "
                            "its terms whose entries were evaluated (n_terms in summary['cl']), NaN when none were"}})},
        arrays={"cl.npz": arrays},
        plots={
            "accuracy_matrix.png": lambda p: plots.plot_accuracy_matrix(
                image, p, title=f"Accuracy matrix ({variant})", block=block,
                blank="" if every else f"blank: not evaluated (--eval-tasks {', '.join(sorted(state['modes']))})",
                left_out=left_out_text(bands[variant].values, n_left_out=bands[variant].n_repeats_not_finite(n))),
            "learner_vs_expert.png": lambda p: plots.plot_learner_vs_expert(
                diagonal, headline["expert_accuracy"], p,
                expert_best_RT=robust["arrays"]["expert_acc_best"], variant=variant,
                gap_best_RT=robust["arrays"]["plasticity_gap_best"], note=near_chance_plot_note(chance)),
        },
    )


def _matrices_note(dense: bool, band: Band) -> str:
    """How cl.npz and probe.npz hold the (repeat, folder, task) matrices."""
    if band.is_dense:
        return "dense: accuracy_rows_* (R, n, T) and *_accuracy_matrix (R, n, n)"
    text = ("band: accuracy_band_* (R, n, K), the K task slots each folder evaluated, band_task_ids (n, K) their "
            "tasks (-1: none)")
    return text + ("; and dense (NaN where not evaluated)" if dense else
                   f"; not dense: (R, n, T) has more than {DENSE_CELLS} cells (Band.dense() builds it)")


# ---- plasticity ------------------------------------------------------------------------------
def _plasticity_init(ctx: RunContext) -> dict:
    initial = load_initial_weights(ctx.algo_dir)
    init_ref = None if initial is None else [np.asarray(x) for x in jax.tree_util.tree_leaves(initial)]
    return {"tau": ctx.options.tau, "T": ctx.n_eval_tasks, "R": ctx.n_repeats, "current": {}, "all": {},
            "weights": {k: [] for k in WEIGHT_KEYS}, "init_ref": init_ref, "prev_last": None, "pooled": [],
            "references": {"init": "initial/weights.npy" if initial is not None else
                           "first snapshot of task_000 (this run has no initial/ folder)", "task_start": set()}}


def _plasticity_update(state: dict, folder: TaskFolder) -> dict:
    tau, T, R = state["tau"], state["T"], state["R"]
    reps = folder.representations  # (L, R, K, S, H), memory-mapped
    h_cur = np.asarray(reps[:, :, folder.slot_of(folder.index)])  # (L, R, S, H)
    for k, v in representation_metrics(h_cur, tau=tau).items():
        state["current"].setdefault(k, []).append(v)
    S, H = reps.shape[-2:]
    state["images"] = (S, H)
    if folder.all_tasks:
        per_repeat = [representation_metrics(np.asarray(reps[-1, r]).reshape(T * S, H), tau=tau) for r in range(R)]
    else:  # the evaluated tasks' samples only
        valid = folder.valid_slots
        per_repeat = [representation_metrics(np.asarray(reps[-1, r])[valid].reshape(-1, H), tau=tau) for r in range(R)]
    for k in per_repeat[0]:
        state["all"].setdefault(k, []).append(np.array([m[k] for m in per_repeat]))
    state["pooled"].append(T if folder.all_tasks else len(folder.valid_slots))  # the tasks all_tasks_* pooled

    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(folder.weights)]
    if state["init_ref"] is None:
        state["init_ref"] = [x[0].copy() for x in leaves]
    start = folder.start_weights
    if start is not None:  # the state this task's training started from, after shrink+perturb
        start_ref = [np.asarray(x) for x in jax.tree_util.tree_leaves(start)]
        state["references"]["task_start"].add("start_weights.npy of the task folder")
    else:
        start_ref = state["prev_last"] if state["prev_last"] is not None else state["init_ref"]
        state["references"]["task_start"].add("last snapshot of the previous task folder (no start_weights.npy)")
    track = state["weights"]
    track["weight_magnitude"].append(weight_magnitude(leaves))
    track["weight_change_task_start"].append(weight_change(leaves, start_ref))
    track["weight_change_init"].append(weight_change(leaves, state["init_ref"]))
    state["prev_last"] = [x[-1].copy() for x in leaves]
    return state


def _plasticity_finalize(state: dict) -> Result:
    current = {k: np.stack(v) for k, v in state["current"].items()}  # (n, L, R)
    all_tasks = {k: np.stack(v) for k, v in state["all"].items()}  # (n, R)
    weights = {k: np.stack(v) for k, v in state["weights"].items()}  # (n, L, R)
    last_snapshot = {k: v[:, -1] for k, v in current.items()}  # (n, R)
    last_snapshot.update({k: v[:, -1] for k, v in weights.items()})
    S, H = state["images"]  # a rank of S images of H units is at most min(S, H): S is the run's --n-subsamples
    notes = {**dict.fromkeys(("effective_rank", "stable_rank", "srank"), f"(at most {min(S, H)}: {S} images, {H} units)"),
             "dormant_ratio": f"(tau {state['tau']:g})", "weight_magnitude": "(RMS of all the weights)"}
    return Result(
        summary={"plasticity": {
            "current_task_last_snapshot": {k: over_tasks(v) for k, v in last_snapshot.items()},
            "all_tasks_last_snapshot": {k: over_tasks(v) for k, v in all_tasks.items()},
            # what all_tasks_* pooled differs by --eval-tasks: said, as the accuracy matrix says its entries
            "all_tasks_pooled": {"tasks_per_folder": state["pooled"],
                                 "what": "the saved images of the tasks each folder evaluated, at its last snapshot: "
                                         "all T under --eval-tasks all (those not trained yet included), the tasks "
                                         "trained so far under seen, the last K under window:K (fewer before task "
                                         "K - 1), the current one under current; compare all_tasks_* only between "
                                         "runs of one mode"},
            "tau": state["tau"],
            "current_task_images": {"saved_per_task": S, "units": H, "rank_at_most": min(S, H)},
            "weight_change_reference": {"init": state["references"]["init"],
                                        "task_start": sorted(state["references"]["task_start"])},
        }},
        arrays={"plasticity.npz": {**{f"current_{k}": v for k, v in current.items()},
                                   **{f"all_tasks_{k}": v for k, v in all_tasks.items()}, **weights}},
        plots={"plasticity.png": lambda p: plots.plot_plasticity_over_tasks(
            {k: v.T for k, v in last_snapshot.items()}, p,
            title="Plasticity metrics at the end of each task (those of the representation: on the current "
                  "task's saved images)", notes=notes)},
    )


# ---- curves ----------------------------------------------------------------------------------
def _curves_init(ctx: RunContext) -> dict:
    T = ctx.n_eval_tasks
    ids = np.unique(np.linspace(0, T - 1, min(ctx.options.curve_tasks, T)).round().astype(int))
    return {"ids": ids, "curves": [], "current": [], "steps": [], "boundaries": [], "offset": 0.0, "every_task": True,
            "n_folders": ctx.n_folders}


def _curves_update(state: dict, folder: TaskFolder) -> dict:
    acc, log_steps = folder.test_acc_slots, folder.log_steps
    schedule = folder.metadata.get("schedule") or {}
    P, T = schedule.get("n_pairs"), int(state["ids"].max()) + 1 if state["ids"].size else 0
    cycled = schedule.get("task_schedule") == "cycle" and isinstance(P, int) and P < T
    n = state["n_folders"]
    if folder.index == 0 and not folder.all_tasks and n < folder.num_tasks:
        # --eval-tasks seen, current, window:K never evaluate a task before it trains: a partial
        # run's tasks from n on have no value, so the curves are chosen among the tasks trained.
        state["ids"] = np.unique(np.linspace(0, n - 1, min(len(state["ids"]), n)).round().astype(int))
    if folder.index == 0 and cycled and folder.all_tasks:
        # Every task is evaluated at every snapshot, and task j + P is task j's pair on the same
        # test images: evenly spaced tasks would draw the same curves several times over.
        state["ids"] = np.unique(np.linspace(0, P - 1, min(len(state["ids"]), P)).round().astype(int))
        state["cycle"] = f"a cycle of {P} pairs: task j is also task j + {P}, j + {2 * P}, ..."
    elif folder.index == 0 and cycled and state["ids"].max() >= P:
        # Each task is drawn while it is evaluated, task j + P at other times than task j: two curves of one pair.
        state["cycle"] = f"a cycle of {P} pairs: tasks j and j + {P} are the same class pair, on the same test images"
    state["boundaries"].append(state["offset"])
    state["curves"].append(folder.at_tasks(acc, state["ids"]).astype(np.float32))
    state["current"].append(acc[:, :, folder.slot_of(folder.index)].astype(np.float32))  # (L, R): the task trained
    state["every_task"] &= folder.all_tasks
    state["steps"].append(state["offset"] + log_steps)
    state["offset"] += float(log_steps[-1])
    return state


def _curves_finalize(state: dict) -> Result:
    curves, steps = np.concatenate(state["curves"], axis=0), np.concatenate(state["steps"])
    current = np.concatenate(state["current"], axis=0)  # (n L, R)
    ids, boundaries = state["ids"], state["boundaries"]
    # A task not evaluated at every snapshot (--eval-tasks current, window:K, seen) has a short
    # curve; the current task's accuracy over the whole run is drawn beside them.
    shown = None if state["every_task"] else current
    return Result(
        arrays={"curves.npz": {"test_acc": curves, "steps": steps, "task_ids": ids, "current_task_acc": current,
                               "task_boundaries": np.asarray(boundaries)}},
        plots={"accuracy_over_time.png": lambda p: plots.plot_accuracy_over_time(
            curves, p, task_boundaries=boundaries[1:], task_ids=ids.tolist(), steps=steps, current_NR=shown,
            # a diverged network is not finite on the task it trains, which every snapshot evaluates
            left_out=left_out_text(current.T, n_left_out=int((~np.isfinite(current)).any(axis=0).sum())),
            legend_title=state.get("cycle"))},
    )


# ---- run: config and conventions -------------------------------------------------------------
CONVENTIONS = {
    "accuracy_matrix": "R[i, j] after task i on task j; final = last snapshot, auc = area under the accuracy "
                       "curve from the task-start evaluation (trapezoid over the logged steps) / its length",
    "fwt": "mean over j >= 1 of R[j-1, j] - b[j], b = start_test_acc of task_000",
    "expert": "E[i] = expert test accuracy on task i at its last snapshot (both variants); "
              "plasticity_gap_best = expert's best snapshot - learner's best snapshot on task i",
    "probe": "ridge probe on half of each task's saved test representations, tested on the other half",
    "incomplete_run": "the accuracy metrics over the n x n block of the completed tasks; plasticity.all_tasks_* and "
                      "the GLUE capacity across tasks take the saved images of the tasks each folder evaluated "
                      "(under --eval-tasks all, those not trained yet included)",
    "weight_change_task_start": "reference = the task's start_weights.npy: the weights its training started from, "
                                "after the task-start options (shrink+perturb); in a folder without it, the last "
                                "snapshot of the previous task folder",
    "weight_change_init": "reference = initial/weights.npy, the initialisation (before a head reset); in a run without "
                          "it, the first snapshot of task_000",
    "feature_variance": "mean over units of the variance across samples",
    "weight_units": "weight_magnitude and weight_change_* are RMS per parameter, sqrt(sum x^2 / P), not norms",
    "forgetting": "top-level and cl.*: best earlier accuracy minus final (Chaudhry); probe.forgetting: accuracy "
                  "after task j minus at the end (-BWT), another quantity",
}


def _run_update(state: dict, folder: TaskFolder) -> dict:
    if folder.index == 0:
        state["config"] = folder.metadata.get("config", {})
    return state


def _run_finalize(state: dict) -> Result:
    return Result(summary={"config": state["config"], "conventions": CONVENTIONS})


BUILTIN = tuple(register(a) for a in (  # in the order they run (a plugin that fails puts back what it removed)
    Analysis("cl", _cl_init, _cl_update, _cl_finalize),
    Analysis("plasticity", _plasticity_init, _plasticity_update, _plasticity_finalize),
    Analysis("curves", _curves_init, _curves_update, _curves_finalize),
    Analysis("run", lambda ctx: {"config": {}}, _run_update, _run_finalize),
    Analysis("glue", glue_init, glue_update, glue_finalize),
    Analysis("probe", probe.init, probe.update, probe.finalize)))
