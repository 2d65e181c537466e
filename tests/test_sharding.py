"""The repeat axis split over devices: the same Fashion-MNIST run on 1 device (this process) and
on 4 CPU devices (a pytest subprocess of this file with CLJAX_CPU_DEVICES=4: the CLI's own
configure_cpu_devices splits the host before JAX starts), compared.

Same bits where XLA allows it: the learner's forward pass (representations at the same weights),
the schedule, the labels and every accuracy are identical. Losses, and through training the
weights, may differ in the last bit where a device's program compiles otherwise than the
one-device one (a loss's sum; docs/scale.md, "Same numbers as one device?", has what was
measured). Tolerance: 1e-5 absolute.

The subprocess evaluates in chunks of 2 tasks (streamed), this process resident, so the
comparison covers sharding and chunking together; chunked vs resident alone is compared bit
for bit on one device below.

On another backend (a GPU) this process runs there, so the two tests that compare CPU device
splits (CPU_COMPARISONS) run whole in a CPU subprocess instead, where they are what they are on a
CPU machine; the other tests run here, and compare separately compiled programs within
tests/backend.py's GPU tolerances.
"""

from __future__ import annotations

import gc
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
from cljax.devices import (CPU_DEVICES_ENV, configure_cpu_devices, live_device_bytes, put_repeats, repeat_mesh,
                           shard_repeats)
from cljax.evaluate import TestSets
from cljax.experiment import run_experiment
from cljax.plan import make_plan
from cljax.tasks import TaskData, make_schedule
from cljax.program import build_task_program
from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_accuracy, assert_same_tree, on_cpu
from tests.conftest import FASHION_DIR
from tests.process_kit import suite_xla_flags

REPO = Path(__file__).resolve().parents[1]
CHILD_OUT = "CLJAX_SHARDING_OUT"  # set in the subprocess: where its run writes
N_CHILD_DEVICES = 4
TOL = 1e-5
CPU_COMPARISONS = ("test_sharded_matches_single_device", "test_same_weights_give_the_same_bits_on_one_device")


def sharding_config(results_dir, **overrides) -> Config:
    return Config.from_flat(dataset="fashion_mnist", data_dir=str(FASHION_DIR), num_tasks=3, n_repeats=4,
                            n_train_per_class=32, n_test_per_class=16, n_subsamples=8, epochs=1, batch_size=16,
                            log_frequency=2, lr=0.1,
                            # every option on: their per-repeat state and random draws must not depend on the split
                            use_replay=True, replay_size=40, replay_batch=8, add_plasticity=True, use_ul=True,
                            results_dir=str(results_dir), **overrides)


def ids_of(*names: str) -> list[str]:
    return [f"{Path(__file__).relative_to(REPO)}::{name}" for name in names]


@pytest.fixture(scope="module")
def sharded_child(tmp_path_factory):
    """Starts a CPU subprocess (it runs while this process runs its own) and yields it, its
    output folder and its log: on the CPU, the 4-device run; on another backend, this file's
    CPU_COMPARISONS (which start their own 4-device run), so that there too they compare one CPU
    device with four, not the GPU with the CPU."""
    if os.environ.get(CHILD_OUT):  # this process is the subprocess
        yield None
        return
    out = tmp_path_factory.mktemp("sharded")
    if on_cpu():
        env = {**os.environ, CPU_DEVICES_ENV: str(N_CHILD_DEVICES), "XLA_FLAGS": suite_xla_flags(), "JAX_PLATFORMS": "cpu",
               CHILD_OUT: str(out)}
        command = ["-q", "-s", *ids_of("test_run_on_every_visible_device", "test_vmapped_repeats_match_the_loop")]
    else:
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        command = ["-q", "-rA", *ids_of(*CPU_COMPARISONS)]  # -rA: a "PASSED <id>" line per test
    log = out / "pytest.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *command], cwd=REPO, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, text=True)
    yield proc, out, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def passed_on_the_cpu(sharded_child, name: str) -> bool:
    """On a backend other than the CPU: test ``name`` of this file passed in the CPU subprocess
    (asserted here, with its log); on the CPU: False, the test runs here."""
    if on_cpu():
        return False
    proc, _, log = sharded_child
    proc.wait(timeout=560)
    assert f"PASSED {ids_of(name)[0]}" in log.read_text(), log.read_text()
    return True


