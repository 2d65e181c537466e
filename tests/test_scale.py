"""Scale: 100 synthetic tasks with flat memory and no recompilation, the planner against what a
run measures, automatic chunked evaluation equal to resident bit for bit, bfloat16
representations, and a sweep through submitit's local executor (the cheap checks of the pieces:
test_scale_pieces.py).

The sweep's two jobs (separate processes) start first and run while this process runs the
100-task experiment; the last test waits for them.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cljax import results
from cljax.config import Config
from cljax.data import load_dataset
from cljax.devices import live_device_bytes
from cljax.errors import CljaxError
from cljax.evaluate import TestSets
from cljax.experiment import run_experiment
from cljax.budget import HEADROOM, Budget, choose_eval_chunk, device_components, scratch_bytes
from cljax.plan import make_plan
from cljax.tasks import TaskData, make_schedule
from cljax.program import build_task_program, clear_built_programs
from tests.backend import BFLOAT16_STEP, SEPARATELY_COMPILED, assert_same, assert_same_accuracy
from tests.conftest import FASHION_DIR, is_program_obtained
from tests.process_kit import suite_xla_flags

REPO = Path(__file__).resolve().parents[1]
K_AUTO = 25  # the chunk size the budget below leaves room for


def hundred_task_config(results_dir: Path) -> Config:
    """100 tiny synthetic tasks: 4 steps and one snapshot per task, every task evaluated; a small
    MLP on 8 x 8 images, so that the run is the task loop, not arithmetic."""
    return Config.from_flat(dataset="synthetic", synthetic_classes=200, synthetic_size=8, model="mlp",
                            mlp_hidden=64, num_tasks=100, n_repeats=2,
                            n_train_per_class=32, n_test_per_class=4, n_subsamples=8, epochs=1, batch_size=16,
                            log_frequency=4, representation_dtype="bfloat16", results_dir=str(results_dir))


def image_shape(config: Config) -> tuple[int, int]:
    """The images of the configs here: Fashion-MNIST's 28 x 28, or --synthetic-size square, gray."""
    return (config.dataset_params.size,) * 2 if config.dataset == "synthetic" else (28, 28)


def budget_of(config: Config) -> Budget:
    return Budget.of(config, build_task_program(config, image_shape(config)), image_shape(config))


def budget_for_chunk(config: Config, k: int) -> int:
    """A per-device budget (bytes) in which K = k tasks per call is the largest that fits."""
    b = budget_of(config)
    return math.ceil((sum(device_components(b, k).values()) + scratch_bytes(b)) / HEADROOM)


# ---- the sweep: started first, checked last ----------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_process(tmp_path_factory):
    """None where the sweep extra is absent (a GPU image): only the sweep's test is skipped then,
    not the tests of the 100 tasks that take this fixture to overlap with it."""
    if importlib.util.find_spec("submitit") is None:
        yield None
        return
    root = tmp_path_factory.mktemp("sweep") / "runs"
    cmd = [sys.executable, "-m", "cljax.cli", "sweep", "--grid", "lr=0.02,0.1", "--seeds", "3", "--executor", "local",
           "--wait", "--slurm-time", "20", "--dataset", "fashion_mnist", "--data-dir", str(FASHION_DIR),
           "--num-tasks", "2", "--n-repeats", "1", "--n-train-per-class", "16", "--n-test-per-class", "8",
           "--n-subsamples", "4", "--epochs", "1", "--batch-size", "16", "--log-frequency", "2", "--model", "mlp",
           "--mlp-hidden", "32", "--results-dir", str(root)]
    env = {**os.environ, "XLA_FLAGS": suite_xla_flags()}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc, root
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# ---- 100 synthetic tasks, evaluation chunked automatically ---------------------------------------------
@pytest.fixture(scope="module")
def hundred_tasks(sweep_process, tmp_path_factory):
    base = hundred_task_config(tmp_path_factory.mktemp("hundred"))
    config = dataclasses.replace(base, device_memory=budget_for_chunk(base, K_AUTO))
    plan = make_plan(config)
    compiles = [0]

    def on_compile(event, duration, **kwargs):
        if is_program_obtained(event):
            compiles[0] += 1

    infos = {}
    clear_built_programs()  # the run's programs are its own, compiled (or loaded) in its first task
    jax.monitoring.register_event_duration_secs_listener(on_compile)
    try:
        gc.collect()  # arrays of earlier tests that only a collection frees would leave the baseline during the run
        baseline = live_device_bytes()
        run = run_experiment(config, progress=False,
                             on_task_end=lambda t, info: infos.__setitem__(t, {**info, "compiles": compiles[0]}))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_compile)
    return config, plan, run, infos, baseline


