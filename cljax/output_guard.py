"""Where a command's own output (``analyze --out``, ``compare --out`` / ``--json``,
``data-info --png``) may not go: over a run's results. A run folder (it holds run.json) owns its
record, checkpoint, lock and verified.json(l), and everything in its task folders, initial/ and
checkpoints/; a file written there would replace a result, or make the next resume refuse the
folder. Its analysis/ folder, and new files or folders beside its own, are free.

Nor over any other file that is not of the output's own kind: a plot replaces only a PNG, and
compare's JSON only an earlier comparison, so a mistyped path cannot turn a dataset's files, an
analysis's arrays or a note into a picture (rerunning a command over its own output still works);
and no file an analysis lists as its own (its plots), which its summary.json describes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cljax.check_record import JOURNAL, RECORD
from cljax.checkpoint import CHECKPOINT, RUN_RECORD
from cljax.errors import CljaxError
from cljax.initial_state import INITIAL
from cljax.kept_checkpoints import KEPT
from cljax.results import is_task_dir_name
from cljax.run_lock import RUN_LOCK

OWN_FILES = frozenset({RUN_RECORD, CHECKPOINT, RECORD, JOURNAL, RUN_LOCK})
OWN_FOLDERS = frozenset({INITIAL, KEPT})


# Names of other image formats: a plot or a sample grid is written as a PNG whatever its name says.
OTHER_IMAGES = (".jpg", ".jpeg", ".pdf", ".svg", ".eps", ".ps", ".tif", ".tiff", ".webp", ".gif", ".bmp")


def check_png_name(flag: str, path, what: str) -> None:
    """One CljaxError line when ``path``, where ``what`` is written as a PNG, is named as another
    image format (a name without a suffix is taken as it is)."""
    if Path(path).suffix.lower() in OTHER_IMAGES:
        raise CljaxError(f"{flag} {path}: {what} is a PNG image: give the file a .png name.")

def run_owning(path: str | Path) -> Path | None:
    """The run folder whose results ``path`` (a file or a folder, there or not) is, or lies in;
    None when it is no run's."""
    target = Path(path).expanduser().resolve()  # through links, as a write would go
    for above in target.parents:
        if (above / RUN_RECORD).is_file():
            first, *rest = target.relative_to(above).parts
            if (first in OWN_FILES and not rest) or first in OWN_FOLDERS or is_task_dir_name(first):
                return above
            return None  # the nearest run decides: its analysis/ or a new name beside its files
    return None


def check_not_a_run_result(flag: str, path: str | Path) -> None:
    """One CljaxError line when ``path`` would write over or into a run's results."""
    run = run_owning(path)
    if run is not None:
        raise CljaxError(f"{flag} {path} is one of the results of the run in {run} (its record, checkpoint, task "
                         f"folders, initial/ or checkpoints/): pass a path outside them, e.g. {run / 'analysis'}.")


def check_writable_target(algo_dir: Path) -> None:
    """One CljaxError line unless a run's folder ``algo_dir`` can be made and written here, and
    lies in no other run's folder: a --results-dir given as a run's folder (results/dataset/SL_T5
    for results/) nested a second run inside the first, where every command then read the first."""
    if algo_dir.exists() and not algo_dir.is_dir():
        raise CljaxError(f"{algo_dir} exists and is not a folder: choose another --results-dir.")
    probe = algo_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CljaxError(f"{probe} is a file, not a folder: choose another --results-dir.")
    if not os.access(probe, os.W_OK):
        raise CljaxError(f"cannot write to {probe}: choose a writable --results-dir.")
    inside = next((p for p in algo_dir.expanduser().resolve().parents if _is_run_folder(p)), None)
    if inside is not None:
        raise CljaxError(f"{algo_dir} would lie inside the run folder {inside} (it holds {_is_run_folder(inside)}): "
                         f"--results-dir is "
                         f"the folder under which a run goes to {{dataset}}/{{algorithm}} (results, not "
                         f"results/{{dataset}}/{{algorithm}}): pass that, e.g. {inside.parent.parent}.")


def _is_run_folder(folder: Path) -> str | None:
    """What makes ``folder`` a cljax run's (its record, or, where that was lost, its first task
    folder), or None. By content, not by name alone: another tool's run.json or checkpoint.npz
    above --results-dir must not refuse every run under it."""
    path = folder / RUN_RECORD
    try:
        record = json.loads(path.read_bytes()) if path.is_file() and path.stat().st_size < 2**24 else None
    except (OSError, ValueError, RecursionError):
        record = None
    if isinstance(record, dict) and isinstance(record.get("config"), dict) and "num_tasks" in record["config"]:
        return RUN_RECORD  # (a record of any version: the run id and the rest came later)
    return "task_000" if (folder / "task_000" / "metadata.json").is_file() else None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE


def is_comparison(path: Path) -> bool:
    """Whether ``path`` holds what ``cljax compare --json`` writes: one entry per run, each with its gap."""
    with open(path, "rb") as f:
        if f.read(1) != b"{":  # not read whole: the file might be a dataset's gigabytes
            return False
    try:
        entries = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return False
    return (isinstance(entries, dict) and bool(entries)
            and all(isinstance(e, dict) and {"run", "gap_late"} <= e.keys() for e in entries.values()))


def check_replaces_only_its_own(flag: str, path: str | Path, kind: str) -> None:
    """One CljaxError line when ``path`` is a file other than a ``kind`` output (``"png"``, or
    ``"comparison"``: compare's JSON), which writing there would destroy."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_file() and not target.is_dir():  # a device, a FIFO, a socket
        raise CljaxError(f"{flag} {path} is not a regular file (a device, a pipe or a socket), and the output would "
                         f"replace it with one: pass a path to a file.")
    if not target.is_file():
        return
    holds, what = (is_png, "a PNG") if kind == "png" else (is_comparison, "a JSON comparison of cljax compare")
    if not holds(target):
        raise CljaxError(f"{flag} {path} is a file that is not {what}, and writing there would replace it: pass "
                         f"another path (or remove that file first, if it is to go).")
    if target.name in analysis_files(earlier_analysis(target.parent)):
        raise CljaxError(f"{flag} {path} is a file of the analysis in {target.parent} (its summary.json lists it), "
                         f"which would then describe a file it did not write: pass another path.")


SUMMARY = "summary.json"  # an analysis's; it marks the folder as one


def earlier_analysis(out: Path) -> dict | None:
    """The summary of the analysis written in ``out`` before, or None when its summary.json is
    missing or is not one."""
    try:
        summary = json.loads((out / SUMMARY).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("algo_dir"), str) else None


def analysis_files(summary: dict | None) -> list:
    """The files an analysis's summary lists as its own ([] for none; an entry that is not a
    name, in a summary.json edited or damaged, is none)."""
    listed = (summary or {}).get("files") if isinstance(summary, dict) else None
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []
