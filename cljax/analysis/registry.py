"""The analyses that :func:`cljax.analysis.driver.analyze_run` runs, registered by name.

An analysis is three functions::

    init(context: RunContext) -> state
    update(state, folder: TaskFolder) -> state        # once per task folder, in order
    finalize(state) -> Result                         # summary entries, arrays, plots

:class:`RunContext` holds what is known before the first folder is read (sizes, options);
:class:`TaskFolder` gives one task folder's files, each read on first use and shared by every
analysis (the representations are memory-mapped), so a state should keep only small summaries:
the driver drops the folder before reading the next one. The driver runs the analyses in the
order they were registered and merges their summaries in that order; see
:mod:`cljax.analysis.analyses` for the built-in ones (``cl``, ``plasticity``, ``curves``, ``run``,
``glue``, ``probe``). Register another with ``register(Analysis("name", init, update, finalize))``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from cljax import results
from cljax.eval_tasks import eval_ids_of as results_eval_ids
from cljax.analysis.glue import N_PROBES
from cljax.analysis.probe import RIDGE
from cljax.errors import CljaxError


@dataclasses.dataclass(frozen=True)
class Options:
    """The settings of :func:`~cljax.analysis.driver.analyze_run` that analyses read."""

    variant: str = "final"
    tau: float = 0.025
    glue_n_probes: int = N_PROBES
    glue_tasks: str = "current"
    glue_across_every: int | None = None
    glue_across_max_tasks: int = 16
    glue_max_points: int | None = 32
    glue_seed: int = 0
    curve_tasks: int = 10
    probe_ridge: float = RIDGE


class RunContext(NamedTuple):
    """What an analysis knows before the first task folder: the run's sizes and the options."""

    algo_dir: Path
    n_folders: int  # task folders present (n <= T)
    n_snapshots: int  # L, snapshots per folder (of task_000)
    n_repeats: int  # R
    n_eval_tasks: int  # T, the run's tasks (a folder's task axis holds all of them, or K slots: TaskFolder)
    options: Options
    workers: Any = None  # cljax.analysis.workers.Workers for cljax's own GLUE solves, or None (solved in-process)


