"""Two runs of the same protocol and seed that differ in one setting, compared repeat by repeat.

Repeat r of both runs has the same class pairs, initialisation and batches, so the difference
of a figure between them, repeat by repeat, isolates the setting (e.g. ``--compute-dtype
bfloat16`` against ``float32``). Printed as a markdown table: each figure's mean +- sample std
over repeats in both runs, and the paired difference B - A with its spread, standard error and
largest absolute value; then the largest difference of any saved test accuracy.

    python benchmarks/paired_runs.py RUN_A RUN_B     # run folders: results/{dataset}/{algorithm}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def figures(run) -> dict[str, np.ndarray]:
    """Per-repeat figures of a run whose every task is evaluated (``--eval-tasks all``), each (R,),
    by the analysis's own definitions (cljax.analysis.cl)."""
    from cljax import results
    from cljax.analysis import cl

    dirs = results.task_dirs(run)
    learner = [results.load_metrics(d) for d in dirs]
    acc = cl.accuracy_matrix([m["test_acc"] for m in learner])  # (R, T, T), each task's last snapshot
    return {
        "ACC (every task after the last)": cl.average_accuracy(acc),
        "accuracy on each task at its end": np.diagonal(acc, axis1=1, axis2=2).mean(1),
        "BWT": cl.backward_transfer(acc),
        "expert test accuracy (task end)": cl.mean_over_tasks(
            cl.expert_accuracy([results.load_expert_metrics(d)["test_acc"] for d in dirs])),
        "learner train loss (last snapshot)": cl.mean_over_tasks(np.stack([m["train_loss"][-1] for m in learner], 1)),
    }


def test_accuracies(run) -> np.ndarray:
    from cljax import results

    return np.concatenate([results.load_metrics(d)["test_acc"].ravel() for d in results.task_dirs(run)])


# What makes repeat r of two runs the same class pairs, initialisation and batches: these must match,
# and so must the data ("data": its identity as run.json or the first task folder records it).
PAIRED_BY = ("dataset", "seed", "num_tasks", "n_repeats", "n_train_per_class", "n_test_per_class", "test_source",
             "task_schedule", "epochs", "batch_size", "synthetic_classes", "synthetic_size", "synthetic_channels",
             "model", "data")


def settings_of(run) -> dict:
    """The run's settings: its run.json, or its first task's metadata.json (CljaxError otherwise)."""
    from cljax import results
    from cljax.checkpoint import read_run_record
    from cljax.errors import CljaxError

    record, dirs = read_run_record(Path(run)), results.task_dirs(run)
    if not dirs:
        raise CljaxError(f"{run} holds no task folders: pass a run folder, results/{{dataset}}/{{algorithm}}.")
    first = results.load_metadata(dirs[0])
    settings = {**(record["config"] if record else first.get("config", {})),
                "data": (record or first).get("data")}  # None: not recorded (older runs), not compared
    if isinstance(settings.get("num_tasks"), int) and len(dirs) < settings["num_tasks"]:  # the matrix needs them all
        raise CljaxError(f"{run} holds {len(dirs)} of its {settings['num_tasks']} tasks: finish it with the same "
                         f"`cljax run` command first.")
    return settings


def protocol_differences(run_a, run_b) -> tuple[list[str], list[str]]:
    """(settings that break the pairing, every other setting that differs), by name."""
    from cljax.errors import CljaxError

    a, b = settings_of(run_a), settings_of(run_b)
    for run, settings in ((run_a, a), (run_b, b)):
        if settings.get("eval_tasks", "all") != "all":
            raise CljaxError(f"{run} evaluates --eval-tasks {settings['eval_tasks']}: the figures need every task "
                             f"evaluated at every snapshot (--eval-tasks all).")
    differ = sorted(k for k in a.keys() | b.keys() if k != "results_dir" and a.get(k) != b.get(k)
                    and not (k == "data" and None in (a.get(k), b.get(k))))
    return [k for k in differ if k in PAIRED_BY], [k for k in differ if k not in PAIRED_BY]


def paired_table(run_a, run_b, name_a: str = "A", name_b: str = "B") -> str:
    breaking, other = protocol_differences(run_a, run_b)
    if breaking:
        raise SystemExit(f"error: the runs differ in {', '.join(breaking)}: their repeats are not paired (the same "
                         f"class pairs, initialisation and batches); compare runs of the same protocol and seed.")
    fa, fb = figures(run_a), figures(run_b)
    R = len(next(iter(fa.values())))
    lines = [f"R = {R} repeats, paired by repeat; the runs differ in: {', '.join(other) or 'nothing'}", "",
             f"| figure | {name_a} | {name_b} | {name_b} - {name_a} (mean +- std; SE; max abs) |", "|---|---|---|---|"]
    for k in fa:
        d = fb[k] - fa[k]
        sd = d.std(ddof=1) if R > 1 else 0.0
        lines.append(f"| {k} | {fa[k].mean():.4f} +- {fa[k].std(ddof=1) if R > 1 else 0:.4f} | "
                     f"{fb[k].mean():.4f} +- {fb[k].std(ddof=1) if R > 1 else 0:.4f} | "
                     f"{d.mean():+.4f} +- {sd:.4f}; {sd / np.sqrt(R):.4f}; {np.abs(d).max():.4f} |")
    diff = np.abs(test_accuracies(run_b) - test_accuracies(run_a))
    lines += ["", f"every saved test accuracy (snapshot x repeat x task): largest difference {diff.max():.4f}, "
              f"mean {diff.mean():.4f}"]
    return "\n".join(lines)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="paired_runs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--names", nargs=2, default=("A", "B"), help="column names of the two runs")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    from cljax.errors import CljaxError

    try:
        table = paired_table(args.run_a, args.run_b, *args.names)
    except CljaxError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(table)
    return table


if __name__ == "__main__":
    main()
