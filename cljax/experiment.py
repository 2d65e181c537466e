"""The task loop: schedule -> per task (gather, put on device, run the compiled program, fetch
once, write the task folder) -> summary. Everything here is orchestration; the maths is in
``train.py``."""

from __future__ import annotations

import contextlib
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

from cljax.budget import Budget, choose_eval_chunk, disk_files_per_task, disk_run_files
from cljax.checkpoint import CHECKPOINT, RUN_RECORD, load_learner, read_run_record, save_learner, write_run_record
from cljax.config import SCHEMA_VERSION, Config, setting_differences
from cljax.data import load_dataset
from cljax.devices.distributed import is_writer, maybe_initialize_distributed
from cljax.devices.memory import live_device_bytes, rss_bytes
from cljax.devices.mesh import fetch, mesh_devices, put_repeats, shard_repeats
from cljax.evaluate import TestSets
from cljax.errors import CljaxError
from cljax.faults import crash_point
from cljax.program import build_task_program
from cljax.results import EXPERT_KEYS, task_dir_name, task_dirs, weights_layout, weights_to_structured, write_task
from cljax.step import KEY_TASKS
from cljax.tasks import TaskData, make_schedule


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


def algo_dir_of(config: Config) -> Path:
    return Path(config.results_dir) / config.dataset / config.algorithm_name


EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT with a resumable state (EX_TEMPFAIL)


def run_experiment(
    config: Config,
    *,
    overwrite: bool = False,
    progress: bool = True,
    allow_nonfinite: bool = False,
    critical=contextlib.nullcontext(),
    on_task_end=None,
) -> RunResult:
    """Run (or resume) a whole experiment and write its results tree.

    Bad input raises CljaxError before anything is written. An existing run with the same
    config resumes from its first unfinished task (a finished one is reported, not re-run);
    one with another config is refused unless ``overwrite``. ``critical`` (a lock) is held while
    a task's folder and the checkpoint are written: a caller that takes it may stop the process
    at once and leave a resumable state.
    ``on_task_end(t, info)``, if given, is called after task t is written, with measurements:
    ``rss_bytes``, ``device_bytes_live`` (now), ``device_bytes_peak`` (largest live device bytes
    seen during the task), ``seconds``.
    """
    maybe_initialize_distributed()  # multi-host, when the environment asks for it
    config.validate()
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    task_data = TaskData(data, config)
    algo_dir = algo_dir_of(config)
    resuming = _check_target(algo_dir, config, overwrite)

    image_shape = data.train_images.shape[1:]
    program = build_task_program(config, image_shape)
    budget = Budget.of(config, program, image_shape)
    root_key = jax.random.key(config.seed)
    tasks_key = jax.random.fold_in(root_key, KEY_TASKS)
    learner = shard_repeats(program.init_learner(root_key))  # R split over the devices
    first_task = 0
    restored = load_learner(algo_dir, learner) if resuming else None
    if restored is not None:
        learner, first_task = restored
        learner = shard_repeats(learner)
    result = RunResult(algo_dir=algo_dir, task_class_pairs=schedule, first_task=first_task)
    if first_task >= config.num_tasks:
        result.summary = [_summary_row(t, _load_summary_arrays(d)) for t, d in enumerate(task_dirs(algo_dir))]
        result.already_finished = True
        return result

    # The disk a task needs is known ahead (the planner's exact figures): its folder plus the checkpoint.
    disk_per_task = sum(disk_files_per_task(budget, schedule, data.class_names).values()) + disk_run_files(budget)[CHECKPOINT]
    _check_disk(algo_dir, disk_per_task)

    # Everything that can fail on input has been checked: from here on we write.
    if is_writer():  # multi-host: every process computes, process 0 writes
        if overwrite and algo_dir.exists():
            _clear_run(algo_dir)
        algo_dir.mkdir(parents=True, exist_ok=True)
        write_run_record(algo_dir, config.to_dict(), SCHEMA_VERSION)
        _remove_stale_temporaries(algo_dir)

    tests = TestSets(*task_data.all_tests(schedule), chunk_tasks=choose_eval_chunk(budget), measure=on_task_end is not None)
    train_x, train_y = task_data.train(schedule[first_task])
    t0 = time.perf_counter()
    run_task = program.run_task.lower(
        learner, put_repeats(train_x, 1), put_repeats(train_y, 1), *tests.current(first_task), jnp.int32(first_task), jax.random.fold_in(tasks_key, 0)
    ).compile()
    result.compile_seconds = time.perf_counter() - t0

    run_seconds = 0.0
    bar = _progress_bar(config.num_tasks, first_task, progress)
    for t in range(first_task, config.num_tasks):
        _check_disk(algo_dir, disk_per_task)
        t_start = time.perf_counter()
        train_x_dev, train_y_dev = put_repeats(train_x, 1), put_repeats(train_y, 1)
        # Dispatch is asynchronous: the device trains task t while the host gathers task t+1.
        learner, trace = run_task(
            learner, train_x_dev, train_y_dev, *tests.current(t), jnp.int32(t), jax.random.fold_in(tasks_key, t)
        )
        crash_point("train", t)
        train_peak = live_device_bytes() if on_task_end else 0
        acc, loss, reps = tests.evaluate(program.evaluate, (trace["weights"], trace["model_state"]))
        del train_x_dev, train_y_dev
        if t + 1 < config.num_tasks:
            train_x, train_y = task_data.train(schedule[t + 1])
        trace, acc, loss, reps = fetch((trace, acc, loss, reps))  # the one host transfer of the task
        seconds = time.perf_counter() - t_start
        arrays, shapes = _task_arrays(config, trace, acc, loss, reps)
        nonfinite = _nonfinite_report(config, arrays)
        metadata = _metadata(config, schedule, t, shapes, arrays["weights"], data.class_names, program.lowering, {
            "task_seconds": seconds,
            "compile_seconds": result.compile_seconds,
            "steps_per_second": config.steps_per_task / seconds,
        })
        metadata["nonfinite"] = nonfinite
        learner_host = fetch(learner)  # a collective when multi-host: every process takes part
        with critical:  # the task folder, then the checkpoint that points past it
            if is_writer():
                write_task(algo_dir, t, arrays, metadata)
            if nonfinite and not allow_nonfinite:
                first = nonfinite[0]
                raise CljaxError(
                    f"non-finite {first['metric']} in task {t} at step {first['step']} (recorded in "
                    f"{algo_dir / task_dir_name(t) / 'metadata.json'}): lower --lr, or pass --allow-nonfinite to go on."
                )
            if is_writer():
                save_learner(algo_dir, learner_host, t + 1)
        run_seconds += seconds
        row = _summary_row(t, arrays)
        result.summary.append(row)
        if bar is not None:
            bar.set_postfix(acc=f"{row['acc_current']:.3f}", expert=f"{row['expert_acc']:.3f}")
            bar.update(1)
        if on_task_end is not None:
            on_task_end(t, {"rss_bytes": rss_bytes(), "device_bytes_live": live_device_bytes(),
                            "device_bytes_peak": max(train_peak, tests.peak_live_bytes), "seconds": seconds})
            tests.peak_live_bytes = 0
    if bar is not None:
        bar.close()
    result.steps_per_second = (config.num_tasks - first_task) * config.steps_per_task / max(run_seconds, 1e-9)
    return result


