"""The table `cljax compare` prints: each run's late gap, learner and expert; its partial or
diverged repeats; each run's paired difference from its baseline, and those pooled over draws;
and the note naming the runs a sweep given whole lists but has no task folders of."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cljax.analysis.spread import figure, mean_std_text
from cljax.run_search import holds_task_dirs, listed_runs


def _pm(v: dict) -> str:
    return mean_std_text(v["mean"], v["std"], ".3f")


def _difference(p: dict) -> str:
    return (f"{mean_std_text(p['mean'], p['std'], '.3f', '+.3f')} (SE {figure(p['se'], '.3f')}), higher in "
            f"{p['higher']}, lower in {p['lower']}, "
            f"equal in {p['equal']}" + (f", not finite in {p['n_nonfinite']}" if p["n_nonfinite"] else "")
            + f" of {p['n'] + p['n_nonfinite']} repeats")


def _at_chance(entry: dict | None) -> str:
    """'k of R': the repeats whose learner ended near chance on more than half the late tasks
    (cljax.analysis.chance), so that repeats split between learning and chance show."""
    if not entry:
        return ""
    learner = entry["learner"]
    k = sum(n > 0 and 2 * c > n for c, n in zip(learner["per_repeat"], learner["tasks_per_repeat"]))
    return f"{k} of {len(learner['per_repeat'])}"


def _not_finite(values: dict) -> list[int]:
    return [r for r, x in enumerate(values["per_repeat"]) if not np.isfinite(x)]


def format_comparison(summary: dict) -> str:
    width = max(28, *(len(label) for label in summary))
    # the late tasks' column as wide as its widest range (T of thousands: "1000-1999")
    tasks = {label: f"{s['late_tasks'][0]:>4}-{s['late_tasks'][1]:<4}" for label, s in summary.items()}
    cell = max(9, *(len(t) for t in tasks.values()))
    lines = [f"{'run':<{width}} {'tasks':<{cell}} {'gap (late tasks)':<17} {'learner (current task)':<23} "
             f"{'expert':<15} at chance"]
    for label, s in summary.items():
        g, lr, ex = s["gap_late"], s["learner_late"], s["expert_late"]
        lines.append(f"{label:<{width}} {tasks[label]:<{cell}} {_pm(g):<17} {_pm(lr):<23} {_pm(ex):<15} "
                     f"{_at_chance(s.get('near_chance_late'))}".rstrip())
        left_out = [f"the {who}'s in repeat{'s' * (len(rs) > 1)} {', '.join(map(str, rs))}"
                    for who, rs in (("learner", _not_finite(lr)), ("expert", _not_finite(ex))) if rs]
        if left_out:
            lines.append(f"{'':<{width}} left out: {'; '.join(left_out)} (not finite on a late task: a diverged "
                         f"network, kept with --allow-nonfinite)")
        if isinstance(s.get("num_tasks"), int) and s["n_tasks"] < s["num_tasks"]:
            w = s.get("in_progress")
            lines.append(f"{'':<{width}} partial: the first {s['n_tasks']} of its {s['num_tasks']} tasks, " + (
                f"a run in progress (pid {w.get('pid', '?')} on {w.get('host', '?')})" if w is not None else
                "stopped (finish it with the same `cljax run` command)") + "; its late tasks are of those")
    best = any(s.get("snapshot") == "best" for s in summary.values())
    at = "at its best snapshot of that task (--snapshot best)" if best else "at its end"
    lines.append(f"(learner and expert: the test accuracy on the task just trained, {at}; gap: expert minus "
                 "learner; mean and sample std over repeats of each repeat's mean over the late tasks; a repeat not "
                 "finite on one of them is left out; at chance: in how many repeats the learner ended at most 0.55 "
                 "(0.5 is chance for a pair) on more than half the late tasks)")
    if len(summary) > 1:
        lines.append("learner (current task, late tasks) minus its baseline's (the first run given with the same "
                     "seed, class pairs and data settings), repeat by repeat:")
    for label, s in list(summary.items())[1:]:
        p = s.get("paired", {"paired": False, "why": "the baseline of its draw (no run before it has its seed, class "
                                                     "pairs and data settings)"})
        on = f" on tasks {p['tasks'][0]}-{p['tasks'][1]} (the later part of the tasks both have)" if "tasks" in p else ""
        lines.append(f"{label:<{width}} " + (f"not paired: {p['why']}" if not p["paired"] else
                                             f"minus {p['baseline']}{on}: {_difference(p)}"))
        rules = (s.get("rule"), summary.get(p.get("baseline"), {}).get("rule"))
        if p["paired"] and None not in rules and rules[0] != rules[1]:
            lines.append(f"{'':<{width}} (rules {rules[0]} and {rules[1]}: a fresh expert of each rule learns the "
                         f"task differently, so this mixes the rules with plasticity; the gaps compare each with "
                         f"its own expert)")
    for label, p in ((label, s["pooled_over_draws"]) for label, s in summary.items() if "pooled_over_draws" in s):
        on = f" on tasks {p['tasks'][0]}-{p['tasks'][1]}" if "tasks" in p else ""
        lines.append(f"pooled over {len(p['runs'])} draws of {label}'s method{on}: {_difference(p)}")
    for label, why in ((label, s["not_pooled"]) for label, s in summary.items() if "not_pooled" in s):
        lines.append(f"{label} {why}")
    return "\n".join(lines)


def sweep_runs_left_out(run_dirs) -> list[str]:
    """A note for each sweep (a folder whose sweep.json lists runs three levels down) whose runs
    with task folders are all given, naming the runs it lists that have none and why: left out
    without a word, a baseline among them changed which run the others are paired with."""
    given = {Path(d).resolve() for d in run_dirs}
    notes = []
    for sweep in dict.fromkeys(Path(d).parents[2] for d in run_dirs if len(Path(d).parents) > 2):
        listed = listed_runs(sweep) if (sweep / "sweep.json").is_file() else None
        have = [p for p in listed or () if holds_task_dirs(p)]
        skipped = [p for p in listed or () if p not in have]
        if not have or not skipped or not {p.resolve() for p in have} <= given:
            continue
        why = [f"{p} ({'no task folder' if p.is_dir() else 'no such folder'})" for p in skipped]
        notes.append(f"note: {sweep}'s sweep.json also lists {len(skipped)} run(s) without task folders (moved away, "
                     f"or not run yet), left out of the comparison: {', '.join(why[:4])}"
                     f"{f' ... ({len(why)} in all)' if len(why) > 4 else ''}; each run is paired with the first run "
                     f"of its draw among those compared.")
    return notes


def protocol_differences(summary: dict) -> dict[str, list[str]]:
    """The protocol settings (each run's ``protocol``: compare's ``PROTOCOL``) whose recorded
    values differ between the runs, with those values, numbers in their order (2 before 10): their
    gaps are then not measured on one protocol (a run without run.json records none)."""
    def order(v):
        return (0, v, "") if isinstance(v, (int, float)) else (1, 0, v)

    keys = next(iter(summary.values()))["protocol"] if summary else {}
    values = {k: sorted({v if isinstance(v, (int, float)) else str(v) for s in summary.values()
                         if (v := s["protocol"][k]) is not None}, key=order) for k in keys}
    return {k: [str(v) for v in vs] for k, vs in values.items() if len(vs) > 1}
