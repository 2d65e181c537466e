"""A pytest plugin of the GPU check's tests stage (``-p pytest_ids_now``): which tests were
collected and which finished, by exact node id, written as it happens, and a run of only the
node ids a file lists. With them a second call runs exactly the tests the first did not finish:
node ids with spaces or brackets given on the command line collected nothing on the GPU image
(2026-12-04), and a killed run's log splits ids at their spaces.

Each variable names a file:
- ``CLJAX_TESTS_COLLECTED``: every node id collected, one per line;
- ``CLJAX_TESTS_DONE``: ``OUTCOME<TAB>NODEID`` appended as each test ends (PASSED, FAILED,
  SKIPPED, ERROR);
- ``CLJAX_KEEP_IDS``: only the node ids it lists (one per line) are run.
Under pytest-xdist the workers collect and filter, and the controller writes both files."""

from __future__ import annotations

import os

import pytest

COLLECTED, DONE, KEEP = "CLJAX_TESTS_COLLECTED", "CLJAX_TESTS_DONE", "CLJAX_KEEP_IDS"
_state = {"worker": False, "collected": False}


def read_ids(path) -> list[str]:
    with open(path) as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def pytest_configure(config):
    _state["worker"] = hasattr(config, "workerinput")  # an xdist worker: the controller writes


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(KEEP):
        return
    keep = set(read_ids(os.environ[KEEP]))
    config.hook.pytest_deselected(items=[item for item in items if item.nodeid not in keep])
    items[:] = [item for item in items if item.nodeid in keep]


def _write_collected(ids) -> None:
    path = os.environ.get(COLLECTED)
    if path and not _state["collected"]:
        _state["collected"] = True
        with open(path, "w") as f:
            f.writelines(f"{i}\n" for i in ids)


def pytest_collection_finish(session):
    if not _state["worker"] and session.items:  # without xdist (its controller collects nothing)
        _write_collected(item.nodeid for item in session.items)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without it
def pytest_xdist_node_collection_finished(node, ids):  # the controller, once per worker: the same ids
    _write_collected(ids)


def pytest_runtest_logreport(report):
    path = os.environ.get(DONE)
    ends = report.when == "call" or (report.when == "setup" and not report.passed) or (
        report.when == "teardown" and report.failed)
    if not path or _state["worker"] or not ends:
        return
    outcome = "ERROR" if report.failed and report.when != "call" else report.outcome.upper()
    with open(path, "a") as f:
        f.write(f"{outcome}\t{report.nodeid}\n")
