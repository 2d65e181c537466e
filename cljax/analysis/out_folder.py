"""Where ``cljax analyze`` writes (``ALGO_DIR/analysis`` or ``--out``), and how.

An analysis replaces only what an analysis wrote, and removes what the earlier analysis of the
same run listed and this one does not write (a file of fewer tasks left beside the new ones). A folder is an earlier analysis when its
summary.json is one (a JSON object naming the run it analysed, ``algo_dir``); there, a .json,
.npz or .png file may be replaced (what analyses write, and the rule --overwrite reads a run's
analysis/ folder by), whichever analysis of the run wrote it, and so may a file that summary
lists (a plugin analysis's own kind of file). Anywhere else, a file of the same
name as one about to be written (a researcher's own summary.json in the folder given to --out,
say) is refused before anything is written, and so is the analysis of another run (another
``run_id``; summaries written before it was recorded are taken as this run's).
Files of other names are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from pathlib import Path

from cljax import results
from cljax.checkpoint import RUN_RECORD
from cljax.errors import CljaxError
from cljax.output_guard import SUMMARY, analysis_files, check_not_a_run_result, earlier_analysis
from cljax.run_lock import folder_lock, pid_alive

ANALYSIS_SUFFIXES = (".json", ".npz", ".png")

__all__ = ["output_folder", "write_all"]


def output_folder(algo_dir: Path, out_dir, run_id: str | None) -> Path:
    """Where the analysis goes, checked before any folder is read; created only when the files
    are written (a refused run leaves no empty folder). Not a run's own folder: its files would
    mix with the run's (the default is ALGO_DIR/analysis)."""
    if out_dir is not None and not str(out_dir).strip():
        raise CljaxError("--out is empty: pass a folder, or leave it out for ALGO_DIR/analysis.")
    out = Path(out_dir) if out_dir is not None else algo_dir / "analysis"
    if (out / RUN_RECORD).exists() or results.holds_task_dirs(out):
        raise CljaxError(f"--out {out} is a run's folder (it holds run.json or task folders): its analysis goes "
                         f"into {out / 'analysis'}; pass another --out.")
    own = algo_dir.resolve()
    for above in out.resolve().parents:
        if (above / RUN_RECORD).is_file() and above != own:  # another run's analysis would be replaced
            raise CljaxError(f"--out {out} is inside another run's folder ({above} holds run.json): pass a folder "
                             f"outside it, or analyze that run itself.")
    check_not_a_run_result("--out", out)  # inside its own run: in a task folder or initial/, say
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise CljaxError(f"{probe} is a file, not a folder: pass --out with a writable folder.")
    if not os.access(probe, os.W_OK):
        raise CljaxError(f"cannot write to {probe}: pass --out with a writable folder.")
    check_replaceable(out, algo_dir, run_id, [SUMMARY])  # the common case at once, before the analysis runs
    return out


def check_replaceable(out: Path, algo_dir: Path, run_id: str | None, names) -> None:
    """One CljaxError line, before anything is written, when writing ``names`` into ``out``
    would replace a file no analysis of this run wrote there."""
    taken = sorted(name for name in names if os.path.lexists(out / name))
    if not taken:
        return
    own = out == algo_dir / "analysis"  # the run's own analysis folder, as --overwrite reads it
    earlier = earlier_analysis(out)
    if earlier is None and own:
        earlier = {}
    where = str(out) if own else f"{out} (--out)"
    if earlier is None:
        raise CljaxError(f"{where} holds {', '.join(taken)}, which this analysis would replace, and is no earlier cljax "
                         f"analysis (it has no summary.json of one): pass --out with a new or empty folder, or move "
                         f"{'those files' if len(taken) > 1 else 'that file'} out (nothing was written).")
    other = earlier.get("run_id")
    if isinstance(other, str) and run_id is not None and other != run_id:
        raise CljaxError(f"{where} holds the analysis of another run ({earlier['algo_dir']}, run id {other}), which "
                         f"this one would replace: pass --out with another folder, or move that analysis out (nothing "
                         f"was written).")
    listed = analysis_files(earlier)
    foreign = [name for name in taken if not (Path(name).suffix in ANALYSIS_SUFFIXES or name in listed)
               or (out / name).is_symlink() or not (out / name).is_file()]
    if foreign:
        them = "them" if len(foreign) > 1 else "it"
        raise CljaxError(f"{where} holds {', '.join(foreign)}, which this analysis would replace, and no analysis "
                         f"writes {them} (not a .json, .npz or .png file, or a link): move {them} out, or pass --out "
                         f"with a new folder (nothing was written).")


