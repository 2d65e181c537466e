"""`cljax analyze --workers`: GLUE solved in worker processes gives the same bits as in-process,
in the same order; a worker's failure is one line; workers end with their parent."""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cljax.analysis.driver import analyze_run
from cljax.analysis.glue import glue_analysis
from cljax.analysis.workers import AUTO_FOLDERS, AUTO_MAX, BYTES_PER_WORKER, Workers, worker_count
from cljax.errors import CljaxError
from cljax.host import usable_cores
from tests.backend import on_cpu
from tests.test_analysis_driver import RR, T, write_fake_run


def on_backend(monkeypatch, backend: str) -> None:
    """worker_count's choice where JAX computes on ``backend``, whichever this one is."""
    import jax

    monkeypatch.setattr(jax, "default_backend", lambda: backend)


def test_glue_in_workers_gives_the_bits_of_glue_here():
    if not on_cpu():  # worker_count gives 1 off the CPU (asserted below): no analysis starts workers there
        pytest.skip("off the CPU an analysis solves GLUE in its own process and starts no worker (worker_count), so "
                    "there is no worker path to compare; the workers compute on the CPU, this process on this backend")
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(3, 2, 5, 7)) for _ in range(5)]
    batches[2][1] = 1.0  # a constant grouping: not solved, NaN
    here = [glue_analysis(X, np.asarray([0, 7], np.uint32), n_probes=16, dichotomies="task") for X in batches]
    with Workers(2) as pool:
        calls = [pool.submit(glue_analysis, X, np.asarray([0, 7], np.uint32), n_probes=16, dichotomies="task")
                 for X in batches]
        there = [c.result() for c in calls]
        assert len(pool.procs) == 2
    for a, b in zip(here, there):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert np.isnan(there[2]["capacity"][1]) and np.isfinite(there[2]["capacity"][0])


def test_calls_answered_out_of_order_leave_the_workers_free_for_the_next():
    with Workers(2) as pool:
        first, second = pool.submit(int, "1"), pool.submit(int, "2")
        assert second.result() == 2  # the newer call read first: the oldest in flight is still `first`
        later = [pool.submit(int, str(k)) for k in range(3, 8)]
        assert [first.result(), *(c.result() for c in later)] == [1, 3, 4, 5, 6, 7]
        assert len(pool.procs) == 2


def test_an_analysis_with_workers_writes_the_same_files_as_one_without(tmp_path):
    algo = tmp_path / "results" / "synthetic" / "SL_T3"
    write_fake_run(algo)
    kw = dict(glue_n_probes=16, glue_max_points=4, glue_across_every=1, make_plots=False)
    one = analyze_run(algo, tmp_path / "one", workers=1, **kw)
    two = analyze_run(algo, tmp_path / "two", workers=2, **kw)
    assert one == two
    assert (tmp_path / "one" / "summary.json").read_bytes() == (tmp_path / "two" / "summary.json").read_bytes()
    a, b = np.load(tmp_path / "one" / "glue.npz"), np.load(tmp_path / "two" / "glue.npz")
    assert a.files == b.files and "per_task_capacity" in a.files
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["across_capacity"].shape == (3, 2)  # a per-task and an across-task call at every folder, in order
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["glue"]["solver"]["n_probes_solved"] == 16 * 2 * 6


def test_auto_starts_workers_for_long_runs_with_glue_only(monkeypatch):
    on_backend(monkeypatch, "cpu")
    assert worker_count("auto", AUTO_FOLDERS - 1, glue=True) == 1
    assert worker_count("auto", AUTO_FOLDERS, glue=True) == min(usable_cores(), AUTO_MAX)
    assert worker_count("auto", 10 * AUTO_FOLDERS, glue=False) == 1
    assert worker_count(3, 2, glue=True) == 3 and worker_count(3, 2, glue=False) == 1
    for bad in (0, -1, "many", 2.5):
        with pytest.raises(CljaxError, match="workers must be 'auto' or a whole number >= 1"):
            worker_count(bad, 100, glue=True)
    on_backend(monkeypatch, "gpu")  # an accelerator: GLUE is solved in this process, no worker started
    assert worker_count("auto", 10 * AUTO_FOLDERS, glue=True) == worker_count(3, 2, glue=True) == 1


