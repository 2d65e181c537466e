"""The lock of a run folder (``{algo_dir}/run.lock``), held while a run writes it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading
import time
from pathlib import Path

from cljax.errors import CljaxError

RUN_LOCK = "run.lock"
# What flock fails with on a filesystem without file locks (some network filesystems).
NO_FILE_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLock:
    """``fcntl.flock`` on ``{algo_dir}/run.lock``: exclusive while a run writes the folder, shared
    while a finished run is read. The system releases it when its process ends however it ends,
    so a dead run's lock is free at once; the file (never deleted) records the last holder's
    host and pid for the message. Where the filesystem has no locks, a live holder on the same
    host is detected from that record (by a writer and by a reader), and another host's holder
    is refused to a writer."""

    def __init__(self, algo_dir: Path, exclusive: bool = True):
        self.algo_dir, self.exclusive, self.fd = Path(algo_dir), exclusive, None

    def lock_path(self) -> Path:
        """The lock file (a subclass locks another file the same way)."""
        return self.algo_dir / RUN_LOCK

    def __enter__(self) -> "RunLock":
        path = self.lock_path()
        if path.is_symlink():  # the holder's record would be written over the link's target
            raise CljaxError(f"{path} is a symbolic link, not cljax's lock file: remove the link (its target is left "
                             f"as it is), then run this command again.")
        if path.exists() and not path.is_file():  # opening a folder for writing would fail with a bare OSError
            raise CljaxError(f"{path} is not a regular file, so not cljax's lock file: remove it, then run this "
                             f"command again.")
        if self.exclusive:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        else:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:  # no lock file (a run from before locks): nothing to share
                return self
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CljaxError(f"{path} is not a regular file, so not cljax's lock file: remove it, then run this "
                             f"command again.")
        try:
            _flock_waiting_for_readers(fd, path, self.exclusive)
        except BlockingIOError:
            os.close(fd)
            raise CljaxError(self._in_use(_read_holder(path))) from None
        except OSError as exc:
            if exc.errno not in NO_FILE_LOCKS:
                os.close(fd)
                raise
            self._without_flock(fd, path)
        if self.exclusive:
            holder = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, holder + b"\n", 0)
            except OSError:  # a full disk: the lock is let go (the file stays: another process may hold it next)
                os.close(fd)
                raise
        self.fd = fd
        if self.exclusive:
            _HELD.add(self)
        return self

    def __exit__(self, *exc) -> None:
        with _LETTING_GO:  # a stop signal's let_go_of_every_lock (main thread) and a worker's own exit: once
            fd, self.fd = self.fd, None
            if fd is not None:
                _HELD.discard(self)
                if self.exclusive:
                    _mark_ended(fd)
                os.close(fd)  # releases the lock

    def _in_use(self, holder: dict, flocks: bool = True) -> str:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        if self.exclusive and (holder.get("ended") or holder.get("host") == socket.gethostname()
                               and not _recorded_alive_here(holder)):
            # the last writer has ended: what holds the lock is a reader (shared), for longer than we wait
            return (f"{self.algo_dir} is being read by another cljax process (an analyze, a compare, or the check "
                    f"of a finished run; the last run that wrote it, {who}, has ended): wait for it to end, then run "
                    f"this command again.")
        return (f"{self.algo_dir} is in use by another cljax run ({who}): wait for it to end or stop it, then run "
                f"this command again" + (" (a run that has died holds no lock)." if flocks else ""))

    def _without_flock(self, fd: int, path: Path) -> None:
        holder = _read_holder(path)
        pid, host = holder.get("pid"), holder.get("host")
        mine = pid == os.getpid() and host == socket.gethostname()  # (another host's process may have our pid)
        if isinstance(pid, int) and not mine and not holder.get("ended"):  # ended: its run let it go
            if host != socket.gethostname():
                # A reader goes ahead: the record outlives its run, and a run is often read on
                # another host than the one that wrote it.
                if self.exclusive:
                    os.close(fd)
                    raise CljaxError(self._in_use(holder, flocks=False) + f"; this filesystem "
                                     f"has no file locks, so a run on another host cannot be checked, and a run "
                                     f"killed there left its record: delete {path} if that run has ended.")
            elif _another_live_process_here(holder):  # a reader waits for a writer, as with file locks
                os.close(fd)
                raise CljaxError(self._in_use(holder))
        print(f"warning: {path.parent} is on a filesystem without file locks: cljax checks the host and pid in "
              f"{path.name} instead.", file=sys.stderr)


_HELD: set = set()  # the exclusive locks this process holds
_LETTING_GO = threading.RLock()  # (reentrant: a signal's handler may run on the thread inside __exit__)


def _mark_ended(fd: int) -> None:
    """Add "ended" to the holder's record as the lock is let go: on a filesystem without file
    locks the record is all there is, and a run that ended (finished, or stopped by a signal)
    refused every writer on another host until the file was deleted by hand."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        ended = json.dumps({**holder, "ended": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n"
        os.pwrite(fd, ended, 0)  # over the record (it only grows), then cut: never read empty
        os.ftruncate(fd, len(ended))
    except (OSError, ValueError, TypeError):  # a full disk, a record not ours: the record stays as it was
        pass


