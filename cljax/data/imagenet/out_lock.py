"""The lock of a preparation's output: one `prepare-imagenet` at a time writes OUT and OUT.partial.

It is the run folder's lock (`cljax.run_lock.RunLock`: flock, the holder's host and pid recorded
for the message, a record check where the filesystem has no locks) on the file OUT.lock beside
OUT, since OUT itself is replaced whole when the preparation ends. Unlike a run's lock file, it
is removed when the preparation ends, so a finished output has nothing beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from cljax.errors import CljaxError
from cljax.run_lock import RunLock


def lock_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


class OutputLock(RunLock):
    """Held from before OUT is looked at until the preparation ends (any end: the system lets a
    dead process's flock go). The holder removes the file while it still holds it, so a process
    that locked the file just before it was removed holds a lock no one else sees: it checks,
    after locking, that the path still names the file it locked, and tries again when not."""

    def __init__(self, out: Path):
        super().__init__(Path(out), exclusive=True)
        self.created: list[Path] = []

    def lock_path(self) -> Path:
        return lock_path_for(self.algo_dir)

    def __enter__(self) -> "OutputLock":
        path = self.lock_path()
        _check_is_ours(path, self.algo_dir)
        missing, folder = [], path.parent
        while not folder.exists():  # made to hold the lock; removed again if nothing else goes there
            missing.append(folder)
            folder = folder.parent
        for _ in range(100):
            super().__enter__()
            try:
                same = os.path.samestat(os.fstat(self.fd), os.stat(path, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                self.created = missing
                return self
            super().__exit__()  # a holder that ended removed the file we locked: lock the new one
        raise CljaxError(f"{path} is removed and made again by other processes as fast as it is locked: stop the other "
                         f"preparations into {self.algo_dir}, then run this command again.")

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path().unlink()
        super().__exit__()
        for folder in self.created:  # deepest first; a folder that holds anything stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.created = []

    def _in_use(self, holder: dict) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        return (f"{self.algo_dir} is being prepared by another cljax prepare-imagenet ({who}): wait for it to end or "
                f"stop it, then run this command again (nothing was changed; one that has died holds no lock).")


def _check_is_ours(path: Path, out: Path) -> None:
    """A regular file at OUT.lock that is not a lock's record (empty, or a JSON object naming a
    pid) is someone's file, which the lock would write over and remove."""
    if not path.is_file() or path.is_symlink():
        return  # a link or a folder is refused by RunLock
    try:
        text = path.read_text()
        record = json.loads(text) if text.strip() else {"pid": None}
    except (OSError, ValueError, UnicodeDecodeError):
        record = None
    if not (isinstance(record, dict) and "pid" in record):
        raise CljaxError(f"{path} is not cljax's lock file (the lock of --out {out}, which a "
                         f"preparation writes and removes): move it away, then run this command again (nothing was "
                         f"changed).")
