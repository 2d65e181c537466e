"""The throughput benchmark runs end to end at a tiny size and writes its JSON schema.

torch is not a test dependency: the run uses --no-torch, and the cljax rows, the peak, the
FLOP count and the 10-task figures are asserted (the torch rows are the benchmark's own
optional part)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax

from cljax.program import paired_models_default
from tests.conftest import load_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def load_benchmark():
    return load_script(BENCH, "cljax_bench_throughput")


def test_flops_per_sample_is_the_analytic_count():
    bench = load_benchmark()
    macs = bench.cnn_macs()
    # conv1 28*28*9*1*16, conv2 9*9*9*16*32, conv3 3*3*9*32*64, dense 64*64 twice, head 64
    assert macs == {"conv1": 112896, "conv2": 373248, "conv3": 165888, "dense1": 4096, "dense2": 4096, "head": 64}
    assert bench.flops_per_sample()["train_flops"] == 3 * 2 * 660288


def test_quick_run_writes_cljax_rows_and_the_schema(tmp_path, capsys):
    bench = load_benchmark()
    cache_before = jax.config.jax_compilation_cache_dir
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--no-torch", "--repeats", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert jax.config.jax_compilation_cache_dir == cache_before  # the process's setting is restored

    assert isinstance(report["machine"], str) and report["machine"]
    assert report["peak_flops_per_s"] > 1e8
    assert report["flops_per_sample"] == 3 * 2 * 660288
    cljax_rows = [r for r in report["rows"] if r["impl"] == "cljax"]
    assert [r["repeats"] for r in cljax_rows] == [2]
    assert not [r for r in report["rows"] if r["impl"] == "torch"]  # --no-torch
    for row in cljax_rows:
        assert set(row) >= {"impl", "repeats", "samples_per_s", "fraction_of_peak", "compile_seconds", "devices"}
        assert row["devices"] == 1  # tests run with CLJAX_CPU_DEVICES=off (conftest): one CPU device
        assert row["learner_expert"] == ("paired" if paired_models_default(1) else "separate")
        assert row["samples_per_s"] > 0 and math.isfinite(row["samples_per_s"])
        assert math.isclose(row["fraction_of_peak"], row["samples_per_s"] * report["flops_per_sample"] / report["peak_flops_per_s"])

    e = report["experiment"]
    assert e["config"]["num_tasks"] == 10
    # Every program compiles during task 1; the nine later tasks compile nothing.
    assert e["compilations_after_task_1"] >= 2
    assert e["compilations_after_task_10"] == e["compilations_after_task_1"]
    # The second run finds the task program in the persistent cache.
    assert e["compilations_warm_cache"] < e["compilations_after_task_10"]
    assert e["compile_seconds_warm"] < e["compile_seconds_cold"]
    assert e["rss_bytes_after_task_10"] > 0 and e["device_bytes_live_after_task_10"] > 0

    table = capsys.readouterr().out
    assert "| R | devices | learner/expert | cljax samples/s | % of peak |" in table and "\n| 2 | 1 | " in table
