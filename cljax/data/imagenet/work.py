"""The resumable work folder OUT.partial: its record (plan.json), opening it for a resume, and
clearing one that an output already complete has left behind.

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
import shutil
from pathlib import Path

from cljax.data.imagenet.shards import Plan
from cljax.errors import CljaxError

PLAN_FILE = "plan.json"
_OWN_FILE = re.compile(r"^(plan\.json|\.plan\.json\.tmp|[a-z]+-\d{5}\.npz|\.[a-z]+-\d{5}\.npz\.tmp-\d+)$")


def work_dir_for(out: str | os.PathLike) -> Path:
    """The resumable work folder of an output folder: OUT.partial next to it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def fingerprint(plan: Plan, preprocessing: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"source": plan.source, "preprocessing": preprocessing}, sort_keys=True).encode())
    for shard in plan.shards:
        digest.update(json.dumps([type(shard).__name__, dataclasses.asdict(shard)], sort_keys=True).encode())
    return digest.hexdigest()


def open_work_dir(work: Path, plan: Plan, preprocessing: dict, out: Path) -> None:
    """Create OUT.partial or check that the one there belongs to this very preparation."""
    plan_file = work / PLAN_FILE
    wanted = fingerprint(plan, preprocessing)
    if work.exists():
        recorded = read_record(work)
        if recorded.get("fingerprint") != wanted:
            raise CljaxError(
                f"{work} holds work from a different preparation (other source, splits or settings); "
                "rerun with the same arguments, or pass --overwrite to start again."
            )
        for stray in work.glob(".*.tmp-*"):  # half-written shards of an interrupted run (no other run: locked)
            stray.unlink()
        return
    work.mkdir(parents=True)
    tmp = work / ".plan.json.tmp"
    tmp.write_text(json.dumps({"source": plan.source, "out": str(out), "shards": len(plan.shards),
                               "preprocessing": preprocessing, "fingerprint": wanted}, indent=1))
    os.replace(tmp, plan_file)


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
        shutil.rmtree(work)
        log(f"note: removed {work}, the work folder of this same preparation, left behind when it ended.")
        return
    source = record.get("source", "an unknown source")
    why = (f"it holds files that are not cljax's ({', '.join(foreign[:3])})" if foreign else
           "its plan.json cannot say what it holds" if not record else
           f"it holds work of a preparation of {source} that does not record its settings" if "preprocessing" not in record
           else f"it holds unfinished work of another preparation (of {source}, or with other settings)")
    log(f"note: {work} is not used by {out} and is kept: {why}; delete it if you do not need it.")
