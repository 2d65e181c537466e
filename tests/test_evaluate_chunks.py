"""Evaluation in chunks (cljax.evaluate): K task slots per call (``stream_chunks``) and a few
test images per forward pass (``evaluate_one``) give the numbers of one pass over everything."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np

from cljax.evaluate import evaluate_one, evaluate_snapshots, stream_chunks

L, R = 2, 2


def fake_evaluate(calls):
    """An evaluation call (L, R, K) whose numbers say which slot and snapshot they came from:
    acc = weight[l] + x[k, 0, r], loss = 10 acc, reps (L, R, K, 1, 1) = -acc; NaN where the slot
    has no task, as ``evaluate_snapshots`` does. Records each call's task ids."""

    def evaluate(weights_L, x_KNR, y_KNR, ids_K):
        ids = np.asarray(ids_K)
        calls.append(ids.tolist())
        acc = np.asarray(weights_L)[:, None, None] + np.asarray(x_KNR)[:, 0, :].T[None]  # (L, R, K)
        acc = np.where(ids >= 0, acc, np.nan)
        return acc, 10 * acc, -acc[..., None, None]

    return evaluate


def host_test_sets(n_slots):
    x = np.zeros((n_slots, 3, R), np.float32)
    x[:, 0, :] = np.arange(n_slots)[:, None] + np.array([0.0, 0.5])  # slot k, repeat r: k + r / 2
    return x, np.zeros((n_slots, 3, R), np.int32)


def test_a_chunk_without_a_task_is_not_computed_and_the_others_are_exact():
    """--eval-tasks seen after task 2 of 7, 2 slots per call: slots 0-2 hold tasks, 3-6 none.
    Chunks (0, 1) and (2, 3) are computed (the second has one task); (4, 5) and (6) are not."""
    weights = np.array([100.0, 200.0])
    x, y = host_test_sets(7)
    ids = np.array([0, 1, 2, -1, -1, -1, -1], np.int32)
    calls = []
    acc, loss, reps = stream_chunks(fake_evaluate(calls), weights, x, y, ids, 2)
    assert calls == [[0, 1], [2, -1]]
    assert acc.shape == loss.shape == (L, R, 7) and reps.shape == (L, R, 7, 1, 1)
    want = weights[:, None, None] + (np.arange(3)[None, :] + np.array([0.0, 0.5])[:, None])[None]  # (L, R, 3)
    np.testing.assert_array_equal(acc[:, :, :3], want)
    np.testing.assert_array_equal(loss[:, :, :3], 10 * want)
    np.testing.assert_array_equal(reps[:, :, :3, 0, 0], -want)
    assert np.isnan(acc[:, :, 3:]).all() and np.isnan(loss[:, :, 3:]).all() and np.isnan(reps[:, :, 3:]).all()


def test_every_chunk_with_a_task_is_computed_and_the_padding_dropped():
    """Seen after task 4 of 5, 2 slots per call: the last chunk (slot 4) is padded with slot 4."""
    weights = np.array([1.0, 2.0])
    x, y = host_test_sets(5)
    calls = []
    acc, loss, _ = stream_chunks(fake_evaluate(calls), weights, x, y, np.arange(5, dtype=np.int32), 2)
    assert calls == [[0, 1], [2, 3], [4, 4]]
    want = weights[:, None, None] + (np.arange(5)[None, :] + np.array([0.0, 0.5])[:, None])[None]
    np.testing.assert_array_equal(acc, want)
    np.testing.assert_array_equal(loss, 10 * want)


def test_slots_without_any_task_are_all_nan():
    """No slot holds a task: one chunk is computed (for the shapes), every number NaN."""
    x, y = host_test_sets(5)
    calls = []
    acc, loss, reps = stream_chunks(fake_evaluate(calls), np.array([1.0, 2.0]), x, y, np.full(5, -1, np.int32), 2)
    assert calls == [[-1, -1]]
    assert acc.shape == loss.shape == (L, R, 5) and reps.shape == (L, R, 5, 1, 1)
    assert np.isnan(acc).all() and np.isnan(loss).all() and np.isnan(reps).all()


class LinearNet:
    """logits = x @ kernel (one output: sigmoid), hidden = x."""

    def apply(self, params, model_state, x, train):
        return x @ params, x, model_state


def reference(kernel, x_N, y_N):
    """Accuracy and mean NLL of the true label over the whole test set, by numpy (float64)."""
    z = (x_N.astype(np.float64) @ kernel.astype(np.float64))[:, 0]
    nll = np.where(y_N == 1, np.logaddexp(0.0, -z), np.logaddexp(0.0, z))
    return ((z > 0) == (y_N == 1)).mean(), nll.mean()


