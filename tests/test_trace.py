"""What a task's trace records, checked from outside: the expert is its own (fresh keys per task,
repeat and seed; plain SGD; no replay: the learner's options never reach it), the training
metrics are means over each snapshot's own steps, and the run table shows the saved numbers."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from cljax import results
from cljax.experiment import run_experiment
from cljax.program import task_keys
from cljax.step import KEY_TASKS
from cljax.train import Sizes, batch_indices
from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_accuracy
from tests.conftest import small_config

# The MLP: what is checked here is the trainer's, whatever the model, and it compiles in a
# fraction of the CNN's time.
TINY = dict(dataset="synthetic", synthetic_classes=4, data_dir=None, num_tasks=2, n_repeats=2, n_train_per_class=20,
            n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=4, log_frequency=3, lr=0.1,
            learner_expert="separate", model="mlp", mlp_hidden=32)


def _run(tmp_path, name, **overrides):
    return run_experiment(small_config(tmp_path / name, **{**TINY, **overrides}), progress=False)


# 11 steps of batch 4 (a head of 2, then intervals of 3): the plain run of the options' test and the run
# snapshotting every 3 steps of the training metrics' test, one run for both.
ELEVEN_STEPS = dict(log_frequency=3, n_train_per_class=22)


@pytest.fixture(scope="module")
def third(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("trace"), "third", **ELEVEN_STEPS)


def _expert_metrics(run):
    return [results.load_expert_metrics(d) for d in results.task_dirs(run.algo_dir)]


def _assert_same_expert_metric(key, actual, expected, err_msg):
    """Bit for bit on the CPU. On a GPU the two runs are separately compiled programs (the learner's
    options change the program the expert shares): float rounding, and an accuracy may differ by a
    prediction that falls the other way, over the test set or one snapshot's training samples."""
    why = "the expert's numbers in two separately compiled task programs"
    if key.endswith("_acc"):
        n = 2 * TINY["n_test_per_class"] if key == "test_acc" else TINY["log_frequency"] * TINY["batch_size"]
        assert_same_accuracy(actual, expected, n, why=why, err_msg=err_msg)
    else:
        assert_same(actual, expected, **SEPARATELY_COMPILED, why=why, err_msg=err_msg)


def test_the_learners_options_never_reach_the_expert(third, tmp_path):
    """Replay changes the learner's batch and momentum its optimiser; the expert trains on the
    task's own batch with plain SGD (docs/rules.md): its numbers are those of a plain run, bit for
    bit, with both options on at once (one run: each is a program of its own to compile). A run
    table row's expert_acc is the saved last snapshot's mean. (Bit for bit on the CPU; a GPU's
    tolerance in _assert_same_expert_metric.)"""
    plain = third
    others = {"replay and momentum": _run(tmp_path, "both", use_replay=True, replay_size=8, replay_batch=4,
                                          momentum=0.9, **ELEVEN_STEPS)}
    base = _expert_metrics(plain)
    for name, run in others.items():
        learner_differs = any(not np.array_equal(results.load_metrics(a)["test_acc"], results.load_metrics(b)["test_acc"])
                              for a, b in zip(results.task_dirs(plain.algo_dir), results.task_dirs(run.algo_dir)))
        assert learner_differs, name  # the option acts on the learner
        for t, (mine, theirs) in enumerate(zip(base, _expert_metrics(run))):
            for key in mine:
                _assert_same_expert_metric(key, theirs[key], mine[key], err_msg=f"{name}, task {t}, {key}")
    for row, metrics in zip(plain.summary, base):
        assert row["expert_acc"] == pytest.approx(float(np.mean(metrics["test_acc"][-1])), abs=1e-12)


def test_each_task_repeat_and_seed_draws_its_own_expert():
    sizes = Sizes.of(small_config(Path("unused"), **TINY))
    drawn = []
    for seed in (0, 1):
        tasks_key = jax.random.fold_in(jax.random.key(seed), KEY_TASKS)  # as cljax.experiment derives it
        for t in (0, 1):
            keys = task_keys(jax.random.fold_in(tasks_key, t), 2, sizes, 1)
            drawn += [jax.random.key_data(k).tobytes() for k in keys.expert_init]  # one per repeat
    assert len(set(drawn)) == len(drawn) == 8


