"""The run folder's lock (cljax/run_lock.py) called directly: what it writes, which holders it
lets share, and how it judges a recorded holder where the filesystem has no file locks."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import subprocess
import sys

import pytest

from cljax.errors import CljaxError
from cljax.run_lock import RUN_LOCK, RunLock, live_writer


@pytest.fixture
def no_flock(monkeypatch):
    """A filesystem without file locks (some network filesystems): flock fails with ENOLCK."""

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)


def test_a_lock_file_is_rewritten_whole_so_a_longer_old_record_leaves_no_tail(tmp_path):
    # The file is reused, never deleted: a shorter new record must not leave the end of the
    # previous holder's behind it (the record would no longer be JSON, and the refusal would
    # name "pid ?" instead of the holder).
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": "h" * 300, "pid": 1, "since": "long ago"}) + "\n")
    with RunLock(tmp_path):
        record = json.loads((tmp_path / RUN_LOCK).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert set(record) == {"host", "pid", "since"}


def test_readers_share_a_finished_run_but_not_with_a_writer(tmp_path, monkeypatch):
    # Two `cljax analyze` of one finished run at once are fine; a reader while a run writes is not.
    import cljax.run_lock as run_lock

    monkeypatch.setattr(run_lock, "READER_WAIT_SECONDS", 0.2)
    with RunLock(tmp_path):
        pass  # a finished run: its lock file is there, nobody holds it
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "since": "x"}))
    with RunLock(tmp_path, exclusive=False), RunLock(tmp_path, exclusive=False):
        # the last writer recorded has ended: readers hold it, and the line says so (not the dead writer)
        with pytest.raises(CljaxError, match=r"is being read by another cljax process \(an analyze, a compare, or the "
                                             r"check of a finished run; the last run that wrote it, pid \d+ on"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):
        with pytest.raises(CljaxError, match=f"is in use by another cljax run \\(pid {os.getpid()} on "):
            RunLock(tmp_path, exclusive=False).__enter__()


def test_a_reader_of_a_run_from_before_locks_takes_no_lock_and_creates_no_file(tmp_path):
    with RunLock(tmp_path, exclusive=False) as lock:
        assert lock.fd is None
    assert not (tmp_path / RUN_LOCK).exists()


def test_without_file_locks_a_holder_on_another_host_is_refused_and_its_record_kept(tmp_path, no_flock):
    # Its pid means nothing here, so it cannot be checked: refused, naming the file to delete.
    record = json.dumps({"host": socket.gethostname() + "-elsewhere", "pid": os.getpid() + 1, "since": "x"})
    (tmp_path / RUN_LOCK).write_text(record)
    with pytest.raises(CljaxError, match=r"no file locks, so a run on another host cannot be checked, and a run killed there left its record: delete .*run\.lock"):
        RunLock(tmp_path).__enter__()
    assert (tmp_path / RUN_LOCK).read_text() == record


def test_without_file_locks_a_holder_whose_pid_may_not_be_signalled_is_alive(tmp_path, no_flock, monkeypatch):
    # kill(pid, 0) on another user's live process fails with EPERM: the process exists.
    def kill(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    pid = os.getpid() + 1
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "x"}))
    with pytest.raises(CljaxError, match=f"in use by another cljax run \\(pid {pid} on "):
        RunLock(tmp_path).__enter__()


def test_without_file_locks_the_recorded_holder_is_checked(tmp_path, no_flock, capsys):
    # A live process on this host (the parent of this one) holds it; a process that has ended does not.
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "since": "x"}))
    with pytest.raises(CljaxError, match=f"in use by another cljax run \\(pid {os.getppid()} on"):
        RunLock(tmp_path).__enter__()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid, "since": "x"}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == os.getpid()
    assert "without file locks" in capsys.readouterr().err


def test_without_file_locks_a_reader_waits_for_a_live_writer_on_this_host_but_not_for_another_hosts_record(
        tmp_path, no_flock, monkeypatch):
    # As with file locks, reading a run that a live process is writing is refused. Another host's
    # record cannot be checked, and it outlives its run: a reader goes ahead and leaves it as it is.
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)  # the recorded pid is alive
    pid = os.getpid() + 1
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "since": "x"}))
    with pytest.raises(CljaxError, match=f"in use by another cljax run \\(pid {pid} on "):
        RunLock(tmp_path, exclusive=False).__enter__()
    record = json.dumps({"host": socket.gethostname() + "-elsewhere", "pid": pid, "since": "x"})
    (tmp_path / RUN_LOCK).write_text(record)
    with RunLock(tmp_path, exclusive=False):
        pass
    assert (tmp_path / RUN_LOCK).read_text() == record


def test_live_writer_names_only_a_run_that_writes_now(tmp_path):
    assert live_writer(tmp_path) is None  # no lock file: a run from before locks, or none
    with RunLock(tmp_path):
        assert live_writer(tmp_path)["pid"] == os.getpid()
        with pytest.raises(CljaxError, match="in use"):  # it took no lock that outlives it
            RunLock(tmp_path, exclusive=False).__enter__()
    assert live_writer(tmp_path) is None  # finished, stopped or died: the lock is free
    with RunLock(tmp_path, exclusive=False):  # a reader (an analysis, a finished run's check) is no writer
        assert live_writer(tmp_path) is None
        with RunLock(tmp_path, exclusive=False):
            pass
    with RunLock(tmp_path):  # and asking left the folder writable
        pass


def test_live_writer_without_file_locks_judges_the_record(tmp_path, no_flock, monkeypatch):
    record = {"host": socket.gethostname(), "pid": os.getpid() + 1, "since": "x"}
    (tmp_path / RUN_LOCK).write_text(json.dumps(record))
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)  # the recorded pid is alive
    assert live_writer(tmp_path) == record
    (tmp_path / RUN_LOCK).write_text(json.dumps({**record, "host": record["host"] + "-elsewhere"}))
    assert live_writer(tmp_path) is None  # another host's record cannot be checked, and outlives its run

    def dead(pid, sig):
        raise ProcessLookupError

    (tmp_path / RUN_LOCK).write_text(json.dumps(record))
    monkeypatch.setattr(os, "kill", dead)
    assert live_writer(tmp_path) is None


def test_a_writer_waits_for_a_reader_of_a_moment_and_a_live_writer_is_refused_at_once(tmp_path, monkeypatch):
    # A compare or analyze polling the folder holds the lock shared for a moment: a run starting
    # then was refused (82 of 2000 tries in a helper's loop). It now waits for readers.
    import threading
    import time

    import cljax.run_lock as run_lock

    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "since": "x"}))
    reader = os.open(tmp_path / RUN_LOCK, os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, [reader]).start()  # the reader lets go 0.3 s later
    t0 = time.monotonic()
    with RunLock(tmp_path):
        waited = time.monotonic() - t0
    assert 0.2 < waited < run_lock.READER_WAIT_SECONDS
    # a live writer (recorded, alive, holding it) is refused at once, not after the wait
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom cljax.run_lock import RunLock\n"
                              f"with RunLock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(30)\n"],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(CljaxError, match=f"is in use by another cljax run \\(pid {child.pid} on "):
            RunLock(tmp_path).__enter__()
        assert time.monotonic() - t0 < 1.0
    finally:
        child.kill()
        child.wait()


def test_reading_holds_the_lock_shared_so_no_run_starts_writing_meanwhile(tmp_path, monkeypatch):
    import cljax.run_lock as run_lock
    from cljax.run_lock import reading

    monkeypatch.setattr(run_lock, "READER_WAIT_SECONDS", 0.2)
    with reading(tmp_path) as writer:  # no lock file: nothing to hold
        assert writer is None and not (tmp_path / RUN_LOCK).exists()
    with RunLock(tmp_path):
        pass
    (tmp_path / RUN_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7, "since": "x"}))
    with reading(tmp_path) as writer:
        assert writer is None
        with pytest.raises(CljaxError, match="is being read by another cljax process"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released at the block's end
        with reading(tmp_path) as writer:  # a run writes it now: its record, nothing held
            assert writer["pid"] == os.getpid()
    with reading(tmp_path):  # the writer's record says it ended: what holds the lock is a reader
        with pytest.raises(CljaxError, match=f"being read by .* the last run that wrote it, pid {os.getpid()} on "):
            RunLock(tmp_path).__enter__()
    record = json.loads((tmp_path / RUN_LOCK).read_text())
    del record["ended"]  # a record of this live process (a writer's) is refused at once
    (tmp_path / RUN_LOCK).write_text(json.dumps(record))
    with reading(tmp_path):
        with pytest.raises(CljaxError, match=f"is in use by another cljax run \\(pid {os.getpid()} on "):
            RunLock(tmp_path).__enter__()


def test_a_folder_lock_lets_one_holder_at_a_time(tmp_path):
    from cljax.run_lock import folder_lock

    with folder_lock(tmp_path):
        other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    other = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    os.close(other)
    assert list(tmp_path.iterdir()) == []  # no file added to the folder


def test_without_file_locks_a_run_that_ended_lets_another_host_write(tmp_path, no_flock, capsys):
    # The record outlived every run: a requeue onto another node was refused until run.lock was
    # deleted by hand, after a run that finished or was stopped as much as after one killed.
    with RunLock(tmp_path):
        assert "ended" not in json.loads((tmp_path / RUN_LOCK).read_text())
    record = json.loads((tmp_path / RUN_LOCK).read_text())
    assert record["pid"] == os.getpid() and record["ended"]
    elsewhere = {**record, "host": socket.gethostname() + "-elsewhere", "pid": os.getpid() + 1}
    (tmp_path / RUN_LOCK).write_text(json.dumps(elsewhere))
    with RunLock(tmp_path):  # another host's run that ended
        pass
    del elsewhere["ended"]  # ... and one that did not say so (killed, or still running): refused
    (tmp_path / RUN_LOCK).write_text(json.dumps(elsewhere))
    with pytest.raises(CljaxError) as refused:
        RunLock(tmp_path).__enter__()
    assert "a run that has died holds no lock" not in str(refused.value)  # not so without file locks
    assert f"a run killed there left its record: delete {tmp_path / RUN_LOCK} if that run has ended" in str(refused.value)
    # A stopped command lets go of its locks as it exits (its blocks are not left).
    from cljax.run_lock import let_go_of_every_lock

    (tmp_path / RUN_LOCK).unlink()
    lock = RunLock(tmp_path).__enter__()
    let_go_of_every_lock()
    assert lock.fd is None and json.loads((tmp_path / RUN_LOCK).read_text())["ended"]


def test_a_record_of_another_host_that_says_ended_is_a_reader_and_one_with_our_pid_is_not_ours(tmp_path, no_flock):
    # Without file locks, a record of another host's process that has our pid (a container's pid space)
    # was taken for our own: the live run's record was written over, two writers at once.
    record = {"host": socket.gethostname() + "-elsewhere", "pid": os.getpid(), "since": "x"}
    (tmp_path / RUN_LOCK).write_text(json.dumps(record))
    with pytest.raises(CljaxError, match="is in use by another cljax run"):
        RunLock(tmp_path).__enter__()
    assert json.loads((tmp_path / RUN_LOCK).read_text()) == record


def test_a_writer_refused_while_a_finished_runs_record_says_ended_is_told_of_a_reader_on_any_host(tmp_path):
    # It said "in use by another cljax run ... stop it" of a run on another host that had ended.
    import fcntl as real

    record = {"host": socket.gethostname() + "-elsewhere", "pid": 7, "since": "x", "ended": "y"}
    (tmp_path / RUN_LOCK).write_text(json.dumps(record))
    reader = os.open(tmp_path / RUN_LOCK, os.O_RDONLY)
    try:
        real.flock(reader, real.LOCK_SH)  # an analyze on a login node
        with pytest.raises(CljaxError, match="is being read by another cljax process .* pid 7 on .*has ended"):
            RunLock(tmp_path).__enter__()
    finally:
        os.close(reader)
