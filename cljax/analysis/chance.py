"""How many (repeat, task) cells ended near chance, learner and expert, and in which repeats.

A mean +- std over repeats hides a run whose repeats split in two: some learn every task, others
sit at chance on most of them (the abrupt loss of plasticity of docs/plasticity.md). The
mean then reads as a middling learner, and the std as noise. This count says which it is.
"""

from __future__ import annotations

import numpy as np

# A task is a pair of classes: 0.5 is chance. At most this at the task's end counts as near it
# (the cells docs/plasticity.md's tables count). Saved accuracies are float32: 0.55 may read
# 0.55000001, so the comparison allows a rounding far below one test image.
NEAR_CHANCE = 0.55
ROUNDING = 1e-6
LISTED_REPEATS = 12  # up to this many repeats, the text lists each one's share; above, min/median/max


def near_chance(learner_RT, expert_RT) -> dict:
    """summary["near_chance"]: for the learner's and the expert's current-task accuracy at each
    task's last snapshot, (R, T) each, the cells at most :data:`NEAR_CHANCE` (non-finite ones left
    out and counted), and per repeat, how many of its tasks."""
    out = {"threshold": NEAR_CHANCE,
           "what": f"current-task test accuracy at the task's last snapshot <= {NEAR_CHANCE} (0.5: chance for a pair "
                   f"of classes), per (repeat, task) cell; non-finite cells left out"}
    for name, values in (("learner", learner_RT), ("expert", expert_RT)):
        acc = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(acc)
        near = ok & (np.where(ok, acc, 1.0) <= NEAR_CHANCE + ROUNDING)
        out[name] = {"n_cells": int(ok.sum()), "n_near_chance": int(near.sum()), "n_nonfinite": int((~ok).sum()),
                     "per_repeat": [int(k) for k in near.sum(-1)], "tasks_per_repeat": [int(k) for k in ok.sum(-1)]}
    return out


def _shares(entry: dict) -> list[float]:
    return [k / n if n else float("nan") for k, n in zip(entry["per_repeat"], entry["tasks_per_repeat"])]


def near_chance_text(summary_entry: dict | None) -> str | None:
    """The terminal line (None when no cell of either model is near chance): the cells of each,
    and the learner's share of tasks near chance in each repeat, so a split of the repeats shows."""
    if not summary_entry:
        return None
    learner, expert = summary_entry["learner"], summary_entry["expert"]
    if not learner["n_near_chance"] and not expert["n_near_chance"]:
        return None
    line = (f"near chance (current task <= {summary_entry['threshold']} at its end; 0.5 is chance): learner "
            f"{learner['n_near_chance']} of {learner['n_cells']} (repeat, task) cells, expert {expert['n_near_chance']} "
            f"of {expert['n_cells']}")
    shares = _shares(learner)
    if not learner["n_near_chance"] or not shares:
        return line
    finite = [s for s in shares if np.isfinite(s)]
    most = sum(s > 0.5 for s in finite)
    if len(shares) <= LISTED_REPEATS:
        each = ", ".join("n/a" if not np.isfinite(s) else f"{100 * s:.0f}%" for s in shares)
        line += f"; the learner's share of its tasks, by repeat: {each}"
    else:
        line += (f"; the learner's share of its tasks per repeat: min {100 * min(finite):.0f}%, median "
                 f"{100 * float(np.median(finite)):.0f}%, max {100 * max(finite):.0f}%")
    return line + f" (more than half in {most} of {len(finite)} repeats)"


def near_chance_plot_note(summary_entry: dict) -> str | None:
    """The same, short, as the title of the learner-vs-expert left panel; None when no learner cell is."""
    learner = summary_entry["learner"]
    if not learner["n_near_chance"]:
        return None
    most = sum(s > 0.5 for s in _shares(learner) if np.isfinite(s))
    return (f"learner near chance (<= {summary_entry['threshold']}) in {learner['n_near_chance']} of "
            f"{learner['n_cells']} cells; on more than half its tasks in {most} of {len(learner['per_repeat'])} repeats")
