"""The 10-task part of benchmarks/throughput.py: compilations counted from ``backend_compile``
events, host RSS and device memory after tasks 1 and 10, and the compile time cold (empty
persistent cache) and warm (the same run again, cache filled), of a synthetic run."""

from __future__ import annotations

import time
from pathlib import Path


def experiment_figures(args, workdir: Path) -> dict:
    """Compilations, memory and compile time (cold and warm cache) of a 10-task synthetic run."""
    import jax

    from cljax.config import Config
    from cljax.devices import cpu_devices_for, limit_devices
    from cljax.experiment import run_experiment
    from cljax.program import clear_built_programs

    config = Config.from_flat(
        dataset="synthetic", synthetic_classes=20, num_tasks=10, n_repeats=args.experiment_repeats,
        n_train_per_class=args.experiment_train_per_class, n_test_per_class=args.experiment_test_per_class,
        n_subsamples=16, epochs=1, batch_size=args.batch_size, log_frequency=args.experiment_log_frequency,
        results_dir=str(workdir / "results"),
    )
    compiles = [0]

    def on_event(event, duration, **kwargs):
        if "backend_compile" in event:
            compiles[0] += 1

    def device_stats():
        try:
            stats = jax.local_devices()[0].memory_stats()
        except Exception:  # not implemented on every backend
            stats = None
        return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats} if stats else None

    runs = []
    n_devices = cpu_devices_for(config.n_repeats, jax.device_count())
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        for label in ("cold", "warm"):
            per_task = {}

            def on_task_end(t, info, per_task=per_task):
                per_task[t] = {"compilations": compiles[0], "rss_bytes": int(info["rss_bytes"]),
                               "device_bytes_live": int(info["device_bytes_live"]),
                               "device_bytes_peak": int(info["device_bytes_peak"]),
                               "device_memory_stats": device_stats(), "seconds": float(info["seconds"])}

            compiles[0] = 0
            clear_built_programs()  # the warm run finds its programs in the persistent cache, as a new process would
            t0 = time.perf_counter()
            with limit_devices(n_devices):
                result = run_experiment(config, overwrite=True, progress=False, on_task_end=on_task_end)
            runs.append({"cache": label, "compile_seconds": result.compile_seconds,
                         "wall_seconds": time.perf_counter() - t0, "tasks": per_task,
                         "final_acc_current_task": result.summary[-1]["acc_current"]})
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    cold, warm = runs
    first, last = cold["tasks"][0], cold["tasks"][config.num_tasks - 1]
    return {
        "devices": n_devices,
        "config": {k: getattr(config, k) for k in ("num_tasks", "n_repeats", "n_train_per_class", "n_test_per_class",
                                                      "epochs", "batch_size", "log_frequency")},
        "compilations_after_task_1": first["compilations"],
        "compilations_after_task_10": last["compilations"],
        "compilations_warm_cache": warm["tasks"][config.num_tasks - 1]["compilations"],
        "compile_seconds_cold": cold["compile_seconds"],
        "compile_seconds_warm": warm["compile_seconds"],
        "rss_bytes_after_task_1": first["rss_bytes"],
        "rss_bytes_after_task_10": last["rss_bytes"],
        "device_bytes_live_after_task_1": first["device_bytes_live"],
        "device_bytes_live_after_task_10": last["device_bytes_live"],
        "device_memory_stats_after_task_1": first["device_memory_stats"],
        "device_memory_stats_after_task_10": last["device_memory_stats"],
        "runs": runs,
    }
