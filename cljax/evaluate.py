"""Evaluation of the learner's snapshots on the test sets of the evaluated tasks (--eval-tasks).

``evaluate_one`` and ``evaluate_snapshots`` are functions of ONE repeat (``cljax.program`` maps
them over the repeats); ``TestSets`` (all / seen: slot k is task k) and ``WindowTestSets``
(current / window:K: the window's tasks, gathered per task) are the host side.

With all / seen, the test sets of every task are built once on the host, (T, N_test, R, H, W) uint8. They are
either resident on the device for the whole run, or streamed K tasks at a time; either way each
task's numbers come from the same loop body over the slots of a call, of the same inputs, so the
two paths give the same bits (``map_at_least_twice``: also with one slot per call).

Streaming (chunked) mode is for runs whose test sets or evaluation outputs do not fit the
device: chunk k+1's test sets go to the device while chunk k's outputs come back to the host,
so the device holds at most two chunks of inputs and outputs at once. ``cljax.plan`` predicts
both footprints and picks K (``choose_eval_chunk``).
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cljax.devices.memory import live_device_bytes
from cljax.devices.mesh import fetch, put_repeats
from cljax.heads import with_head
from cljax.losses import nll_and_correct


def evaluate_one(net, params, model_state, x_N, y_N, chunk: int):
    """Accuracy, loss (scalars) and hidden (N, H) of one model on one test set (evaluation
    mode), ``chunk`` test images per forward pass (small chunks keep the convolution's patches
    in cache on the CPU)."""
    n = x_N.shape[0]
    x_CK = x_N.reshape(n // chunk, chunk, *x_N.shape[1:])
    y_CK = y_N.reshape(n // chunk, chunk)

    def one_chunk(xy):
        logits, hidden, _ = net.apply(params, model_state, xy[0], False)
        nll_K, correct_K = nll_and_correct(logits, xy[1])
        return nll_K.sum(-1), correct_K.sum(-1), hidden

    with jax.named_scope("evaluate"):  # names in the compiled program (benchmarks/profile_task.py)
        nll_C, correct_C, hidden_CKH = lax.map(one_chunk, (x_CK, y_CK))
    return correct_C.sum(0) / n, nll_C.sum(0) / n, hidden_CKH.reshape(n, -1)


def evaluate_snapshots(net, sizes, models_L, test_x_KN, test_y_KN, task_ids_K, heads=None):
    """One repeat's learner at every snapshot on K tasks' test sets: acc, loss (L, K) and the
    representations of the S fixed test images (L, K, S, H). ``models_L`` = (params,
    model_state) stacked over the snapshots; ``task_ids_K`` (K,) int32 the global index of each
    slot's task, -1 for a slot without a task, whose outputs are NaN (cljax/eval_tasks.py); a
    task is read out through its own head under ``--head multi`` (``heads``, cljax/heads.py). A
    pure function of its inputs, so evaluating the tasks in one call or in chunks gives the same
    numbers."""

    def at_snapshot(model):
        def on_task(xyi):
            x, y, task_id = xyi
            task_net = net if heads is None else with_head(net, heads, jnp.maximum(task_id, 0))
            acc, loss, hidden_NH = evaluate_one(task_net, *model, x, y, sizes.eval_chunk)
            reps = hidden_NH[: sizes.n_subsamples].astype(sizes.rep_dtype)
            empty = task_id < 0
            nan = jnp.array(jnp.nan, reps.dtype)
            return (jnp.where(empty, jnp.nan, acc), jnp.where(empty, jnp.nan, loss), jnp.where(empty, nan, reps))

        return map_at_least_twice(on_task, (test_x_KN, test_y_KN, task_ids_K))

    return lax.map(at_snapshot, models_L)


def map_at_least_twice(fn, xs):
    """``lax.map(fn, xs)``, as a loop of at least two iterations: XLA inlines a loop of one,
    and the body compiled inline sums a task's losses in another order (the last bit) than the
    body of a loop; one slot is then evaluated twice and one result kept. So a task's numbers
    do not depend on how many slots a call evaluates (K = 1 in a chunk, or 2, or all T)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if n != 1:
        return lax.map(fn, xs)
    twice = jax.tree.map(lambda a: jnp.concatenate([a, a]), xs)
    return jax.tree.map(lambda a: a[:1], lax.map(fn, twice))


class TestSets:
    """The test sets of a run whose slot k is task k (``--eval-tasks all`` or ``seen``), and how
    they reach the device.

    ``measure=True`` records the largest live device footprint seen right after each
    evaluation call was dispatched (``peak_live_bytes``), for checking the planner."""

    __test__ = False  # not a pytest class

    def __init__(self, test_x_TNRHW: np.ndarray, test_y_TNR: np.ndarray, chunk_tasks: int | None = None,
                 measure: bool = False):
        self.num_tasks = test_x_TNRHW.shape[0]
        self.chunk_tasks = self.num_tasks if not chunk_tasks else min(chunk_tasks, self.num_tasks)
        self.resident = self.chunk_tasks == self.num_tasks
        self.measure = measure
        self.peak_live_bytes = 0
        self._current = None
        if self.resident:
            # The host copies are dropped: the device ones serve the expert and the evaluation.
            self.host_x = self.host_y = None
            self.dev_x, self.dev_y = put_repeats(test_x_TNRHW, 2), put_repeats(test_y_TNR, 2)
        else:
            self.host_x, self.host_y = test_x_TNRHW, test_y_TNR

    def current(self, t: int):
        """Task t's test set on the device, (N_test, R, H, W) and (N_test, R), for the expert.
        Held until the next call, as long as the task's program may read it."""
        if self.resident:
            self._current = self.dev_x[t], self.dev_y[t]
        else:
            self._current = put_repeats(self.host_x[t], 1), put_repeats(self.host_y[t], 1)
        return self._current

    def _sample(self) -> None:
        if self.measure:
            self.peak_live_bytes = max(self.peak_live_bytes, live_device_bytes())

    def evaluate(self, evaluate_fn, weights_LR, task_ids: np.ndarray | None = None):
        """acc, loss (L, R, T) and representations (L, R, T, S, H): device arrays when resident,
        host arrays when streamed (already fetched chunk by chunk). ``task_ids`` (T,): slot k's
        task (k, or -1: NaN; default every task)."""
        T = self.num_tasks
        ids = np.arange(T, dtype=np.int32) if task_ids is None else np.asarray(task_ids, np.int32)
        if self.resident:
            out = evaluate_fn(weights_LR, self.dev_x, self.dev_y, jnp.asarray(ids))
            self._sample()
            return out
        return stream_chunks(evaluate_fn, weights_LR, self.host_x, self.host_y, ids, self.chunk_tasks, self._sample)


