"""Evaluation of the learner's snapshots on the test sets of all T tasks.

``evaluate_one`` and ``evaluate_snapshots`` are functions of ONE repeat (``cljax.program`` maps
them over the repeats); ``TestSets`` is the host side.

The test sets of every task are built once on the host, (T, N_test, R, H, W) uint8. They are
either resident on the device for the whole run, or streamed K tasks at a time; either way each
task's numbers come from the same compiled function of the same inputs, so the two paths give
the same bits.

Streaming (chunked) mode is for runs whose test sets or evaluation outputs do not fit the
device: chunk k+1's test sets go to the device while chunk k's outputs come back to the host,
so the device holds at most two chunks of inputs and outputs at once. ``cljax.plan`` predicts
both footprints and picks K (``choose_eval_chunk``).
"""

from __future__ import annotations

import numpy as np
from jax import lax

from cljax.devices.memory import live_device_bytes
from cljax.devices.mesh import fetch, put_repeats
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

    nll_C, correct_C, hidden_CKH = lax.map(one_chunk, (x_CK, y_CK))
    return correct_C.sum(0) / n, nll_C.sum(0) / n, hidden_CKH.reshape(n, -1)


def evaluate_snapshots(net, sizes, models_L, test_x_KN, test_y_KN):
    """One repeat's learner at every snapshot on K tasks' test sets: acc, loss (L, K) and the
    representations of the S fixed test images (L, K, S, H). ``models_L`` = (params,
    model_state) stacked over the snapshots. A pure function of its inputs, so evaluating the
    T tasks in one call or in chunks of K gives the same numbers."""

    def at_snapshot(model):
        def on_task(xy):
            acc, loss, hidden_NH = evaluate_one(net, *model, *xy, sizes.eval_chunk)
            return acc, loss, hidden_NH[: sizes.n_subsamples].astype(sizes.rep_dtype)

        return lax.map(on_task, (test_x_KN, test_y_KN))

    return lax.map(at_snapshot, models_L)


class TestSets:
    """The T test sets and how they reach the device.

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

    def evaluate(self, evaluate_fn, weights_LR):
        """acc, loss (L, R, T) and representations (L, R, T, S, H): device arrays when resident,
        host arrays when streamed (already fetched chunk by chunk)."""
        if self.resident:
            out = evaluate_fn(weights_LR, self.dev_x, self.dev_y)
            self._sample()
            return out
        K, T = self.chunk_tasks, self.num_tasks
        host_parts, pending = [], None
        for first in range(0, T, K):
            # The last chunk is padded with its own first task so every call has one shape
            # (one compilation); the padding's results are dropped.
            ids = np.minimum(np.arange(first, first + K), T - 1)
            x, y = put_repeats(self.host_x[ids], 2), put_repeats(self.host_y[ids], 2)
            out = evaluate_fn(weights_LR, x, y)
            self._sample()
            if pending is not None:  # fetch the previous chunk while this one runs
                host_parts.append(_trim(*pending))
            # The inputs are held with the outputs: the device may still be reading them.
            pending = (out, min(K, T - first), (x, y))
        host_parts.append(_trim(*pending))
        return tuple(np.concatenate(parts, axis=2) for parts in zip(*host_parts))


def _trim(out, n: int, inputs=None):
    acc, loss, reps = fetch(out)
    return acc[:, :, :n], loss[:, :, :n], reps[:, :, :n]
