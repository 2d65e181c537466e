"""The task loop: schedule -> per task (gather, put on device, run the compiled program, fetch
once, write the task folder) -> summary. Everything here is orchestration; the maths is in
``train.py``."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cljax.config import Config
from cljax.data import load_dataset
from cljax.devices import put_repeats
from cljax.evaluate import TestSets
from cljax.errors import CljaxError
from cljax.results import EXPERT_KEYS, task_dir_name, task_dirs, weights_layout, weights_to_structured, write_task
from cljax.tasks import TaskData, make_schedule
from cljax.train import KEY_TASKS, build_task_program


@dataclass
class RunResult:
    """What a run returns to Python callers: where it wrote, and the per-task summary."""

    algo_dir: Path
    task_class_pairs: np.ndarray  # (T, R, 2)
    summary: list[dict] = field(default_factory=list)
    compile_seconds: float = 0.0
    steps_per_second: float = 0.0


def algo_dir_of(config: Config) -> Path:
    return Path(config.results_dir) / config.dataset / config.algorithm_name


def run_experiment(config: Config, *, overwrite: bool = False, progress: bool = True, log=print) -> RunResult:
    """Run a whole experiment and write its results tree. Raises CljaxError on bad input
    before anything is written."""
    config.validate()
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    task_data = TaskData(data, config)
    algo_dir = algo_dir_of(config)
    _check_target(algo_dir, overwrite)

    # Everything that can fail on input has been checked: from here on we write.
    program = build_task_program(config)
    root_key = jax.random.key(config.seed)
    tasks_key = jax.random.fold_in(root_key, KEY_TASKS)
    tests = TestSets(*task_data.all_tests(schedule), chunk_tasks=config.eval_chunk_tasks)
    learner = program.init_learner(root_key)

    train_x, train_y = task_data.train(schedule[0])
    t0 = time.perf_counter()
    run_task = program.run_task.lower(
        learner, train_x, train_y, *tests.current(0), jnp.int32(0), jax.random.fold_in(tasks_key, 0)
    ).compile()
    compile_seconds = time.perf_counter() - t0

    algo_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(algo_dir=algo_dir, task_class_pairs=schedule, compile_seconds=compile_seconds)
    run_seconds = 0.0
    bar = _progress_bar(config.num_tasks, progress)
    for t in range(config.num_tasks):
        t_start = time.perf_counter()
        if t > 0:
            train_x, train_y = task_data.train(schedule[t])
        train_x_dev, train_y_dev = put_repeats(train_x, 1), put_repeats(train_y, 1)
        t_gather = time.perf_counter()
        learner, trace = run_task(
            learner, train_x_dev, train_y_dev, *tests.current(t), jnp.int32(t), jax.random.fold_in(tasks_key, t)
        )
        del train_x_dev, train_y_dev
        acc, loss, reps = tests.evaluate(program.evaluate, trace["weights"])
        trace, acc, loss, reps = jax.device_get((trace, acc, loss, reps))  # the one host transfer of the task
        t_train = time.perf_counter()
        arrays, shapes = _task_arrays(config, trace, acc, loss, reps)
        metadata = _metadata(config, schedule, t, shapes, arrays["weights"], data.class_names, {
            "data_seconds": t_gather - t_start,
            "train_and_eval_seconds": t_train - t_gather,
            "compile_seconds": compile_seconds,
            "steps_per_second": config.steps_per_task / (t_train - t_gather),
        })
        write_task(algo_dir, t, arrays, metadata)
        run_seconds += t_train - t_gather
        row = _summary_row(t, arrays)
        result.summary.append(row)
        if bar is not None:
            bar.set_postfix(acc=f"{row['acc_current']:.3f}", expert=f"{row['expert_acc']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    result.steps_per_second = config.num_tasks * config.steps_per_task / max(run_seconds, 1e-9)
    return result


def _check_target(algo_dir: Path, overwrite: bool) -> None:
    if algo_dir.exists() and any(algo_dir.iterdir()):
        if not overwrite:
            raise CljaxError(
                f"{algo_dir} already holds results: pass --overwrite to replace them or choose another --results-dir."
            )
        for d in task_dirs(algo_dir):
            shutil.rmtree(d)
    if algo_dir.exists() and not algo_dir.is_dir():
        raise CljaxError(f"{algo_dir} exists and is not a folder: choose another --results-dir.")
    probe = algo_dir
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise CljaxError(f"cannot write to {probe}: choose a writable --results-dir.")


def _task_arrays(config: Config, trace: dict, acc, loss, reps):
    """Host arrays of one task in the results format. ``acc``, ``loss`` (L+1, R, T) and ``reps``
    (L+1, R, T, S, H) include the task-start evaluation at index 0."""
    L, R, T, S = config.n_logs, config.n_repeats, config.num_tasks, config.n_subsamples
    # Test sets are interleaved A, B, A, B...: the labels of the saved subsample are 0, 1, 0, 1...
    labels_S = np.tile(np.array([0, 1], np.uint8), S // 2)
    binary_labels = np.ascontiguousarray(np.broadcast_to(labels_S, (L, R, T, S)))
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
    arrays = {
        "representations": np.asarray(reps[1:]),
        "binary_labels": binary_labels,
        "weights": weights_to_structured(jax.tree.map(lambda w: w[1:], trace["weights"])),
        "metrics": metrics,
        "expert_metrics": expert,
    }
    shapes = {
        "representations": list(arrays["representations"].shape),
        "binary_labels": list(binary_labels.shape),
        "weights": list(arrays["weights"].shape),
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


def _metadata(config, schedule, t, shapes, weights, class_names, timings) -> dict:
    return {
        "task_index": t,
        "task_dir": task_dir_name(t),
        "dataset": config.dataset,
        "algorithm": config.algorithm_name,
        "config": config.to_dict(),
        "seed": config.seed,
        "task_class_pairs": schedule.tolist(),
        "task_pairs": schedule[t].tolist(),
        "task_pair_names": [[class_names[a], class_names[b]] for a, b in schedule[t]],
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
        },
        "weights_layout": weights_layout(weights),
        "versions": _versions(),
        "device": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "argv": sys.argv,
        "timings": timings,
    }


def _summary_row(t: int, arrays: dict) -> dict:
    acc_RT = arrays["metrics"]["test_acc"][-1]  # last snapshot of task t
    return {
        "task": t,
        "acc_current": float(acc_RT[:, t].mean()),
        "acc_earlier": float(acc_RT[:, :t].mean()) if t > 0 else float("nan"),
        "expert_acc": float(arrays["expert_metrics"]["test_acc"][-1].mean()),
    }


def format_summary(result: RunResult) -> str:
    lines = ["task  learner_acc_on_it  mean_acc_earlier_tasks  expert_acc",
             "----  -----------------  ----------------------  ----------"]
    for row in result.summary:
        earlier = "" if np.isnan(row["acc_earlier"]) else f"{row['acc_earlier']:.3f}"
        lines.append(f"{row['task']:>4}  {row['acc_current']:>17.3f}  {earlier:>22}  {row['expert_acc']:>10.3f}")
    return "\n".join(lines)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="task", desc="tasks", file=sys.stderr, dynamic_ncols=True)
