"""The ``variants`` stage of ``make gpu-check``: one task of Fashion-MNIST under each way to run
it, from the same start and data, timed and compared with the default at the same R.

A variant is a setting of the run that changes the numbers (``--matmul-precision``,
``--compute-dtype``) or a lowering choice (``--conv-impl``, ``--repeat-axis``, ``--learner-expert``,
``--scan-unroll``), given to the variant as it would be on the command line. For each: samples/s (learner + expert, as the
throughput benchmark counts), compile seconds, the speed relative to the default at its R, and
the largest differences from the default in the learner's weights at the task's end, its
training loss and accuracy, and the expert's test accuracy. The settings change the numbers
(that is what is measured); the lowering choices should not, beyond float rounding.

Two checks of determinism, which a resumed or repeated run relies on: every row reports the
largest difference between the timed calls of its one executable on the same inputs (run to
run: non-zero only where a kernel uses atomics), and the row "default, compiled again" builds
and compiles the default program a second time with the persistent compilation cache off, in
the same process (compile to compile). XLA:GPU keeps its autotuning results per process, so that
row cannot see a fresh process's autotuner picking other kernels; a resumed run's own metadata
(its split and lowering) and the deterministic stage are the checks of that.

The JSON is rewritten after every variant, so a stage cut short by its time limit keeps what it
finished. The variants are ordered by what the next GPU session must learn first: an H200
compiled each in 5.5 to 22 s (docs/benchmark.md, "Measured on an H200"), so the stage's 70 s holds
four or five of the twenty-three. First the defaults at R = 32 and 128 (the goals' sizes), the
compile-to-compile check and the one lowering near the follow-up's threshold (fused-im2col at R =
128: the follow-up reads these), then what no GPU session has timed yet: the learner and expert
the other way at R = 128 (separate steps, where ``auto`` pairs them on a GPU), unrolling at R = 1, and
the ResNet's default (im2col) against XLA's convolution at R = 32 (compared with the ResNet's
default: each model's rows have their own reference); then the other settings and lowerings at
R = 128 (precision, bfloat16, XLA's convolution, fused), then the other choices at R = 32.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

METRICS = ("train_loss", "train_acc", "expert_test_acc")  # (L, R) in a task's trace
OTHER = "other"  # a lowering choice: the one the backend's default ("auto") is not
RECOMPILE = "recompile"  # not a setting: build and compile the program again, without the persistent cache
REFERENCES = ("default", "resnet default")  # the rows others are compared with, at their R and model


DETERMINISTIC_FLAG = "--xla_gpu_exclude_nondeterministic_ops=true"


def variant_list(smoke: bool, which: str = "all") -> list[tuple[str, int, dict]]:
    """(name, R, settings), in the order they run; each R's (and model's) reference, a name of
    REFERENCES, comes before the rows compared with it.
    ``which="deterministic"``: the rows the check's optional ``deterministic`` stage runs under
    DETERMINISTIC_FLAG (in a process of its own: XLA reads its flags once), the default (im2col)
    and the other convolutions: lax, whose max-pool gradient is a select-and-scatter, and the
    fused ones, which have none."""
    if which == "deterministic":
        R = 2 if smoke else 32
        return [("default", R, {}), ("default, compiled again", R, {RECOMPILE: True})] + (
            [] if smoke else [("conv other", R, {"conv_impl": OTHER}), ("conv fused", R, {"conv_impl": "fused"}),
                              ("conv fused-im2col", R, {"conv_impl": "fused-im2col"})])
    if smoke:  # a small MLP (no convolution to choose); every kind of change, in four compilations
        return [("default", 2, {}), ("default, compiled again", 2, {RECOMPILE: True}),
                ("precision default", 2, {"matmul_precision": "default"}),
                ("bfloat16, unroll 2, learner/expert other", 2,
                 {"compute_dtype": "bfloat16", "scan_unroll": 2, "learner_expert": OTHER})]
    return [("default", 32, {}), ("default", 128, {}), ("default, compiled again", 32, {RECOMPILE: True}),
            ("conv fused-im2col", 128, {"conv_impl": "fused-im2col"}),
            ("learner/expert other", 128, {"learner_expert": OTHER}),
            ("default", 1, {}), ("scan unroll 4", 1, {"scan_unroll": 4}), ("scan unroll 16", 1, {"scan_unroll": 16}),
            ("resnet default", 32, {"model": "resnet"}), ("resnet conv other", 32, {"model": "resnet", "conv_impl": OTHER}),
            ("precision default", 128, {"matmul_precision": "default"}), ("bfloat16", 128, {"compute_dtype": "bfloat16"}),
            ("conv other", 128, {"conv_impl": OTHER}), ("conv fused", 128, {"conv_impl": "fused"}),
            ("learner/expert other", 32, {"learner_expert": OTHER}), ("repeats other", 32, {"repeat_axis": OTHER}),
            ("scan unroll 4", 32, {"scan_unroll": 4}), ("precision default", 32, {"matmul_precision": "default"}),
            ("conv fused", 32, {"conv_impl": "fused"}), ("conv fused-im2col", 32, {"conv_impl": "fused-im2col"}),
            ("precision high", 32, {"matmul_precision": "high"}), ("bfloat16", 32, {"compute_dtype": "bfloat16"}),
            ("conv other", 32, {"conv_impl": OTHER})]


def the_other(setting: str) -> str:
    """The value of a lowering choice that its ``auto`` does not pick on this backend."""
    import jax

    from cljax.models import resolve_conv_impl
    from cljax.program import loop_repeats_default, paired_models_default

    if setting == "conv_impl":
        return "lax" if resolve_conv_impl("auto") == "im2col" else "im2col"
    if setting == "repeat_axis":
        return "vmap" if loop_repeats_default() else "loop"
    return "separate" if paired_models_default(jax.device_count()) else "paired"


def measure_variants(fashion_dir: str, smoke: bool, size: dict, json_path: Path, rounds: int,
                     which: str = "all") -> dict:
    from cljax.devices import configure_cpu_devices
    from cljax.host import usable_cores

    # On a CPU, one device per core as `cljax run` splits it (a no-op on a GPU, and once JAX has
    # started): each variant is the program a run of its settings compiles.
    configure_cpu_devices(usable_cores())
    import jax
    import jax.numpy as jnp

    import cljax
    from cljax.config import Config
    from cljax.data import load_dataset
    from cljax.devices import put_repeats
    from cljax.program import build_task_program, clear_built_programs
    from cljax.tasks import TaskData, make_schedule

    cljax.enable_compilation_cache()
    result = {"config": size, "task_program_calls_timed": rounds, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "rows": []}
    data, inputs, refs = None, {}, {}
    for name, R, settings in variant_list(smoke, which):
        base = Config.from_flat(dataset="fashion_mnist", data_dir=fashion_dir, num_tasks=2, **{**size, "n_repeats": R})
        settings = dict(settings)
        recompile = settings.pop(RECOMPILE, False)
        settings = {k: the_other(k) if v == OTHER else v for k, v in settings.items()}
        config = Config.from_flat({**base.to_dict(), **settings}).validate()
        data = data or load_dataset(config)
        if R not in inputs:
            pairs = make_schedule(data.n_classes, 1, R, config.seed)[0]
            td = TaskData(data, config)
            (x, y), (tx, ty) = td.train(pairs), td.test(pairs)
            inputs[R] = (put_repeats(x, 1), put_repeats(y, 1), put_repeats(tx, 1), put_repeats(ty, 1), jnp.int32(0),
                         jax.random.key(1))
        row = {"variant": name, "repeats": R, "settings": settings}
        try:  # a variant this backend cannot compile or run is a row that says why, not the end of the stage
            clear_built_programs()  # new functions: no in-memory cache hit
            program = build_task_program(config, data.train_images.shape[1:])
            row["lowering"] = program.lowering.record()
            got, timing = run_variant(program, inputs[R], rounds, recompile)
        except Exception as exc:  # noqa: BLE001  (XLA raises its own error types)
            row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        else:
            samples = config.steps_per_task * config.batch_size * R * 2  # learner + expert
            row.update(timing, samples_per_s=samples / timing["seconds_per_task_program"])
            key = (R, settings.get("model"))  # each model's rows against its own default
            if name in REFERENCES:
                refs[key] = (got, row["samples_per_s"])
            elif key in refs:
                ref, ref_speed = refs[key]
                row["speed_vs_default"] = row["samples_per_s"] / ref_speed
                row.update(largest_differences(got, ref))
        result["rows"].append(row)
        json_path.write_text(json.dumps(result, indent=1, default=str))  # what is finished survives a time limit
    return result


def start(program):
    """The learner a run starts from: initialised, and split over the devices as a run splits it."""
    import jax

    from cljax.devices import shard_repeats

    return shard_repeats(program.init_learner(jax.random.key(0)))


def run_variant(program, inputs: tuple, rounds: int, recompile: bool) -> tuple[dict, dict]:
    """Compile the task program (a second time without the persistent cache when ``recompile``)
    and call it ``rounds`` + 1 times from the same start: (the first call's outcome, timings and
    the largest difference between the calls)."""
    import jax
    import numpy as np

    import cljax

    in_use = jax.config.jax_compilation_cache_dir  # restored as it was, whatever set it
    if recompile:
        cljax.disable_compilation_cache()
    try:
        t0 = time.perf_counter()
        compiled = program.run_task.lower(start(program), *inputs).compile()
        compile_seconds = time.perf_counter() - t0
    finally:
        if recompile and in_use:
            cljax.enable_compilation_cache(in_use)
    times, runs = [], []
    for _ in range(rounds + 1):  # the first is a warm-up
        learner = start(program)
        jax.block_until_ready(learner)
        t0 = time.perf_counter()
        learner, trace = jax.block_until_ready(compiled(learner, *inputs))
        times.append(time.perf_counter() - t0)
        runs.append({"weights": [np.asarray(w) for w in jax.tree.leaves(learner.params)],
                     **{k: np.asarray(trace[k]) for k in METRICS}})
    return runs[0], {"seconds_per_task_program": float(np.median(times[1:])), "compile_seconds": compile_seconds,
                     "run_to_run_max_diff": max(abs(v) for run in runs[1:]
                                                for v in largest_differences(run, runs[0]).values())}


def largest_differences(got: dict, ref: dict) -> dict:
    """The largest differences of one task's outcome from a reference's: final weights (relative
    to the reference's largest weight), the trace's metrics, and the mean final training accuracy."""
    import numpy as np

    out = {"max_weight_diff_relative_to_max_weight": max(
        float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(got["weights"], ref["weights"]))}
    out.update({f"max_{k}_diff": float(np.abs(got[k] - ref[k]).max()) for k in METRICS})
    out["mean_final_train_acc_diff"] = float((got["train_acc"][-1] - ref["train_acc"][-1]).mean())
    return out


def variants_markdown(r: dict) -> list[str]:
    """The stage's table for summary.md."""
    lines = [f"One task at {r['config']}, the same start and data at each R; differences from that R's default "
             f"(the first row at each R; the ResNet's rows from its own default). Settings change the numbers; lowering choices only by rounding. "
             f"'run to run': the largest difference between calls of one executable on the same inputs; "
             f"'compiled again': the default compiled a second time without the persistent cache, in the same process "
             f"(XLA:GPU's autotuning results are kept per process: kernel choices are reused).", "",
             "| R | variant | lowering | samples/s | vs default | compile s | max weight diff / max | "
             "max train loss diff | max train acc diff | max expert test acc diff | mean final train acc diff | "
             "run to run |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {row['repeats']} | {row['variant']} | {row['settings']} | failed: {row['error'][:200]} |"
                         + " |" * 8)
            continue
        low = row["lowering"]
        cells = [str(row["repeats"]), row["variant"],
                 f"{low['repeats']}, {low['learner_expert']}, {low['conv']}, {low['matmul_precision']}, "
                 f"{low['compute_dtype']}, unroll {low['scan_unroll']}",
                 f"{row['samples_per_s']:,.0f}",
                 f"{row['speed_vs_default']:.2f}x" if "speed_vs_default" in row else
                 ("1.00x" if row["variant"] in REFERENCES else "-"), f"{row['compile_seconds']:.1f}"]
        cells += [f"{row[k]:.2e}" if k in row else "-" for k in (
            "max_weight_diff_relative_to_max_weight", "max_train_loss_diff", "max_train_acc_diff",
            "max_expert_test_acc_diff", "mean_final_train_acc_diff", "run_to_run_max_diff")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
