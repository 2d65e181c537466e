"""The GPU check's tests stage (benchmarks/gpu_check_tests.py, pytest_ids_now.py,
pytest_failures_now.py): what it runs, what it reads back from a stage cut short, each failure's
traceback as it happens, and the exact node ids a next call runs again."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import load_script
from tests.gpu_check_kit import SCRIPT, load_gpu_check, load_tests_stage


def test_a_test_stage_cut_short_reports_the_outcomes_pytest_printed(tmp_path):
    gpu_check = load_gpu_check()
    log = tmp_path / "tests.log"
    log.write_text("tests/test_a.py::test_one PASSED   [ 10%]\ntests/test_a.py::test_two FAILED   [ 20%]\nnoise\n")
    got = gpu_check.read_pytest_log(log)  # from gpu_check_read.py
    assert (got["tests"], got["failures"], got["failed"], got["cut_short"]) == (2, 1, ["tests/test_a.py::test_two"], True)
    assert gpu_check.collect("tests", tmp_path) == {**got, "tracebacks": None}  # no junit.xml: read from the log
    # pytest-xdist's workers print the outcome before the test's id
    log.write_text("[gw0] [ 10%] PASSED tests/test_a.py::test_one \n[gw1] [ 20%] ERROR tests/test_b.py::test_x[1] \n"
                   "[gw1] [ 30%] SKIPPED tests/test_b.py::test_y \n")
    got = gpu_check.read_pytest_log(log)
    assert (got["tests"], got["errors"], got["skipped"], got["failed"]) == (3, 1, 1, ["tests/test_b.py::test_x[1]"])


def test_the_tests_stage_keeps_each_failures_traceback_when_it_is_killed(tmp_path, monkeypatch):
    """pytest prints tracebacks at the end: a stage killed at its limit kept none. The plugin
    writes each failure as it happens, once under pytest-xdist (the controller's copy)."""
    gpu_check = load_gpu_check()

    class LimitFromTheFailure(subprocess.Popen):
        """The stage's limit counts from when the failure is on record: the two workers' start
        took more than the whole 12 s under the GPU suite's 14 workers (an H200 machine)."""

        def wait(self, timeout=None):
            until = time.monotonic() + 120
            while timeout is not None and not (tmp_path / gpu_check.FAILURES_NOW).exists() and time.monotonic() < until:
                time.sleep(0.1)
            return super().wait(timeout)

    monkeypatch.setattr(gpu_check.subprocess, "Popen", LimitFromTheFailure)
    (tmp_path / "test_two.py").write_text("import time\n\n\ndef test_fails():\n    assert 1 + 1 == 3, 'arithmetic'\n\n\n"
                                          "def test_hangs():\n    time.sleep(60)\n")
    env = gpu_check.stage_env_vars("tests", {**os.environ, "PYTHONPATH": ""}, tmp_path, gpu_check.parse_args([]))
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "pytest_failures_now", "-p",
               "pytest_ids_now", "-n", "2", str(tmp_path / "test_two.py")]
    assert gpu_check.run_stage(command, 3.0, tmp_path / "tests.log", env) == ("timeout", None)
    text = (tmp_path / gpu_check.FAILURES_NOW).read_text()
    assert text.count("=====") == 1 and "test_two.py::test_fails (call)" in text and "arithmetic" in text
    got = gpu_check.collect("tests", tmp_path)  # no junit.xml: the outcomes from the log, the tracebacks' file
    assert [f.endswith("test_two.py::test_fails") for f in got["failed"]] == [True]
    assert got["tracebacks"] == gpu_check.FAILURES_NOW
    # by node id: the failed test and the one the limit cut, for a next call's --tests-from
    assert got["ids"] == {"collected": 2, "finished": 1, "not_finished": 1, "left": 2, "left_file": "tests_left.txt"}
    left = (tmp_path / "tests_left.txt").read_text().splitlines()
    assert [i.rpartition("::")[2] for i in left] == ["test_fails", "test_hangs"]
    assert "the 2 that failed or did not finish are in tests_left.txt" in "\n".join(
        load_script(SCRIPT.parent / "gpu_check_summary.py", "cljax_gpu_check_summary")._tests(got))


