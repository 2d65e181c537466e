"""Which tasks are evaluated at every snapshot (``--eval-tasks``), and what the saved task axis holds.

Every task of a run evaluates the same number of task slots K, so the evaluation program has one
shape and compiles once. Slot k of task t holds the global task index ``eval_task_ids(...)[k]``,
or -1 when it holds no task; a slot with -1 is written as NaN (accuracy, loss, representations).

- ``all``: K = T, slot k is task k (the behaviour before this setting existed).
- ``seen``: K = T, slot k is task k when k <= t, else -1. The saved arrays keep T slots (the
  analyses read every folder on one axis); when evaluation is streamed in chunks, a chunk of
  only future tasks is not computed, else every slot is computed and the future ones set to NaN.
  Disk and time per task grow with T as in ``all``.
- ``current``: K = 1, the task being trained.
- ``window:K``: the current task and the K-1 before it, oldest first, so the current task is
  the last slot: ``[t-K+1, ..., t]``, -1 for those before task 0. Disk, device and host memory
  per task do not depend on T.

Each task folder's metadata.json records the mode and ``eval_task_ids`` (cljax/records.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cljax.errors import CljaxError
from cljax.safe_files import DAMAGED

MODES = ("all", "seen", "current", "window:K")


class EvalTasks(NamedTuple):
    mode: str  # all, seen, current, window
    window: int  # K of window:K (1 for current, 0 for all / seen)

    def slots(self, num_tasks: int) -> int:
        """K, the task slots every snapshot evaluates."""
        return num_tasks if self.mode in ("all", "seen") else self.window

    @property
    def full(self) -> bool:
        """Slot k is task k (all, seen): the T test sets are fixed for the whole run."""
        return self.mode in ("all", "seen")

    def ids(self, t: int, num_tasks: int) -> np.ndarray:
        """(K,) int32: the global task index of each slot while training task t, -1 for none."""
        if self.mode == "all":
            return np.arange(num_tasks, dtype=np.int32)
        if self.mode == "seen":
            ids = np.arange(num_tasks, dtype=np.int32)
            return np.where(ids <= t, ids, -1).astype(np.int32)
        ids = np.arange(t - self.window + 1, t + 1, dtype=np.int32)
        return np.where(ids >= 0, ids, -1).astype(np.int32)

    def current_slot(self, t: int) -> int:
        """The slot that holds task t."""
        return t if self.full else self.window - 1

    def record(self, t: int, num_tasks: int) -> dict:
        """What metadata.json says about the task axis of task t's arrays."""
        return {"mode": str(self), "slots": self.slots(num_tasks), "current_slot": self.current_slot(t),
                "eval_task_ids": self.ids(t, num_tasks).tolist(),
                "missing": "slot id -1: no task; its accuracy, loss and representations are NaN"}

    def __str__(self) -> str:
        return f"window:{self.window}" if self.mode == "window" else self.mode


def parse_eval_tasks(text: str) -> EvalTasks:
    """``all``, ``seen``, ``current`` or ``window:K`` (K >= 1) -> EvalTasks; else one CljaxError line."""
    text = str(text).strip()
    if text in ("all", "seen"):
        return EvalTasks(text, 0)
    if text == "current":
        return EvalTasks("current", 1)
    if text.startswith("window:"):
        k = text.split(":", 1)[1]
        if k.isascii() and k.isdigit() and int(k) >= 1:  # '²' is a digit to str.isdigit, not to int()
            return EvalTasks("window", int(k))
    raise CljaxError(f"--eval-tasks {text!r} is not one of all, seen, current, window:K (K a positive integer, "
                     "e.g. window:4).")


def eval_tasks_of(config) -> EvalTasks:
    return parse_eval_tasks(getattr(config, "eval_tasks", "all"))


def eval_slots(config) -> int:
    """K of a config: the task slots every snapshot evaluates and every task folder stores."""
    return eval_tasks_of(config).slots(config.num_tasks)


