"""The ``cljax`` command's entry point (and ``python -m cljax``'s): SIGINT and SIGTERM stop it in
one line from its first moment, before ``cljax.cli`` and its imports load (tens of milliseconds
in which a Ctrl-C printed a traceback and a SIGTERM killed it without a word). ``cljax.cli.main``
then installs the same handler, and each command its own."""

import os
import signal
import sys

from cljax.errors import EXIT_PREEMPTED  # (a module of constants and exception types: nothing heavy)


def stop_at_once(signum, frame):
    """Until a command installs its own handler: nothing has been written yet (a run writes only
    inside cljax.stopping.stoppable) or the command's output is rewritten whole by running it again."""
    print(f"\nstopped by {signal.Signals(signum).name}: nothing was left half-written; run the same command again.",
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)


# SIGTERM and SIGINT, and what a batch system sends ahead of a stop (`#SBATCH --signal=USR1@90`) or
# a closed terminal: each killed a run without a line (exit 138, 140, 129). One the process was
# started ignoring stays ignored (read here, before any handler is set): nohup's SIGHUP, a
# background job's SIGINT.
STOP_SIGNALS = tuple(sig for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
                     if signal.getsignal(sig) is not signal.SIG_IGN)


def main() -> int:
    # Blocked while the handlers are set: a signal that comes between two of them waits for all
    # (a SIGINT just after SIGTERM's handler was set printed a traceback).
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, stop_at_once)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    from cljax.cli import main as cli_main

    return cli_main()
