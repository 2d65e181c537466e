"""What one task leaves behind: its arrays in the results format, its metadata.json and its row
of the run table. Pure functions of host arrays, called by the task loop (cljax/experiment.py)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata as importlib_metadata

import jax
import numpy as np

from cljax.config import SCHEMA_VERSION, Config
from cljax.devices.mesh import mesh_devices
from cljax.errors import CljaxError
from cljax.eval_tasks import eval_tasks_of
from cljax.results import (EXPERT_KEYS, load_expert_metrics, load_metrics, task_dir_name, weights_layout,
                           weights_to_structured)
from cljax.tasks import schedule_record


def task_arrays(config: Config, trace: dict, acc, loss, reps):
    """Host arrays of one task in the results format. ``acc``, ``loss`` (L+1, R, K) and ``reps``
    (L+1, R, K, S, H) include the task-start evaluation at index 0; K is the evaluated task slots
    (cljax/eval_tasks.py)."""
    L, R, S = config.n_logs, config.n_repeats, config.n_subsamples
    K = np.shape(acc)[-1]
    # Test sets are interleaved A, B, A, B...: the labels of the saved subsample are 0, 1, 0, 1...
    labels_S = np.tile(np.array([0, 1], np.uint8), S // 2)
    binary_labels = np.ascontiguousarray(np.broadcast_to(labels_S, (L, R, K, S)))
    metrics = {
        "test_acc": acc[1:],
        "test_loss": loss[1:],
        "train_acc": trace["train_acc"],
        "train_loss": trace["train_loss"],
        "start_test_acc": acc[0],
        "start_test_loss": loss[0],
        "log_steps": np.asarray(config.log_steps, np.int64),
    }
    expert = {k: trace[f"expert_{k}"] for k in EXPERT_KEYS}
    state = trace["model_state"]
    arrays = {
        "representations": np.asarray(reps[1:]),
        "binary_labels": binary_labels,
        "weights": weights_to_structured(jax.tree.map(lambda w: w[1:], trace["weights"])),
        "start_weights": weights_to_structured(jax.tree.map(lambda w: w[0], trace["weights"]), lead=1),
        "model_state": weights_to_structured(jax.tree.map(lambda w: w[1:], state)) if jax.tree.leaves(state) else None,
        "metrics": metrics,
        "expert_metrics": expert,
    }
    shapes = {
        "representations": list(arrays["representations"].shape),
        "binary_labels": list(binary_labels.shape),
        "weights": list(arrays["weights"].shape),
        "start_weights": list(arrays["start_weights"].shape),
        **({"model_state": list(arrays["model_state"].shape)} if arrays["model_state"] is not None else {}),
        **{f"metrics.{k}": list(np.shape(v)) for k, v in metrics.items()},
        **{f"expert_metrics.{k}": list(np.shape(v)) for k, v in expert.items()},
    }
    return arrays, shapes



def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("cljax", "jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def task_metadata(config, schedule, t, shapes, weights, class_names, lowering, timings) -> dict:
    """metadata.json of task t. The schedule's record (cljax.tasks.schedule_record) and the
    task axis's (``eval_tasks``: which task each slot holds, cljax.eval_tasks) do not grow with T
    with ``--task-schedule cycle`` and ``--eval-tasks current`` / ``window:K``."""
    T = config.num_tasks
    sched = schedule_record(schedule, t, config.task_schedule, len(class_names))
    table = {"task_class_pairs": sched.pop("task_class_pairs")} if "task_class_pairs" in sched else {}
    return {
        "task_index": t,
        "task_dir": task_dir_name(t),
        "dataset": config.dataset,
        "algorithm": config.algorithm_name,
        "config": config.to_dict(),
        "seed": config.seed,
        **table,
        "task_pairs": schedule[t].tolist(),
        "task_pair_names": [[class_names[a], class_names[b]] for a, b in schedule[t]],
        "schedule": sched,
        "eval_tasks": eval_tasks_of(config).record(t, T),
        "label_of": "first class of a pair -> 0, second -> 1",
        "steps_per_task": config.steps_per_task,
        "log_frequency": config.log_frequency,
        "log_steps": config.log_steps,
        "shapes": shapes,
        "axes": {
            "representations": "L, R, T_eval, S, H",
            "binary_labels": "L, R, T_eval, S",
            "weights": "L, R (structured: one field per parameter)",
            "metrics.test_acc": "L, R, T_eval",
            "metrics.train_acc": "L, R",
            "metrics.start_test_acc": "R, T_eval (before this task's first step)",
            "expert_metrics.*": "L, R",
            "T_eval": "the evaluated task slots: slot k holds task eval_tasks.eval_task_ids[k] (-1: none, NaN)",
        },
        "weights_layout": weights_layout(weights),
        "versions": _versions(),
        "device": [str(d) for d in mesh_devices()],  # the devices R is split over
        "lowering": lowering.record(),
        "schema": SCHEMA_VERSION,
        "backend": jax.default_backend(),
        "argv": sys.argv,
        "timings": timings,
    }


def summary_row(t: int, arrays: dict, eval_ids) -> dict:
    """Task t's row of the run table: the learner on task t and on the earlier tasks it
    evaluated, the expert, the probe of the earlier tasks' representations."""
    acc_RK = np.asarray(arrays["metrics"]["test_acc"][-1], np.float64)  # last snapshot of task t
    expert_R = np.asarray(arrays["expert_metrics"]["test_acc"][-1], np.float64)
    ids = np.asarray(eval_ids)
    earlier = np.flatnonzero((ids >= 0) & (ids < t))
    out = nonfinite_repeats(arrays, eval_ids)
    return {
        "task": t,
        "acc_current": _finite_mean(acc_RK[:, int(np.flatnonzero(ids == t)[0])]),
        "acc_current_std": _finite_std(acc_RK[:, int(np.flatnonzero(ids == t)[0])]),
        # per repeat, then over the repeats whose mean is finite: a repeat with one non-finite
        # earlier task is left out whole, as the analysis leaves it (docs/metrics.md)
        "acc_earlier": _finite_mean(acc_RK[:, earlier].mean(axis=1)) if len(earlier) else float("nan"),
        "expert_acc": _finite_mean(expert_R),
        "expert_acc_std": _finite_std(expert_R),
        "probe_earlier": _probe_earlier(arrays, earlier),
        "n_earlier": len(earlier),  # 0: no earlier task evaluated (acc_earlier, probe_earlier NaN)
        "n_nonfinite": len(set(out["learner"]) | set(out["expert"])),  # repeats left out of the means
        "nonfinite_repeats": out,
    }


