"""What benchmarks/gpu_check.py reads back from its stages: pytest's junit xml, or the outcomes
pytest -v printed before a time limit stopped it, and the seconds per task of a run's folder."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

FAILURES_NOW = "test_failures.txt"  # in OUT: the tests stage's tracebacks, written as they happen


def read_junit(path: Path) -> dict | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {
        "seconds": float(suite.get("time", 0)), "failed": failed}


def read_pytest_log(path: Path) -> dict | None:
    """The outcomes pytest -v printed before it was stopped (no junit xml is written then): lines
    ``NODEID OUTCOME [ n%]``, or under pytest-xdist ``[gwN] [ n%] OUTCOME NODEID``."""
    if not path.exists():
        return None
    outcomes = {}
    kinds = ("PASSED", "FAILED", "ERROR", "SKIPPED")
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in kinds:
            outcomes[parts[0]] = parts[1]
        elif parts[:1] and parts[0].startswith("[gw"):
            found = [i for i, word in enumerate(parts[:-1]) if word in kinds and "::" in parts[i + 1]]
            if found:
                outcomes[parts[found[0] + 1]] = parts[found[0]]
    count = lambda o: sum(v == o for v in outcomes.values())  # noqa: E731
    return {"tests": len(outcomes), "failures": count("FAILED"), "errors": count("ERROR"), "skipped": count("SKIPPED"),
            "seconds": 0.0, "failed": [k for k, v in outcomes.items() if v in ("FAILED", "ERROR")],
            "cut_short": True}


def read_run(folder: Path) -> dict | None:
    """Seconds per finished task of a run under ``folder`` (its task folders' metadata.json), and
    the wall seconds from one task's folder to the next (their metadata.json's times: everything a
    task costs in a long run, the host's writes included)."""
    metas = sorted(folder.glob("*/*/task_*/metadata.json"))
    if not metas:
        return None
    tasks = [json.loads(p.read_text()) for p in metas]
    written = [p.stat().st_mtime for p in metas]  # each task's folder is written as the task ends
    return {"tasks_finished": len(tasks), "seconds_per_task": [m["timings"]["task_seconds"] for m in tasks],
            "wall_seconds_between_tasks": [b - a for a, b in zip(written, written[1:])],
            "compile_seconds": tasks[0]["timings"].get("compile_seconds"),
            "lowering": tasks[0].get("lowering"), "n_repeats": tasks[0]["config"]["n_repeats"],
            "epochs": tasks[0]["config"]["epochs"],
            "steps_per_task": tasks[0]["log_steps"][-1] if tasks[0].get("log_steps") else None}
