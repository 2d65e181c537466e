"""Evaluation of the learner's snapshots on the test sets of all T tasks.

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

from cljax.devices import fetch, live_device_bytes, put_repeats


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
