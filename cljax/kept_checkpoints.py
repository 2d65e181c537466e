"""Kept checkpoints and the repair of a run's earlier task folders (``cljax run --repair``).

    {algo_dir}/checkpoints/start_task_NNN.npz   the learner as task NNN began, for every NNN a
                                                multiple of --keep-checkpoints (0: none kept)

The run's checkpoint holds the learner after its last finished task only. A task folder below
it that is damaged cannot be written again from it: the learner as that task began is needed.
A run is a function of its seed, so training again from any stored state before the task gives
the same bytes on the same device split: from the nearest kept checkpoint, or from task 0 (the
initial state is a function of the seed). ``--repair`` does that, writes the damaged folders
again and checks the folders it recomputed on the way against their recorded sha256.

A kept checkpoint is the checkpoint file written after task NNN - 1, linked under its name (no
copy while both share it; a filesystem without hard links gets a copy), atomically. A repair
that trains through a task start whose kept checkpoint is missing or damaged writes it again
(``rewrite_kept``), so the next repair need not go back further.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from cljax.checkpoint import CHECKPOINT, read_checkpoint_header, save_learner
from cljax.errors import CljaxError
from cljax.results import load_metadata, task_dir_name, write_task
from cljax.safe_files import fsync_dir

KEPT = "checkpoints"
_NAME = re.compile(r"start_task_(\d+)\.npz", re.ASCII)


def kept_path(algo_dir: Path, t: int) -> Path:
    return algo_dir / KEPT / f"start_{task_dir_name(t)}.npz"


def is_kept_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def keeps(every: int, t: int, num_tasks: int) -> bool:
    """Whether the learner as task ``t`` begins is kept (task 0's is the seed's: never stored)."""
    return every > 0 and 0 < t < num_tasks and t % every == 0


def keep_checkpoint(algo_dir: Path, t: int) -> None:
    """Keep the checkpoint just written (the learner as task ``t`` begins) as ``kept_path``."""
    dest = kept_path(algo_dir, t)
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(algo_dir / CHECKPOINT, tmp)
    except OSError:  # no hard links here
        shutil.copyfile(algo_dir / CHECKPOINT, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


def repair_start(algo_dir: Path, run_id: str | None, before: int) -> int:
    """The latest task <= ``before`` whose kept checkpoint is whole and this run's; 0 (the seed's
    initial state) when there is none. Reads only the candidates it needs, latest first."""
    folder = algo_dir / KEPT
    found = sorted((int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else ())
                    if (m := _NAME.fullmatch(p.name)) and int(m.group(1)) <= before), reverse=True)
    return next((t for t in found if kept_is_whole(algo_dir, t, run_id)), 0)  # a damaged one: an earlier one serves


def unread_by_a_finished_run(algo_dir: Path, num_tasks: int, every: int, run_id: str | None) -> list[str]:
    """The checkpoints of a finished run that are missing or damaged (its own, and the kept ones
    it has or --keep-checkpoints asks for): a finished run trains nothing from them, so
    ``--repair`` leaves them as they are, which its note says."""
    try:
        whole = read_checkpoint_header(algo_dir) == (num_tasks, run_id)
    except CljaxError:
        whole = False
    named = [CHECKPOINT] * (not whole)
    held = {int(m.group(1)) for p in (algo_dir / KEPT).glob("*.npz") if (m := _NAME.fullmatch(p.name))}
    wanted = {t for t in range(num_tasks) if keeps(every, t, num_tasks)}
    return named + [f"{KEPT}/{kept_path(algo_dir, t).name}" for t in sorted(held | wanted)
                    if t < num_tasks and not kept_is_whole(algo_dir, t, run_id)]


def kept_is_whole(algo_dir: Path, t: int, run_id: str | None) -> bool:
    """Whether the kept checkpoint of task ``t`` is there, whole (every member's CRC) and this run's."""
    try:
        return read_checkpoint_header(algo_dir, kept_path(algo_dir, t)) == (t, run_id)
    except CljaxError:
        return False


def rewrite_kept(algo_dir: Path, learner_host, t: int, run_id: str | None) -> None:
    """Write the kept checkpoint of task ``t`` from the learner as task ``t`` begins, trained again
    by a repair (the run's own checkpoint, after a later task, is left as it is)."""
    dest = kept_path(algo_dir, t)
    dest.parent.mkdir(exist_ok=True)
    save_learner(algo_dir, learner_host, t, run_id, path=dest)


def describe_replay(start: int, stop: int) -> str:
    """'tasks 4 to 6 (3 tasks) from the checkpoint kept at task 4' / '... from the seed'."""
    n = stop - start
    tasks = f"tasks {start} to {stop - 1} ({n} tasks)" if n > 1 else f"task {start} (1 task)"
    return f"{tasks} from {'the checkpoint kept at task ' + str(start) if start else 'the seed'}"


def same_as_recorded(algo_dir: Path, t: int, arrays: dict, metadata: dict) -> bool:
    """Whether task ``t``, trained again, writes the files its whole folder holds (size and
    sha256 of each, as its metadata.json records them): written to a temporary folder, compared,
    deleted."""
    scratch = algo_dir / f".repair.tmp-{os.getpid()}"
    try:
        folder = write_task(scratch, t, arrays, metadata)
        again = json.loads((folder / "metadata.json").read_bytes())["files"]
        return again == load_metadata(algo_dir / task_dir_name(t)).get("files")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def again_note(t: int, same: bool, same_split: bool = False) -> str:
    """The line of a resume that trains task ``t`` again over its whole folder (the run stopped
    between the folder and the checkpoint after it); ``same``: it came out as recorded;
    ``same_split``: on the device split the run recorded."""
    what = (f"task {t} was trained again, as the run had stopped between its folder and "
            f"{'the first checkpoint' if t == 0 else 'the checkpoint after it'}")
    if same:
        return f"note: {what}; it came out byte for byte as its folder recorded."
    why = ("on the run's own device split, so a kernel that does not repeat its bits (a GPU's) or another jax, "
           "jaxlib or XLA since the run's start moved the last bits" if same_split else
           "the device split or lowering differs from the run's, which moves the last bits (docs/scale.md)")
    return (f"warning: {what}, and it came out different from its folder's recorded files: {why}; {task_dir_name(t)} "
            f"now holds these numbers, which the next tasks train on (an analysis made before reads the earlier "
            f"ones: run cljax analyze again).")


def replay_note(found, differing: list[int], kept: list[int]) -> str:
    """The line --repair prints when its replay is over; ``kept``: the task starts whose kept
    checkpoints it wrote again."""
    start, stop = found.replay
    written = ", ".join([task_dir_name(t) for t in found.repair] + [f"{KEPT}/{kept_path(Path(), t).name}" for t in kept])
    written = written or "no folder"
    n_compared = stop - start - len(found.repair)
    if differing:
        return (f"warning: --repair trained {describe_replay(start, stop)} again and wrote {written} anew, but "
                f"{task_dir_name(differing[0])} came out different from its recorded files ({len(differing)} of "
                f"{n_compared} recomputed folders differ): the device split or lowering differs from the run's, "
                f"which moves the last bits (docs/scale.md); the folders written anew hold this split's numbers.")
    if start == stop:  # the checkpoint kept at the lost one's task: nothing to train again
        return f"note: --repair went on from the checkpoint kept at task {start}, a copy of the lost checkpoint."
    compared = f"; the {n_compared} other folder(s) it recomputed came out byte for byte as recorded" if n_compared else ""
    return f"note: --repair trained {describe_replay(start, stop)} again and wrote {written} anew{compared}."