def test_every_epoch_is_its_own_permutation_of_the_task_data():
    """The batches of a task: each epoch passes over n examples in the order of its own key's
    permutation, every example at most once, the remainder of n / batch size left out; no two
    epochs (and no two repeats) share an order."""
    sizes = Sizes.of(small_config(Path("unused"), **{**TINY, "epochs": 3}))
    n, bpe, B = 10, 3, 3
    keys = task_keys(jax.random.key(7), 2, sizes, 1).shuffle  # (R, E)
    assert keys.shape == (2, 3)
    orders = []
    for r in range(2):
        idx = np.asarray(batch_indices(keys[r], n, bpe, B))
        assert idx.shape == (3 * bpe, B)
        for e in range(3):
            epoch = idx[e * bpe: (e + 1) * bpe].ravel()
            np.testing.assert_array_equal(epoch, np.asarray(jax.random.permutation(keys[r, e], n))[: bpe * B])
            assert len(set(epoch.tolist())) == bpe * B and epoch.min() >= 0 and epoch.max() < n
            orders.append(tuple(epoch.tolist()))
    assert len(set(orders)) == len(orders) == 6


def test_training_metrics_are_the_mean_over_each_snapshots_own_steps(third, tmp_path):
    """A run that snapshots every step saves each step's batch loss; the same run snapshotting
    every 3 steps saves the mean of the 3 steps of each interval (the first interval also takes
    the steps_per_task mod 3 before it), for the learner and the expert."""
    every = _run(tmp_path, "every", **{**ELEVEN_STEPS, "log_frequency": 1})  # 11 steps: 2 before the first interval
    for d1, d3 in zip(results.task_dirs(every.algo_dir), results.task_dirs(third.algo_dir)):
        m1, m3 = results.load_metrics(d1), results.load_metrics(d3)
        e1, e3 = results.load_expert_metrics(d1), results.load_expert_metrics(d3)
        assert m1["train_loss"].shape[0] == 11 and m3["train_loss"].shape[0] == 3
        for one, three, key in ((m1, m3, "train_loss"), (m1, m3, "train_acc"), (e1, e3, "train_loss")):
            per_step = np.asarray(one[key], np.float64)
            expected = np.stack([per_step[0:5].mean(0), per_step[5:8].mean(0), per_step[8:11].mean(0)])
            # float32 sums in the program against float64 here; on a GPU the two runs are separately
            # compiled programs: rounding, and a prediction of a 3-step interval's 12 samples that
            # falls the other way
            gpu_atol = 1 / (3 * TINY["batch_size"]) if key == "train_acc" else SEPARATELY_COMPILED["gpu_atol"]
            assert_same(three[key], expected, cpu_rtol=1e-5, gpu_rtol=SEPARATELY_COMPILED["gpu_rtol"],
                        gpu_atol=gpu_atol, why="two separately compiled runs", err_msg=key)


def test_every_key_stream_of_a_task_is_its_own():
    """No two streams of a task share a key: the expert's init and rule keys, each epoch's
    shuffle, the learner's and the expert's key at every step, every option's task-start and
    task-end keys and the head's reset draw, for every repeat (one shared key would tie two
    draws together, e.g. a reset head to the expert's initial one)."""
    sizes = Sizes.of(small_config(Path("unused"), **{**TINY, "epochs": 2}))
    keys = task_keys(jax.random.key(3), 2, sizes, 2)
    assert keys.shuffle.shape == (2, 2) and keys.learner_steps.shape == keys.expert_steps.shape == (2, sizes.steps)
    assert keys.task_start.shape == keys.task_end.shape == (2, 2)
    drawn = [bytes(b) for field in keys for b in np.asarray(jax.random.key_data(field)).reshape(-1, 2)]
    assert len(drawn) == 2 * (3 + 2 + 2 * sizes.steps + 2 * 2)  # per repeat
    assert len(set(drawn)) == len(drawn)


def test_each_repeat_starts_from_its_own_draw(tmp_path):
    from cljax.program import build_task_program

    config = small_config(tmp_path, **TINY)
    learner = build_task_program(config, (28, 28)).init_learner(jax.random.key(0))
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(learner.params) if "kernel" in str(path)]
    assert kernels and all(k.shape[0] == 2 for k in kernels)
    for k in kernels:
        assert not np.array_equal(k[0], k[1])