@pytest.fixture(scope="module")
def device_run(sharded_child, tmp_path_factory):
    """The run on every visible device: 1 here (resident evaluation), 4 in the subprocess
    (evaluation streamed 2 tasks at a time)."""
    child_out = os.environ.get(CHILD_OUT)
    out = Path(child_out) if child_out else tmp_path_factory.mktemp("single")
    config = sharding_config(out, eval_chunk_tasks=2 if child_out else 0)
    if child_out:  # as `cljax run` does first thing; nothing in this process has started JAX yet
        assert configure_cpu_devices(config.n_repeats) == N_CHILD_DEVICES
    plan = make_plan(config)
    infos = {}
    gc.collect()  # arrays of earlier tests that only a collection frees would leave the baseline during the run
    baseline = live_device_bytes()
    run = run_experiment(config, progress=False, on_task_end=lambda t, info: infos.__setitem__(t, info))
    return config, plan, run, infos, baseline


def test_run_on_every_visible_device(device_run):
    config, plan, run, _, _ = device_run
    n = jax.device_count()
    assert n == (N_CHILD_DEVICES if os.environ.get(CHILD_OUT) else 1)
    assert plan["devices"]["count"] == n and plan["devices"]["repeats_per_device"] == config.n_repeats // n
    # Train data, test sets and the learner are placed by put_repeats: R split over the mesh.
    assert repeat_mesh().devices.size == n
    x = put_repeats(np.zeros((6, config.n_repeats, 28, 28), np.uint8), 1)
    assert len(x.addressable_shards) == n
    assert {s.data.shape for s in x.addressable_shards} == {(6, config.n_repeats // n, 28, 28)}
    dirs = results.task_dirs(run.algo_dir)
    assert len(dirs) == config.num_tasks
    meta = results.load_metadata(dirs[-1])
    assert len(meta["device"]) == n


def first_task(config, key, **lowering):
    """Task 0 of ``config`` by a program built with ``lowering``: the learner's final
    parameters, the trace and the evaluation of its snapshots on every task (named as in the
    trace); and the program."""
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    task_data = TaskData(data, config)
    tests = TestSets(*task_data.all_tests(schedule))
    train_x, train_y = task_data.train(schedule[0])
    program = build_task_program(config, data.train_images.shape[1:], **lowering)
    learner = shard_repeats(program.init_learner(key))
    learner, trace = program.run_task(learner, put_repeats(train_x, 1), put_repeats(train_y, 1), *tests.current(0),
                                      jax.numpy.int32(0), key)
    evaluation = tests.evaluate(program.evaluate, (trace["weights"], trace["model_state"]))
    named = dict(zip(("test_acc", "test_loss", "representations"), evaluation, strict=True))
    return jax.device_get((learner.params, trace, named)), program


def assert_same_numbers(a, b, config, why):
    """Floats to TOL on the CPU (module docstring), accuracies and integers equal; on another
    backend within tests/backend.py's tolerances for separately compiled programs."""
    assert_same_tree(a, b, n_acc=config.n_test, cpu_atol=TOL, why=why, **SEPARATELY_COMPILED)


def assert_training_moved(program, key, params, tol):
    """Training moved every weight array well beyond ``tol``: a comparison is not of two no-ops."""
    init = jax.device_get(program.init_learner(key).params)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, init)
    assert min(jax.tree.leaves(moved)) > 100 * tol


def test_vmapped_repeats_match_the_loop(device_run):
    """The repeat axis batched by jax.vmap (the accelerator lowering) and looped by lax.map (the
    CPU one) train and evaluate to the same numbers: here on 1 device, and in the subprocess on
    4 devices, where each runs inside the shard_map (the multi-GPU lowering)."""
    config, key = device_run[0], jax.random.key(7)
    looped, program = first_task(config, key, loop_repeats=True)
    vmapped, _ = first_task(config, key, loop_repeats=False)
    assert_same_numbers(looped, vmapped, config, "vmapped and looped repeats are two programs")
    assert_training_moved(program, key, looped[0], TOL)


# The learner/expert pairing (paired vs separate directions, on 1 device) is compared in
# tests/test_options.py, test_paired_learner_and_expert_match_their_separate_steps: it shares
# its programs with the option combinations compiled there.


def test_sharded_matches_single_device(sharded_child, device_run):
    if passed_on_the_cpu(sharded_child, "test_sharded_matches_single_device"):
        return
    proc, child_out, log = sharded_child
    assert proc.wait(timeout=560) == 0, log.read_text()
    config, _, run, _, _ = device_run
    sharded_dir = child_out / config.dataset / config.algorithm_name
    worst = {}
    for single, sharded in zip(results.task_dirs(run.algo_dir), results.task_dirs(sharded_dir), strict=True):
        a, b = results.load_task(single), results.load_task(sharded)
        assert len(b["metadata"]["device"]) == N_CHILD_DEVICES
        assert a["metadata"]["task_class_pairs"] == b["metadata"]["task_class_pairs"]
        np.testing.assert_array_equal(a["binary_labels"], b["binary_labels"])
        for group in ("metrics", "expert_metrics"):
            for key, value in a[group].items():
                if "acc" in key or key == "log_steps":
                    np.testing.assert_array_equal(value, b[group][key], err_msg=f"{group}.{key}")
                else:
                    np.testing.assert_allclose(value, b[group][key], rtol=0, atol=TOL, err_msg=f"{group}.{key}")
                    worst[key] = max(worst.get(key, 0.0), float(np.abs(value - b[group][key]).max()))
        np.testing.assert_allclose(a["representations"], b["representations"], rtol=0, atol=TOL)
        worst["representations"] = max(worst.get("representations", 0.0),
                                       float(np.abs(a["representations"] - b["representations"]).max()))
        wa = np.load(single / "weights.npy").view(np.float32)
        wb = np.load(sharded / "weights.npy").view(np.float32)
        np.testing.assert_allclose(wa, wb, rtol=0, atol=TOL)
        worst["weights"] = max(worst.get("weights", 0.0), float(np.abs(wa - wb).max()))
    print(f"\n1 vs {N_CHILD_DEVICES} devices, largest differences: {worst}")


def test_same_weights_give_the_same_bits_on_one_device(sharded_child, device_run):
    """Evaluating the 4-device run's saved weights here, on 1 device, reproduces its saved
    representations and accuracies bit for bit: the forward pass does not depend on the split.
    (Its losses agree to the last bit or two, see the module docstring.)"""
    if passed_on_the_cpu(sharded_child, "test_same_weights_give_the_same_bits_on_one_device"):
        return
    proc, child_out, _ = sharded_child
    proc.wait(timeout=560)
    config, _, _, _, _ = device_run
    sharded_dir = child_out / config.dataset / config.algorithm_name
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    resident = TestSets(*TaskData(data, config).all_tests(schedule))
    program = build_task_program(config, data.train_images.shape[1:])
    for task in results.task_dirs(sharded_dir):
        weights = jax.tree.map(jax.numpy.asarray, (results.load_weights(task), results.load_model_state(task)))
        acc, loss, reps = jax.device_get(resident.evaluate(program.evaluate, weights))
        metrics = results.load_metrics(task)
        np.testing.assert_array_equal(reps, results.load_representations(task))
        np.testing.assert_array_equal(acc, metrics["test_acc"])
        np.testing.assert_allclose(loss, metrics["test_loss"], rtol=0, atol=TOL)


def test_chunked_evaluation_equals_resident_on_fashion_mnist(device_run):
    """This process's run evaluated all 3 tasks resident; streaming its saved weights 2 tasks at
    a time (the last chunk padded) gives the same bits (on a GPU, where the chunked evaluation
    is another program, the same numbers within tests/backend.py's tolerances)."""
    config, _, run, _, _ = device_run
    data = load_dataset(config)
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed)
    chunked = TestSets(*TaskData(data, config).all_tests(schedule), chunk_tasks=2)
    assert not chunked.resident
    program = build_task_program(config, data.train_images.shape[1:])
    for task in results.task_dirs(run.algo_dir):
        weights = jax.tree.map(jax.numpy.asarray, (results.load_weights(task), results.load_model_state(task)))
        acc, loss, reps = chunked.evaluate(program.evaluate, weights)
        metrics = results.load_metrics(task)
        why = "chunks of 2 tasks and all 3 resident are two programs"
        assert_same_accuracy(acc, metrics["test_acc"], config.n_test, why=why)
        assert_same(loss, metrics["test_loss"], why=why, **SEPARATELY_COMPILED)
        assert_same(reps, results.load_representations(task), why=why, **SEPARATELY_COMPILED)


def test_planner_matches_a_resident_run(device_run):
    config, plan, run, infos, baseline = device_run
    assert plan["evaluation"]["mode"] == "resident"
    measured = infos[config.num_tasks - 1]["device_bytes_peak"] - baseline
    predicted = plan["device_bytes_per_task_all_devices"]
    assert abs(predicted - measured) <= 0.2 * measured, (predicted, measured)
    disk = sum(f.stat().st_size for f in run.algo_dir.rglob("*") if f.is_file())
    assert abs(plan["disk_bytes_total"] - disk) <= 0.2 * disk, (plan["disk_bytes_total"], disk)
    print(f"\nplanner (FMNIST, resident): device {predicted} B predicted, {measured} B measured; "
          f"disk {plan['disk_bytes_total']} B predicted, {disk} B measured")
