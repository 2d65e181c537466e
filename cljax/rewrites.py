"""The folders a run deletes or writes anew in its run folder, checked before anything is deleted.

--overwrite deletes the run's own files (``check_clearable``). A resume deletes the task folders
from the checkpoint on that are not this run's whole (it trains those tasks again); --repair
writes damaged task folders anew; a missing or damaged ``initial/`` is written again. Each of
them is refused in one line, nothing deleted, when the folder holds something cljax did not
write there: a user's file, a sub-folder, a symbolic link, or a whole task folder of another
run. Such a file would otherwise go with the folder, without a word.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cljax.check_record import JOURNAL, RECORD
from cljax.checkpoint import CHECKPOINT, RUN_RECORD
from cljax.errors import CljaxError
from cljax.initial_state import INITIAL
from cljax.kept_checkpoints import KEPT, is_kept_name
from cljax.results import TASK_FILES, task_dir_name, task_dirs
from cljax.run_search import TASK_DIR

ANALYSIS = "analysis"
TASK_NAMES = frozenset({*TASK_FILES, "model_state.npy"})
INITIAL_NAMES = frozenset({"weights.npy", "model_state.npy", "metadata.json"})
MOVE_IT = "move it out of the run folder, then run this command again (nothing was deleted)"


def is_temporary(name: str) -> bool:
    return name.startswith(".") and ".tmp-" in name


def check_ours(folder: Path, names, who: str) -> None:
    """One CljaxError line when ``who`` (the action, in words) would delete something in
    ``folder`` that cljax did not write: ``names``, the files cljax writes there (None: the
    analysis's, by suffix); a link or a file where the folder should be is refused too."""
    if folder.is_symlink():
        raise CljaxError(f"{folder} is a symbolic link, which {who} does not follow or delete: {MOVE_IT}.")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise CljaxError(f"{folder} is not a folder, so not one cljax wrote, and {who} would delete it: {MOVE_IT}.")
    if not (os.access(folder, os.W_OK | os.X_OK) and os.access(folder.parent, os.W_OK)):  # else it stops half-way
        raise CljaxError(f"{who} cannot delete {folder} (no permission): fix its permissions, then run this command "
                         f"again (nothing was deleted).")
    for entry in folder.iterdir():
        ours = entry.name in names if names is not None else entry.suffix in (".json", ".npz", ".png")
        if entry.is_symlink() or not entry.is_file() or not ours:
            raise CljaxError(f"{entry} is not a file cljax writes, and {who} would delete it with {folder}: {MOVE_IT}.")


def check_clearable(algo_dir: Path) -> None:
    """Before --overwrite deletes anything: one CljaxError line when it would delete a file cljax
    did not write (a user's file inside a task folder, initial/ or analysis/), follow a link, or
    stop half-way on a folder it cannot delete."""
    kept = algo_dir / KEPT
    written = {**{d: TASK_NAMES for d in task_dirs(algo_dir, passed=False)},
               algo_dir / INITIAL: INITIAL_NAMES, algo_dir / ANALYSIS: None,
               kept: {p.name for p in (kept.iterdir() if kept.is_dir() else ()) if is_kept_name(p.name)
                      or is_temporary(p.name)}}
    for path in (algo_dir / CHECKPOINT, algo_dir / RUN_RECORD):
        if path.is_symlink():
            raise CljaxError(f"{path} is a symbolic link, which --overwrite does not follow or delete: {MOVE_IT}.")
    for folder, names in written.items():
        check_ours(folder, names, "--overwrite")


def cleared_bytes(algo_dir: Path) -> int:
    """The disk that --overwrite's deletion of the run's own files (run_folder.clear_run, as
    ``check_clearable`` defines them) frees, in allocated blocks: counted as free by the disk
    check that comes before anything is deleted. A file linked from elsewhere too (a hard link
    outside them) frees nothing; a folder deleted whole (a task folder, initial/, and any folder
    below them) frees its own blocks too, whatever its link count (a folder's counts its
    sub-folders' "..", not other names of it)."""
    if not algo_dir.is_dir():
        return 0
    top = [algo_dir / name for name in (CHECKPOINT, RECORD, JOURNAL, RUN_RECORD)]
    temporaries = [p for p in algo_dir.iterdir() if is_temporary(p.name)]
    top += [p for p in temporaries if not p.is_dir()]
    trees = [d for d in (*task_dirs(algo_dir, passed=False), *(algo_dir / name for name in (KEPT, INITIAL, ANALYSIS)),
                         *(p for p in temporaries if p.is_dir())) if d.is_dir() and not d.is_symlink()]
    links: dict[tuple, list] = {}  # (device, inode) -> [links among them, links in all, allocated bytes]
    for path in [*top, *trees, *(p for d in trees for p in d.rglob("*"))]:
        try:
            st = path.lstat()
        except OSError:
            continue
        nlink = 1 if stat.S_ISDIR(st.st_mode) else st.st_nlink
        seen = links.setdefault((st.st_dev, st.st_ino), [0, nlink, st.st_blocks * 512])
        seen[0] += 1
    return sum(size for n, nlink, size in links.values() if n >= nlink)


def _run_id_of(folder: Path) -> str | None:
    """The run id a task folder's metadata.json names; None when it names none or is unreadable."""
    try:
        meta = json.loads((folder / "metadata.json").read_bytes())
    except (OSError, ValueError):
        return None
    return meta.get("run_id") if isinstance(meta, dict) and isinstance(meta.get("run_id"), str) else None


def check_rewrites(algo_dir: Path, found, writes_initial: bool, num_tasks: int) -> None:
    """Before a resume, --repair or a rewrite of initial/ deletes anything (``found``:
    run_folder.Found): every folder it deletes or writes anew holds only cljax's files, and a
    stale task folder is not another run's. A whole task folder from the checkpoint's task on
    (the run stopped between it and the checkpoint after it) is written anew too."""
    run_id = (found.record or {}).get("run_id")
    again = [] if found.finished or not algo_dir.is_dir() else [
        p for p in sorted(algo_dir.iterdir()) if (m := TASK_DIR.match(p.name))
        and found.next_task <= int(m.group(1)) < num_tasks and p not in found.stale]
    for folder in [*found.stale, *again]:
        check_ours(folder, TASK_NAMES, "the resume (it trains that task again)")
    for folder in found.stale:
        other = _run_id_of(folder)
        if other is not None and run_id is not None and other != run_id:
            raise CljaxError(f"{folder} is a task folder of run {other}, not of this run ({run_id}), and the resume "
                             f"would delete it to train that task again: {MOVE_IT}.")
    for t in found.repair:
        check_ours(algo_dir / task_dir_name(t), TASK_NAMES, "--repair (it writes that folder anew)")
    if writes_initial:
        check_ours(algo_dir / INITIAL, INITIAL_NAMES, "writing initial/ again")