def test_auto_chunk_is_chosen_from_the_budget(hundred_tasks):
    config, plan, _, _, _ = hundred_tasks
    assert choose_eval_chunk(budget_of(config)) == K_AUTO
    assert plan["evaluation"] == {"eval_tasks": "all", "slots": 100, "mode": "chunked", "chunk_tasks": K_AUTO,
                                  "calls_per_task": 4, "chosen_by": "budget"}
    # With room for everything, the same config evaluates resident; a set K wins over the budget.
    roomy = dataclasses.replace(config, device_memory=budget_for_chunk(config, config.num_tasks))
    assert choose_eval_chunk(budget_of(roomy)) == config.num_tasks
    assert choose_eval_chunk(budget_of(dataclasses.replace(config, eval_chunk_tasks=7))) == 7
    with pytest.raises(CljaxError, match="--device-memory"):
        choose_eval_chunk(budget_of(dataclasses.replace(config, device_memory=1000)))


def test_hundred_tasks_compile_once_and_keep_memory_flat(hundred_tasks):
    config, _, run, infos, _ = hundred_tasks
    assert len(results.task_dirs(run.algo_dir)) == 100
    # Every program (task program, evaluation, small helpers) is compiled during task 0; never again.
    assert 0 < infos[0]["compiles"] == infos[9]["compiles"] == infos[99]["compiles"]
    # Device: the same arrays after every task, the same high-water mark.
    assert infos[9]["device_bytes_live"] == infos[99]["device_bytes_live"]
    assert infos[9]["device_bytes_peak"] == infos[99]["device_bytes_peak"]
    # Host: flat within allocator noise (measured: +2.6% from task 10 to 100, +0.2% from 50 to 100).
    rss10, rss50, rss100 = infos[9]["rss_bytes"], infos[49]["rss_bytes"], infos[99]["rss_bytes"]
    assert rss100 - rss10 < 0.10 * rss10, (rss10, rss100)
    assert rss100 - rss50 < 0.05 * rss50, (rss50, rss100)  # and no steady growth per task
    print(f"\n100 tasks: compiles {infos[99]['compiles']}, RSS task 10 {rss10 / 2**20:.1f} MiB, task 50 "
          f"{rss50 / 2**20:.1f} MiB, task 100 {rss100 / 2**20:.1f} MiB; device live {infos[99]['device_bytes_live']} B, "
          f"peak {infos[99]['device_bytes_peak']} B")


def test_planner_matches_measured_device_and_disk(hundred_tasks):
    _, plan, run, infos, baseline = hundred_tasks
    measured = infos[99]["device_bytes_peak"] - baseline
    predicted = plan["device_bytes_per_task_all_devices"]
    assert abs(predicted - measured) <= 0.2 * measured, (predicted, measured)
    disk = sum(f.stat().st_size for f in run.algo_dir.rglob("*") if f.is_file())
    assert abs(plan["disk_bytes_total"] - disk) <= 0.2 * disk, (plan["disk_bytes_total"], disk)
    # The .npy files are predicted exactly.
    task = run.algo_dir / "task_042"
    for name in ("representations.npy", "binary_labels.npy", "weights.npy"):
        assert plan["disk_files_per_task"][name] == (task / name).stat().st_size, name
    print(f"\nplanner (100 tasks, chunked K={K_AUTO}): device {predicted} B predicted, {measured} B measured; "
          f"disk {plan['disk_bytes_total']} B predicted, {disk} B measured")