def let_go_of_every_lock() -> None:
    """Mark every lock this process holds as ended (a command stopped by a signal exits at once,
    without leaving its blocks)."""
    for lock in list(_HELD):
        lock.__exit__()


# A writer waits this long for readers (analyze, compare, a finished run's check) that hold the
# lock shared for a moment; a live writer's lock is refused at once.
READER_WAIT_SECONDS = 3.0


def _flock_waiting_for_readers(fd: int, path: Path, exclusive: bool) -> None:
    """flock, non-blocking; a writer refused while no live writer is recorded tries again for
    READER_WAIT_SECONDS (BlockingIOError when still refused)."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + READER_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            if not exclusive or _recorded_alive_here(_read_holder(path)) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def reading(algo_dir: Path):
    """Read a run folder: yields the record of the run writing it now (as :func:`live_writer`),
    or None when none is, and then holds the lock shared until the block ends, so that no run
    (an ``--overwrite`` included) starts writing the folder while it is read."""
    path = Path(algo_dir) / RUN_LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file (a run from before locks), or a link: no writer recorded
        yield None
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a run writes it now: its tasks so far are read
            yield _read_holder(path)
            return
        except OSError as exc:
            if exc.errno not in NO_FILE_LOCKS:
                raise
            holder = _read_holder(path)
            yield holder if _another_live_process_here(holder) else None
            return
        yield None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path):
    """An exclusive flock on a folder itself (no file added to it), waited for: brief updates of
    one folder's files by several processes (an analysis's files, a sweep's list) one at a time.
    Where the filesystem has no file locks, nothing is held."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_FILE_LOCKS:
                raise
        yield
    finally:
        os.close(fd)


def live_writer(algo_dir: Path) -> dict | None:
    """The record (host, pid, since) of the run writing ``algo_dir`` now, or None when no run is
    (a finished, stopped or died run holds no lock): :func:`reading` for a moment (the shared lock
    is let go at once), creating no file. What ``cljax compare`` asks of a run that may still be
    written."""
    with reading(algo_dir) as writer:
        return writer


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _recorded_alive_here(holder: dict) -> bool:
    """Whether a lock file's record names a live process of this host, this one included (a
    writer holding the folder, not a reader after a writer that has ended)."""
    pid = holder.get("pid")
    return (isinstance(pid, int) and holder.get("host") == socket.gethostname() and not holder.get("ended")
            and (pid == os.getpid() or pid_alive(pid)))


def _another_live_process_here(holder: dict) -> bool:
    """Whether a lock file's record names a live process of this host other than this one."""
    pid = holder.get("pid")
    return (isinstance(pid, int) and pid != os.getpid() and holder.get("host") == socket.gethostname()
            and not holder.get("ended") and pid_alive(pid))  # ended: its pid may be another process's now


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has ``pid`` (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
