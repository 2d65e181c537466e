"""How a preparation stops: on a signal, in the main process and in its workers.

The main process turns SIGTERM (a SLURM time limit, `kill`), SIGINT (Ctrl-C) and the other stop
signals of ``cljax.command.STOP_SIGNALS`` into KeyboardInterrupt, so the workers are stopped and
one line says how to resume. A handler's exception is dropped when the signal arrives inside a
garbage-collection callback or a ``__del__`` (JAX registers such a callback): Python printed a
traceback and the preparation went on to the end, exit status 0. So the stop is also recorded,
and the loops that wait on the shards raise it again (``stop_if_asked``); the dropped one is
not printed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

from cljax.command import STOP_SIGNALS

_asked: list[int] = []  # the stop signals received since the preparation began


def stop_if_asked() -> None:
    """Raise KeyboardInterrupt when a stop signal came, also one whose own raise was dropped."""
    if _asked:
        raise KeyboardInterrupt


@contextlib.contextmanager
def signals_as_interrupt():
    """Stop signals raise KeyboardInterrupt inside (off the main thread: left alone)."""

    def interrupt(signum, frame):
        _asked.append(signum)
        raise KeyboardInterrupt

    def unraisable(info):  # a stop raised where Python drops it: acted on by stop_if_asked
        if not (isinstance(info.exc_value, KeyboardInterrupt) and _asked):
            before(info)

    _asked.clear()
    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    except ValueError:  # not the main thread
        previous = {}
    before, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = before
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _asked.clear()  # a stop belongs to its preparation: a later one, or prepare() called alone, starts without it


def quiet_worker() -> None:
    """A worker process's set-up. The main process alone answers a stop signal (it stops the
    workers, with SIGTERM, and says how to resume), so the others are ignored here. Progress bars
    share a thread lock: tqdm's default creates a multiprocessing lock in each worker (through
    `datasets`), which a worker ended by SIGTERM left behind, and Python warned at exit of leaked
    semaphores, lines after the one error line."""
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM:
            signal.signal(sig, signal.SIG_IGN)
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.set_lock(threading.RLock())
