"""What the checks of a run folder already read: ``verified.json``, so that a resume does not
hash every finished file again.

A resume verifies every task folder before it builds on the run (cljax/run_folder.py): each
metadata.json is parsed, and each file's sha256 is compared with the one recorded when it was
written. On a long run that is most of the folder read on every requeue (hundreds of GiB at the
``lop-imagenet`` plan). This record keeps, for each file whose content matched, its identity
when it did (device, inode, size, modification and change times, in nanoseconds) with the
sha256 it matched, and for each metadata.json the fields the check reads. A later check takes a
file whose identity is unchanged as verified, and reads and hashes every other one.

Any write to a file changes its change time, which no program can set back, so an edited,
replaced, truncated or copied file is hashed again; a damaged record (or none) only means that
everything is. What it does not see is content that changes with no write at all (a failing
disk): ``cljax analyze`` hashes every file it reads, and deleting verified.json and
verified.jsonl makes the next resume hash everything again.

A run writes the record under its lock: when it resumes, after every check has passed, and
after its last task. As it trains, each folder it writes is noted with the sha256 hashed while
writing it, in one line appended to ``verified.jsonl`` (``JOURNAL``), which the next read merges
and the next save folds into the record. The notes are not held in memory: a run's host memory
stays flat in T, and a stop loses none of them (a line cut short by it is skipped: its files
are hashed again). A rerun of a finished run reads the record and writes nothing, unless it
had to hash files the record did not hold: then it saves what it verified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cljax.results import load_metadata
from cljax.safe_files import atomic_write, file_sha256

RECORD = "verified.json"
JOURNAL = "verified.jsonl"  # one line per folder a run wrote since the record was last saved
VERSION = 1
SHARED_FIELDS = ("config", "shapes", "eval_tasks")  # the same in every task folder of a run, mostly
# what the checks read, and the task's row of the run table (a rerun of a finished run prints it)
CHECKED_FIELDS = ("task_index", "run_id", "files", "shapes", "eval_tasks", "config", "data", "summary")


def identity(path: Path, st: os.stat_result | None = None) -> list[int]:
    """What changes when the file is written, replaced or copied (``st``: its ``os.stat``, when
    the caller has it)."""
    st = os.stat(path) if st is None else st
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class CheckRecord:
    """The memo of one command's checks (``run_folder.verify_task_dir``), and what the last
    resume verified, read from ``algo_dir``/verified.json (``inspect_run`` keeps it only for the
    run of run.json: ``for_run``)."""

    def __init__(self, algo_dir: Path):
        self.root = Path(algo_dir)
        self.run_id = None
        self.metadata: dict[str, list] = {}  # relative path of a metadata.json -> [identity, checked fields]
        self.hashed: dict[str, list] = {}  # relative path of a file -> [identity, sha256 it matched]
        self._kept: dict[str, Any] = {}  # a repeated field's JSON text -> the one copy of it held
        self._runs: dict[str, tuple[dict, dict]] = {}  # run id -> what was read for it, until for_run
        self.changed = False  # a check verified what the record did not hold (save_if_changed)
        self.unchecked: set[str] = set()  # metadata.json parsed here whose folder no check has passed whole yet
        self._read()

    def _read(self) -> None:
        try:
            data = json.loads((self.root / RECORD).read_text())
            if data.get("version") == VERSION:
                self._merge(*_entry(data))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # none or damaged: every file is read again
        for run_id, metadata, hashed in _journal(self.root / JOURNAL):
            self._merge(run_id, metadata, hashed)
        if len(self._runs) == 1:  # one run's: held until a check names the run (inspect_run: for_run)
            self.for_run(next(iter(self._runs)))

    def _merge(self, run_id: str, metadata: dict, hashed: dict) -> None:
        kept_metadata, kept_hashed = self._runs.setdefault(run_id, ({}, {}))
        kept_metadata.update(self._held(metadata))
        kept_hashed.update(hashed)

    def _held(self, metadata: dict) -> dict:
        """Entries of the record or of a journal line, with their repeated fields held once."""
        return {name: [e[0], self._shared(e[1])] if isinstance(e, list) and len(e) == 2 and isinstance(e[1], dict)
                else e for name, e in metadata.items()}

    def for_run(self, run_id: str | None) -> None:
        """Keep only what was recorded for the run ``run_id``."""
        if self.run_id != run_id or self._runs:
            self.metadata, self.hashed = self._runs.get(run_id, ({}, {})) if run_id is not None else ({}, {})
            self.run_id, self._runs = run_id, {}

    def _name(self, path: Path) -> str | None:
        text, prefix = os.fspath(path), os.path.join(os.fspath(self.root), "")
        if text.startswith(prefix) and len(text) > len(prefix):  # a path made from root (pathlib's is slow)
            return text[len(prefix):]
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return None

    # the metadata.json memo (checked_metadata): this command's parses and the record's
    def get(self, path: Path):
        name = self._name(path)
        entry = self.metadata.get(name) if name is not None else None
        return (tuple(entry[0]), entry[1]) if isinstance(entry, list) and len(entry) == 2 else None

    def __setitem__(self, path: Path, value) -> None:
        name = self._name(path)
        if name is not None:
            entry = [list(value[0]), self._shared(value[1])]
            self.changed |= self.metadata.get(name) != entry
            self.metadata[name] = entry
            self.unchecked.add(name)

    def passed(self, task_dir: Path) -> None:
        """Every file of ``task_dir`` agreed with its metadata.json (``verify_task_dir``)."""
        self.unchecked.discard(self._name(Path(task_dir) / "metadata.json"))

    def _shared(self, fields: dict) -> dict:
        """``fields`` with each of the fields every task repeats (the run's config, the shapes,
        the evaluated tasks) held once: the record of a long run kept the same config once per
        task in memory, a host memory growing with T as the run trained."""
        return {k: self._kept.setdefault(f"{k}:{json.dumps(v, sort_keys=True)}", v) if k in SHARED_FIELDS else v
                for k, v in fields.items()}

    # the hashes
    def matched(self, path: Path, key: list[int], sha256: str | None) -> bool:
        """Whether ``path``, as ``key`` says it is now, matched ``sha256`` before."""
        name = self._name(path)
        entry = self.hashed.get(name) if name is not None else None
        return sha256 is not None and entry == [key, sha256]

    def note(self, path: Path, key: list[int], sha256: str) -> None:
        """``path`` (as ``key``, taken before it was read) matched ``sha256``."""
        name = self._name(path)
        if name is not None:
            self.changed |= self.hashed.get(name) != [key, sha256]
            self.hashed[name] = [key, sha256]

    def note_written(self, folder: Path) -> None:
        """A folder this process has just written (results.write_folder) for the run ``for_run``
        named: its metadata.json's checked fields, and each file it lists, as it is now, with the
        sha256 hashed while it was written, appended to the journal (not kept in memory); the next
        check takes them as verified unless they are written again."""
        meta = load_metadata(folder)
        path = folder / "metadata.json"
        line = {"run_id": self.run_id,
                "metadata": {self._name(path): [identity(path), {k: meta[k] for k in CHECKED_FIELDS if k in meta}]},
                "hashed": {self._name(folder / name): [identity(folder / name), entry["sha256"]]
                           for name, entry in meta.get("files", {}).items()}}
        text = json.dumps(line, separators=(",", ":")).encode() + b"\n"
        with open(self.root / JOURNAL, "a+b") as f:
            end = f.seek(0, os.SEEK_END)
            if end:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    text = b"\n" + text  # after a line a stop cut short: this one parses on its own
            f.write(text)  # appended: a+ writes at the end wherever it read

    def save(self, run_id: str) -> None:
        """Write the record (atomically) with the journal's notes of the run folded in, then remove
        the journal; entries of folders no longer there are dropped."""
        for written_by, metadata, hashed in _journal(self.root / JOURNAL):
            if written_by == run_id:  # each line's config held once, as a read holds it (a long run's fold)
                self.metadata.update(self._held(metadata))
                self.hashed.update(hashed)
                self.unchecked -= set(metadata)  # written whole since it was parsed here
        keep = {name for name in {*self.metadata, *self.hashed} if (self.root / name).exists()} - self.unchecked
        data = {"version": VERSION, "run_id": run_id,
                "metadata": {k: v for k, v in self.metadata.items() if k in keep},
                "hashed": {k: v for k, v in self.hashed.items() if k in keep}}
        atomic_write(self.root / RECORD, lambda f: f.write(json.dumps(data, separators=(",", ":")).encode()))
        (self.root / JOURNAL).unlink(missing_ok=True)
        self.changed = False
        from cljax.run_lock import pid_alive

        for left in self.root.glob(f".{RECORD}.tmp-*"):  # of a save killed mid-write (a long run's: megabytes)
            pid = left.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                left.unlink(missing_ok=True)

    def save_if_changed(self, run_id: str) -> None:
        """``save`` when the checks verified what the record did not hold: a finished run whose
        record was lost (deleted after a disk scare, or a copied run) was hashed whole again at
        every rerun. A folder that cannot be written (read-only storage) keeps its old record."""
        if self.changed or (self.root / JOURNAL).exists():  # a journal left by a save that was killed: folded
            try:
                self.save(run_id)
            except OSError:
                pass


def _entry(data) -> tuple[str, dict, dict]:
    """(run id, metadata, hashed) of the record or of a journal line; TypeError, KeyError or
    ValueError when it is not one."""
    if not isinstance(data["run_id"], str):
        raise TypeError(data["run_id"])
    return data["run_id"], dict(data["metadata"]), dict(data["hashed"])


def _journal(path: Path):
    """The journal's entries, in the order written; a line cut short by a stop (or damaged) is
    skipped, and its files are hashed again."""
    try:
        with open(path, errors="replace") as f:  # line by line: not held whole beside what it is folded into
            for line in f:
                try:
                    entry = _entry(json.loads(line))
                except (ValueError, TypeError, KeyError, AttributeError):
                    continue
                yield entry
    except OSError:  # none, or unreadable from here on: those files are hashed again
        return


def content_matches(path: Path, sha256: str | None, record, key: list[int] | None = None) -> bool:
    """Whether ``path`` holds the content recorded as ``sha256``: hashed, unless ``record`` (a
    CheckRecord; a plain memo or None hashes) says that it matched before and the file was not
    written since. A match is noted in the record. ``key``: the file's identity, taken before
    anything of it was read (default: now)."""
    if not isinstance(record, CheckRecord):
        return file_sha256(path) == sha256
    key = identity(path) if key is None else key  # before reading: a write while it is hashed changes it
    if record.matched(path, key, sha256):
        return True
    if file_sha256(path) != sha256:
        return False
    record.note(path, key, sha256)
    return True


def folder_verified(record, task_dir: Path) -> bool:
    """Whether ``record`` (a CheckRecord) holds ``task_dir``'s metadata.json as it is now, from a
    check of the folder that passed whole or from its writer (a metadata.json this command parsed
    anew counts once a check of its folder has passed: ``CheckRecord.passed``). Then a file of it
    that ``file_verified`` is byte for byte one that agreed with that metadata.json (its .npy
    header's shape among it), and neither was written since: its header need not be read. A plain
    memo, or None, says no."""
    if not isinstance(record, CheckRecord):
        return False
    path = task_dir / "metadata.json"
    kept = record.get(path)
    try:
        return kept is not None and record._name(path) not in record.unchecked and kept[0] == tuple(identity(path))
    except OSError:
        return False  # gone: the check's own reading says so


def file_verified(record: CheckRecord, path: Path, sha256: str | None, key: list[int] | None = None) -> bool:
    """Whether ``record`` holds ``path``, as it is now (``key``: its identity, default taken now),
    as matching ``sha256``."""
    try:
        return sha256 is not None and record.matched(path, identity(path) if key is None else key, sha256)
    except OSError:
        return False


def checked_metadata(task_dir: Path, memo: dict | None) -> dict:
    """metadata.json, or only the fields ``verify_task_dir`` reads once ``memo`` holds them for the
    file as it is now (same inode, size and change times: a file written again is parsed again).
    A command checks the folder before and after it takes the lock; the second check reuses the
    first's parse, most of a long run's check (its files list the schedule: megabytes each)."""
    if memo is None:
        return load_metadata(task_dir)
    path = task_dir / "metadata.json"
    try:
        key = tuple(identity(path))
    except OSError:
        return load_metadata(task_dir)  # its own error
    kept = memo.get(path)
    if kept is not None and kept[0] == key:
        return kept[1]
    meta = load_metadata(task_dir)
    # "data" kept also when the folder has none: an entry without it is of an older record (re-read)
    memo[path] = (key, {**{k: meta[k] for k in CHECKED_FIELDS if k in meta}, "data": meta.get("data")})
    return meta