def test_a_next_call_runs_exactly_the_node_ids_a_file_lists(tmp_path):
    """Node ids with spaces and brackets (a parametrised test's) given on pytest's command line
    collected nothing on the GPU image; --tests-from keeps them in the collection instead, under
    pytest-xdist too, and records each one's outcome by its exact id. An id it lists that is not
    collected is named; an earlier call's outcomes in the same folder do not count."""
    gpu_check = load_gpu_check()
    (tmp_path / "test_ids.py").write_text(
        "import pytest\n\n\n@pytest.mark.parametrize('x', ['a b', 'c[d]', 'e'])\ndef test_param(x):\n"
        "    assert x != 'c[d]'\n\n\ndef test_other():\n    pass\n")
    wanted = ["test_ids.py::test_param[a b]", "test_ids.py::test_param[c[d]]"]
    gone = "test_ids.py::test_renamed_since"
    (tmp_path / "left.txt").write_text("".join(f"{i}\n" for i in [*wanted, gone]))
    args = gpu_check.parse_args(["--stages", "tests", "--tests-from", str(tmp_path / "left.txt")])
    assert gpu_check.tests_to_run(args) == ["test_ids.py"]  # the files of the ids, each once
    out = tmp_path / "out"
    out.mkdir()
    (out / "tests_done.txt").write_text(f"FAILED\t{wanted[0]}\n")  # an earlier call's, into the same folder
    env = gpu_check.stage_env_vars("tests", {**os.environ, "PYTHONPATH": ""}, out, args)
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "pytest_ids_now", "-n", "2",
               *gpu_check.tests_to_run(args)]
    status = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 1 and "= 1 failed, 1 passed in " in status.stdout, status.stdout[-2000:]
    assert (out / "tests_collected.txt").read_text().splitlines() == wanted
    assert sorted((out / "tests_done.txt").read_text().splitlines()) == [f"FAILED\t{wanted[1]}", f"PASSED\t{wanted[0]}"]
    got = load_tests_stage().tests_left(out)
    assert got == {"collected": 2, "finished": 2, "not_finished": 0, "left": 1, "left_file": "tests_left.txt",
                   "not_collected": [gone]}
    assert (out / "tests_left.txt").read_text() == f"{wanted[1]}\n"
    summary = "\n".join(load_script(SCRIPT.parent / "gpu_check_summary.py", "cljax_gpu_check_summary")._tests(
        {"tests": 2, "failures": 1, "errors": 0, "skipped": 0, "seconds": 3.0, "failed": [wanted[1]], "ids": got}))
    assert f"not collected, so not run: 1 of the ids --tests-from listed (`{gone}`)" in summary
    # the next call, into the same folder, from that call's own tests_left.txt
    args = gpu_check.parse_args(["--stages", "tests", "--tests-from", str(out / "tests_left.txt")])
    env = gpu_check.stage_env_vars("tests", {**os.environ, "PYTHONPATH": ""}, out, args)
    status = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 1 and "= 1 failed in " in status.stdout, status.stdout[-2000:]
    assert load_tests_stage().tests_left(out) == {"collected": 1, "finished": 1, "not_finished": 0, "left": 1,
                                                   "left_file": "tests_left.txt"}


def test_the_list_of_tests_not_yet_run_on_a_gpu_names_tests_of_the_suite():
    """benchmarks/gpu_tests_not_yet_run.txt is the next GPU session's --tests-from: every id in it
    is collected by the suite as it is now (a test renamed since would silently not run)."""
    listed = (SCRIPT.parent / "gpu_tests_not_yet_run.txt").read_text().split("\n")
    listed = [i for i in listed if i.strip()]
    files = sorted({i.split("::")[0] for i in listed})
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                          cwd=SCRIPT.parent.parent, capture_output=True, text=True, timeout=300)
    collected = set(proc.stdout.splitlines())
    assert listed and files and [i for i in listed if i not in collected] == [], proc.stdout[-2000:]


def test_a_second_call_can_run_the_other_gpu_relevant_tests_with_a_longer_limit(tmp_path):
    gpu_check = load_gpu_check()
    args = gpu_check.parse_args(["--stages", "tests", "--tests", "rest", "--limit", "tests=400"])
    stage = load_tests_stage()
    assert args.limit == {"tests": 400.0} and gpu_check.tests_to_run(args) == stage.GPU_TESTS_REST
    root = SCRIPT.parents[1]
    listed = {t.split("::")[0] for t in stage.GPU_TESTS + stage.GPU_TESTS_REST}
    assert all((root / t).is_file() for t in listed) and not set(stage.GPU_TESTS) & set(stage.GPU_TESTS_REST)
    assert gpu_check.parse_args([]).stages == [s for s in gpu_check.BUDGETS if s != "deterministic"]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--limit", "bogus=3"])