def _check_target(algo_dir: Path, config: Config, overwrite: bool) -> bool:
    """Decide what to do with an existing folder; return True when resuming. Writes nothing."""
    if algo_dir.exists() and not algo_dir.is_dir():
        raise CljaxError(f"{algo_dir} exists and is not a folder: choose another --results-dir.")
    probe = algo_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CljaxError(f"{probe} is a file, not a folder: choose another --results-dir.")
    if not os.access(probe, os.W_OK):
        raise CljaxError(f"cannot write to {probe}: choose a writable --results-dir.")
    if not algo_dir.exists() or not any(algo_dir.iterdir()) or overwrite:
        return False
    recorded = read_run_record(algo_dir)
    if recorded is None:
        raise CljaxError(
            f"{algo_dir} holds files that are not a cljax run: pass --overwrite to replace them or choose another --results-dir."
        )
    differ = setting_differences(recorded, config)
    if differ:
        values = ", ".join(f"{k} recorded {old!r}, now {new!r}" for k, (old, new) in sorted(differ.items()))
        raise CljaxError(
            f"{algo_dir} holds a run with other settings ({', '.join(sorted(differ))}): {values}. Pass the recorded "
            f"values to resume it (a default may have changed since), --overwrite to replace it, or another --results-dir."
        )
    return True


def _clear_run(algo_dir: Path) -> None:
    for d in task_dirs(algo_dir):
        shutil.rmtree(d)
    for name in (CHECKPOINT, RUN_RECORD):
        (algo_dir / name).unlink(missing_ok=True)


def _remove_stale_temporaries(algo_dir: Path) -> None:
    """Temporary folders/files of a process that died mid-write (never listed as results)."""
    for p in algo_dir.iterdir():
        if p.name.startswith(".") and ".tmp-" in p.name:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _check_disk(algo_dir: Path, need: int) -> None:
    probe = algo_dir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise CljaxError(
            f"not enough disk at {algo_dir}: a task needs about {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free; "
            f"free space or choose another --results-dir (the run resumes from here)."
        )


def _nonfinite_report(config: Config, arrays: dict) -> list[dict]:
    """Snapshots whose losses are NaN or inf: [{metric, snapshot, step}], first ones first."""
    found = []
    steps = config.log_steps
    named = {**{f"metrics.{k}": v for k, v in arrays["metrics"].items() if "loss" in k and k != "start_test_loss"},
             **{f"expert_metrics.{k}": v for k, v in arrays["expert_metrics"].items() if "loss" in k}}
    for name, values in named.items():
        bad = ~np.isfinite(np.asarray(values).reshape(len(steps), -1)).all(axis=1)
        if bad.any():
            first = int(np.argmax(bad))
            found.append({"metric": name, "snapshot": first, "step": steps[first]})
    return sorted(found, key=lambda f: f["snapshot"])


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
    state = trace["model_state"]
    arrays = {
        "representations": np.asarray(reps[1:]),
        "binary_labels": binary_labels,
        "weights": weights_to_structured(jax.tree.map(lambda w: w[1:], trace["weights"])),
        "model_state": weights_to_structured(jax.tree.map(lambda w: w[1:], state)) if jax.tree.leaves(state) else None,
        "metrics": metrics,
        "expert_metrics": expert,
    }
    shapes = {
        "representations": list(arrays["representations"].shape),
        "binary_labels": list(binary_labels.shape),
        "weights": list(arrays["weights"].shape),
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


def _metadata(config, schedule, t, shapes, weights, class_names, lowering, timings) -> dict:
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
        "device": [str(d) for d in mesh_devices()],  # the devices R is split over
        "lowering": lowering.record(),
        "schema": SCHEMA_VERSION,
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


def _progress_bar(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="task", desc="tasks", file=sys.stderr, dynamic_ncols=True)


def _load_summary_arrays(task_dir: Path) -> dict:
    from cljax.results import load_expert_metrics, load_metrics

    return {"metrics": load_metrics(task_dir), "expert_metrics": load_expert_metrics(task_dir)}
