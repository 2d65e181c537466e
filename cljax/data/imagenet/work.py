"""The resumable work folder OUT.partial: its record (plan.json), opening it for a resume (what
differs from the work there, which shards to redo), and clearing one that an output already
complete has left behind.

It holds only cljax's files: plan.json, the finished shards ``{split}-NNNNN.npz`` and the
temporary names they are written under (``.{name}.npz.tmp-PID``, ``.plan.json.tmp``). It is
used under the output's lock (out_lock.py), so no other preparation writes it meanwhile.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from cljax.data.imagenet.recorded import as_flag
from cljax.data.imagenet.shards import DatasetsShard, Plan, Shard, files_stamp
from cljax.errors import CljaxError
from cljax.safe_files import remove_tree

PLAN_FILE = "plan.json"
SOURCE_STAMP = "source_stamp"  # its source files' sizes and times of change (shards.files_stamp)
_OWN_FILE = re.compile(r"^(plan\.json|\.plan\.json\.tmp|[a-z]+-\d{5}\.npz|\.[a-z]+-\d{5}\.npz\.tmp-\d+)$", re.ASCII)


def work_dir_for(out: str | os.PathLike) -> Path:
    """The resumable work folder of an output folder: OUT.partial next to it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def shard_identity(shard: Shard) -> str:
    """What a finished shard was made from: its kind, rows and source (a parquet file's size
    and time of change, an image file list with the class ids); a shard done is kept by a resume
    only when the plan's shard of that name has the same identity."""
    text = json.dumps([type(shard).__name__, dataclasses.asdict(shard)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def work_record(plan: Plan, preprocessing: dict, out: Path, reader: str, shard_rows: int) -> dict:
    """plan.json: how the work was made (compared as a whole by a resume) and each shard's identity."""
    by_rows = any(not isinstance(s, DatasetsShard) for s in plan.shards)  # a hub shard is one source file
    return {"source": plan.source, "revision": plan.revision, "out": str(out), "preprocessing": preprocessing, "reader": reader,
            "shard_rows": shard_rows if by_rows else None,
            "class_names": list(plan.class_names) if plan.class_names is not None else None,
            "shards": {s.name: shard_identity(s) for s in plan.shards}}


def open_work_dir(work: Path, record: dict, log, shards: tuple[Shard, ...] = ()) -> None:
    """Create OUT.partial with `record` (`work_record`), or open the one there for a resume: made
    otherwise (source, splits, a setting, the classes) it is refused in one line saying what
    differs; a shard done from a source file that changed since (a bad image replaced or
    removed; for the image files and the parquet files read through `datasets` of ``shards``,
    one replaced in place under its name) is deleted, to be done again, and the others are kept."""
    if not work.exists():
        work.mkdir(parents=True)
        _write_record(work, record)
        return
    if not (work / PLAN_FILE).exists() and all(_OWN_FILE.match(p.name) and not p.name.endswith(".npz")
                                               for p in work.iterdir()):
        _write_record(work, record)  # no record and no shard yet (stopped, or a full disk, before the record)
        return
    recorded = read_record(work)
    if isinstance(recorded.get("fingerprint"), str) and "preprocessing" not in recorded:
        raise CljaxError(f"{work} holds work of a preparation started by an earlier cljax, whose plan.json this one "
                         f"cannot compare: finish it with the cljax that started it, or pass --overwrite to discard "
                         f"it and start again.")
    differ = _differences(recorded, record)
    if differ:
        raise CljaxError(f"{work} holds work from a different preparation: {'; '.join(differ)}; rerun with the "
                         f"arguments it was made with to finish it, or pass --overwrite to discard it and start again.")
    for stray in work.glob(".*.tmp-*"):  # half-written shards of an interrupted run (no other run: locked)
        stray.unlink()
    done = {p.stem for p in work.glob("*.npz")}
    changed = {name for name, identity in record["shards"].items()
               if name in done and recorded["shards"].get(name) != identity}
    files = {s.name: _files_changed(work / f"{s.name}.npz", s) for s in shards
             if s.name in done - changed and s.source_files()}
    for why, names in (("came from source files that changed since", changed | {n for n, c in files.items() if c}),
                       ("came from an earlier cljax, which kept no record of its source files' times of change",
                        {n for n, c in files.items() if c is None})):
        names = sorted(names)
        for name in names:  # before the record says otherwise: a crash in between redoes them again
            (work / f"{name}.npz").unlink()
        if names:
            log(f"note: {len(names)} finished shard{'s' if len(names) > 1 else ''} of {work} "
                f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}) {why}; "
                f"{'they are' if len(names) > 1 else 'it is'} prepared again, the others kept.")
    if recorded != record:
        _write_record(work, record)