def test_workers_count_in_the_host_memory_check(monkeypatch):
    on_backend(monkeypatch, "cpu")
    # Each worker holds JAX, XLA and GLUE's programs: eight of them took about 3 GiB that the
    # analysis's memory check did not count.
    cores = min(usable_cores(), AUTO_MAX)
    assert worker_count("auto", AUTO_FOLDERS, True, spare_bytes=2.5 * BYTES_PER_WORKER) == min(cores, 2)
    assert worker_count("auto", AUTO_FOLDERS, True, spare_bytes=100 * BYTES_PER_WORKER) == cores
    assert worker_count("auto", AUTO_FOLDERS, True, spare_bytes=1.9 * BYTES_PER_WORKER) == 1  # one worker: none
    assert worker_count(1, AUTO_FOLDERS, True, spare_bytes=0) == 1
    assert worker_count(3, 2, True, spare_bytes=3 * BYTES_PER_WORKER) == 3
    with pytest.raises(CljaxError, match=r"^3 workers \(--workers\) take about 1.5 GiB of host memory beside the "
                                         r"analysis, and 1.0 GiB are left: use --workers 2 or fewer, or a machine"):
        worker_count(3, 2, True, spare_bytes=2 * BYTES_PER_WORKER)
    with pytest.raises(CljaxError, match=r"0.0 GiB are left: use --workers 1 \(none\), or"):
        worker_count(2, 2, True, spare_bytes=-5)


def test_an_analysis_whose_workers_do_not_fit_in_memory_writes_nothing(tmp_path, monkeypatch):
    from cljax.analysis import driver

    algo = tmp_path / "results" / "synthetic" / "SL_T3"
    write_fake_run(algo)
    need = driver.BYTES_PER_CELL * RR * T * T  # (R, n, T), as test_analysis_driver.py's memory test
    monkeypatch.setattr(driver, "host_available_bytes", lambda: need + BYTES_PER_WORKER)
    with monkeypatch.context() as cpu:  # workers are started where JAX computes on the CPU alone
        on_backend(cpu, "cpu")
        with pytest.raises(CljaxError, match="2 workers .* use --workers 1"):
            analyze_run(algo, workers=2, make_plots=False)
    assert not (algo / "analysis").exists()
    analyze_run(algo, workers=1, make_plots=False, glue_n_probes=16, glue_max_points=4)  # none: it fits
    assert (algo / "analysis" / "summary.json").exists()


def test_a_worker_that_raises_gives_its_traceback_and_one_that_dies_one_line():
    with Workers(2) as pool:
        with pytest.raises(RuntimeError, match="(?s)an analysis worker process raised.*ValueError"):
            pool.submit(int, "not a number").result()
        assert pool.submit(int, "12").result() == 12  # the worker that raised serves again
        with pytest.raises(CljaxError, match=r"ended before it answered \(exit status 3; .*--workers 1"):
            pool.submit(os._exit, 3).result()


def test_workers_end_with_their_parent_also_when_it_leaves_through_os_exit(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time
        from cljax.analysis.workers import Workers
        pool = Workers(2)
        busy = pool.submit(time.sleep, 0.5)  # one worker mid-call, the other idle
        idle = pool.submit(time.sleep, 0.0)
        idle.result()
        print(" ".join(str(p.pid) for p in pool.procs), flush=True)
        os._exit(75)  # as cljax.cli leaves on a stop signal: no clean-up runs
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 75, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert done.stderr == ""  # no broken-pipe traceback, no leaked-semaphore warning


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_the_cli_refuses_a_bad_workers_value_in_one_line(tmp_path):
    algo = tmp_path / "results" / "synthetic" / "SL_T3"
    write_fake_run(algo)
    for bad in ("0", "two", "-2"):
        done = subprocess.run([sys.executable, "-m", "cljax", "analyze", str(algo), "--workers", bad],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [f"error: --workers must be auto or a whole number >= 1, got {bad!r}."]
    assert not (algo / "analysis").exists()
