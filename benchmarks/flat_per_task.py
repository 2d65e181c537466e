"""A long cycled run at --eval-tasks current (or window:K): device memory, host memory, disk and
time per task, measured at two task indices, to check they stay flat in T (docs/benchmark.md,
"Long runs"). Synthetic data with small tasks; a measurement script, not a timed test.

    python benchmarks/flat_per_task.py --num-tasks 2000 --at 10 2000 --out /tmp/flat.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from bench_args import one_line_errors, output_file, positive_int  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-tasks", type=positive_int, default=2000)
    ap.add_argument("--at", type=positive_int, nargs="+", default=[10, 2000], help="1-based task numbers to report")
    ap.add_argument("--eval-tasks", default="current")
    ap.add_argument("--n-repeats", type=positive_int, default=2)
    ap.add_argument("--results-dir", default=None, help="where the run is written (default: a temporary folder, "
                                                        "removed at the end)")
    ap.add_argument("--out", type=output_file, default=None)
    args = ap.parse_args(argv)
    if max(args.at) > args.num_tasks:
        ap.error(f"--at {max(args.at)} is past --num-tasks {args.num_tasks}")
    if args.results_dir:
        measure(args, Path(args.results_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="cljax_flat_") as tmp:  # a 2000-task run is about 1 GB
            measure(args, Path(tmp))


def measure(args, root: Path) -> None:
    from cljax.config import Config, algo_dir_of
    from cljax.errors import CljaxError
    from cljax.experiment import run_experiment
    from cljax.results import task_dir_name

    config = Config.from_flat(dataset="synthetic", synthetic_classes=20, task_schedule="cycle",
                              eval_tasks=args.eval_tasks, num_tasks=args.num_tasks, n_repeats=args.n_repeats,
                              n_train_per_class=16, n_test_per_class=4, n_subsamples=4, epochs=1, batch_size=16,
                              log_frequency=2, results_dir=str(root))
    compiles = [0]

    def on_event(event, duration, **kwargs):
        if "backend_compile" in event:
            compiles[0] += 1

    infos = {}
    jax.monitoring.register_event_duration_secs_listener(on_event)
    t0 = time.perf_counter()
    if algo_dir_of(config).exists():  # it trains from the first task, and a run there is not its to delete
        raise CljaxError(f"{algo_dir_of(config)} already holds a run: pass an empty or new --results-dir (this "
                         f"benchmark trains its run from the first task).")
    run = run_experiment(config, progress=False,
                         on_task_end=lambda t, info: infos.__setitem__(t, {**info, "compiles": compiles[0]}))
    wall = time.perf_counter() - t0
    report = {"machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)", "backend": jax.default_backend(),
              "config": {k: v for k, v in config.to_dict().items() if k in (
                  "num_tasks", "n_repeats", "task_schedule", "eval_tasks", "n_train_per_class", "n_test_per_class",
                  "n_subsamples", "epochs", "batch_size", "log_frequency", "synthetic_classes", "model")},
              "wall_seconds": wall, "tasks": {}}
    for n in args.at:
        t = n - 1
        info = infos[t]
        report["tasks"][n] = {"rss_bytes": info["rss_bytes"], "device_bytes_live": info["device_bytes_live"],
                              "device_bytes_peak": info["device_bytes_peak"], "seconds": info["seconds"],
                              "compiles_so_far": info["compiles"],
                              "disk_bytes_task_folder": folder_bytes(run.algo_dir / task_dir_name(t))}
    # time per task, as a median over 50 tasks around each reported one (one task's is noisy)
    for n in args.at:
        window = sorted(infos[t]["seconds"] for t in range(max(0, n - 50), n))
        report["tasks"][n]["median_seconds_last_50"] = window[len(window) // 2]
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    one_line_errors(main)