def _files_changed(path: Path, shard: Shard) -> bool | None:
    """Whether the source files of a finished shard changed since its work began; None when the
    shard holds no record of them (an earlier cljax's). A shard file that cannot be read is
    left (False) to the assembly, which names it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if SOURCE_STAMP not in z.files:
                return None
            recorded = str(z[SOURCE_STAMP])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False
    return recorded != files_stamp(shard.source_files())


def remove_finished_work(work: Path, log) -> None:
    """OUT is written: remove OUT.partial, or, when it holds files that are not cljax's, name it
    and keep it (as ``discard_work`` refuses to delete it)."""
    foreign = sorted(p.name for p in work.iterdir() if not _OWN_FILE.match(p.name) or not p.is_file())
    if foreign:
        log(f"note: {work} holds files that are not cljax's ({', '.join(foreign[:3])}); it is kept: delete it when "
            f"you no longer need them.")
        return
    remove_tree(work)


def discard_work(work: Path) -> None:
    """--overwrite: remove OUT.partial, when it holds only cljax's files."""
    if not work.exists() and not work.is_symlink():
        return
    foreign = [] if work.is_dir() and not work.is_symlink() else [work.name]
    foreign = foreign or sorted(p.name for p in work.iterdir() if not _OWN_FILE.match(p.name) or not p.is_file())
    if foreign:
        raise CljaxError(f"{work} holds files that are not cljax's ({', '.join(foreign[:3])}), so --overwrite does "
                         f"not delete it: move them, or choose another --out (nothing was deleted).")
    remove_tree(work)


def _write_record(work: Path, record: dict) -> None:
    tmp = work / ".plan.json.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, work / PLAN_FILE)


def _differences(recorded: dict, record: dict) -> list[str]:
    """What makes the work in OUT.partial (`recorded`) another preparation than `record`."""
    if not isinstance(recorded.get("shards"), dict) or "preprocessing" not in recorded:
        return ["its plan.json does not say how it was made (damaged, or from an earlier cljax)"]
    differ = []
    then, now = recorded.get("preprocessing") or {}, record["preprocessing"]

    def also(what: str, old, new) -> None:
        if old != new:
            differ.append(f"{what} {old} there, {new} in this command")

    also("source", recorded.get("source"), record["source"])
    if "revision" in recorded and recorded["revision"] != record["revision"]:  # (an earlier cljax's: no record)
        differ.append(f"it streamed commit {recorded['revision']} of the hub dataset, and this command commit "
                      f"{record['revision']} (the dataset changed on the hub since, or --revision names another): "
                      f"pass --revision {recorded['revision']} to finish it")
    also("--splits", as_flag(then.get("splits")), as_flag(now["splits"]))
    also("--resample", then.get("resample"), now["resample"])
    also("size", then.get("size"), now["size"])
    also("--reader", recorded.get("reader"), record["reader"])
    also("--shard-rows", recorded.get("shard_rows"), record["shard_rows"])
    other = sorted(k for k in {*then, *now} - {"splits", "resample", "size"} if then.get(k) != now.get(k))
    if other:
        differ.append(f"its preprocessing ({', '.join(other)}) is another cljax version's")
    old_names, new_names = recorded.get("class_names"), record["class_names"]
    if old_names != new_names and not differ:
        gone = sorted(set(old_names or ()) - set(new_names or ()))
        added = sorted(set(new_names or ()) - set(old_names or ()))
        what = "; ".join(x for x in (f"gone: {', '.join(gone[:3])}" if gone else "",
                                     f"new: {', '.join(added[:3])}" if added else "") if x) or "their order"
        differ.append(f"the source's classes changed ({what})")
    return differ


def read_record(work: Path) -> dict:
    """OUT.partial's plan.json, or {} when it cannot be read."""
    try:
        record = json.loads((work / PLAN_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def clear_stale_work(out: Path, meta: dict, log) -> None:
    """OUT is complete with `meta`: remove an OUT.partial left by the same preparation (one that
    stopped between writing OUT and removing its work), and name one of another preparation,
    which is kept: it may hold hours of work."""
    work = work_dir_for(out)
    if not work.is_dir() or work.is_symlink():
        if work.exists() or work.is_symlink():
            log(f"note: {work} is not a work folder of cljax's; it is left as it is.")
        return
    record = read_record(work)
    foreign = sorted(p.name for p in work.iterdir() if not _OWN_FILE.match(p.name) or not p.is_file())
    same = (record.get("source") == meta.get("source") and "preprocessing" in record
            and record["preprocessing"] == meta.get("preprocessing"))
    if same and not foreign:
        remove_tree(work)
        log(f"note: removed {work}, the work folder of this same preparation, left behind when it ended.")
        return
    source = record.get("source", "an unknown source")
    why = (f"it holds files that are not cljax's ({', '.join(foreign[:3])})" if foreign else
           "its plan.json cannot say what it holds" if not record else
           f"it holds work of a preparation of {source} that does not record its settings" if "preprocessing" not in record
           else f"it holds unfinished work of another preparation (of {source}, or with other settings)")
    log(f"note: {work} is not used by {out} and is kept: {why}; delete it if you do not need it.")