class TaskFolder:
    """One ``task_NNN`` folder; each file is read on first use, then shared by the analyses."""

    def __init__(self, index: int, path: Path, metadata: dict | None = None):
        self.index = index
        self.path = path
        self.metadata = results.load_metadata(path) if metadata is None else metadata  # (already read: the check)
        self.metrics = results.load_metrics(path)
        missing = [k for k in ("test_acc", "start_test_acc") if k not in self.metrics]
        if missing:
            raise CljaxError(f"{path / 'metrics.pkl'} lacks {missing}: it was not written by cljax's runner.")
        self.test_acc_slots = np.asarray(self.metrics["test_acc"], dtype=np.float64)  # (L, R, K) as saved
        K = self.test_acc_slots.shape[-1]
        # The global task of each saved slot (-1: none), and the run's task count (--eval-tasks).
        self.eval_task_ids = results_eval_ids(self.metadata, K, where=str(path / "metadata.json"))
        self.num_tasks = int((self.metadata.get("config") or {}).get("num_tasks", K))
        self.all_tasks = K == self.num_tasks and bool((self.eval_task_ids == np.arange(K)).all())
        self.shape = (*self.test_acc_slots.shape[:2], self.num_tasks)  # (L, R, T)

    @functools.cached_property
    def test_acc(self) -> np.ndarray:
        """(L, R, T), NaN where not evaluated: L x R x T floats, read a few tasks with :meth:`at_tasks`."""
        return self.to_tasks(self.test_acc_slots)

    def at_tasks(self, values, tasks) -> np.ndarray:
        """An array whose last axis is the K saved slots -> the given tasks' entries, NaN where
        this folder did not evaluate one."""
        values, tasks = np.asarray(values), np.asarray(tasks)
        if self.all_tasks:
            return values[..., tasks]
        match = self.eval_task_ids[None, :] == tasks[:, None]  # (J, K)
        out = np.full((*values.shape[:-1], len(tasks)), np.nan, dtype=np.result_type(values.dtype, np.float64))
        hit = match.any(axis=1)
        out[..., hit] = values[..., match.argmax(axis=1)[hit]]
        return out

    def to_tasks(self, values, fill=np.nan) -> np.ndarray:
        """An array whose last axis is this folder's K saved slots -> one whose last axis is the
        run's T tasks, ``fill`` (NaN) where a task was not evaluated; itself when slot k is task k."""
        values = np.asarray(values)
        if self.all_tasks:
            return values
        out = np.full((*values.shape[:-1], self.num_tasks), fill, dtype=np.result_type(values.dtype, np.float64))
        valid = self.eval_task_ids >= 0
        out[..., self.eval_task_ids[valid]] = values[..., valid]
        return out

    @property
    def valid_slots(self) -> np.ndarray:
        """The saved slots that hold a task (eval id >= 0)."""
        return np.flatnonzero(self.eval_task_ids >= 0)

    def slot_of(self, task: int) -> int:
        """The saved slot that holds ``task`` (this folder's own task is always evaluated)."""
        hits = np.flatnonzero(self.eval_task_ids == task)
        if not len(hits):
            raise CljaxError(f"{self.path} did not evaluate task {task}")
        return int(hits[0])

    @functools.cached_property
    def log_steps(self) -> np.ndarray:
        """The training step of each of the L snapshots (default 1, ..., L): metrics.pkl's, whose
        sha256 was checked (metadata.json's copy has no hash of its own)."""
        steps = self.metrics.get("log_steps", self.metadata.get("log_steps", np.arange(1, self.shape[0] + 1)))
        return np.asarray(steps, dtype=np.float64)

    @functools.cached_property
    def start_test_acc(self) -> np.ndarray:
        """(R, T): every task's accuracy evaluated before this task's first step (NaN: not evaluated)."""
        return self.to_tasks(np.asarray(self.metrics["start_test_acc"], dtype=np.float64))

    @functools.cached_property
    def expert_metrics(self) -> dict:
        return results.load_expert_metrics(self.path)

    @functools.cached_property
    def representations(self) -> np.ndarray:
        """(L, R, K, S, H), memory-mapped; the K saved slots (``eval_task_ids``)."""
        return results.load_representations(self.path)

    @functools.cached_property
    def binary_labels(self) -> np.ndarray:
        """(L, R, K, S), the K saved slots."""
        return results.load_binary_labels(self.path)

    @functools.cached_property
    def weights(self) -> Any:
        """The weights pytree, leaves (L, R, ...)."""
        return results.load_weights(self.path)

    @functools.cached_property
    def start_weights(self) -> Any:
        """The weights pytree the task's training started from, leaves (R, ...); None for a
        folder written before start_weights.npy existed."""
        return results.load_start_weights(self.path)


class Result(NamedTuple):
    """What an analysis hands back.

    ``summary``: top-level entries of ``summary.json`` (arrays and NaN are made JSON-safe by the
    driver); ``arrays``: {file name: {array name: array}}, each saved with ``np.savez_compressed``;
    ``plots``: {file name: function(path)} that writes that PNG (called unless plots are off).
    """

    summary: dict = {}
    arrays: dict = {}
    plots: dict = {}


class Analysis(NamedTuple):
    name: str
    init: Callable[[RunContext], Any]
    update: Callable[[Any, TaskFolder], Any]
    finalize: Callable[[Any], Result]


_ANALYSES: dict[str, Analysis] = {}


def _builtins() -> None:
    """The built-in analyses registered first, whatever a plugin imported: it may replace one
    (unregister, then register) before cljax.analysis.analyses was imported."""
    import importlib

    importlib.import_module("cljax.analysis.analyses")  # (while it imports, its partial module: no loop)


def register(analysis: Analysis) -> Analysis:
    """Add ``analysis`` under its name (after those already registered); a name is taken once."""
    _builtins()
    if analysis.name in _ANALYSES:
        raise CljaxError(f"an analysis named {analysis.name!r} is already registered: give yours another name "
                         f"(or unregister({analysis.name!r}) first to replace it).")
    _ANALYSES[analysis.name] = analysis
    return analysis


def unregister(name: str) -> Analysis:
    """Remove and return the analysis ``name`` (tests, plugins replacing a built-in)."""
    return _ANALYSES.pop(get(name).name)


def registered() -> tuple[str, ...]:
    """The names of the registered analyses, in the order they run."""
    _builtins()
    return tuple(_ANALYSES)


def get(name: str) -> Analysis:
    _builtins()
    try:
        return _ANALYSES[name]
    except KeyError:
        raise CljaxError(f"no analysis named {name!r}; registered: {', '.join(_ANALYSES)}") from None