def test_chunked_run_equals_resident_evaluation_bit_for_bit(hundred_tasks):
    """The run evaluated 25 tasks per call; evaluating its saved weights with all 100 test sets
    resident gives the same bits (accuracy, loss, bfloat16 representations); on a GPU, where
    the two are separately compiled programs, the same numbers within tests/backend.py's
    tolerances."""
    config, _, run, _, _ = hundred_tasks
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    resident = TestSets(*TaskData(data, config).all_tests(schedule))
    assert resident.resident
    program = build_task_program(config, data.train_images.shape[1:])
    for t in (0, 57, 99):
        task = run.algo_dir / results.task_dir_name(t)
        weights = jax.tree.map(jax.numpy.asarray, (results.load_weights(task), results.load_model_state(task)))
        acc, loss, reps = jax.device_get(resident.evaluate(program.evaluate, weights))
        metrics = results.load_metrics(task)
        saved_reps = results.load_representations(task)
        assert saved_reps.dtype.name == "bfloat16"
        why = "chunks of 25 tasks and all 100 resident are two programs"
        assert_same_accuracy(acc, metrics["test_acc"], config.n_test, why=why)
        assert_same(loss, metrics["test_loss"], why=why, **SEPARATELY_COMPILED)
        assert_same(reps, saved_reps, why=why, **BFLOAT16_STEP)


def test_bfloat16_representations_on_disk(hundred_tasks):
    _, _, run, _, _ = hundred_tasks
    task = run.algo_dir / "task_003"
    raw = np.load(task / "representations.npy", allow_pickle=False)
    assert raw.dtype == np.uint16
    meta = results.load_metadata(task)
    assert meta["representations_storage"]["dtype"] == "bfloat16"
    assert meta["representations_storage"]["stored_as"] == "uint16"
    reps = results.load_representations(task)
    assert reps.dtype.name == "bfloat16" and reps.shape == (1, 2, 100, 8, 64)
    as_f32 = results.load_representations(task, as_float32=True)
    assert as_f32.dtype == np.float32
    np.testing.assert_array_equal(as_f32, np.asarray(reps).astype(np.float32))
    assert (as_f32 >= 0).all() and as_f32.any()  # ReLU features, not garbage bits
    # The README's decode with numpy alone: a bfloat16 is the upper half of a float32.
    np.testing.assert_array_equal((raw.astype(np.uint32) << 16).view(np.float32), as_f32)
    assert "(a.astype(np.uint32) << 16).view(np.float32)" in meta["representations_storage"]["how_to_read"]


def test_bfloat16_representations_without_their_record_are_refused(hundred_tasks, tmp_path):
    # The uint16 bit patterns read as other numbers (16168.0 for ~0.42) when metadata.json was
    # missing or damaged; the reader now says so, as every reader does for a damaged file.
    import shutil

    _, _, run, _, _ = hundred_tasks
    task = tmp_path / "task_003"
    shutil.copytree(run.algo_dir / "task_003", task)
    meta = json.loads((task / "metadata.json").read_text())
    (task / "metadata.json").write_text(json.dumps({**meta, "representations_storage": "x"}))
    with pytest.raises(CljaxError, match="does not record the bfloat16 storage"):
        results.load_representations(task, as_float32=True)
    (task / "metadata.json").unlink()
    with pytest.raises(CljaxError, match="metadata.json is missing"):
        results.load_representations(task)


