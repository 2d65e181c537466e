"""What a run returns to Python callers (``RunResult``) and the run table ``cljax run`` prints
(``format_summary``); a finished run's table is read from its task folders (``finished``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cljax.eval_tasks import eval_tasks_of
from cljax.records import row_of_stored, summary_row
from cljax.results import task_dir_name


@dataclass
class RunResult:
    """What a run returns to Python callers: where it wrote, and the per-task summary."""

    algo_dir: Path
    task_class_pairs: np.ndarray  # (T, R, 2)
    first_task: int = 0  # > 0 when the run resumed
    summary: list[dict] = field(default_factory=list)
    compile_seconds: float = 0.0
    steps_per_second: float = 0.0
    already_finished: bool = False
    run_id: str | None = None


def finished(algo_dir: Path, schedule: np.ndarray, found, config, memo=None) -> RunResult:
    """The run table of a finished run: each task's row as its folder's metadata.json keeps it,
    taken from ``memo`` (the CheckRecord of the check that has just verified the folders, which
    keeps the row with the fields it read), so no metadata.json is parsed a third time. A folder
    written before the rows were kept has its row computed from its arrays, with the slots of the
    run's --eval-tasks at its task (part of the resume key, so the recorded one)."""
    T, spec = schedule.shape[0], eval_tasks_of(config)
    summary = []
    for t in range(T):
        kept = memo.get(algo_dir / task_dir_name(t) / "metadata.json") if memo is not None else None
        row = row_of_stored(kept[1].get("summary")) if kept is not None else None
        summary.append(row if row is not None else
                       summary_row(t, _load_summary_arrays(algo_dir / task_dir_name(t)), spec.ids(t, T)))
    return RunResult(algo_dir=algo_dir, task_class_pairs=schedule, first_task=T, summary=summary,
                     already_finished=True, run_id=found.record.get("run_id"))


def format_summary(result: RunResult, max_rows: int = 40) -> str:
    """The run table: per task, the learner's and the expert's accuracy at the task's last
    snapshot as mean +- sample std over the repeats, the learner's mean on the earlier tasks and
    its probe's. With one shared output, the head's accuracy on earlier tasks mostly measures
    the read-out; the probe column is what the representation still separates (docs/metrics.md).
    A run of more than ``max_rows`` tasks shows the first and last ten and tasks evenly spaced
    between, and says so."""
    lines = ["task  learner_acc_on_it +- std  mean_acc_earlier_tasks  probe_earlier_tasks  expert_acc +- std",
             "----  ------------------------  ----------------------  -------------------  -----------------"]
    rows = result.summary
    if len(rows) > max_rows:
        n = len(rows)
        between = np.linspace(10, n - 11, max_rows - 20).round().astype(int)  # not over the first and last ten
        keep = set(range(10)) | set(range(n - 10, n)) | set(between)
        rows = [rows[i] for i in sorted(keep)]
    for row in rows:  # blank: no earlier task; nan: no finite value
        none = row.get("n_earlier", 0 if np.isnan(row["acc_earlier"]) else 1) == 0
        earlier = "" if none else f"{row['acc_earlier']:.3f}"
        probe = "" if none or np.isnan(row.get("probe_earlier", np.nan)) else f"{row['probe_earlier']:.3f}"
        lines.append(f"{row['task']:>4}  {_with_std(row, 'acc_current'):>24}  {earlier:>22}  {probe:>19}  "
                     f"{_with_std(row, 'expert_acc'):>17}")
    left_out = sum(1 for row in result.summary if row.get("n_nonfinite"))
    if left_out:
        lines.append(f"(in {left_out} of {len(result.summary)} tasks a repeat has non-finite values, e.g. a diverged "
                     f"network: the means leave them out; per repeat: cljax analyze)")
    if len(rows) < len(result.summary):
        lines.append(f"({len(rows)} of {len(result.summary)} tasks shown; every task: cljax analyze, or each "
                     f"task's folder)")
    return "\n".join(lines)


def _with_std(row: dict, key: str) -> str:
    """A column's mean over the repeats and its sample std; the mean alone where the std is
    NaN (fewer than two finite repeats)."""
    std = row.get(f"{key}_std", float("nan"))
    return f"{row[key]:.3f}" + ("" if np.isnan(std) else f" +- {std:.3f}")


def _load_summary_arrays(task_dir: Path) -> dict:
    from cljax.results import load_binary_labels, load_expert_metrics, load_metrics, load_representations

    return {"metrics": load_metrics(task_dir), "expert_metrics": load_expert_metrics(task_dir),
            "representations": load_representations(task_dir), "binary_labels": load_binary_labels(task_dir)}