def test_loss_and_accuracy_over_several_image_chunks_are_the_whole_test_sets():
    """6 test images, 2 per forward pass (3 chunks): each number is the mean over the 6 images,
    not a chunk's sum or a mean of means divided again."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = np.array([1, 0, 0, 1, 1, 1], np.int32)
    kernel = np.array([[1.0], [-0.5], [2.0]], np.float32)
    acc, loss, hidden = evaluate_one(LinearNet(), jnp.asarray(kernel), None, jnp.asarray(x), jnp.asarray(y), 2)
    want_acc, want_loss = reference(kernel, x, y)
    assert 0 < want_acc < 1
    np.testing.assert_allclose(float(acc), want_acc, rtol=1e-6)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(hidden), x)
    # One chunk of 6 gives the same numbers.
    acc1, loss1, _ = evaluate_one(LinearNet(), jnp.asarray(kernel), None, jnp.asarray(x), jnp.asarray(y), 6)
    np.testing.assert_allclose([float(acc1), float(loss1)], [float(acc), float(loss)], rtol=1e-6)


def test_snapshots_on_several_tasks_and_image_chunks():
    """evaluate_snapshots: 2 snapshots x 3 slots (the last without a task), 3 chunks of 2 images."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 6, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=(3, 6)).astype(np.int32)
    kernels = rng.normal(size=(2, 3, 1)).astype(np.float32)
    sizes = SimpleNamespace(eval_chunk=2, n_subsamples=4, rep_dtype=jnp.float32)
    acc, loss, reps = evaluate_snapshots(LinearNet(), sizes, (jnp.asarray(kernels), jnp.zeros(2)), jnp.asarray(x),
                                         jnp.asarray(y), jnp.array([0, 1, -1], jnp.int32))
    assert acc.shape == loss.shape == (2, 3) and reps.shape == (2, 3, 4, 3)
    for l in range(2):
        for k in range(2):
            want_acc, want_loss = reference(kernels[l], x[k], y[k])
            np.testing.assert_allclose(float(acc[l, k]), want_acc, rtol=1e-6)
            np.testing.assert_allclose(float(loss[l, k]), want_loss, rtol=1e-6)
            np.testing.assert_array_equal(np.asarray(reps[l, k]), x[k, :4])
    assert np.isnan(np.asarray(acc[:, 2])).all() and np.isnan(np.asarray(loss[:, 2])).all()
    assert np.isnan(np.asarray(reps[:, 2])).all()


def test_leading_slots_without_a_task_are_not_computed_when_later_ones_hold_tasks():
    """--eval-tasks window:5 at task 2: slots [-1, -1, 0, 1, 2], 2 per call. The first chunk has no
    task and a later one does, so it is not computed (only the all-empty run computes its first
    chunk, for the shapes): its slots are NaN, the others exact."""
    weights = np.array([1.0, 2.0])
    x, y = host_test_sets(5)
    calls = []
    acc, loss, reps = stream_chunks(fake_evaluate(calls), weights, x, y, np.array([-1, -1, 0, 1, 2], np.int32), 2)
    assert calls == [[0, 1], [2, 2]]
    assert acc.shape == (L, R, 5) and reps.shape == (L, R, 5, 1, 1)
    assert np.isnan(acc[:, :, :2]).all() and np.isnan(loss[:, :, :2]).all() and np.isnan(reps[:, :, :2]).all()
    want = weights[:, None, None] + (np.arange(2, 5)[None, :] + np.array([0.0, 0.5])[:, None])[None]
    np.testing.assert_array_equal(acc[:, :, 2:], want)


def test_one_task_per_call_gives_the_bits_of_all_tasks_at_once(tmp_path):
    """--eval-chunk-tasks 1 and --eval-tasks current evaluate one slot per call. XLA inlined that
    one-iteration loop, and the inlined body summed the losses in another order: the losses of a
    resident run and of its K = 1 twin differed in the last bit (1.2e-7), and a resume that the
    planner moved from resident to K = 1 mixed the two. Fashion-MNIST; on a GPU, where the
    programs are compiled separately, within tests/backend.py's tolerances."""
    import pickle

    from cljax.experiment import run_experiment
    from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_accuracy, on_cpu
    from tests.conftest import small_config

    base = dict(num_tasks=3, n_train_per_class=20, n_test_per_class=10, n_subsamples=8, batch_size=10, epochs=1,
                log_frequency=2)
    runs = {name: run_experiment(small_config(tmp_path / name, **base, **extra), progress=False).algo_dir
            for name, extra in (("resident", {}), ("one per call", {"eval_chunk_tasks": 1}),
                                ("current", {"eval_tasks": "current"}))}
    why = "one evaluated task per call against all of them in one call"
    for t in range(3):
        task = f"task_00{t}"
        resident, one, current = (pickle.loads((runs[n] / task / "metrics.pkl").read_bytes()) for n in runs)
        for key in ("test_acc", "test_loss", "start_test_acc", "start_test_loss"):
            for got, want in ((one[key], resident[key]), (current[key][..., 0], resident[key][..., t])):
                if key.endswith("acc"):
                    assert_same_accuracy(got, want, 20, why=why, err_msg=f"{task} {key}")
                else:
                    assert_same(got, want, why=why, err_msg=f"{task} {key}", **SEPARATELY_COMPILED)
        if on_cpu():  # the same bytes on disk
            for name in ("representations.npy", "weights.npy", "metrics.pkl"):
                assert (runs["resident"] / task / name).read_bytes() == (runs["one per call"] / task / name).read_bytes()
