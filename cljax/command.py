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
    inside cli._stoppable) or the command's output is rewritten whole by running it again."""
    print(f"\nstopped by {signal.Signals(signum).name}: nothing was left half-written; run the same command again.",
          file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_at_once)
    from cljax.cli import main as cli_main

    return cli_main()
