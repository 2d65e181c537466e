"""The folder a run writes, ``{results_dir}/{dataset}/{algorithm}``: what is in it before a run
starts (read only), what a resume checks before it builds
on earlier tasks, and what --overwrite clears.

A run's files belong together through its run id: run.json names it, and the checkpoint and
every task folder's metadata.json carry it. A task folder's metadata.json also lists the size
and sha256 of every other file in it, taken while they were written.

The learner state at the start of task t is not in the checkpoint once it has moved past t.
So a task folder below the checkpoint that is missing, damaged or another run's cannot be
redone alone: the tasks before it must be trained again, from the nearest kept checkpoint or
from task 0 (cljax/kept_checkpoints.py). cljax does not start that by itself (it can take long);
it refuses in one line that names --repair, with the tasks it would train again, and --overwrite.
Task folders from the checkpoint on are redone by the resume anyway: those that are not this
run's whole are removed when it starts.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cljax.check_record import (JOURNAL, RECORD, CheckRecord, checked_metadata, content_matches, file_verified,
                                folder_verified, identity)
from cljax.checkpoint import CHECKPOINT, RUN_RECORD, read_checkpoint_header, read_run_record
from cljax.config import Config
from cljax.errors import CljaxError, DamagedFile
from cljax.eval_tasks import eval_ids_of
from cljax.host import usable_cores
from cljax.initial_state import INITIAL
from cljax.kept_checkpoints import KEPT, describe_replay, kept_path, repair_start
from cljax.results import LATER_TASK_FILES, TASK_FILES, task_dir_name, task_dirs
from cljax.output_guard import check_writable_target
from cljax.code_changes import changed_since, older_cljax
from cljax.record_rebuild import foreign_record, lost_record, record_disagreement
from cljax.rewrites import ANALYSIS, check_clearable, is_temporary
from cljax.run_lock import RUN_LOCK
from cljax.safe_files import npy_header, remove_tree, safe_load_pickle
from cljax.setting_match import DATA_DIFFERS, resume_differences
from cljax.sources import check_sources, plugins_not_loaded


# ---- what is there -------------------------------------------------------------------------
@dataclass
class Found:
    """What ``inspect_run`` found in a run folder."""

    record: dict | None = None  # run.json of the run to continue; None: start a new run
    next_task: int = 0  # the checkpoint's next task (0: no checkpoint)
    finished: bool = False  # every task folder is there and verified as this run's
    stale: list = field(default_factory=list)  # task folders a resume removes (from next_task on, not whole)
    n_task_dirs: int = 0
    replaces: str | None = None  # a run that finished no task, cleared before this one is written
    # --repair: tasks [start, stop) are trained again before the resume, from the checkpoint kept
    # at start (the seed's initial state when 0); the folders in ``repair`` are written anew, the
    # others compared with their record; then the checkpoint's learner goes on (``from_checkpoint``)
    # or, when it was missing or damaged, the replayed one (stop = next_task).
    replay: tuple[int, int] | None = None
    repair: list = field(default_factory=list)
    from_checkpoint: bool = True
    rebuilt: bool = False  # --repair: run.json was missing and ``record`` comes from the task folders


def _damaged_below(algo_dir: Path, problems: list) -> str | None:
    """The first damaged or missing task folder the run had trained past (below a whole folder or
    the checkpoint's task), which a resume does not train but a repair would write again; None."""
    try:
        next_task = (read_checkpoint_header(algo_dir) or (0,))[0]
    except CljaxError:  # damaged
        next_task = 0
    reached = _reached(problems)
    return next((task_dir_name(t) for t, problem in enumerate(problems) if problem and t < max(reached, next_task)),
                None)


def _reached(problems: list) -> int:
    """One past the last whole task folder (``problems``: each task's, empty when whole)."""
    return max((t + 1 for t, problem in enumerate(problems) if not problem), default=0)


def _holds_anything(algo_dir: Path) -> bool:
    return any(p.name != RUN_LOCK and not is_temporary(p.name) for p in algo_dir.iterdir())


def _deletes(n_dirs: int) -> str:
    folders = f"its {n_dirs} task folder(s), " if n_dirs else ""
    return f"deletes {folders}its run.json, checkpoints, initial state and analysis; other files stay"


def inspect_run(algo_dir: Path, config: Config, data_id: str | None, overwrite: bool, hashes: bool,
                memo: dict | None = None, repair: bool = False) -> Found:
    """Decide what a run does with ``algo_dir``; read only. Raises CljaxError, naming the fix,
    for a folder it must not touch: another run's settings, damage below the checkpoint (unless
    ``repair``, cljax/kept_checkpoints.py), files that mix two runs. ``hashes``: also compare
    every file's content with its recorded sha256. ``memo``: shared by the checks of one
    command, which then parse each metadata.json once (``verify_task_dir``)."""
    check_writable_target(algo_dir)
    if not algo_dir.exists() or not _holds_anything(algo_dir):
        return Found()
    n_dirs = len(task_dirs(algo_dir, passed=False))
    if overwrite:
        check_clearable(algo_dir)
        return Found(n_task_dirs=n_dirs)
    record, rebuilt = read_run_record(algo_dir), False
    if record is None and n_dirs:  # a run's own files: its record is what was lost
        record, rebuilt = lost_record(algo_dir, n_dirs, repair, _deletes(n_dirs)), True
    if record is None:
        if (algo_dir / CHECKPOINT).exists():
            raise CljaxError(f"{algo_dir / RUN_RECORD} is missing, and the folder holds a cljax run's checkpoint: "
                             f"restore run.json from a copy, or pass --overwrite to start again (it {_deletes(n_dirs)}).")
        raise CljaxError(f"{algo_dir} holds files that are not a cljax run: choose another --results-dir, or pass "
                         f"--overwrite to replace them (it {_deletes(n_dirs)}).")
    run_id, T = record.get("run_id"), config.num_tasks
    if isinstance(memo, CheckRecord):
        memo.for_run(run_id)
    foreign = None if rebuilt else foreign_record(algo_dir, record, memo)
    if foreign:
        raise CljaxError(f"{foreign} (nothing was changed).")
    changed_by_hand = None if rebuilt else record_disagreement(algo_dir, record, memo)
    if changed_by_hand:
        raise CljaxError(f"{changed_by_hand}: run.json was changed after the run began. Restore it from a copy, delete it "
                         f"and pass --repair to write it again from the task folders, or pass --overwrite to start "
                         f"again (it {_deletes(n_dirs)}).")
    try:
        differ = resume_differences(record, config, data_id)
    except DamagedFile as exc:
        raise CljaxError(f"{algo_dir / RUN_RECORD} {exc.problem}: the file was changed or damaged; restore it from a "
                         f"copy, or pass --overwrite to start again (it {_deletes(n_dirs)}).") from None
    except CljaxError as exc:
        if _finished_no_task(algo_dir, record):
            return _replace(algo_dir, "a run of an unknown cljax")
        plugins = plugins_not_loaded(record)
        raise CljaxError(f"{algo_dir / RUN_RECORD}: {str(exc).rstrip('.')}" + (f"; {plugins}." if plugins else
                         f". Resume it with the cljax that wrote it, choose another --results-dir, or pass --overwrite "
                         f"to start again (it {_deletes(n_dirs)}).")) from None
    if differ:
        if _finished_no_task(algo_dir, record):
            return _replace(algo_dir, f"a run with other settings ({', '.join(differ)})")
        changed = changed_since(record, algo_dir, memo) if n_dirs < (record["config"].get("num_tasks") or 0) else None
        if changed:  # passing the recorded values would only bring this refusal
            raise older_cljax(algo_dir, changed, _deletes(n_dirs))
        # a plugin file changed since (a default edited): that is the cause, and passing the recorded values
        # would only bring its refusal next (warnings for cljax's own files are the resume's to print)
        check_sources(record.get("sources"), config, algo_dir)
        if list(differ) == [DATA_DIFFERS]:  # no value to pass
            raise CljaxError(f"{algo_dir} holds a run made on other data (the dataset's contents differ from those it "
                             f"recorded): pass the --data-dir it was made with, choose another --results-dir, or pass "
                             f"--overwrite to replace it (it {_deletes(n_dirs)}).")
        values = "; ".join(f"{k} recorded {old!r}, now {new!r}" for k, (old, new) in differ.items() if k != DATA_DIFFERS)
        raise CljaxError(f"{algo_dir} holds a run with other settings ({', '.join(differ)}){': ' + values if values else ''}. "
                         f"Pass the recorded values to resume it (a default may have changed since), choose another "
                         f"--results-dir, or pass --overwrite to replace it (it {_deletes(n_dirs)}).")

    def check(hashes: bool) -> list:  # hashing reads every finished file once: folders in parallel (hashlib releases the GIL)
        with ThreadPoolExecutor(max_workers=max(1, min(8, usable_cores()))) as pool:
            return list(pool.map(lambda t: verify_task_dir(algo_dir / task_dir_name(t), t, run_id, hashes, memo=memo),
                                 range(T)))

    problems = check(hashes)
    extra = [d for d in task_dirs(algo_dir, passed=False) if int(d.name.split("_")[1]) >= T]
    if extra:  # T is part of the resume key: a folder past it was not written by this run (analyze refuses it too)
        raise CljaxError(f"{extra[0]} is not a task of this {T}-task run: move it out of {algo_dir} to "
                         f"{'resume' if any(problems) else 'use'} the run (nothing was deleted).")
    if not any(problems) and not _checkpoint_behind(algo_dir, run_id, T):  # whole: the checkpoint is not needed
        return Found(record=record, next_task=T, finished=True, n_task_dirs=n_dirs, rebuilt=rebuilt)
    changed = changed_since(record, algo_dir, memo)
    if changed and _finished_no_task(algo_dir, record):
        return _replace(algo_dir, "a run started by an older cljax")
    if changed:
        raise older_cljax(algo_dir, changed, _deletes(n_dirs), _damaged_below(algo_dir, problems))
    try:
        header = read_checkpoint_header(algo_dir)
    except CljaxError:  # damaged: --repair trains the learner after the whole folders again
        if not repair:
            raise
        header = None
    next_task, ckpt_run = header if header is not None else (0, run_id)
    fix = (f"the learner state at the start of a task is not stored once the run is past it, so the run can only be "
           f"trained again from task 0: "
           f"pass --overwrite to do so (it {_deletes(n_dirs)}), or choose another --results-dir.")
    # Past the last whole folder: with no checkpoint, the run has trained at least that far.
    reached = _reached(problems)
    if header is None and reached >= 2 and not repair and not hashes:  # a refusal names what --repair will train:
        problems = check(True)  # every damage, contents included (then the same as the run's hashed check)
        reached = _reached(problems)
    if header is None and reached >= 2:  # whole folders and no checkpoint (a stop between the two writes, or lost)
        # Training again from task 0 would rewrite whole folders: only --repair (which compares them) may.
        damaged = [t for t in range(reached) if problems[t]]
        start = repair_start(algo_dir, run_id, damaged[0] if damaged else reached)
        if repair:
            return Found(record=record, next_task=reached, stale=_stale(algo_dir, problems, reached),
                         n_task_dirs=n_dirs, replay=(start, reached), from_checkpoint=False, repair=damaged,
                         rebuilt=rebuilt)
        more = f" (and {len(damaged) - 1} more below task {reached - 1})" if len(damaged) > 1 else ""
        what = (f"{problems[damaged[0]]}{more}, and {algo_dir / CHECKPOINT} is missing, while task {reached - 1} is "
                f"finished" if damaged else f"{algo_dir / CHECKPOINT} is missing, while tasks 0 to {reached - 1} are "
                f"finished")
        if start == reached:  # kept as task `reached` began: a copy of the lost checkpoint
            raise CljaxError(f"{what}; {kept_path(algo_dir, start)} holds the learner as task {start} begins, a copy "
                             f"of it: pass --repair to go on from it (nothing is trained again), pass --overwrite to "
                             f"train the run again from task 0 (it {_deletes(n_dirs)}), or choose another --results-dir.")
        raise CljaxError(f"{what}: the learner state after them is not stored: restore the checkpoint, pass --repair "
                         f"to train {describe_replay(start, reached)} again"
                         f"{' and write the damaged folders anew' if damaged else ''}, pass --overwrite to train the "
                         f"run again from task 0 (it {_deletes(n_dirs)}), or choose another --results-dir.")
    if ckpt_run != run_id:
        raise CljaxError(f"{algo_dir / CHECKPOINT} belongs to run {ckpt_run}, not to run {run_id} of run.json: "
                         f"the folder mixes two runs; {fix}")
    if not 0 <= next_task <= T:
        raise CljaxError(f"{algo_dir / CHECKPOINT} points at task {next_task} of a {T}-task run; {fix}")
    damaged = [t for t in range(next_task) if problems[t]]
    if damaged and not repair and not hashes:  # the refusal names what --repair will train: hash every folder first
        problems = check(True)
        damaged = [t for t in range(next_task) if problems[t]]
    stale = _stale(algo_dir, problems, next_task)
    if damaged:
        start, stop = repair_start(algo_dir, run_id, damaged[0]), damaged[-1] + 1
        if repair:
            return Found(record=record, next_task=next_task, stale=stale, n_task_dirs=n_dirs, replay=(start, stop),
                         repair=damaged, rebuilt=rebuilt)
        others = f" (and {len(damaged) - 1} more below it)" if len(damaged) > 1 else ""
        raise CljaxError(f"{problems[damaged[0]]}{others}; the checkpoint is after task {next_task - 1}, and the "
                         f"learner state at the start of a task is not stored once the run is past it: pass --repair "
                         f"to train {describe_replay(start, stop)} again and write the damaged folder"
                         f"{'s' if len(damaged) > 1 else ''} anew, pass --overwrite to train the run again from task 0 "
                         f"(it {_deletes(n_dirs)}), or choose another --results-dir.")
    return Found(record=record, next_task=next_task, stale=stale, n_task_dirs=n_dirs, rebuilt=rebuilt)


def _stale(algo_dir: Path, problems: list, first: int) -> list[Path]:
    """Task folders from ``first`` on that are there and not this run's whole: a resume redoes them."""
    return [algo_dir / task_dir_name(t) for t in range(first, len(problems))
            if problems[t] and (algo_dir / task_dir_name(t)).exists()]


def _finished_no_task(algo_dir: Path, record: dict) -> bool:
    """Whether the run in ``algo_dir`` holds nothing a rerun could not make again: it stopped
    before its first task was written (no checkpoint, no whole task folder), so it has its
    run.json, initial/ (drawn from its seed) and at most a partial task folder."""
    if (algo_dir / CHECKPOINT).exists() or (algo_dir / CHECKPOINT).is_symlink():
        return False
    run_id = record.get("run_id")
    return all(verify_task_dir(d, int(d.name.split("_")[1]), run_id, hashes=False) is not None
               for d in task_dirs(algo_dir, passed=False))


def _replace(algo_dir: Path, what: str) -> Found:
    check_clearable(algo_dir)
    return Found(n_task_dirs=len(task_dirs(algo_dir, passed=False)), replaces=f"{what} that finished no task")


def _checkpoint_behind(algo_dir: Path, run_id: str | None, T: int) -> bool:
    """Whether every task folder is whole but this run's readable checkpoint points before the
    last one: the run stopped between writing a task's folder and the checkpoint after it. The
    resume then trains that task again (the same numbers), so the checkpoint ends after task T-1
    as in a run that was not stopped."""
    try:
        header = read_checkpoint_header(algo_dir)
    except CljaxError:  # damaged: a finished run does not need it
        return False
    return header is not None and header[1] == run_id and header[0] < T


def verify_task_dir(task_dir: Path, t: int, run_id: str | None, hashes: bool, into: dict | None = None,
                    memo: dict | None = None, only: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with task folder ``t`` of run ``run_id`` (None when it is whole): missing
    files, shapes other than metadata.json records, sizes or (``hashes``) contents other than
    recorded at write time, or another run's id. Folders written before run ids and hashes are
    checked for their files and shapes. ``into``: receives the parsed metadata.json under
    "metadata", for a reader that would parse it again (a long run's is megabytes). ``memo``:
    keeps the fields this check reads, by the file's identity, for a later check of the folder.
    ``only``: check these files alone (and the task and run id), for a reader of nothing else."""
    if not task_dir.exists():
        return f"{task_dir} is missing"
    if not task_dir.is_dir():
        return f"{task_dir} is not a folder"
    try:
        meta = checked_metadata(task_dir, memo)
    except DamagedFile as exc:
        return f"{exc.path} {exc.problem}"
    if into is not None:
        into["metadata"] = meta
    wrong = _wrong_field(meta)
    if wrong:
        return f"{task_dir / 'metadata.json'} {wrong}: it was edited or damaged"
    if meta.get("task_index", t) != t:
        return f"{task_dir / 'metadata.json'} describes task {meta.get('task_index')}, not task {t}"
    if "run_id" not in meta and run_id is not None:
        return f"{task_dir / 'metadata.json'} records no run id, and this run has one ({run_id}): it is not this run's"
    if meta.get("run_id") != run_id and (run_id is not None or "run_id" in meta):
        return f"{task_dir} belongs to run {meta.get('run_id')}, not to this run ({run_id or 'which has no run id'})"
    files = meta.get("files")
    if "run_id" in meta and not isinstance(files, dict):  # every version that writes run ids lists the files
        return (f"{task_dir / 'metadata.json'} records a run id but not its files' sizes and sha256, which every "
                f"folder with a run id lists: it was edited")
    shapes = meta.get("shapes") if isinstance(meta.get("shapes"), dict) else {}
    required = [n for n in TASK_FILES if n not in ("metadata.json", *LATER_TASK_FILES)] + (
        ["model_state.npy"] if "model_state" in shapes else []) if t >= 0 else []  # t = -1: initial/
    if only is not None:
        required = [n for n in required if n in only]
    if isinstance(files, dict) and not set(required) <= set(files):
        return f"{task_dir / 'metadata.json'} does not list {sorted(set(required) - set(files))[0]}, a file every task has"
    reps = shapes.get("representations")
    if t >= 0 and isinstance(reps, list) and len(reps) == 5:  # the slots a reader maps to tasks (no hash of their own)
        try:
            eval_ids_of({**meta, "task_index": t}, reps[2], where=str(task_dir / "metadata.json"))
        except CljaxError as exc:
            return str(exc).split(": the file was")[0]
    known = folder_verified(memo, task_dir)  # its files' headers need no reading when they are unchanged too
    for name in [n for n in files if only is None or n in only] if isinstance(files, dict) else required:
        path = task_dir / str(name)
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            return f"{task_dir / 'metadata.json'} lists a file {name!r} that is not in its folder"
        try:  # one stat of the file serves the whole check of it (most of a finished long run's check)
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            return f"{path} is missing"
        key = identity(path, st)  # before anything of it is read
        want = files[name] if isinstance(files, dict) and isinstance(files[name], dict) else {}
        if name.endswith(".npy") and not (known and file_verified(memo, path, want.get("sha256"), key)):
            try:  # (parsing every header was most of the check of a finished long run)
                shape, _, _ = npy_header(path)
            except DamagedFile as exc:
                return f"{exc.path} {exc.problem}"
            recorded = shapes.get(name[: -len(".npy")])
            if recorded is not None and list(shape) != list(recorded):
                return f"{path} has shape {list(shape)}, metadata.json records {list(recorded)}"
        if isinstance(files, dict):
            size = st.st_size
            if size != want.get("bytes"):
                return _refused_pickle(path) or f"{path} has {size:,} bytes, {want.get('bytes')} were written"
            if hashes and not content_matches(path, want.get("sha256"), memo, key):
                return _refused_pickle(path) or f"{path} does not match the sha256 recorded when it was written"
    if only is None and isinstance(memo, CheckRecord):
        memo.passed(task_dir)
    return None


def _wrong_field(meta: dict) -> str | None:
    """A field of metadata.json that its readers use, not of the type cljax writes (the file has no
    hash of its own: an edit is caught here, not as a reader's traceback)."""
    if "task_index" in meta and type(meta["task_index"]) is not int:
        return f"records task_index {meta['task_index']!r}, not a task number"
    for name in ("shapes", "eval_tasks", "config", "schedule"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            return f"records {name} as {type(meta[name]).__name__} {str(meta[name])[:40]!r}, not the mapping cljax writes"
    for name, shape in (meta.get("shapes") or {}).items():
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            return f"records the shape of {name} as {str(shape)[:40]!r}, not a list of sizes"
    return None


def _refused_pickle(path: Path) -> str | None:
    """The reader's refusal, when a changed pickle names code: that says more than its size."""
    if path.suffix != ".pkl":
        return None
    try:
        safe_load_pickle(path)
    except DamagedFile:
        return None
    except CljaxError as exc:
        return str(exc).rstrip(".")
    return None


# ---- changes, under the lock -------------------------------------------------------------------
def clear_run(algo_dir: Path) -> None:
    """--overwrite: the checkpoints first (a new run.json must never meet an old checkpoint), then
    the record, the task folders, the initial state and the analysis. Other files are left alone."""
    (algo_dir / CHECKPOINT).unlink(missing_ok=True)
    (algo_dir / RECORD).unlink(missing_ok=True)
    (algo_dir / JOURNAL).unlink(missing_ok=True)
    if (algo_dir / KEPT).is_dir():
        remove_tree(algo_dir / KEPT)
    (algo_dir / RUN_RECORD).unlink(missing_ok=True)
    for d in task_dirs(algo_dir, passed=False):
        remove_tree(d)
    for name in (INITIAL, ANALYSIS):
        if (algo_dir / name).is_dir():
            remove_tree(algo_dir / name)
    remove_stale_temporaries(algo_dir)


def remove_stale_temporaries(algo_dir: Path) -> None:
    """Temporary folders/files of a process that died mid-write (never listed as results)."""
    for p in algo_dir.iterdir():
        if is_temporary(p.name):
            remove_tree(p) if p.is_dir() else p.unlink()
