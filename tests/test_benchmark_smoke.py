"""The throughput benchmark runs end to end at a tiny size and writes its JSON schema.

torch is not a test dependency: the run uses --no-torch, and the cljax rows, the peak, the
FLOP count and the 10-task figures are asserted (the torch rows are the benchmark's own
optional part)."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

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
    assert bench.flops_per_sample()["train_flops"] == 3 * 2 * 660288 - 2 * 112896  # no input gradient of conv1


def test_quick_run_writes_cljax_rows_and_the_schema(tmp_path, capsys):
    bench = load_benchmark()
    cache_before = jax.config.jax_compilation_cache_dir
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--no-torch", "--repeats", "2", "--json", str(out)])
    report = json.loads(out.read_text())
    assert jax.config.jax_compilation_cache_dir == cache_before  # the process's setting is restored

    assert isinstance(report["machine"], str) and report["machine"]
    assert report["peak_flops_per_s"] > 1e8
    assert report["flops_per_sample"] == 3 * 2 * 660288 - 2 * 112896
    cljax_rows = [r for r in report["rows"] if r["impl"] == "cljax"]
    assert [r["repeats"] for r in cljax_rows] == [2]
    assert not [r for r in report["rows"] if r["impl"] == "torch"]  # --no-torch
    for row in cljax_rows:
        assert set(row) >= {"impl", "repeats", "samples_per_s", "fraction_of_peak", "compile_seconds", "devices"}
        assert row["devices"] == 1  # CLJAX_CPU_DEVICES=off (conftest): one CPU device; on a GPU machine, its one GPU
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
    assert e["compile_seconds_warm"] > 0 and e["compile_seconds_cold"] > 0  # their ratio is a timing: the benchmark's
    assert e["rss_bytes_after_task_10"] > 0 and e["device_bytes_live_after_task_10"] > 0

    table = capsys.readouterr().out
    assert "| R | devices | learner/expert | cljax samples/s | % of peak |" in table and "\n| 2 | 1 | " in table
    # the quick peak is a 512^2 matmul, below the machine's: the note says so ('% of peak' may pass 100%)
    assert "peak: " in table and "a small matmul (--quick) runs below the machine's peak" in table


def fake_torch_modules(monkeypatch, calls: list) -> None:
    """Stand-ins for torch and the peers' modules (torch is not a test dependency): one R-independent
    peer pair that sleeps, so the ordering of what is measured and written can be asserted."""
    import sys
    import time
    import types

    def torch_units(repeats, steps, batch_size, processes, vmap, tf32):
        calls.append("torch_units")
        unit = (lambda: time.sleep(0.001), 64, {"device": "fake"})
        return {"torch": unit, "torch_lean": unit}

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="fake"))
    monkeypatch.setitem(sys.modules, "torch_reference", types.SimpleNamespace(torch_version=lambda: "fake"))
    monkeypatch.setitem(sys.modules, "torch_peers", types.SimpleNamespace(
        torch_units=torch_units, close_units=lambda units: calls.append("close_units"),
        peers_table=lambda report: "peers table"))


def test_a_run_cut_short_leaves_the_figures_it_measured(tmp_path, monkeypatch):
    """A stage's time limit kills throughput.py mid-run (gpu_check.py): the JSON holds cljax's
    rows measured before the torch peers started, then the medians of each finished round."""
    bench = load_benchmark()
    out, written, calls = tmp_path / "bench.json", [], []
    fake_torch_modules(monkeypatch, calls)
    write = bench.partial_writer(str(out))

    def cut_after_two(report):
        write(report)
        written.append(json.loads(out.read_text()))
        calls.append("partial")
        if len(written) == 2:
            raise KeyboardInterrupt  # the time limit

    args = bench.parse_args(["--quick", "--repeats", "2", "--rounds", "3", "--no-experiment"])
    try:
        bench.run_benchmark(args, cut_after_two)
    except KeyboardInterrupt:
        pass
    assert calls == ["partial", "torch_units", "partial", "close_units"]
    first, second = written
    assert first["partial"] == "cljax and the peak only: one round, before the torch peers"
    assert [(r["impl"], r["repeats"]) for r in first["rows"]] == [("cljax", 2)]
    assert second["partial"] == "medians of 1 of 3 rounds"
    assert sorted({r["variant"] for r in second["rows"]}) == ["cljax", "torch", "torch_lean"]
    assert all(r["ratio_vs_torch"] > 0 for r in second["rows"] if r["impl"] == "cljax")
    assert "**partial figures**: medians of 1 of 3 rounds" in bench.markdown(second)


def test_paired_runs_compares_two_runs_repeat_by_repeat(tmp_path):
    import pickle

    import numpy as np

    from tests.test_analysis_driver import write_fake_run

    paired = load_script(BENCH.parent / "paired_runs.py", "cljax_bench_paired_runs")
    a, b = tmp_path / "a" / "SL_T3", tmp_path / "b" / "SL_T3"
    write_fake_run(a)
    write_fake_run(b)
    path = b / "task_002" / "metrics.pkl"  # run B: repeat 0 scores 0.06 more on task 0 after the last task
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][-1, 0, 0] += 0.06
    path.write_bytes(pickle.dumps(metrics, protocol=4))
    figures = {k: paired.figures(run) for k, run in (("a", a), ("b", b))}
    diff = figures["b"]["ACC (every task after the last)"] - figures["a"]["ACC (every task after the last)"]
    np.testing.assert_allclose(diff, [0.02, 0.0], atol=1e-12)  # 0.06 / T on repeat 0 only
    np.testing.assert_allclose(figures["a"]["BWT"], [((0.70 - 0.90) + (0.85 - 0.95)) / 2] * 2, atol=1e-12)
    table = paired.paired_table(a, b, "A", "B")
    # mean +0.01, sample std 0.0141, SE 0.01, largest 0.02; the largest saved-accuracy change 0.06
    assert "| ACC (every task after the last) | 0.7917 +- 0.0354 | 0.8017 +- 0.0495 | +0.0100 +- 0.0141; 0.0100; 0.0200 |" \
        in table
    assert "largest difference 0.0600" in table
    assert "paired by repeat; the runs differ in: nothing" in table

    meta = b / "task_000" / "metadata.json"  # run B on other data (a synthetic size, or another identity)
    kept = meta.read_text()
    meta.write_text(json.dumps({**json.loads(kept), "data": "a" * 64, "config": {"num_tasks": 3, "synthetic_size": 32}}))
    assert paired.protocol_differences(a, b)[0] == ["synthetic_size"]  # a's folders record no data identity
    (a / "task_000" / "metadata.json").write_text(json.dumps({**json.loads((a / "task_000" / "metadata.json")
                                                                            .read_text()), "data": "b" * 64}))
    assert paired.protocol_differences(a, b)[0] == ["data", "synthetic_size"]
    meta.write_text(kept)  # run B with another seed: its repeats are other draws
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "config": {"num_tasks": 3, "seed": 7}}))
    with pytest.raises(SystemExit, match="the runs differ in seed: their repeats are not paired"):
        paired.main([str(a), str(b)])
    with pytest.raises(SystemExit, match=f"error: {tmp_path} is not a run's folder: it holds runs: pass one of them"):
        paired.main([str(a), str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'empty'} holds no task folders: pass a run folder"):
        paired.main([str(a), str(tmp_path / "empty")])
    import shutil

    shutil.rmtree(b / "task_002")  # an unfinished run: its accuracy matrix is not square (a ValueError traceback)
    with pytest.raises(SystemExit, match=f"error: {b} holds 2 of its 3 tasks: finish it with the same `cljax run`"):
        paired.main([str(a), str(b)])


def test_versus_reads_each_setting_as_json_or_text():
    versus = load_script(BENCH.parent / "versus.py", "cljax_bench_versus")
    assert versus.setting("model=resnet") == ("model", "resnet")
    assert versus.setting("resnet_width=8") == ("resnet_width", 8)
    assert versus.setting("use_replay=true") == ("use_replay", True)
    assert versus.setting("lr=1e-3") == ("lr", 0.001)
    for bad in ("model", "=resnet"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not NAME=VALUE"):
            versus.setting(bad)


def test_versus_refuses_a_setting_in_one_line(capfd):
    """A setting the checkout does not know, or one the benchmark's own flags set: one line (the
    worker's traceback was printed, then a line that blamed the checkout). capfd: the workers'
    own output too."""
    versus = load_script(BENCH.parent / "versus.py", "cljax_bench_versus")
    root = str(BENCH.parents[1])  # this checkout, as both
    with pytest.raises(SystemExit, match=f"error: {root} refuses the settings: unknown setting"):
        versus.main([root, root, "--repeats", "1", "--steps", "2", "--rounds", "1", "--set", "nosuch=1"])
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(SystemExit):
        versus.main([root, root, "--set", "batch_size=64"])
    assert "--set batch_size: the benchmark fixes it (batch_size, dataset, epochs" in capfd.readouterr().err


def test_flat_per_task_reports_each_task_asked_for_and_no_compilation_after_the_first(tmp_path):
    """benchmarks/flat_per_task.py at three tasks: the report's schema, task folders of the same
    size up to metadata.json's text, and no compilation after the first task (what "flat in T"
    rests on; its figures are docs/benchmark.md's)."""
    flat = load_script(BENCH.parent / "flat_per_task.py", "cljax_bench_flat_per_task")
    out = tmp_path / "flat.json"
    flat.main(["--num-tasks", "3", "--at", "1", "3", "--results-dir", str(tmp_path / "run"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["config"]["num_tasks"] == 3 and report["config"]["task_schedule"] == "cycle"
    first, last = report["tasks"]["1"], report["tasks"]["3"]
    assert set(first) == {"rss_bytes", "device_bytes_live", "device_bytes_peak", "seconds", "compiles_so_far",
                          "disk_bytes_task_folder", "median_seconds_last_50"}
    assert last["compiles_so_far"] == first["compiles_so_far"]
    # the arrays are the same size at every task; metadata.json's text is a few bytes longer or shorter
    assert first["disk_bytes_task_folder"] > 100_000 and abs(last["disk_bytes_task_folder"]
                                                           - first["disk_bytes_task_folder"]) < 1024
    assert 0 < first["seconds"] and 0 < last["median_seconds_last_50"] <= report["wall_seconds"]
    with pytest.raises(SystemExit):  # a task past the run
        flat.main(["--num-tasks", "3", "--at", "4"])
    before = sorted(p.name for p in (tmp_path / "run" / "synthetic").rglob("*"))
    from cljax.errors import CljaxError

    with pytest.raises(CljaxError, match="already holds a run: pass an empty or new --results-dir"):  # it was deleted
        flat.main(["--num-tasks", "3", "--at", "3", "--results-dir", str(tmp_path / "run")])
    assert sorted(p.name for p in (tmp_path / "run" / "synthetic").rglob("*")) == before


def test_the_benchmark_scripts_refuse_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    """cljax's refusals inside a script (a missing dataset, an unknown model) end it with one
    `error:` line and exit 2, as cljax's commands do (they ended in a traceback). Each case runs
    the script as __main__ in this process (runpy: its entry point as `python script.py` runs it);
    the first also as a real process, for the exit status and stderr of the process itself."""
    import runpy
    import subprocess
    import sys

    (tmp_path / "a_file").write_text("x")
    cases = [
        ("replay_effect.py", ["--seeds", "1", "1", "--fashion-dir", str(tmp_path / "none")], str(tmp_path / "none")),
        ("replay_effect.py", ["--seeds", "1", "1", "--model", "nosuch"], "unknown model 'nosuch'"),
        ("replay_effect.py", ["--seeds", "5", "1"], "--seeds 5 1: give FIRST <= LAST"),
        ("replay_effect.py", ["--out", str(tmp_path / "a_file")], "is a file: give a folder"),
        ("bn_eval_lag.py", ["--steps", "400"], "--steps 400 is more than the 375 batches"),
        ("bn_eval_lag.py", ["--seeds", "0"], "0 must be at least 1"),
        ("flat_per_task.py", ["--num-tasks", "2", "--at", "2", "--eval-tasks", "bogus"], "--eval-tasks 'bogus'")]
    script, args, expected = cases[0]
    proc = subprocess.run([sys.executable, str(BENCH.parent / script), *args], capture_output=True, text=True,
                          timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and expected in lines[-1], (script, proc.stderr)
    monkeypatch.setattr(sys, "path", list(sys.path))  # each script puts its folders first on the path
    for script, args, expected in cases:
        monkeypatch.setattr(sys, "argv", [str(BENCH.parent / script), *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as ended:  # any other exception: the traceback the script would print
            runpy.run_path(str(BENCH.parent / script), run_name="__main__")
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert ended.value.code == 2 and "Traceback" not in err and expected in lines[-1], (script, err)


def test_check_record_times_the_finished_runs_check_with_and_without_its_record(tmp_path):
    """benchmarks/check_record.py at two tasks, warm only (--cold drops the machine's page cache):
    every check finds the run finished, and the run's record is left as the run saved it."""
    bench = load_script(BENCH.parent / "check_record.py", "cljax_bench_check_record")
    out = tmp_path / "check.json"
    bench.main(["--num-tasks", "2", "--n-repeats", "2", "--mlp-hidden", "16", "--times", "2",
                "--results-dir", str(tmp_path / "run"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert sorted(report["check_seconds"]) == ["warm_with_record", "warm_without_record"]
    assert all(len(v) == 2 and min(v) > 0 for v in report["check_seconds"].values())
    assert report["run_bytes"] > 100_000 and report["record_bytes"] > 1000
    assert list(report["best_ratios"]) == ["warm_without_over_with"]
    record = json.loads((tmp_path / "run" / "synthetic" / "SL_T2" / "verified.json").read_text())
    assert len(record["hashed"]) == 2 * 6 + 1  # two task folders' files and initial/weights.npy


def test_task_write_writes_a_task_folder_again_as_the_run_wrote_it(tmp_path, capsys):
    """benchmarks/task_write.py on a tiny run's task folder: the folder it times holds the same
    bytes as the run's (each file's sha256 as the run recorded it), and it leaves nothing behind."""
    from cljax.cli import main as cli_main
    from tests.run_folder_kit import FLAGS, RUN_DIR

    assert cli_main(["run", *FLAGS, "--results-dir", str(tmp_path / "r")]) == 0
    task_dir = tmp_path / "r" / RUN_DIR / "task_001"
    bench = load_script(BENCH.parent / "task_write.py", "cljax_bench_task_write")
    scratch, out = tmp_path / "scratch", tmp_path / "write.json"
    scratch.mkdir()
    bench.main([str(task_dir), "--times", "2", "--scratch", str(scratch), "--json", str(out)])
    report = json.loads(out.read_text())
    recorded = json.loads((task_dir / "metadata.json").read_text())["files"]
    assert report["files"] == recorded and report["folder_bytes"] == sum(f["bytes"] for f in recorded.values())
    assert len(report["seconds"]) == 2 and 0 < report["seconds_min"] <= report["seconds_median"]
    assert not any(scratch.iterdir())
    for other in (tmp_path / "r", tmp_path / "r" / RUN_DIR / "initial"):  # initial/ has a metadata.json too
        with pytest.raises(SystemExit):  # not a task folder: one line from argparse
            bench.main([str(other), "--scratch", str(scratch)])
        assert "is not a task folder" in capsys.readouterr().err


def test_best_torch_is_the_fastest_one_process_loop_not_the_process_peer(monkeypatch):
    """"cljax / best torch" is documented as the fastest of the three one-process loops; it divided
    by the K-process peer whenever that was faster (here, by construction: 1000x the samples)."""
    import sys
    import time

    bench, calls = load_benchmark(), []
    fake_torch_modules(monkeypatch, calls)

    def torch_units(repeats, steps, batch_size, processes, vmap, tf32):
        unit = lambda n: (lambda: time.sleep(0.001), n, {"device": "fake"})  # noqa: E731
        return {"torch": unit(64), "torch_lean": unit(64), "torch_1thread": unit(64), "torch_processes_2": unit(64000)}

    monkeypatch.setattr(sys.modules["torch_peers"], "torch_units", torch_units)
    # run_benchmark, the report main() writes as JSON, in the test session's compilation cache (main
    # sets a fresh one of its own): the program test_a_run_cut_short... compiled there is loaded
    report = bench.run_benchmark(bench.parse_args(["--quick", "--repeats", "2", "--rounds", "1", "--no-experiment"]))
    row = next(r for r in json.loads(json.dumps(report, default=str))["rows"] if r["impl"] == "cljax")
    loops = [row["ratio_vs_peer"][k] for k in ("torch", "torch_lean", "torch_1thread")]
    assert math.isclose(row["ratio_vs_best_torch"], min(loops))
    assert row["ratio_vs_peer"]["torch_processes_2"] < row["ratio_vs_best_torch"]


def test_versus_builds_each_checkout_s_program_with_that_checkout_s_throughput_py(tmp_path):
    # The worker imported the driver's throughput.py first: only cljax/ came from the checkout, and
    # an older checkout was measured by the newer harness.
    import shutil

    checkout = tmp_path / "old"
    shutil.copytree(BENCH.parents[1] / "cljax", checkout / "cljax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(BENCH.parent, checkout / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    script = checkout / "benchmarks" / "throughput.py"
    script.write_text(script.read_text() + "\n_unit = cljax_unit\n\n\ndef cljax_unit(*args, **kwargs):\n"
                      "    print('the checkout s own throughput.py', file=sys.stderr)\n    return _unit(*args, **kwargs)\n")
    proc = subprocess.run([sys.executable, str(BENCH.parent / "versus.py"), "--worker", "-", str(checkout), "--repeats",
                           "1", "--steps", "2", "--batch-size", "4"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(checkout)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the checkout s own throughput.py" in proc.stderr and json.loads(proc.stdout.splitlines()[0])["samples"] > 0
