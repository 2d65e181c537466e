"""How `cljax compare` pairs runs and pools them: two runs of one draw (seed, class pairs, data)
have repeats that are pairs; each run is set against the first run given of its draw (its
baseline), repeat by repeat, over the late tasks; one method's differences are pooled over the
draws given when every pair is on the same tasks. Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np

from cljax.analysis.cl import mean_over_every_task
from cljax.analysis.spread import spread


def with_values(per_repeat: np.ndarray) -> dict:
    """:func:`spread` of one value per repeat, and the values (``per_repeat``: the lowest repeat,
    or any other statistic, without reading the runs again)."""
    return {**spread(per_repeat), "per_repeat": np.asarray(per_repeat, dtype=np.float64).tolist()}


def late_start(n: int, late_from: float) -> int:
    """The first late task of n: floor(n * late_from), exact on the decimal fraction given (the
    float product 90 * 0.7 = 62.99999... floored a task early)."""
    return math.floor(Fraction(repr(float(late_from))) * n)


def one_draw(a, b, data: bool = True) -> bool:
    """Whether two runs' draws (seeds, class pairs per task, data settings, data identity) are one:
    the same seed, and the class pairs of the run with fewer tasks written are the other's first
    ones (a run not finished yet); with ``data``, the same data settings and identity too (where
    both record one), so that their repeats saw the same images."""
    (seeds_a, pairs_a, settings_a, id_a), (seeds_b, pairs_b, settings_b, id_b) = a, b
    k = min(len(pairs_a), len(pairs_b))
    same_data = settings_a == settings_b and (id_a == id_b or None in (id_a, id_b))
    return seeds_a == seeds_b and pairs_a[:k] == pairs_b[:k] and (same_data or not data)


def distinct_draws(draws) -> bool:
    """Whether no two of the runs' draws are one (their repeats would count twice), none unknown:
    another seed or other class pairs (the same seed on other data shares the initialisation and
    the order of the batches, so its repeats are not another draw's)."""
    return None not in draws and not any(one_draw(a, b, data=False) for i, a in enumerate(draws)
                                         for b in draws[i + 1:])


def pair_with_baselines(labels, accs, late_from: float = 0.5) -> dict:
    """Each run's paired difference from its baseline, in late learner accuracy (per repeat, the
    mean over the late tasks, as the summary's ``learner_late``): the first run given of its draw
    (seed, class pairs and data settings), which is itself not paired; {"paired": False, "why"} for a run whose
    task folders record no draw. A run with fewer tasks written than its baseline (or more) is
    compared on the late tasks of the shorter (``tasks``: [first, last]), the same tasks in both."""
    out, baselines = {}, []
    for label in labels:
        draw = accs[label]["draw"]
        first = None if draw is None else next((b for b in baselines if one_draw(accs[b]["draw"], draw)), None)
        if draw is None:
            out[label] = {"paired": False, "why": "its task folders record no seed or class pairs"}
        elif first is None:
            baselines.append(label)
        else:
            n, n_first = len(accs[label]["learner"]), len(accs[first]["learner"])
            k = min(n, n_first)
            tasks = slice(late_start(k, late_from), k)  # each run's own late tasks when both have as many
            this, base = (mean_over_every_task(accs[r]["learner"][tasks].T) for r in (label, first))
            shorter = {"tasks": [tasks.start, k - 1]} if n != n_first else {}
            out[label] = {"baseline": first, **shorter, **paired_difference(this, base)}
    return out


def paired_difference(this_R, base_R) -> dict:
    """This run's late learner accuracy minus its baseline's, repeat by repeat (the runs' repeats
    are pairs: the same seed, class pairs and data settings in every task and repeat, so the same data, order
    and initialisation; methods that never reach the expert then give the same expert too). Its
    spread over repeats, the standard error of its mean, and in how many repeats it is above,
    below or at zero (:func:`difference_spread`)."""
    return {"paired": True, **difference_spread(np.asarray(this_R, np.float64) - np.asarray(base_R, np.float64))}


# A difference of two late means at most this far from 0 is a tie. Each accuracy is a count over
# n test images rounded to float32, off by at most 2**-25 in [0, 1]; a mean of such values is too,
# so two means of equal exact value differ by at most 2**-24. A true difference of means over k
# tasks of n images each is a multiple of 1 / (k n), above this unless k n exceeds 2**23.
TIE_TOLERANCE = 2.0**-23


def difference_spread(d) -> dict:
    """Mean, sample std, SE and the counts above, below and at zero (within ``TIE_TOLERANCE``, the
    float32 rounding of the accuracies) of per-repeat differences."""
    d = np.asarray(d, dtype=np.float64)
    out = with_values(d)
    out["se"] = out["std"] / np.sqrt(out["n"]) if out["n"] > 1 else float("nan")
    finite = d[np.isfinite(d)]
    tie = np.abs(finite) <= TIE_TOLERANCE
    out.update(higher=int((finite > TIE_TOLERANCE).sum()), lower=int((finite < -TIE_TOLERANCE).sum()),
               equal=int(tie.sum()))
    return out


def pool_over_draws(labels, summary, draws, methods) -> dict:
    """The paired differences of one method against one baseline method, pooled over the draws
    (seeds) given: runs whose run.json settings differ only in NOT_IN_METHOD, paired with
    baselines that do too, each on its own draw, two or more draws, every pair on the same tasks
    (the runs' own late tasks, or one window of the tasks both have: ``tasks``). {first run's
    label: pooled difference, with "runs" (and "tasks")}."""
    groups: dict = {}
    for label in labels:
        pair = summary[label].get("paired") or {}
        if pair.get("paired"):
            key = (methods[label], methods[pair["baseline"]], _window(summary, label))
            if None not in key:
                groups.setdefault(key, []).append(label)
    pooled = {}
    for (_, _, window), runs in groups.items():
        if len(runs) > 1 and distinct_draws([draws[label] for label in runs]):
            d = np.concatenate([summary[label]["paired"]["per_repeat"] for label in runs])
            shorter = any("tasks" in summary[label]["paired"] for label in runs)
            pooled[runs[0]] = {"runs": runs, **({"tasks": list(window)} if shorter else {}), **difference_spread(d)}
    return pooled


def _window(summary, label) -> tuple:
    """The tasks a paired run's difference is over, (first, last): the window both runs have, or
    the run's own late tasks. Pairs are pooled only on one window (two runs of 6 tasks and two
    stopped at 4 have the same own-late-task rule, not the same tasks)."""
    return tuple(summary[label]["paired"].get("tasks") or summary[label]["late_tasks"])


def not_pooled(labels, summary, draws, methods, families) -> dict:
    """Why a paired run that is pooled with none was not pooled with an earlier such run of its
    family (the same rule and options, :func:`family_of`) on another draw: {label: "..."}, naming
    the settings that differ (its own, or its baseline's) or the tasks. Pooling needs every
    setting that changes a number to match; without this, two draws of one method with one
    hyperparameter changed by mistake get no pooled line and no word why."""
    def key(label):
        return methods[label], methods[summary[label]["paired"]["baseline"]], _window(summary, label)

    pooled = {r for s in summary.values() for r in (s.get("pooled_over_draws") or {}).get("runs", ())}
    # the runs pooled with none: a pooled method's runs are one method, whatever else is given
    alone = [label for label in labels if (summary[label].get("paired") or {}).get("paired") and label not in pooled
             and families[label] is not None and None not in key(label)]
    out = {}
    for i, label in enumerate(alone):
        earlier = [b for b in alone[:i] if families[b] == families[label] and distinct_draws([draws[b], draws[label]])]
        if not earlier:
            continue
        # the nearest: an earlier run of its method (then of its baseline too) before one that differs more
        b = min(earlier, key=lambda r: (key(r)[0] != key(label)[0], key(r)[1] != key(label)[1]))
        (m, mb, tasks), (n, nb, tasks_b) = key(label), key(b)
        why = (f"its settings differ in {_setting_differences(n, m)}" if m != n else
               f"its baseline's settings differ in {_setting_differences(nb, mb)}" if mb != nb else
               f"it is compared on other tasks (tasks {tasks[0]}-{tasks[1]} here, tasks {tasks_b[0]}-{tasks_b[1]} there)")
        out[label] = f"not pooled with {b} (the same rule and options on another draw): {why}"
    return out


def _setting_differences(there: str, here: str) -> str:
    """'k (v there, w here), ...' for the settings two method_of texts differ in."""
    a, b = json.loads(there), json.loads(here)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k} ({a.get(k)} there, {b.get(k)} here)" for k in keys)