class WindowTestSets:
    """The test sets of a run that evaluates a window of K slots per task (``--eval-tasks
    current`` or ``window:K``): only the window's test sets are gathered, K per task, so host and
    device memory do not grow with T. A pair's test set is gathered once and kept while it may be
    needed again soon (at most K + 1 of them; a cycled schedule repeats pairs)."""

    __test__ = False

    def __init__(self, task_data, schedule_TR2: np.ndarray, n_slots: int, chunk_tasks: int | None = None,
                 measure: bool = False):
        self.task_data, self.schedule, self.n_slots = task_data, schedule_TR2, n_slots
        self.chunk_tasks = n_slots if not chunk_tasks else min(chunk_tasks, n_slots)
        self.resident = self.chunk_tasks == n_slots  # one evaluation call per task
        self.measure = measure
        self.peak_live_bytes = 0
        self._cache: OrderedDict = OrderedDict()
        self._current = None

    def host(self, j: int):
        """Task j's test set on the host, (N_test, R, H, W) and (N_test, R)."""
        key = self.schedule[j].tobytes()  # the task's pairs: the same pairs give the same test set
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = self.task_data.test(self.schedule[j])
            while len(self._cache) > self.n_slots + 1:
                self._cache.popitem(last=False)
        return self._cache[key]

    def current(self, t: int):
        x, y = self.host(t)
        self._current = put_repeats(x, 1), put_repeats(y, 1)
        return self._current

    def _sample(self) -> None:
        if self.measure:
            self.peak_live_bytes = max(self.peak_live_bytes, live_device_bytes())

    def evaluate(self, evaluate_fn, weights_LR, task_ids: np.ndarray):
        """acc, loss (L, R, K) and representations (L, R, K, S, H) of the slots ``task_ids`` (K,);
        a slot with -1 is evaluated on the last slot's test set and set to NaN."""
        ids = np.asarray(task_ids, np.int32)
        filled = np.where(ids >= 0, ids, ids.max())
        sets = [self.host(int(j)) for j in filled]
        x, y = np.stack([s[0] for s in sets]), np.stack([s[1] for s in sets])
        if self.resident:
            out = evaluate_fn(weights_LR, put_repeats(x, 2), put_repeats(y, 2), jnp.asarray(ids))
            self._sample()
            return out
        return stream_chunks(evaluate_fn, weights_LR, x, y, ids, self.chunk_tasks, self._sample)


def stream_chunks(evaluate_fn, weights_LR, host_x, host_y, ids, K: int, sample=lambda: None):
    """Evaluate the slots of ``host_x`` (slots, N, R, ...) K at a time; chunk k+1's test sets go
    to the device while chunk k's outputs come back. A chunk without a task (every id -1) is not
    computed: its slots are NaN, as the computed ones would be (with no task at all, the first
    chunk is computed, to give the outputs' shapes). Host arrays (L, R, slots, ...)."""
    n_slots = len(ids)
    firsts = list(range(0, n_slots, K))
    parts, pending = {}, None
    for first in firsts:
        n = min(K, n_slots - first)
        if (ids[first : first + n] < 0).all() and (first > 0 or (ids >= 0).any()):
            continue
        # The last chunk is padded with the run's last slot so every call has one shape (one
        # compilation); the padding's results are dropped.
        take = np.minimum(np.arange(first, first + K), n_slots - 1)
        x, y = put_repeats(host_x[take], 2), put_repeats(host_y[take], 2)
        out = evaluate_fn(weights_LR, x, y, jnp.asarray(ids[take]))
        sample()
        if pending is not None:  # fetch the previous chunk while this one runs
            parts[pending[0]] = _trim(*pending[1:])
        # The inputs are held with the outputs: the device may still be reading them.
        pending = (first, out, n, (x, y))
    parts[pending[0]] = _trim(*pending[1:])
    like = next(iter(parts.values()))
    for first in firsts:  # NaN stand-ins for the chunks not computed
        if first not in parts:
            n = min(K, n_slots - first)
            parts[first] = tuple(np.full((*a.shape[:2], n, *a.shape[3:]), np.nan, a.dtype) for a in like)
    return tuple(np.concatenate(arrays, axis=2) for arrays in zip(*(parts[f] for f in firsts)))


def _trim(out, n: int, inputs=None):
    acc, loss, reps = fetch(out)
    return acc[:, :, :n], loss[:, :, :n], reps[:, :, :n]
