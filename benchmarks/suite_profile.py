"""Where the test suite's time goes, test by test: a pytest plugin and its summary.

The suite's time is mostly XLA compiling, JAX tracing and lowering, and child processes
(docs/benchmark.md, "Test suite"). This plugin records, for each test, its wall time, the CPU of
its process and of the child processes it waited for, and the seconds of each ``jax.monitoring``
event (backend compile, tracing, lowering, loads from the persistent cache) during it::

    SUITE_PROFILE_OUT=/tmp/prof PYTHONPATH=benchmarks python -m pytest -n 2 --dist loadfile \\
        -p suite_profile tests
    python benchmarks/suite_profile.py /tmp/prof [N]

Each pytest process (each xdist worker) writes ``rows_<worker>.json`` there; the summary sums
them per file and lists the N tests of most CPU. CPU seconds compare better than wall seconds
on a shared machine.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

import jax.monitoring
import pytest

_EVENTS: collections.Counter = collections.Counter()
_ROWS: list[dict] = []
# Registered once, when pytest imports the plugin (once per process)
jax.monitoring.register_event_duration_secs_listener(lambda event, duration, **_: _EVENTS.update({event: duration}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # monotonic clocks: with time.time and os.times' user + system, one row read a wall <= 0 or a
    # negative own CPU (once, in the profile test; which of the two was not recorded)
    before, times, start, cpu = dict(_EVENTS), os.times(), time.perf_counter(), time.process_time()
    yield
    after = os.times()
    _ROWS.append({
        "test": item.nodeid, "wall": time.perf_counter() - start,
        "self_cpu": time.process_time() - cpu,
        "child_cpu": after.children_user + after.children_system - times.children_user - times.children_system,
        "events": {k: v - before.get(k, 0.0) for k, v in _EVENTS.items() if v - before.get(k, 0.0) > 0},
    })


def pytest_sessionfinish(session) -> None:
    out = os.environ.get("SUITE_PROFILE_OUT")
    if not out:
        print("suite_profile: set SUITE_PROFILE_OUT to a folder to keep the rows", file=sys.stderr)
        return
    os.makedirs(out, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(out, f"rows_{worker}.json"), "w") as f:
        json.dump(_ROWS, f)


def summary(folder: str, top: int = 25) -> str:
    """Per file and for the ``top`` tests of most CPU: CPU (own + children), wall, and the events."""
    rows = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("rows_") and name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                rows += json.load(f)
    if not rows:
        raise SystemExit(f"error: {folder} holds no rows_*.json: run pytest with -p suite_profile and "
                         f"SUITE_PROFILE_OUT={folder} first.")
    cpu = lambda r: r["self_cpu"] + max(r["child_cpu"], 0.0)  # noqa: E731
    files, walls, events = collections.Counter(), collections.Counter(), collections.Counter()
    for r in rows:
        files[r["test"].split("::")[0]] += cpu(r)
        walls[r["test"].split("::")[0]] += r["wall"]
        events.update(r["events"])
    lines = [f"{len(rows)} tests: {sum(files.values()):.1f} s CPU, {sum(walls.values()):.1f} s wall (summed)"]
    lines += [f"  {v:8.1f} s  {k}" for k, v in events.most_common()]
    lines += ["per file (CPU, wall):"] + [f"  {v:7.1f} {walls[f]:7.1f}  {f}" for f, v in files.most_common()]
    lines += [f"the {min(top, len(rows))} tests of most CPU (CPU, of it children):"]
    lines += [f"  {cpu(r):6.1f} {max(r['child_cpu'], 0.0):6.1f}  {r['test']}"
              for r in sorted(rows, key=cpu, reverse=True)[:top]]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and not sys.argv[2].isdigit()):
        raise SystemExit("usage: python benchmarks/suite_profile.py FOLDER [N]")
    print(summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 25))