def write_all(out: Path, writers: dict, algo_dir: Path, run_id: str | None, critical=None) -> None:
    """Each file under a temporary name first, then all renamed into place, summary.json first
    (it marks the folder as an analysis): a full disk or a stop half-way leaves the previous
    analysis whole, not some of its files replaced. ``critical`` (the command line's stop lock)
    is held over the renames only: a stop while the files are drawn stops at once, leaving
    temporaries the next analysis removes."""
    new_folder = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CljaxError(f"cannot create {out} ({exc.strerror}): pass --out with a writable folder.") from None
    # Two analyses writing one folder at once each read the other's earlier file list: one at a
    # time, each reads the folder as the last one left it, and the folder is one analysis, whole.
    with folder_lock(out):
        check_replaceable(out, algo_dir, run_id, writers)  # the folder as the last writer left it
        remove_stale_temporaries(out)
        earlier = earlier_analysis(out) or {}  # of this run (check_replaceable refuses another run's)
        tmp = {name: out / f".tmp-{os.getpid()}@{socket.gethostname()}@{name}" for name in writers}
        try:
            for name, write in writers.items():
                write(tmp[name])
        except BaseException as exc:
            for path in tmp.values():
                path.unlink(missing_ok=True)
            if new_folder:  # no empty analysis folder left behind
                with contextlib.suppress(OSError):
                    out.rmdir()
            if not isinstance(exc, OSError):
                raise
            raise CljaxError(f"cannot write the analysis to {out} ({exc.strerror or exc}): free space there or pass "
                             f"--out with another folder; the previous analysis there is left as it was.") from None
        # What the earlier analysis wrote and this one does not (its GLUE arrays under --no-glue, its
        # plots under --no-plots, a plugin's files): of fewer tasks or older code, it would sit beside
        # the new files as if it were theirs. Removed before the new summary.json replaces the one
        # that lists them: a stop in between leaves files missing from the earlier analysis, which
        # the rerun writes, never files no summary lists.
        listed, removed = analysis_files(earlier), []
        with critical if critical is not None else contextlib.nullcontext():
            for name in listed:
                path = out / str(name)
                if (name not in writers and Path(str(name)).name == name and Path(name).suffix in ANALYSIS_SUFFIXES
                        and path.is_file() and not path.is_symlink()):
                    path.unlink()
                    removed.append(name)
            for name in sorted(tmp, key=lambda n: n != SUMMARY):
                os.replace(tmp[name], out / name)
        if removed:  # said: a plugin's file, say, that this analysis (run without the plugin) does not write
            print(f"note: removed {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''} from {out}: the "
                  f"earlier analysis there wrote {'them' if len(removed) > 1 else 'it'}, and this one does not "
                  f"(--no-glue, --no-plots, or a --plugin analysis not given).", file=sys.stderr)


# ``.tmp-PID@HOST@NAME``, NAME an analysis's file (.json, .npz, .png); a writer that writes its
# file atomically itself (a plot) makes ``..tmp-PID@HOST@NAME.tmp-PID`` of it on the way.
_TEMPORARY = re.compile(r"^(\.)?\.tmp-(\d+)@(.+)@([^@/]+?)(?(1)\.tmp-\d+)$", re.ASCII)


def remove_stale_temporaries(out: Path) -> None:
    """The files an analysis killed before it renamed them left: removed when their name is one
    write_all gives (``.tmp-PID@HOST@NAME``, NAME ending as an analysis's file, or a plot's own
    temporary of one), HOST is this
    host and no live process here has PID (under ``folder_lock`` no other analysis writes the
    folder; the host keeps another host's live writer's files where the filesystem has no
    locks). A user's file of another name is never touched; nor are the ``.tmp-PID-NAME`` files
    of a cljax before 2026-12-05, which did not record the host. This process writes its own
    only after this."""
    for path in out.iterdir():
        match = _TEMPORARY.match(path.name)
        if match is None or Path(match.group(4)).suffix not in ANALYSIS_SUFFIXES or not path.is_file() \
                or path.is_symlink():
            continue
        pid, host = int(match.group(2)), match.group(3)
        if host == socket.gethostname() and (pid == os.getpid() or not pid_alive(pid)):
            path.unlink(missing_ok=True)
