"""The ``cljax`` command's entry point (and ``python -m cljax``'s): SIGINT and SIGTERM stop it in
one line from its first moment, before ``cljax.cli`` and its imports load (tens of milliseconds
in which a Ctrl-C printed a traceback and a SIGTERM killed it without a word). ``cljax.cli.main``
then installs the same handler, and each command its own."""

import os
import signal
import sys

EXIT_PREEMPTED = 75  # cljax.errors.EXIT_PREEMPTED, not imported: nothing more is loaded before the handler


def _stop_at_once(signum, frame):
    print(f"\nstopped by {signal.Signals(signum).name}: nothing was left half-written; run the same command again.",
          file=sys.stderr, flush=True)
    os._exit(EXIT_PREEMPTED)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_at_once)
    from cljax.cli import main as cli_main

    return cli_main()
