"""The headline lines of an analysis's summary for the terminal (``format_summary``): what
``cljax analyze`` prints after it writes the summary.json they come from."""

from __future__ import annotations

from cljax.analysis.analyses import COLLAPSE_DROP
from cljax.analysis.chance import near_chance_text
from cljax.analysis.glue import GLUE_RELIABLE
from cljax.analysis.spread import mean_std_text

# An across-task capacity at most this many times its floor is said to sit at it (docs/metrics.md, GLUE)
AT_FLOOR = 1.1


def _pm(entry, digits: int = 4) -> str:
    """'mean +- std' of a summary entry (None: not defined), with the repeats left out if any."""
    if not isinstance(entry, dict):
        return "n/a"
    return mean_std_text(entry.get("mean"), entry.get("std"), f".{digits}f") + _left_out(entry)


def _left_out(entry: dict) -> str:
    """How many repeats a spread left out as not finite (a diverged network's), if any."""
    left_out = entry.get("n_nonfinite", 0)
    return f" ({left_out} repeat{'s' * (left_out != 1)} left out: not finite)" if left_out else ""


def _best_keeps(last, best) -> str:
    """Said where the best-snapshot figure holds repeats its last-snapshot one leaves out: a
    repeat diverged during a task still has its best finite snapshot (docs/metrics.md)."""
    n_last, n_best = ((e or {}).get("n") or 0 for e in (last, best))
    return (f" (the best snapshots keep {n_best - n_last} repeat{'s' * (n_best - n_last != 1)} left out of the last: "
            f"a network that diverged during a task has its best finite snapshot)" if n_best > n_last else "")


def _cl_metric(summary: dict, key: str) -> str:
    """A CL metric's 'mean +- std', and over how many of its terms when --eval-tasks evaluated
    fewer than all (none: not measured, e.g. FWT, which needs each task evaluated before it trains)."""
    n = summary.get("n_task_folders") or 0
    full = n if key == "average_accuracy" else n - 1
    if full == 0 and n == 1:  # not a repeat's divergence: the metric compares tasks
        return "undefined (it needs 2 tasks or more: " + ("the run has 1)" if summary.get("complete") else
                                                         "1 trained so far)")
    terms = (summary.get("n_terms") or {}).get(key)
    mode = (summary.get("config") or {}).get("eval_tasks", "all")
    if terms == 0 and full > 0:
        return f"not measured (--eval-tasks {mode} evaluates none of its {full} terms)"
    if terms is not None and 0 < terms < full:
        return f"{_pm(summary[key])} (over {terms} of its {full} terms: --eval-tasks {mode})"
    return _pm(summary[key])


def _head_reads(config: dict) -> str:
    """What the head's figure on earlier tasks reads, per --head and --out-dim (cljax/heads.py):
    under shared and reset an earlier task is read through the outputs the latest task trained,
    a read-out effect; under multi through its own block, nothing to add."""
    head, outputs = config.get("head", "shared"), int(config.get("out_dim", 1))
    if head == "multi":
        return ""
    shared = "one output shared by every task" if outputs == 1 else f"{outputs} outputs shared by every task"
    how = (f"With {shared}," if head != "reset" else
           f"With the head reset at every task start ({shared}), an earlier task is read through the head the "
           f"latest task trained, so")
    return f". {how} the head's figure mostly measures the read-out, see docs/metrics.md"


def _other_pairs(cycled, over: int, measured: bool) -> str:
    """Under --task-schedule cycle, the earlier tasks can be the last task's own pair, trained
    again by it: said, with the figures over the other pairs' tasks (cljax/analysis/probe.py)."""
    if not cycled or not cycled["n_same_pair_as_last"]:
        return ""
    same = cycled["n_same_pair_as_last"]
    return (f" [cycled schedule: {same} of these {over} are the last task's class pair, just trained again; the other "
            f"{cycled['n_tasks']}: head {_pm(cycled['head_acc'])}"
            + (f", linear probe {_pm(cycled['probe_acc'])}" if measured else "") + "]")


def _trained_gain(gain: dict, n: int, cycle: bool) -> str:
    """The probe's baseline: tasks 1..n-2 before their task, right after, at the end, and the
    share of the gain the representation kept (summary["probe"]["trained_gain"], docs/metrics.md);
    where it is undefined, why and what would define it."""
    one = gain.get("n_tasks") == 1  # "the probe on task 1 ... before it was trained"
    before = (f"before {'its' if one else 'their'} task (under the cycled schedule its pair may have been trained "
              f"earlier)" if cycle else f"before {'it was' if one else 'they were'} trained")
    if "undefined" in gain["before"]:
        return (f"  the probe's gain from training a task (its probe before the task, right after it and after the "
                f"last task): undefined: {gain['before']['undefined']}")
    kept, of_means = gain["kept"], gain.get("kept_of_means")
    no_gain = kept.get("n_no_gain", 0)
    if kept.get("n"):
        percent = {k: None if kept[k] is None else 100 * kept[k] for k in ("mean", "std")}
        notes = ([f"{no_gain} repeat{'s' * (no_gain != 1)} without a gain left out"] if no_gain else []) + (
            [f"{100 * of_means:.0f}% from the means over repeats"] if of_means is not None else [])
        share = (f"the representation kept {mean_std_text(percent['mean'], percent['std'], '.0f')}% of what training "
                 f"added{_left_out(kept)}, per repeat" + (f" ({'; '.join(notes)})" if notes else ""))
    elif no_gain:
        share = "the share kept is undefined: training raised no repeat's probe by an image per task"
    else:
        share = f"the share kept: {_pm(kept)}"
    tasks = "task 1" if n == 3 else f"tasks 1-{n - 2}"
    return (f"  the probe on {tasks} ({gain['n_tasks']} evaluated) {before} {_pm(gain['before'])}, right after "
            f"{_pm(gain['after'])}, after the last {_pm(gain['end'])}: {share}")


