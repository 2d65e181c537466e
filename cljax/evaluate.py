"""Evaluation of the learner's snapshots on the test sets of all T tasks.

The test sets of every task are built once on the host, (T, N_test, R, H, W) uint8. They are
either resident on the device for the whole run, or streamed K tasks at a time; either way each
task's numbers come from the same compiled function of the same inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.devices import put_repeats


class TestSets:
    """The T test sets and how they reach the device."""

    def __init__(self, test_x_TNRHW: np.ndarray, test_y_TNR: np.ndarray, chunk_tasks: int | None = None):
        self.host_x, self.host_y = test_x_TNRHW, test_y_TNR
        self.num_tasks = test_x_TNRHW.shape[0]
        self.chunk_tasks = self.num_tasks if not chunk_tasks else min(chunk_tasks, self.num_tasks)
        self.resident = self.chunk_tasks == self.num_tasks
        if self.resident:
            self.dev_x, self.dev_y = put_repeats(test_x_TNRHW, 2), put_repeats(test_y_TNR, 2)

    def current(self, t: int):
        """Task t's test set on the device, (N_test, R, H, W) and (N_test, R), for the expert."""
        if self.resident:
            return self.dev_x[t], self.dev_y[t]
        return put_repeats(self.host_x[t], 1), put_repeats(self.host_y[t], 1)

    def evaluate(self, evaluate_fn, weights_LR):
        """acc, loss (L, R, T) and representations (L, R, T, S, H), on the device."""
        if self.resident:
            return evaluate_fn(weights_LR, self.dev_x, self.dev_y)
        K, T = self.chunk_tasks, self.num_tasks
        outs = []
        for first in range(0, T, K):
            # The last chunk is padded with its own first task so every call has one shape
            # (one compilation); the padding's results are dropped.
            ids = np.minimum(np.arange(first, first + K), T - 1)
            x, y = put_repeats(self.host_x[ids], 2), put_repeats(self.host_y[ids], 2)
            acc, loss, reps = evaluate_fn(weights_LR, x, y)
            n = min(K, T - first)
            outs.append((acc[:, :, :n], loss[:, :, :n], reps[:, :, :n]))
        return tuple(jnp.concatenate(parts, axis=2) for parts in zip(*outs))
