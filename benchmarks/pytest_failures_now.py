"""A pytest plugin of the GPU check's tests stage (``-p pytest_failures_now``): each failure's
report is appended, as it happens, to the file that $CLJAX_FAILURES_NOW names. pytest prints
tracebacks only at the end of a session, so a stage killed at its time limit kept none of them
(on the first H200 run of the whole suite); with this file it keeps every one it saw."""

from __future__ import annotations

import os

ENV = "CLJAX_FAILURES_NOW"
_in_worker = [False]


def pytest_configure(config):
    # under pytest-xdist both a worker and the controller see each report: written once, by the
    # controller (a worker's config has workerinput; an environment variable would be inherited by
    # a pytest that a test starts)
    _in_worker[0] = hasattr(config, "workerinput")


def pytest_runtest_logreport(report):
    path = os.environ.get(ENV)
    if not path or not report.failed or _in_worker[0]:
        return
    with open(path, "a") as f:
        f.write(f"===== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
