"""Fault injection for the crash tests: ``CLJAX_FAULT=POINT:TASK`` makes the process kill itself
with SIGKILL when it reaches POINT (``train``: task TASK dispatched, not yet fetched;
``write``: in the middle of writing task TASK's folder) — the hardest way a job can die."""

from __future__ import annotations

import os
import signal


def crash_point(point: str, task: int) -> None:
    if os.environ.get("CLJAX_FAULT") == f"{point}:{task}":
        os.kill(os.getpid(), signal.SIGKILL)
