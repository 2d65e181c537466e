"""The torch peers of benchmarks/throughput.py take the cores cljax's programs get.

torch is not a test dependency: the peers' classes are replaced by stand-ins that record what they
were built with; what is asserted is the thread and process counts torch_units chooses."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import load_script

PEERS = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_peers.py"


def test_the_peers_use_the_cores_this_process_may_run_on(monkeypatch):
    """cljax splits the CPU over the cores the process may run on (its affinity, a cgroup quota:
    cljax.host.usable_cores); the peers took os.cpu_count(), so under `taskset -c 0` on a 2-core
    machine cljax ran on one device while the reference ran 2 threads on one core and the process
    peer 2 processes on it."""
    peers = load_script(PEERS, "cljax_bench_torch_peers")
    built = []

    def fake(kind):
        def make(*args, **kwargs):
            built.append((kind, args, kwargs))
            return lambda: None
        return make

    monkeypatch.setattr(peers, "TorchRepeat", fake("repeat"))
    monkeypatch.setattr(peers, "TorchProcesses", fake("processes"))
    monkeypatch.setattr(peers, "TorchVmap", fake("vmap"))
    monkeypatch.setattr(peers, "set_tf32", lambda tf32: None)
    monkeypatch.setattr(peers, "torch_device", lambda: "cpu")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # `taskset -c 0`

    units = peers.torch_units([2], steps=4, batch_size=8)
    assert sorted(k if isinstance(k, str) else k[0] for k in units) == ["torch", "torch_lean", "torch_processes_1",
                                                                          "torch_vmap"]
    assert {info["threads"] for _, _, info in units.values()} == {1}
    assert peers.default_processes("cpu") == [1]

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    built.clear()
    units = peers.torch_units([2], steps=4, batch_size=8)
    if units["torch"][2]["threads"] == 2:  # not where a cgroup quota allows one core
        assert "torch_1thread" in units and "torch_processes_2" in units


def test_the_report_names_the_cores_the_run_used(monkeypatch):
    """The report's machine line gave os.cpu_count() only: a run under `taskset -c 0` on 2 cores
    read "2 cores" beside a one-device cljax row."""
    bench = load_script(PEERS.parent / "throughput.py", "cljax_bench_throughput")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    details = bench.machine()
    assert details["cores"] == 2 and details["usable_cores"] == 1
