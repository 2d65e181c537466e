"""What a process keeps between runs: the task programs it built (cljax.program), the trace the
budget made of the task program (cljax.budget), and the Fashion-MNIST files it read; and what a
run does not import."""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from cljax import registry, results
from cljax.config import Config
from cljax.datasets.fashion_mnist import read_folder
from cljax.errors import CljaxError
from cljax.experiment import run_experiment
from cljax.program import KEPT_SETUPS, build_task_program, clear_built_programs
from tests.conftest import FASHION_DIR, CompileCounter

IMAGE = (8, 8)


def tiny(tmp_path, **flat) -> Config:
    """Two tasks of a small MLP on 8 x 8 synthetic images."""
    return Config.from_flat(dict(dataset="synthetic", synthetic_size=8, model="mlp", mlp_hidden=16, num_tasks=2,
                                 n_repeats=2, n_train_per_class=16, n_test_per_class=4, n_subsamples=4, epochs=1,
                                 batch_size=8, log_frequency=2, results_dir=str(tmp_path), **flat))


def test_the_same_setup_gets_its_programs_back_and_any_change_builds_anew(tmp_path):
    clear_built_programs()
    config = tiny(tmp_path / "a")
    program = build_task_program(config, IMAGE)
    # Another results folder or device budget: the same programs (a program reads neither).
    assert build_task_program(dataclasses.replace(config, results_dir=str(tmp_path / "b")), IMAGE) is program
    assert build_task_program(dataclasses.replace(config, device_memory=10**9), IMAGE) is program
    # What the program is built from: the settings, the image shape, the lowering asked for.
    assert build_task_program(tiny(tmp_path, lr=0.3), IMAGE) is not program
    assert build_task_program(config, (12, 12)) is not program
    # (the lowering other than this backend's default: the repeats' loop or vmap, learner and
    # expert paired or not)
    assert build_task_program(config, IMAGE, paired_models=not program.parts.paired) is not program
    assert build_task_program(config, IMAGE, loop_repeats=program.lowering.repeats == "vmap") is not program
    # A registration since (a plugin file loaded again) may have replaced what it was built from.
    registry._generation[0] += 1
    rebuilt = build_task_program(config, IMAGE)
    assert rebuilt is not program and build_task_program(config, IMAGE) is rebuilt
    clear_built_programs()
    assert build_task_program(config, IMAGE) is not rebuilt


def test_only_the_most_recent_setups_are_kept(tmp_path):
    clear_built_programs()
    first = build_task_program(tiny(tmp_path, seed=0), IMAGE)
    for seed in range(1, KEPT_SETUPS + 1):
        build_task_program(tiny(tmp_path, seed=seed), IMAGE)
    assert build_task_program(tiny(tmp_path, seed=KEPT_SETUPS), IMAGE) is build_task_program(
        tiny(tmp_path, seed=KEPT_SETUPS), IMAGE)
    assert build_task_program(tiny(tmp_path, seed=0), IMAGE) is not first  # the oldest was let go


def test_a_second_run_in_the_process_compiles_nothing_and_writes_the_same_bytes(tmp_path):
    clear_built_programs()
    counter, traces = CompileCounter(), []

    def on_event(event, duration, **kwargs):
        if event.endswith("jaxpr_trace_duration") and kwargs.get("fun_name") == "run_task":
            traces.append(duration)

    jax.monitoring.register_event_duration_secs_listener(counter)
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        first = run_experiment(tiny(tmp_path / "first"), progress=False)
        # The budget's trace of the task program (jax.eval_shape, the run's shardings) is the one
        # the run compiles: run_task is traced once.
        assert len(traces) == 1
        compiled = counter.count
        assert compiled >= 2  # at least the task program and the evaluation
        second = run_experiment(tiny(tmp_path / "second"), progress=False)
        assert counter.count == compiled and len(traces) == 1
    finally:
        jax.monitoring.unregister_event_duration_listener(counter)
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert second.compile_seconds < first.compile_seconds
    tasks = results.task_dirs(first.algo_dir)
    assert [d.name for d in results.task_dirs(second.algo_dir)] == [d.name for d in tasks] == ["task_000", "task_001"]
    for task in tasks:
        for name in results.TASK_FILES:
            if name != "metadata.json":  # its times and run id are the run's own
                assert (task / name).read_bytes() == (second.algo_dir / task.name / name).read_bytes(), name


def test_a_file_read_again_is_taken_back_unless_it_changed(tmp_path):
    folder = tmp_path / "fashion"
    shutil.copytree(FASHION_DIR, folder)
    first = read_folder(folder)
    assert not first.train_images.flags.writeable  # shared between runs: nobody writes into it
    assert read_folder(folder).train_images is first.train_images
    # The test labels written again (another file, the same bytes): read anew.
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    data = labels.read_bytes()
    labels.unlink()
    labels.write_bytes(data)
    again = read_folder(folder)
    assert again.train_images is first.train_images and again.test_labels is not first.test_labels
    np.testing.assert_array_equal(again.test_labels, first.test_labels)
    # Damaged in place (a later modification time): the damage is found, not the old arrays.
    with open(labels, "r+b") as f:
        f.truncate(len(data) // 2)
    os.utime(labels, ns=(os.stat(labels).st_atime_ns, os.stat(labels).st_mtime_ns + 10**9))
    with pytest.raises(CljaxError, match="t10k-labels-idx1-ubyte.gz"):
        read_folder(folder)


def test_a_run_imports_no_plots_and_the_analysis_package_still_names_everything():
    import cljax.analysis as analysis

    code = ("import sys, cljax.cli, cljax.experiment, cljax.records, cljax.analysis.probe; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'cljax.analysis')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # The probe a run fits (cljax.records) and what it reads; not matplotlib, the plots or the other analyses.
    assert loaded == ["cljax.analysis", "cljax.analysis.band", "cljax.analysis.cl", "cljax.analysis.probe",
                      "cljax.analysis.spread"]
    for name in analysis.__all__:  # each name is its module's object, imported when first asked for
        assert getattr(analysis, name) is getattr(importlib.import_module(f"cljax.analysis.{analysis._MODULE_OF[name]}"),
                                                  name)
    assert {"analyze_run", "probe_accuracy", "plot_head_vs_probe", "glue_analysis", "Band"} <= set(dir(analysis))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        analysis.nothing