# NaN: none, or no finite value (a std: fewer than two). A row kept without the stds (a folder
# written before they were) is not taken: its row is computed again from its arrays.
ROW_FLOATS = ("acc_current", "acc_current_std", "acc_earlier", "expert_acc", "expert_acc_std", "probe_earlier")


def stored_row(row: dict) -> dict:
    """``row`` as metadata.json keeps it ("summary"): NaN as null, so the file stays strict JSON."""
    return {k: None if k in ROW_FLOATS and np.isnan(v) else v for k, v in row.items()}


def row_of_stored(stored) -> dict | None:
    """The row ``stored_row`` kept, None when ``stored`` is not one (a folder written before the
    rows were kept: its row is computed from its arrays)."""
    if not isinstance(stored, dict) or not {"task", *ROW_FLOATS} <= set(stored):
        return None
    return {k: float("nan") if k in ROW_FLOATS and v is None else v for k, v in stored.items()}


def nonfinite_report(config: Config, arrays: dict, eval_ids) -> list[dict]:
    """Snapshots whose losses are NaN or inf: [{metric, snapshot, step}], first ones first. The
    slots without a task (``eval_ids`` -1, NaN by design) are not looked at."""
    found = []
    steps = config.log_steps
    present = np.asarray(eval_ids) >= 0
    named = {**{f"metrics.{k}": v[..., present] if k == "test_loss" else v
                for k, v in arrays["metrics"].items() if "loss" in k and k != "start_test_loss"},
             **{f"expert_metrics.{k}": v for k, v in arrays["expert_metrics"].items() if "loss" in k}}
    for name, values in named.items():
        bad = ~np.isfinite(np.asarray(values).reshape(len(steps), -1)).all(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            found.append({"metric": name, "snapshot": first, "step": steps[first]})
    return sorted(found, key=lambda f: f["snapshot"])


def nonfinite_repeats(arrays: dict, eval_ids) -> dict:
    """The repeats whose learner (on a task it evaluated) or expert has a non-finite accuracy at
    the task's last snapshot: {"learner": [...], "expert": [...]}. Reads the two metrics only."""
    acc_RK = np.asarray(arrays["metrics"]["test_acc"][-1], np.float64)
    expert_R = np.asarray(arrays["expert_metrics"]["test_acc"][-1], np.float64)
    learner_out = ~np.isfinite(acc_RK[:, np.asarray(eval_ids) >= 0]).all(axis=1)
    return {"learner": np.flatnonzero(learner_out).tolist(), "expert": np.flatnonzero(~np.isfinite(expert_R)).tolist()}


def nonfinite_before(algo_dir, t: int, eval_ids) -> dict | None:
    """``nonfinite_repeats`` of task t - 1, read from its folder (``eval_ids``: that task's slots),
    for a command whose first task is t; None when t is 0."""
    if t == 0:
        return None
    task_dir = algo_dir / task_dir_name(t - 1)
    try:
        return nonfinite_repeats({"metrics": load_metrics(task_dir), "expert_metrics": load_expert_metrics(task_dir)},
                                 eval_ids)
    except CljaxError:  # damaged (a resume stops at it, --repair mends it): the log counts from here
        return None


def divergence_warning(row: dict, before: dict | None) -> str | None:
    """One stderr line for the repeats whose learner or expert is not finite at this task but was
    finite at the task before (``before``: that task's ``nonfinite_repeats``, None for task 0), so
    that a divergence kept with --allow-nonfinite shows in a long run's log at the task it happened.
    It depends on the two tasks alone: a resumed run's log says what the run's in one go says."""
    was = before or {}
    new = {who: [r for r in row.get("nonfinite_repeats", {}).get(who, []) if r not in was.get(who, [])]
           for who in ("learner", "expert")}
    if not any(new.values()):
        return None
    named = [f"the {who} in repeat{'s' * (len(rs) > 1)} {', '.join(map(str, rs))}" for who, rs in new.items() if rs]
    return (f"warning: task {row['task']}: {' and '.join(named)} diverged (accuracy not finite); the run goes on "
            f"(--allow-nonfinite), its means leave them out, and a repeat still diverged at the next task is not "
            f"named again.")


def _finite_mean(values) -> float:
    """The mean of the finite values, NaN when none is: the analysis's rule (docs/metrics.md), so
    a repeat that diverged (NaN accuracy, kept with --allow-nonfinite) is left out, not averaged in."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    return float(v[finite].mean()) if finite.any() else float("nan")


def _finite_std(values) -> float:
    """The spread over the repeats beside ``_finite_mean``: the analysis's rule (sample std of
    the finite values, NaN when fewer than two are finite; docs/metrics.md)."""
    from cljax.analysis.spread import spread

    return spread(values)["std"]


PROBE_TASKS = 32


def _probe_earlier(arrays: dict, earlier_slots: np.ndarray) -> float:
    """Mean accuracy of a linear probe on the earlier tasks' saved representations at the last
    snapshot (``cljax.analysis.probe``): what the representation still separates, beside what the
    shared head reads out. At most PROBE_TASKS earlier tasks, evenly spaced, so the host's work
    per task stays bounded (`cljax analyze` probes all). NaN without an earlier task or under 4
    saved images."""
    reps, labels = arrays.get("representations"), arrays.get("binary_labels")
    n = len(earlier_slots)
    if n == 0 or reps is None or labels is None or reps.shape[-2] < 4:
        return float("nan")
    from cljax.analysis.probe import probe_accuracy  # numpy only; imported when first needed

    slots = earlier_slots[np.unique(np.linspace(0, n - 1, min(n, PROBE_TASKS)).round().astype(int))]
    acc = probe_accuracy(np.asarray(reps[-1][:, slots], np.float32), np.asarray(labels[-1][:, slots]))
    return _finite_mean(acc.mean(axis=1))  # per repeat, then the repeats with a finite mean