def _across_tasks_of_mode(tasks, mode: str, n_trained: int | None) -> str:
    """Which tasks the across-task grouping took when --eval-tasks evaluated only some (the last
    K under window:K): a capacity over other tasks than an `all` run's of the same settings; and
    under `all` in a partial run, how many of them the network was not trained on yet."""
    if not tasks:
        return ""
    span = (f"tasks {tasks[0]}-{tasks[-1]}" if list(tasks) == list(range(tasks[0], tasks[-1] + 1)) else
            f"{len(tasks)} tasks from {tasks[0]} to {tasks[-1]}")
    ahead = sum(1 for t in tasks if t >= n_trained) if n_trained else 0  # only `all` evaluates a task before it trains
    if ahead:
        trained = "task 0" if n_trained == 1 else f"tasks 0-{n_trained - 1}"
        return f" ({span}, {ahead} of them not trained yet: a partial run, {trained} trained so far)"
    return "" if mode == "all" else f" ({span}, of those --eval-tasks {mode} evaluated)"


def format_summary(summary: dict) -> str:
    """The headline lines of a summary for the terminal: CL metrics, the head vs the linear probe
    on earlier tasks, the expert's final and best snapshot, GLUE capacity with its errors."""
    variant = " (auc)" if summary.get("variant") == "auc" else ""  # the metrics of the variant chosen
    lines = [f"{key + variant:>{18 + len(variant)}}: {_cl_metric(summary, key)}"
             for key in ("average_accuracy", "bwt", "fwt", "forgetting") if key in summary]
    writer = summary.get("in_progress")
    if summary.get("complete") is False and writer is not None:  # the tasks written so far; more are coming
        lines.insert(0, f"run in progress (pid {writer.get('pid', '?')} on {writer.get('host', '?')}, since "
                        f"{writer.get('since', '?')}): the first {summary['n_task_folders']} of its "
                        f"{summary['n_eval_tasks']} tasks, those written so far; analyse it again when it ends")
    elif summary.get("complete") is False:  # the metrics are those of the tasks trained so far
        lines.insert(0, f"partial run: the first {summary['n_task_folders']} of its {summary['n_eval_tasks']} tasks "
                        f"(finish it with the same `cljax run` command)")
    probe = summary.get("probe")
    earlier = (summary.get("n_task_folders") or 0) - 1  # the tasks before the last one
    mode = (summary.get("config") or {}).get("eval_tasks", "all")
    if probe and probe["earlier_tasks"]["n_tasks"] == 0 and earlier > 0:
        lines.append(f"accuracy on earlier tasks after the last one: not measured (--eval-tasks {mode} evaluates "
                     f"none of the {earlier})")
    if probe and probe["earlier_tasks"]["n_tasks"] > 0:
        early, images = probe["earlier_tasks"], probe["images"]
        folds = images["fold_sizes"]
        measured = folds[0] >= 2  # a probe needs 2 samples of each class (cljax/analysis/probe.py)
        over = early["n_tasks"]
        lines.append(f"accuracy on earlier tasks after the last one: head {_pm(early['head_acc'])}, linear probe "
                     + (_pm(early["probe_acc"]) if measured else "not measured")
                     + (f" (over {over} of the {earlier}: --eval-tasks {mode})" if 0 < over < earlier else "")
                     + _other_pairs(early.get("other_pairs_than_last"), over, measured))
        if measured and probe.get("trained_gain"):
            lines.append(_trained_gain(probe["trained_gain"], summary.get("n_task_folders") or 0,
                                       "other_pairs_than_last" in early))
        fit = f"{folds[0]}" if folds[0] == folds[1] else f"{folds[0]} or {folds[1]}"
        lines.append((f"  (probe: ridge on the saved representations, cross-fitted: each of the "
                      f"{images['tested_per_task']} images per task and repeat tested once, by the probe fit on the "
                      f"other half ({fit} images)" if measured else
                      f"  (probe: {images['saved_per_task']} saved images per task; it needs 2 of each class, "
                      "so 4 or more") + "; `cljax run --n-subsamples` raises it"
                     + _head_reads(summary.get("config") or {}) + ")")
    expert = summary.get("expert")
    if expert:
        left_out = expert.get("n_nonfinite", 0)  # counted in n_cells, never in n_collapsed
        lines.append(f"expert accuracy: last snapshot {_pm(expert['final'])}, best snapshot {_pm(expert['best'])}"
                     f"{_best_keeps(expert['final'], expert['best'])}; "
                     f"{expert['n_collapsed']} of {expert['n_cells'] - left_out} {'finite ' * bool(left_out)}(repeat, "
                     f"task) cells ended more than {COLLAPSE_DROP} below their best"
                     + (f" ({left_out} not finite, left out)" if left_out else ""))
        auc = summary.get("variant") == "auc"  # the learner's area under its curve: biased upward (docs/metrics.md)
        lines.append(f"plasticity gap: {'auc of the learner vs last snapshot of the expert' if auc else 'last snapshots'} "
                     f"{_pm(summary['mean_plasticity_gap'])}, best snapshots {_pm(summary['mean_plasticity_gap_best'])}"
                     + _best_keeps(summary["mean_plasticity_gap"], summary["mean_plasticity_gap_best"]))
    if chance := near_chance_text(summary.get("near_chance")):
        lines.append(chance)
    glue = summary.get("glue")
    if glue:
        cap, err, solver = (glue["per_task"]["capacity"]["last_task"], glue["per_task"]["capacity_mc_error"]["last_task"],
                            glue["solver"])
        mc = "n/a" if err["mean"] is None else f"{err['mean']:.4f}"
        solved = solver["n_probes_solved"]
        cap_text = _pm(cap)
        not_finite, constant = solver.get("n_groupings_not_finite", 0), solver.get("n_groupings_constant", 0)
        if cap["mean"] is None and constant and not not_finite:
            # constant representations (collapsed units), not a diverged network: no capacity to measure
            cap_text = "undefined (the representations are constant over the images: collapsed, not diverged)"
        elif constant and not not_finite:  # the repeats left out are collapsed ones, not diverged
            cap_text = cap_text.replace("left out: not finite)", "left out: constant representations, collapsed, "
                                                                 "not diverged)")
        elif constant and not_finite:  # "not finite" above counts both kinds: say which is which
            cap_text += (f" [groupings left out over the run: {not_finite} not finite (diverged), {constant} with "
                         f"constant representations (collapsed, not diverged)]")
        low = solver.get("min_converged_fraction")
        lines.append(f"GLUE capacity, last task: {cap_text} over repeats, Monte-Carlo error {mc} "
                     f"({glue['settings']['n_probes']} probes); " + (
                         f"solver within tolerance on {100 * solver['converged_fraction']:.2f}% of {solved} QPs "
                         f"(probes x repeats x groupings)"
                         if solved else "no probe was solved")
                     + (f"; over the run, the grouping of {solver.get('min_converged_at', 'one task')} reached it on "
                        f"only {100 * low:.1f}%: its points are nearly degenerate (as a network near collapse gives) "
                        f"and its capacity is not reliable (docs/metrics.md, GLUE)"
                        if solved and low is not None and low < GLUE_RELIABLE else "")
                     + (f"; approx_capacity undefined: {approx['undefined']}"
                        if "undefined" in (approx := glue["per_task"].get("approx_capacity", {}).get("last_task", {}))
                        else ""))
        if far := glue["per_task"].get("radius", {}).get("far_above_median"):
            lines.append(f"GLUE radius over the run: {far['note']} ({far['median']:.3g}; the largest {far['max']:.3g})")
        across = glue.get("across_tasks", {})
        final = across.get("final", {})
        if "undefined" in across:
            lines.append(f"GLUE across tasks: not measured, {across['undefined']}")
        if (final.get("capacity") or {}).get("mean") is not None and "capacity_floor" in final:
            at_floor = final["capacity"]["mean"] <= AT_FLOOR * (final["capacity_floor"].get("mean") or 0.0)
            lines.append(f"GLUE across {across['n_manifolds'] // 2} tasks (P = {across['n_manifolds']}), last folder"
                         + _across_tasks_of_mode(across.get("tasks"), mode, summary.get("n_task_folders")
                                                if summary.get("complete") is False else None) + ": "
                         f"capacity {_pm(final['capacity'])}, its floor {_pm(final['capacity_floor'])} (the "
                         f"capacity were every dichotomy inseparable); {100 * (final['inseparable_fraction'].get('mean') or 0.0):.0f}% of "
                         f"the probes separate nothing" + (
                             f": within {AT_FLOOR - 1:.0%} of its floor, the capacity measures the rank of the "
                             f"representation, not the manifolds' geometry (docs/metrics.md, GLUE)" if at_floor else ""))
    repeats = summary.get("n_repeats")
    lines.append(f"std: {summary.get('std', '')}" + (f" (this run: R = {repeats} repeats)" if repeats else ""))
    return "\n".join(lines)
