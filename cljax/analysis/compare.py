"""Several runs side by side (``cljax compare RUN [RUN ...]``): the plasticity gap over tasks,
one line per run. Made for a method against plain backprop on the same protocol.

The gap of task t in repeat r is the fresh expert's current-task test accuracy minus the
learner's, both at the task's last snapshot: the expert is a network trained from scratch on
that task alone, the natural no-loss baseline, so a gap that grows over the tasks is lost
plasticity. Runs with the same seed draw the same class pairs per repeat, so their repeats are
compared pairwise: each against the first run given of its draw (its baseline), and one method's
differences pooled over the draws given. Reads only the current task's slot, so every
``--eval-tasks`` mode works.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from cljax import results
from cljax.analysis import plots
from cljax.analysis.chance import near_chance
from cljax.analysis.cl import mean_over_every_task, mean_over_tasks, snapshot_accuracy
from cljax.analysis.compare_pairs import (distinct_draws, late_start, not_pooled, one_draw, pair_with_baselines,
                                          pool_over_draws, with_values)
from cljax.analysis.compare_text import protocol_differences, sweep_runs_left_out
from cljax.analysis.plot_parts import captioned
from cljax.checkpoint import NewerRecord, read_run_record
from cljax.errors import CljaxError
from cljax.eval_tasks import own_slot
from cljax.record_rebuild import as_trained, foreign_record
from cljax.run_folder import verify_task_dir
from cljax.run_lock import live_writer
from cljax.run_search import check_sweep_labels
from cljax.setting_match import number_settings, recorded_config

# What must match for two runs' gaps to be measured on one protocol (methods differ by design).
# What a gap is measured on: the data and the training a task gets, and what the learner's
# accuracy reads (--head multi: each task's own block, a task-incremental protocol).
PROTOCOL = ("dataset", "task_schedule", "num_tasks", "n_train_per_class", "test_source", "epochs", "batch_size", "head",
            "out_dim")
# What, beside the seed and the class pairs, makes two runs' repeats see the same images in the same
# order: their draw (a run of 100 images per class was paired with one of 1000 on its seed).
DATA_SETTINGS = ("dataset", "n_train_per_class", "n_test_per_class", "test_source", "epochs", "batch_size")
# What makes another draw (seed), or another place, of one method: the settings pooling ignores.
# Also those that change no accuracy compare reads: --n-subsamples and --representation-dtype
# choose which test images' representations are saved and how they are stored, cut from the
# evaluation's output after its accuracy (cljax/evaluate.py), so training and every accuracy are
# the same (a resume still refuses them: they change representations.npy). So does --eval-tasks:
# which tasks' test sets each snapshot also evaluates; compare reads the current task's slot, the
# same bits in every mode (docs/scale.md), and training does not depend on it.
NOT_IN_METHOD = ("seed", "results_dir", "data_dir", "n_subsamples", "representation_dtype", "eval_tasks")


def _record_or_none(run_dir: Path) -> dict | None:
    """run.json, or None when there is none or it is damaged (compare then reads the task folders
    alone); a run recorded by a newer cljax is refused (checkpoint.NewerRecord)."""
    try:
        return read_run_record(run_dir)
    except NewerRecord:
        raise
    except CljaxError:
        return None


def current_task_accuracy(run_dir, snapshot: str = "last") -> dict:
    """{"learner", "expert"}: current-task test accuracy at each task's last snapshot (``snapshot``
    "best": its best finite snapshot during the task), (n, R); "learner_last", "expert_last": at the
    last snapshot whichever ``snapshot`` is;
    "draw": (the seeds, every task's class pairs per repeat, the data settings) as the task folders record them
    (None where a folder records none), what makes two runs' repeats pairs; "num_tasks": the
    run's T as task_000 records it (None: not recorded)."""
    dirs = results.first_task_dirs(run_dir)
    if not dirs:
        raise CljaxError(f"{run_dir} has no task folders: {results.runs_near(run_dir)}.")
    check = _checker(Path(run_dir))
    learner, expert, pairs, seeds, n_run, config, first_data = [], [], [], set(), None, {}, None
    for t, d in enumerate(dirs):
        meta = check(d, t)
        pairs.append(meta.get("task_pairs"))
        seeds.add(json.dumps(meta.get("seed")))
        if t == 0:  # the run's settings and data, as its first folder records them
            config, first_data = meta.get("config") or {}, meta.get("data")
        T = config.get("num_tasks") if t == 0 else None
        n_run = T if isinstance(T, int) else n_run
        if isinstance(T, int) and len(dirs) > T:
            raise CljaxError(f"{run_dir} holds {len(dirs)} task folders but its run has {T} tasks: {dirs[T].name} on "
                             f"are not tasks of this run; move them out of the folder.")
        test_acc = results.load_metrics(d)["test_acc"]  # (L, R, K): the K slots --eval-tasks saved
        learner.append(test_acc[:, :, own_slot(meta, test_acc.shape[-1], t, str(d / "metadata.json"))])  # (L, R)
        expert.append(results.load_expert_metrics(d)["test_acc"])
    settings = json.dumps({k: config.get(k) for k in DATA_SETTINGS}, sort_keys=True, default=str)
    # the dataset's content (its identity, as run compares it: a synthetic size, a prepared folder); a
    # task folder from before it recorded one (2026-12-05): run.json's, else not known
    identity = first_data or (_record_or_none(Path(run_dir)) or {}).get("data")
    draw = None if None in pairs or seeds == {"null"} else (sorted(seeds), pairs, settings, identity)
    variant = {"last": "final", "best": "best"}[snapshot]
    return {"learner": snapshot_accuracy(learner, variant).T, "expert": snapshot_accuracy(expert, variant).T,
            "learner_last": snapshot_accuracy(learner, "final").T, "expert_last": snapshot_accuracy(expert, "final").T,
            "draw": draw, "num_tasks": n_run}


def _checker(run_dir: Path):
    """check(folder, t) -> its metadata; one CljaxError line when the folder is another task's or
    another run's, or when a file the comparison reads (the two metrics pickles) is missing or
    differs from the size and sha256 recorded when it was written. Only those two are checked: a
    long run's representations and weights, most of its size, are not read here."""
    run_id = run_id_of(run_dir)  # (a damaged first folder: None, and its check below names the damage)

    def check(folder: Path, t: int) -> dict:
        read: dict = {}
        problem = verify_task_dir(folder, t, run_id, hashes=True, into=read, only=("metrics.pkl", "expert_metrics.pkl"))
        if problem is not None:
            raise CljaxError(f"{problem}: the comparison reads only its run's own files; restore them from a copy, or "
                             f"write them again (`cljax run` with the run's flags and --repair).")
        return read["metadata"]

    return check


def run_id_of(run_dir: Path) -> str | None:
    """The run's id: run.json's, else (none, or damaged) its first task folder's; None where
    neither records one or can be read (the check of that folder then says why)."""
    record = _record_or_none(run_dir)
    foreign = foreign_record(Path(run_dir), record) if live_writer(Path(run_dir)) is None else None
    if foreign:
        raise CljaxError(f"{foreign}.")
    if record is not None:
        return record["run_id"]
    try:
        return results.load_metadata(run_dir / "task_000").get("run_id")
    except (CljaxError, OSError):
        return None


def _refuse_copies(run_dirs) -> None:
    """Two folders of one run id are one run (a copy, or a snapshot of it): compared, they gave a
    paired difference of 0 in every repeat as if two runs had tied."""
    seen: dict = {}
    for run_dir in run_dirs:
        run_id = run_id_of(Path(run_dir))
        if run_id is not None and run_id in seen:
            copy = "" if Path(seen[run_id]).resolve() == Path(run_dir).resolve() else "; one is a copy of the other"
            raise CljaxError(f"{seen[run_id]} and {run_dir} are the same run (run id {run_id}{copy}): pass one of "
                             f"them.")
        seen.setdefault(run_id, run_dir)


def compare_runs(run_dirs, out_png: str | os.PathLike | None = None, labels=None, late_from: float = 0.5,
                 snapshot: str = "last") -> dict:
    """The gap per run: its spread over repeats of the per-repeat mean over the late tasks (from
    ``late_from`` of the run on), the learner's and the expert's accuracy there, and the gap per
    task (mean over repeats). ``snapshot`` "best": each of learner and expert at its best snapshot
    of the task, which a one-step spike of either at the task's end does not move. Writes the plot
    to ``out_png`` when given."""
    if snapshot not in ("last", "best"):
        raise ValueError(f"snapshot must be 'last' or 'best', got {snapshot!r}")
    labels = list(labels) if labels else distinct_labels(run_dirs)
    if len(set(labels)) != len(labels):
        raise CljaxError(f"two runs have the same label ({', '.join(labels)}): give each its own.")
    _refuse_copies(run_dirs)
    check_sweep_labels(run_dirs)
    for note in sweep_runs_left_out(run_dirs):
        print(note, file=sys.stderr)
    curves, summary, draws, methods, accs, families = {}, {}, {}, {}, {}, {}
    for label, run_dir in zip(labels, run_dirs):
        acc = accs[label] = current_task_accuracy(run_dir, snapshot)
        gap_nR = acc["expert"] - acc["learner"]
        late = slice(late_start(len(gap_nR), late_from), len(gap_nR))
        record = as_trained(Path(run_dir), _record_or_none(Path(run_dir))) or {}  # run.json damaged: task_000's
        # a plugin's rule or option, not loaded here: the folder cljax named by it (results/{dataset}/{family})
        methods[label] = method_of(record)
        families[label] = family_of(record) or (Path(run_dir).name if record.get("config") else None)
        summary[label] = {
            "run": str(run_dir), "snapshot": snapshot, "n_tasks": len(gap_nR), "late_tasks": [late.start, len(gap_nR) - 1],
            "num_tasks": acc["num_tasks"],  # the run's T (None: not recorded); n_tasks < T: a partial run
            "in_progress": live_writer(Path(run_dir)) if len(gap_nR) < (acc["num_tasks"] or 0) else None,
            "protocol": {k: (record.get("config") or {}).get(k) for k in PROTOCOL},
            "rule": (record.get("config") or {}).get("algorithm"),  # (the expert trains with it too)
            "gap_late": with_values(mean_over_every_task(gap_nR[late].T)),
            "learner_late": with_values(mean_over_every_task(acc["learner"][late].T)),
            "expert_late": with_values(mean_over_every_task(acc["expert"][late].T)),
            "gap_per_task": mean_over_tasks(gap_nR).tolist(),  # over the repeats with a finite gap
            # the repeats split between learning and chance, which the means above do not show
            # (at the tasks' ends, whichever snapshot the figures above are of)
            "near_chance_late": near_chance(acc["learner_last"][late].T, acc["expert_last"][late].T),
        }
        curves[label] = gap_nR
        draws[label] = acc["draw"]
    for label, pair in pair_with_baselines(labels, accs, late_from).items():
        summary[label]["paired"] = pair
    for label, pooled in pool_over_draws(labels, summary, draws, methods).items():
        summary[label]["pooled_over_draws"] = pooled
    for label, why in not_pooled(labels, summary, draws, methods, families).items():
        summary[label]["not_pooled"] = why
    if out_png is not None:  # a run not finished is named so in the legend, as in the table
        def partial(runs) -> str:  # (a pooled line's runs have one length: the first one not finished)
            short = [summary[r] for r in runs if summary[r]["n_tasks"] < (summary[r]["num_tasks"] or 0)]
            return f" (partial: {short[0]['n_tasks']} of {short[0]['num_tasks']} tasks)" if short else ""

        shown = {line + partial(runs): (curve, runs)
                 for line, (curve, runs) in curves_by_method(labels, curves, draws, methods).items()}
        for line, (curve, runs) in shown.items():  # what the plot draws, in the JSON too
            for run in runs:
                summary[run]["plotted"] = {"line": line, "gap_per_task": mean_over_tasks(curve).tolist()}
        windows = {tuple(s["late_tasks"]) for s in summary.values()}  # shaded when the runs share one
        late = next(iter(windows)) if len(windows) == 1 else None
        differ = ", ".join(protocol_differences(summary))  # under the figure too: a plot travels without the terminal
        captioned(lambda p: plots.plot_plasticity_gap({line: c for line, (c, _) in shown.items()}, p, late=late,
                                                      best=snapshot == "best"),
                  f"the runs differ in {differ}: their gaps are not on one protocol" if differ else "")(out_png)
    return summary


def method_of(record: dict) -> str | None:
    """What a run's settings are that change its numbers, read as a resume reads them (a setting
    the record lacks at the value older runs ran with, else today's default; no speed-only
    setting such as --keep-checkpoints), but for the seed, the paths and the number and dtype of
    the saved representations (``NOT_IN_METHOD``); None when no settings are recorded (``as_trained``)."""
    config = record.get("config")
    if config is None:
        return None
    try:
        config = recorded_config(config).to_dict()
    except (CljaxError, TypeError, ValueError, AttributeError):  # e.g. a plugin's settings, not loaded here
        pass  # as recorded
    return json.dumps({k: v for k, v in number_settings(config).items() if k not in NOT_IN_METHOD},
                      sort_keys=True, default=repr)


def family_of(record: dict) -> str | None:
    """A run's rule and options in use (its results-folder name, as ``Config.algorithm_name``):
    runs of one family whose settings differ are not one method, but a researcher may have meant
    them as one (see :func:`not_pooled`). None when the record is missing or cannot be read."""
    try:
        return recorded_config(record["config"]).algorithm_name
    except (CljaxError, TypeError, ValueError, AttributeError, KeyError):
        return None


def curves_by_method(labels, curves, draws, methods) -> dict:
    """The plot's curves, {legend: (gap, runs)}: when every method shown (``methods``: method_of
    each run) is on the same two or more draws, each once, its runs as one curve over all their
    repeats, labelled by the first of them; else every run as its own. A method pooled over draws
    beside one on fewer would draw other data's mean as a difference between the methods."""
    groups: dict = {}
    for label in labels:
        key = methods[label]
        groups.setdefault(label if key is None else key, []).append(label)
    first = next(iter(groups.values()), [])
    pool = len(first) > 1 and all(
        len(runs) == len(first) and distinct_draws([draws[r] for r in runs]) and len({len(curves[r]) for r in runs}) == 1
        and all(any(one_draw(draws[r], draws[f]) for f in first) for r in runs) for runs in groups.values())
    if not pool:
        return {r: (curves[r], [r]) for r in labels}
    return {f"{runs[0]} (+{len(runs) - 1} draw{'s' if len(runs) > 2 else ''})": (np.concatenate(
        [curves[r] for r in runs], axis=1), runs) for runs in groups.values()}


def distinct_labels(run_dirs) -> list[str]:
    """Each run's label: the last parts of its path, as few as tell the runs apart (a sweep's runs
    all end in the same {dataset}/{algorithm})."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise CljaxError(f"the same run is given twice ({', '.join(map(str, run_dirs))}): give each run once.")
