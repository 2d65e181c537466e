"""The table `cljax compare` prints: each run's late gap, learner and expert; its partial or
diverged repeats; each run's paired difference from its baseline, and those pooled over draws."""

from __future__ import annotations

import numpy as np

from cljax.analysis.spread import figure, mean_std_text


def _pm(v: dict) -> str:
    return mean_std_text(v["mean"], v["std"], ".3f")


def _difference(p: dict) -> str:
    return (f"{mean_std_text(p['mean'], p['std'], '.3f', '+.3f')} (SE {figure(p['se'], '.3f')}), higher in "
            f"{p['higher']}, lower in {p['lower']}, "
            f"equal in {p['equal']}" + (f", not finite in {p['n_nonfinite']}" if p["n_nonfinite"] else "")
            + f" of {p['n'] + p['n_nonfinite']} repeats")


def _not_finite(values: dict) -> list[int]:
    return [r for r, x in enumerate(values["per_repeat"]) if not np.isfinite(x)]


def format_comparison(summary: dict) -> str:
    width = max(28, *(len(label) for label in summary))
    # the late tasks' column as wide as its widest range (T of thousands: "1000-1999")
    tasks = {label: f"{s['late_tasks'][0]:>4}-{s['late_tasks'][1]:<4}" for label, s in summary.items()}
    cell = max(9, *(len(t) for t in tasks.values()))
    lines = [f"{'run':<{width}} {'tasks':<{cell}} {'gap (late tasks)':<17} {'learner':<17} expert"]
    for label, s in summary.items():
        g, lr, ex = s["gap_late"], s["learner_late"], s["expert_late"]
        lines.append(f"{label:<{width}} {tasks[label]:<{cell}} {_pm(g):<17} {_pm(lr):<17} {_pm(ex)}")
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
    lines.append("(mean and sample std over repeats of each repeat's mean over the late tasks; a repeat not finite "
                 "on one of them is left out)")
    if len(summary) > 1:
        lines.append("learner (late tasks) minus its baseline's (the first run given with the same seed, class "
                     "pairs and data settings), repeat by repeat:")
    for label, s in list(summary.items())[1:]:
        p = s.get("paired", {"paired": False, "why": "the baseline of its draw (no run before it has its seed, class "
                                                     "pairs and data settings)"})
        on = f" on tasks {p['tasks'][0]}-{p['tasks'][1]} (the later part of the tasks both have)" if "tasks" in p else ""
        lines.append(f"{label:<{width}} " + (f"not paired: {p['why']}" if not p["paired"] else
                                             f"minus {p['baseline']}{on}: {_difference(p)}"))
    for label, p in ((label, s["pooled_over_draws"]) for label, s in summary.items() if "pooled_over_draws" in s):
        on = f" on tasks {p['tasks'][0]}-{p['tasks'][1]}" if "tasks" in p else ""
        lines.append(f"pooled over {len(p['runs'])} draws of {label}'s method{on}: {_difference(p)}")
    for label, why in ((label, s["not_pooled"]) for label, s in summary.items() if "not_pooled" in s):
        lines.append(f"{label} {why}")
    return "\n".join(lines)
