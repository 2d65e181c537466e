"""The evaluated band of a run's accuracy matrix: each task folder's row as it saved it.

A task folder saves its accuracies on K task slots (``--eval-tasks``: every task, ``seen``,
``current``, ``window:K``); slot k holds task ``eval_task_ids[k]`` (-1: none). The analysis keeps
the rows in that form, values (R, n, K) and task ids (n, K), so its memory grows with R x n x K,
not with R x n x T: a 5000-task run that evaluates the current task keeps 5000 x 1 entries per
repeat instead of 5000 x 5000. :meth:`Band.dense` gives the (R, n, T) rows, NaN where a task
was not evaluated, for the runs small enough to hold them (:data:`DENSE_CELLS`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Runs whose (R, n, T) matrices have at most this many cells also get them densely (cl.npz,
# probe.npz): each such float64 array takes at most 128 MiB.
DENSE_CELLS = 2**24
# The accuracy-matrix plot averages blocks of tasks above this many per side.
MAX_SIDE = 500


def keeps_dense(R: int, n: int, K: int, T: int) -> bool:
    """The dense (R, n, T) arrays are kept beside the band of K slots when they are small enough
    (:data:`DENSE_CELLS`), or when the band is as wide as the tasks (no smaller than dense)."""
    return K >= T or R * n * T <= DENSE_CELLS


class Band(NamedTuple):
    values: np.ndarray  # (R, n, K): folder i's value on the task in its slot k
    ids: np.ndarray  # (n, K) int: the task in slot k of folder i; -1 where none
    n_tasks: int  # T, the run's tasks

    @classmethod
    def stack(cls, rows, ids, n_tasks: int) -> "Band":
        """From one (R, K) row and one (K,) id array per folder."""
        return cls(np.stack(rows, axis=1), np.stack(ids).astype(np.int64), int(n_tasks))

    @property
    def keeps_dense(self) -> bool:
        """Whether the analysis also writes the dense (R, n, T) arrays (:func:`keeps_dense`)."""
        return keeps_dense(*self.values.shape, self.n_tasks)

    @property
    def is_dense(self) -> bool:
        """Every folder saved every task in order: the band is the whole (R, n, T) rows."""
        return self.ids.shape[1] == self.n_tasks and bool((self.ids == np.arange(self.n_tasks)).all())

    def dense(self, n_cols: int | None = None) -> np.ndarray:
        """(R, n, n_cols) (default T): the rows over the first ``n_cols`` tasks, NaN where not evaluated."""
        cols = self.n_tasks if n_cols is None else n_cols
        if self.is_dense:
            return self.values[:, :, :cols]
        R, n, K = self.values.shape
        out = np.full((R, n, cols), np.nan)
        i, k = np.nonzero((self.ids >= 0) & (self.ids < cols))
        out[:, i, self.ids[i, k]] = self.values[:, i, k]
        return out

    def row(self, i: int, n_cols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Folder i's values (R, n_cols) (NaN where not evaluated) and which tasks it evaluated (n_cols,)."""
        cols = self.n_tasks if n_cols is None else n_cols
        keep = (self.ids[i] >= 0) & (self.ids[i] < cols)
        out = np.full((self.values.shape[0], cols), np.nan)
        out[:, self.ids[i, keep]] = self.values[:, i, keep]
        evaluated = np.zeros(cols, dtype=bool)
        evaluated[self.ids[i, keep]] = True
        return out, evaluated

    def take(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """The entries (rows[m], cols[m]): values (R, M) (NaN where not evaluated) and whether each was (M,)."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        out = np.full((self.values.shape[0], len(rows)), np.nan)
        found = np.zeros(len(rows), dtype=bool)
        for start in range(0, len(rows), 4096):  # (M, K) matches at a time, bounded for wide bands
            r, c = rows[start:start + 4096], cols[start:start + 4096]
            match = self.ids[r] == c[:, None]
            hit = match.any(axis=1)
            slot = match.argmax(axis=1)
            out[:, start:start + len(r)][:, hit] = self.values[:, r[hit], slot[hit]]
            found[start:start + len(r)] = hit
        return out, found

    def diagonal(self) -> tuple[np.ndarray, np.ndarray]:
        """Folder i's value on task i, (R, n), and whether it was evaluated (n,)."""
        i = np.arange(self.values.shape[1])
        return self.take(i, i)

    def evaluated_count(self, n_cols: int) -> int:
        """How many (folder, task < n_cols) entries were evaluated."""
        return int(((self.ids >= 0) & (self.ids < n_cols)).sum())

    def every_evaluated(self, n_cols: int) -> bool:
        """Every folder evaluated every task < n_cols."""
        return self.evaluated_count(n_cols) == self.values.shape[1] * n_cols

    def mean_earlier(self) -> np.ndarray:
        """Folder i's mean over the tasks j < i it evaluated, (R, n); NaN where none. A non-finite
        value of an evaluated task (a diverged repeat's) makes the repeat's mean non-finite, so the
        spread leaves the repeat out, as BWT does, instead of averaging its other tasks."""
        n = self.values.shape[1]
        earlier = (self.ids >= 0) & (self.ids < np.arange(n)[:, None])  # (n, K)
        count = earlier.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.where(earlier, self.values, 0.0).sum(axis=-1)
            return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def n_repeats_not_finite(self, n_cols: int) -> int:
        """How many repeats have a non-finite value at some evaluated entry (folder, task < n_cols):
        a diverged network's, which a mean over repeats leaves out there."""
        evaluated = (self.ids >= 0) & (self.ids < n_cols)
        return int((~np.isfinite(self.values) & evaluated).any(axis=(1, 2)).sum())

    def every_earlier_evaluated(self) -> bool:
        """Every folder i evaluated every task j < i."""
        n = self.values.shape[1]
        earlier = (self.ids >= 0) & (self.ids < np.arange(n)[:, None])
        return bool((earlier.sum(axis=1) == np.arange(n)).all())

    def mean_matrix(self, n_cols: int, max_side: int = MAX_SIDE) -> tuple[np.ndarray, int]:
        """The accuracy-matrix plot's image: the mean over repeats with a finite value of every
        evaluated entry (folder, task < n_cols), averaged over blocks of b x b entries so that no
        side exceeds ``max_side`` (a figure shows no more; a 5000 x 5000 image takes 3 GB to draw).
        Returns the (ceil(n / b), ceil(n_cols / b)) float32 image (NaN: nothing evaluated) and b."""
        n = self.values.shape[1]
        block = max(1, -(-max(n, n_cols) // max_side))
        finite = np.isfinite(self.values)
        count = finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, self.values, 0.0).sum(axis=0) / np.maximum(count, 1)  # (n, K)
        i, k = np.nonzero((self.ids >= 0) & (self.ids < n_cols) & (count > 0))
        shape = (-(-n // block), -(-n_cols // block))
        total, cells = np.zeros(shape), np.zeros(shape)
        np.add.at(total, (i // block, self.ids[i, k] // block), mean[i, k])
        np.add.at(cells, (i // block, self.ids[i, k] // block), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cells > 0, total / cells, np.nan).astype(np.float32), block

    def running_max_before_last(self) -> tuple[np.ndarray, np.ndarray]:
        """max over folders l in [j, n-2] that evaluated task j of the value on task j, (R, n), and
        whether any folder did (n,): the first term of forgetting (NaN stays NaN, as in np.max)."""
        R, n, _ = self.values.shape
        best = np.full((R, n), -np.inf)
        seen = np.zeros(n, dtype=bool)
        for l in range(n - 1):
            k = np.flatnonzero((self.ids[l] >= 0) & (self.ids[l] <= l))
            tasks = self.ids[l, k]
            best[:, tasks] = np.maximum(best[:, tasks], self.values[:, l, k])
            seen[tasks] = True
        return np.where(seen, best, np.nan), seen
