"""How a command stops: a stop signal ends it in one line with EXIT_PREEMPTED, never while it
writes what must be whole (``stoppable``), and a command that has finished keeps its own exit
code through the interpreter's shutdown (``keep_exit_code``)."""

from __future__ import annotations

import atexit
import os
import signal
import sys

from cljax.command import STOP_SIGNALS
from cljax.errors import EXIT_PREEMPTED


def stoppable(work, stopped):
    """Run ``work(critical_lock)`` in a worker thread so that SIGTERM/SIGINT are handled at once,
    also while the work waits in compiled code (Python runs a signal handler on the main thread
    only, between bytecodes): the process exits with EXIT_PREEMPTED, printing ``stopped`` (a
    string, or a function giving it then: what to do next may depend on what the work has done),
    as soon as the work does not hold the lock, which it holds while it writes what must be whole
    (a task folder, a checkpoint, an analysis's files). SLURM sends SIGTERM some seconds before
    it kills."""
    import threading

    critical = threading.Lock()
    box: dict = {}

    def target():
        try:
            box["result"] = work(critical)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc

    stopping: list = []

    def on_signal(signum, frame):
        # A second signal (SLURM's, or timeout's passed on) runs this handler again on the same
        # thread, inside the first one: it must not wait for the lock that the first one holds.
        if stopping:
            return
        stopping.append(signum)
        with critical:  # never leave a half-written task folder, checkpoint or analysis
            exit_stopped(signum, stopped() if callable(stopped) else stopped)

    previous = install(on_signal)
    worker = threading.Thread(target=target, name="cljax-work", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(timeout=0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "error" in box:
        raise box["error"]
    return box["result"]


def exit_stopped(signum: int, what: str, stopped: str = "stopped") -> None:
    from cljax.run_lock import let_go_of_every_lock

    let_go_of_every_lock()  # (called with the critical lock held: nothing is being written)
    print(f"\n{stopped} by {signal.Signals(signum).name}: {what}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)


def keep_exit_code(rc: int) -> None:
    """A signal in the interpreter's shutdown keeps the command's code ``rc`` (the default action,
    128 + its number, says it did not finish). The handler serves while Python code runs; the C
    teardown after it runs none and resets it to the default, but keeps SIG_IGN: the stop signals
    are ignored from the first exit function on (registered last, so run first)."""
    install(lambda signum, frame: _exit_finished(signum, rc))
    atexit.register(install, signal.SIG_IGN)


def _exit_finished(signum: int, rc: int) -> None:
    try:
        print(f"\nstopped by {signal.Signals(signum).name} after the command had ended (exit code {rc}): its "
              f"output is whole.", file=sys.stderr, flush=True)
    finally:
        os._exit(rc)


def install(handler) -> dict:
    """The stop signals (STOP_SIGNALS) -> ``handler``; the handlers replaced (none off the main thread)."""
    try:
        return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:  # called from another thread: signals are the main thread's to handle
        return {}
