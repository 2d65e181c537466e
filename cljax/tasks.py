"""The task schedule and the per-task data, in the canonical layout (N, R, H, W).

Schedule: for repeat r, a permutation perm_r of all classes drawn from the experiment seed;
task t of repeat r is (perm_r[2t], perm_r[2t+1]) (``pairs``), or that of pair t mod P, P =
n_classes // 2 (``cycle``); the first class is label 0, the second label 1.

Per-task data: every (task, repeat) uses ``n_train_per_class`` training and
``n_test_per_class`` test images of each of its two classes, drawn without replacement from
the seed, so every repeat has the same number of samples. Test images come from the test split
or (``test_source="train_holdout"``) from the end of a fixed per-(class, repeat) permutation of the
train split whose start provides the training images, so the two never overlap.

Test sets are interleaved (class A, class B, A, B, ...): the first S of them, the fixed
subsample whose representations are saved, hold S/2 images of each class.
"""

from __future__ import annotations

import numpy as np

from cljax.data.prepared import ClassData
from cljax.errors import CljaxError

# Stream ids of the host-side (numpy) part of the key lineage.
_RNG_SCHEDULE, _RNG_TRAIN, _RNG_TEST = 0, 1, 2


def make_schedule(n_classes: int, num_tasks: int, n_repeats: int, seed: int, kind: str = "pairs") -> np.ndarray:
    """Class pairs (T, R, 2): per repeat a permutation of all classes, consecutive pairs.

    ``kind="pairs"``: task t is pair t (T <= n_classes // 2). ``"cycle"``: task t is pair
    t mod P, P = n_classes // 2, the permutation's pairs repeated end to end (the
    loss-of-plasticity construction; an odd class out is never used). Task t of both kinds is
    the same pair for t < P."""
    n_pairs = n_classes // 2
    if kind not in ("pairs", "cycle"):
        raise CljaxError(f"--task-schedule {kind!r} is not one of pairs, cycle.")
    if n_pairs < 1:
        raise CljaxError(f"the dataset has {n_classes} class(es): a binary task needs at least 2.")
    if kind == "pairs" and num_tasks > n_pairs:
        raise CljaxError(
            f"--num-tasks {num_tasks} needs {2 * num_tasks} classes but the dataset has {n_classes}: "
            f"use at most {n_pairs} task{'s' * (n_pairs != 1)}, or --task-schedule cycle to repeat the class pairs."
        )
    _check_schedule_fits(n_classes, num_tasks, n_repeats)
    rng = np.random.default_rng([seed, _RNG_SCHEDULE])
    # (R, C): row r is the r-th permutation the generator draws (as rng.permutation(C) called
    # R times, in one pass)
    perms = rng.permuted(np.broadcast_to(np.arange(n_classes), (n_repeats, n_classes)), axis=1)
    cycle_RP2 = perms[:, : 2 * n_pairs].reshape(n_repeats, n_pairs, 2)
    return cycle_RP2[:, np.arange(num_tasks) % n_pairs].transpose(1, 0, 2).astype(np.int32)


def _check_schedule_fits(n_classes: int, num_tasks: int, n_repeats: int) -> None:
    """One line, before any of it is built, for a schedule larger than half the host memory this
    process may take (a mistyped --n-repeats 100000000 was killed by the kernel, or took the
    machine's other processes with it, before any check of the run's size)."""
    from cljax.devices.memory import host_available

    need = n_repeats * (16 * n_classes + 24 * num_tasks)  # the (R, C) permutations and the (T, R, 2) pairs
    available, source = host_available()
    if need > available // 2:
        raise CljaxError(f"--n-repeats {n_repeats} x --num-tasks {num_tasks}: the class pairs of the tasks alone take "
                         f"{need / 2**30:.1f} GiB of host memory, more than half of the {available / 2**30:.1f} GiB "
                         f"available ({source}): lower --n-repeats or --num-tasks (`cljax plan` gives what a run takes).")


def schedule_record(schedule_TR2: np.ndarray, t: int, kind: str, n_classes: int) -> dict:
    """What task t's metadata.json says about the schedule. ``pairs``: every task's pairs
    (``task_class_pairs``, (T, R, 2), as before this setting existed). ``cycle``: the one cycle
    (``cycle_class_pairs``, (min(T, P), R, 2): the pairs the run visits), so the file does not
    grow with T; task t is cycle pair
    ``pair_index`` = t mod P, trained for the ``pair_visit``-th time; ``pairs_seen`` (P,): how
    many tasks up to and including t trained each cycle pair."""
    n_pairs = n_classes // 2
    T = schedule_TR2.shape[0]
    seen = np.bincount(np.arange(t + 1) % n_pairs, minlength=n_pairs) if kind == "cycle" else None
    out = {"task_schedule": kind, "n_pairs": n_pairs}
    if kind == "cycle":
        out.update({"cycle_class_pairs": schedule_TR2[: min(T, n_pairs)].tolist(), "pair_index": t % n_pairs,
                    "pair_visit": t // n_pairs + 1, "pairs_seen": seen.tolist(),
                    "rule": "task t trains cycle pair t mod n_pairs (cycle_class_pairs[t mod n_pairs])"})
    else:
        out.update({"task_class_pairs": schedule_TR2.tolist(), "pair_index": t, "pair_visit": 1})
    return out