def test_sweep_runs_each_setting_in_its_own_folder(sweep_process):
    if sweep_process is None:
        pytest.skip("the sweep extra is not installed: pip install 'cljax[sweep]'")
    proc, root = sweep_process
    out, _ = proc.communicate(timeout=560)
    assert proc.returncode == 0, out
    assert "submitted 2 job(s) to local" in out and "2 of 2 job(s) finished" in out, out
    manifest = json.loads((root / "sweep.json").read_text())
    logs = Path(manifest["logs"])  # the sweep's own folder: a later job with a reused process id writes elsewhere
    assert logs.parent == root / "sweep_logs" and (logs / "local_controllers.log").is_file()  # the controllers'
    assert {p.name for p in logs.glob("*_submitted.pkl")} == {f"{r['job_id']}_submitted.pkl" for r in manifest["runs"]}
    folders = {r["tag"]: Path(r["results"]) for r in manifest["runs"]}
    assert set(folders) == {"lr-0.02_seed-3", "lr-0.1_seed-3"}
    for tag, algo_dir in folders.items():
        assert algo_dir == root / tag / "fashion_mnist" / "SL_T2"
        assert [d.name for d in results.task_dirs(algo_dir)] == ["task_000", "task_001"]
        config = results.load_metadata(algo_dir / "task_001")["config"]
        assert config["seed"] == 3 and config["lr"] == float(tag.split("_")[0][3:])
        assert str(algo_dir) in out and f"{tag}: 2 tasks, last task acc" in out
    print("\n" + out)
    # compare given the sweep's folder compares its runs (it named them and stopped)
    compared = subprocess.run([sys.executable, "-m", "cljax", "compare", str(root), "--json", str(root.parent / "c.json")],
                              cwd=REPO, capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr
    assert f"note: {root} holds a sweep: comparing the 2 run(s) with task folders its sweep.json lists." in compared.stderr
    compared_runs = [entry["run"] for entry in json.loads((root.parent / "c.json").read_text()).values()]
    assert sorted(compared_runs) == sorted(map(str, folders.values()))


def test_a_sweep_job_reports_a_resumed_or_finished_run_as_such(tmp_path, monkeypatch):
    from cljax.sweep import run_job

    flat = Config.from_flat(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=1, n_train_per_class=16,
                  n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1, model="mlp",
                  mlp_hidden=32, results_dir=str(tmp_path)).to_dict()
    first = run_job(flat)
    assert (first["tasks"], first["first_task"], first["already_finished"]) == (2, 0, False)
    again = run_job(flat)  # a requeued job whose run had finished
    assert (again["tasks"], again["first_task"], again["already_finished"]) == (2, 2, True)
    assert again["final_acc_current"] == first["final_acc_current"]
    from cljax.sweep_report import done_line

    # It trained nothing: its line said "repaired tasks 0-1; already finished" (the rows it read back).
    assert again["trained_tasks"] == [] and done_line(again).startswith("2 tasks (already finished), last task acc")
    # Requeued in its time limit after it trained every task: the line says the job trained them,
    # in two attempts, not that the run was already finished (what its last attempt found).
    pytest.importorskip("submitit", reason="the sweep extra is not installed: pip install 'cljax[sweep]'")
    from cljax import sweep

    flat["results_dir"] = str(tmp_path / "requeued")
    job = sweep._job_class()()  # it follows the tasks without the memory figures, which wait for the device
    monkeypatch.setattr("cljax.experiment.live_device_bytes", lambda: pytest.fail("a sweep job measured memory"))
    out = job(flat)
    assert job.started_at == 0 and (out["attempts"], out["job_first_task"]) == (1, 0)
    told = job.checkpoint(flat).args[-1]  # what submitit's handler hands the requeued attempt
    assert told == {"attempts": 1, "first_task": 0}
    last = job(flat, False, False, False, (), True, told)
    assert (last["already_finished"], last["attempts"], last["job_first_task"], job.started_at) == (True, 2, 0, None)
    assert done_line(last) == (f"2 tasks (2 attempts: requeued 1 time), last task acc {out['final_acc_current']:.3f} -> "
                               f"{out['algo_dir']}")
    assert job.checkpoint(flat, False, False, False, (), True, told).args[-1] == {"attempts": 2, "first_task": 0}