def eval_ids_of(metadata: dict, n_slots: int, where: str = "metadata.json") -> np.ndarray:
    """The global task of each slot of a task folder (-1: none); slot k is task k in a folder
    written before --eval-tasks existed. The recorded ids must be those of the recorded mode at
    the folder's task, and that mode the one its config records (metadata.json carries no hash of
    its own): else one CljaxError line naming ``where``."""
    record, config = metadata.get("eval_tasks") or {}, metadata.get("config") or {}
    for name, value in (("eval_tasks", record), ("config", config)):
        if not isinstance(value, dict):
            raise CljaxError(f"{where}: its {name} is {type(value).__name__} {str(value)[:40]!r}, not the mapping cljax "
                             f"writes: the file was changed or damaged; {DAMAGED}.")
    ids = record.get("eval_task_ids")
    if ids is None and not record:  # no eval_tasks: written before --eval-tasks existed
        return np.arange(n_slots, dtype=np.int64)
    if "eval_tasks" in config and recorded_mode(record.get("mode", "all")) != recorded_mode(config["eval_tasks"]):
        # ids consistent with an edited mode pass the check below: a `seen` folder relabelled `all`
        # would have its empty slots read as tasks evaluated, and their NaN as diverged repeats
        raise CljaxError(f"{where}: eval_tasks.mode {str(record.get('mode'))[:40]!r} is not the --eval-tasks "
                         f"{str(config['eval_tasks'])[:40]!r} its config records, which the run ran with (its empty "
                         f"slots would be read as evaluated tasks): the file was changed or damaged; {DAMAGED}.")
    t, T = metadata.get("task_index"), config.get("num_tasks")
    try:
        expected = parse_eval_tasks(record.get("mode", "all")).ids(int(t), int(T)).astype(np.int64)
    except (CljaxError, TypeError, ValueError):
        expected = None
    if expected is None or len(expected) != n_slots or not isinstance(ids, list) or ids != expected.tolist():
        raise CljaxError(f"{where}: eval_tasks.eval_task_ids {str(ids)[:80]} are not the task slots of --eval-tasks "
                         f"{record.get('mode')!r} at task {t} of {T} (the saved arrays hold {n_slots}): the file was "
                         f"changed or damaged; {DAMAGED}.")
    slot = record.get("current_slot")  # the slot compare reads the task's own accuracy from
    if "current_slot" in record and (type(slot) is not int or not 0 <= slot < n_slots or expected[slot] != int(t)):
        raise CljaxError(f"{where}: eval_tasks.current_slot {slot!r} is not the slot of task {t} in eval_task_ids "
                         f"{str(ids)[:80]}: the file was changed or damaged; {DAMAGED}.")
    return expected


def recorded_mode(text) -> EvalTasks | None:
    """A recorded mode as parsed (``' all'``, recorded with its spaces before 2026-12-05, is all); None: no mode."""
    try:
        return parse_eval_tasks(text) if isinstance(text, str) else None
    except CljaxError:
        return None


def folder_mode(metadata: dict):
    """A task folder's recorded --eval-tasks (metadata.json): ``all`` in one written before the setting existed."""
    record = metadata.get("eval_tasks") or {}
    return record.get("mode", "all") if isinstance(record, dict) else None


def other_mode(metadata: dict, where, reference: tuple) -> str | None:
    """What is wrong where a task folder's --eval-tasks is not its run's, ``reference`` = (the file
    that records the run's, its mode), or None: mode, ids and config edited together pass the
    folder's own check (:func:`eval_ids_of`), and every folder of a run has the run's mode (a
    resume refuses another)."""
    mode = folder_mode(metadata)
    if recorded_mode(mode) == recorded_mode(reference[1]) is not None:
        return None
    return (f"{where} records --eval-tasks {str(mode)[:40]!r} and {reference[0]} {str(reference[1])[:40]!r}, while "
            f"every folder of a run has the run's (its empty slots would be read as evaluated tasks): one of the two "
            f"files was changed")


def own_slot(metadata: dict, n_slots: int, t: int, where: str = "metadata.json") -> int:
    """The saved slot that holds task ``t`` of the folder whose metadata.json is ``metadata``, by the
    checked ``eval_task_ids`` (:func:`eval_ids_of`), not by its ``current_slot`` alone, whose
    absence read slot t, another task's under window:K; one CljaxError line when none holds it."""
    ids = eval_ids_of({**metadata, "task_index": t}, n_slots, where=where)
    hits = np.flatnonzero(ids == t)
    if not len(hits):
        raise CljaxError(f"{where}: records no eval_tasks, and its arrays hold {n_slots} task slots, too few for slot "
                         f"{t} to be task {t}: the file was changed or damaged; {DAMAGED}.")
    return int(hits[0])