class TaskData:
    """Per-class index tables of a dataset, and gathers of one task's tensors for all repeats."""

    def __init__(self, data: ClassData, config):
        self.data = data
        self.config = config
        self.seed = config.seed
        holdout = config.test_source == "train_holdout"
        self.train_by_class = _indices_by_class(data.train_labels, data.n_classes)
        test_labels = data.train_labels if holdout else data.test_labels
        self.test_by_class = self.train_by_class if holdout else _indices_by_class(test_labels, data.n_classes)
        self.test_images_src = data.train_images if holdout else data.test_images
        need_train = config.n_train_per_class + (config.n_test_per_class if holdout else 0)
        for c in range(data.n_classes):
            if len(self.train_by_class[c]) == 0:  # no flag can make up for it
                raise CljaxError(
                    f"class {c} ({data.class_names[c]}) has no training images: every class of the dataset needs "
                    f"some; prepare the folder again from a source that has images of every class it names.")
        # the class with the fewest images decides what any task may take (a task may draw any class)
        fewest = min(range(data.n_classes), key=lambda c: len(self.train_by_class[c]))
        have = len(self.train_by_class[fewest])
        if have < need_train:
            raise CljaxError(
                f"class {fewest} has {have} training images, the fewest of any class, but {need_train} are needed "
                f"(--n-train-per-class{' + --n-test-per-class' if holdout else ''}): lower "
                f"{'their sum' if holdout else 'it'} to at most {have}.")
        fewest_test = min(range(data.n_classes), key=lambda c: len(self.test_by_class[c]))
        have_test = len(self.test_by_class[fewest_test])
        if not holdout and have_test < config.n_test_per_class:
            # train_holdout takes the test images from the training split, beside the training ones
            holdout_fix = ("--test-source train_holdout (test images held out of the training split)"
                           + ("" if have - config.n_train_per_class >= config.n_test_per_class else
                              f" with --n-train-per-class + --n-test-per-class at most {have}"))
            if have_test == 0:
                raise CljaxError(f"class {fewest_test} has no test images (the dataset has no test split for it): use "
                                 f"{holdout_fix}.")
            raise CljaxError(
                f"class {fewest_test} has {have_test} test images, the fewest of any class, but --n-test-per-class "
                f"is {config.n_test_per_class}: lower it to at most {have_test}, or use {holdout_fix}.")

    def _pick(self, stream: int, cls: int, repeat: int, pool: np.ndarray, n: int, from_end: bool = False):
        # A fixed per-(class, repeat) permutation: train takes its start, the holdout its end.
        # (class, repeat) identifies the draw: a class belongs to one pair per repeat, so a cycled
        # schedule's repeats of a pair train and test on the same images.
        rng = np.random.default_rng([self.seed, stream, cls, repeat])
        order = rng.permutation(len(pool))
        chosen = order[len(order) - n :] if from_end else order[:n]
        return np.sort(pool[chosen])

    def train(self, pairs_R2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training images (N, R, H, W) uint8 and labels (N, R) int32 of one task, class A first."""
        n = self.config.n_train_per_class
        idx_NR = np.stack(
            [
                np.concatenate([self._pick(_RNG_TRAIN, c, r, self.train_by_class[c], n) for c in pairs_R2[r]])
                for r in range(pairs_R2.shape[0])
            ],
            axis=1,
        )
        labels_NR = np.repeat(np.array([0, 1], np.int32), n)[:, None].repeat(pairs_R2.shape[0], axis=1)
        return _gather(self.data.train_images, idx_NR), labels_NR

    def test(self, pairs_R2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test images (N_test, R, H, W) and labels (N_test, R), classes interleaved A, B, A, B..."""
        n = self.config.n_test_per_class
        holdout = self.config.test_source == "train_holdout"
        stream = _RNG_TRAIN if holdout else _RNG_TEST
        cols = []
        for r in range(pairs_R2.shape[0]):
            a, b = (
                self._pick(stream, c, r, self.test_by_class[c], n, from_end=holdout) for c in pairs_R2[r]
            )
            cols.append(np.stack([a, b], axis=1).reshape(-1))  # interleave
        idx_NR = np.stack(cols, axis=1)
        labels_NR = np.tile(np.array([0, 1], np.int32), n)[:, None].repeat(pairs_R2.shape[0], axis=1)
        return _gather(self.test_images_src, idx_NR), labels_NR

    def all_tests(self, schedule_TR2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Test sets of every task stacked: (T, N_test, R, H, W) and (T, N_test, R), written into
        the stack as they are gathered (the test sets held once, as the plan counts them; gathered
        apart and then stacked, they were held twice)."""
        first: dict = {}  # a cycled schedule repeats its pairs: gather each pair's test set once
        images = labels = None
        for t, p in enumerate(schedule_TR2):
            if p.tobytes() in first:
                x, y = images[first[p.tobytes()]], labels[first[p.tobytes()]]
            else:
                first[p.tobytes()] = t
                x, y = self.test(p)
            if images is None:
                images = np.empty((len(schedule_TR2), *x.shape), x.dtype)
                labels = np.empty((len(schedule_TR2), *y.shape), y.dtype)
            images[t], labels[t] = x, y
        return images, labels


def _indices_by_class(labels: np.ndarray, n_classes: int) -> list[np.ndarray]:
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_classes + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_classes)]


def _gather(images: np.ndarray, idx_NR: np.ndarray) -> np.ndarray:
    # Gather sorted unique rows once (fast on a memory map), then scatter to (N, R, H, W).
    flat = idx_NR.reshape(-1)
    uniq, inverse = np.unique(flat, return_inverse=True)
    rows = np.asarray(images[uniq])
    return rows[inverse].reshape(*idx_NR.shape, *rows.shape[1:])
