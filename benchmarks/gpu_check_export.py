"""What of a GPU check comes back from the device machine: a few flat files.

The device tool returns at most 8 files from its output folder, each under 16 MiB, no deeper than
two folders; a check's own folder holds dozens of files and its runs hundreds of MiB. So the
check runs in a scratch folder and ``export`` copies into the returned one: ``summary.md`` and
``check.json`` of the call and of its follow-up, the tests stage's ``tests_left.txt`` (the node
ids a next call runs with ``--tests-from``), and one ``logs.tar.gz`` of every other JSON,
markdown, log, text and XML file (the runs' arrays and the profiler trace left out, each file
and the whole archive capped), at most six files.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

KEPT_SUFFIXES = (".json", ".md", ".log", ".xml", ".txt")
LEFT_OUT = ("runs", "profile_trace")  # arrays of the runs, the raw trace: large, and summarised in the JSON
FILE_CAP = 4 << 20  # a larger log is left out of the archive (its tail is in check.json)
ARCHIVE_CAP = 12 << 20  # files are added until their total reaches this


def export(out: Path, dest: Path) -> list[str]:
    """Copy what should come back of the check in ``out`` into the flat folder ``dest``; returns
    the names written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src, name in ((out / "summary.md", "summary.md"), (out / "check.json", "check.json"),
                      (out / "follow_up" / "summary.md", "follow_up_summary.md"),
                      (out / "follow_up" / "check.json", "follow_up_check.json"),
                      (out / "tests_left.txt", "tests_left.txt")):
        if src.is_file():
            shutil.copyfile(src, dest / name)
            written.append(name)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in KEPT_SUFFIXES
                   and not set(p.relative_to(out).parts) & set(LEFT_OUT) and p.stat().st_size <= FILE_CAP)
    total = 0
    with tarfile.open(dest / "logs.tar.gz", "w:gz") as archive:
        for path in files:
            if total + path.stat().st_size > ARCHIVE_CAP:
                continue
            total += path.stat().st_size
            archive.add(path, arcname=str(path.relative_to(out)))
    return [*written, "logs.tar.gz"]
