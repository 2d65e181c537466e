"""cljax.devices: the CPU split a resume takes again, a bad $CLJAX_CPU_DEVICES, the advice of
check_repeats, the per-device share of host memory."""

from __future__ import annotations

import re

import pytest

from cljax.devices import check_repeats, cpu_devices_wanted, device_budget
from cljax.errors import CljaxError


def test_a_recorded_split_is_taken_again_only_when_one_process_can_take_it():
    two = {"backend": "cpu", "devices": 2, "processes": 1}
    assert cpu_devices_wanted(4, {}, cores=8, recorded=two) == 2
    # a multi-host run's split, or one that does not divide R: this host's own (4 of 8 cores)
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "processes": 2}) == 4
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "devices": 3}) == 4
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "devices": 0}) == 4
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "devices": "2"}) == 4


@pytest.mark.parametrize("spelled", ["00", "-0", "+0"])
def test_a_zero_device_count_spelled_otherwise_is_one_clear_line(spelled):
    # The line quotes the value as written, not the number it reads as.
    with pytest.raises(CljaxError, match=rf"CLJAX_CPU_DEVICES={re.escape(spelled)}: give a number of devices of at least 1"):
        cpu_devices_wanted(8, {"CLJAX_CPU_DEVICES": spelled}, cores=4)


def test_check_repeats_suggests_only_usable_repeat_counts(monkeypatch):
    import cljax.devices.mesh as mesh

    monkeypatch.setattr(mesh, "device_count", lambda: 4)
    with pytest.raises(CljaxError) as refused:
        check_repeats(2)
    assert "use a multiple of 4 (e.g. 4)," in str(refused.value)  # not "0 or 4"
    with pytest.raises(CljaxError, match=r"use a multiple of 4 \(e\.g\. 8 or 12\)"):
        check_repeats(10)
    # 2 processes of 2 CPU devices each (XLA_FLAGS): the hint named CLJAX_CPU_DEVICES, which such a
    # run does not read, and not the processes
    import jax

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(mesh, "forced_cpu_devices", lambda: 2)
    with pytest.raises(CljaxError) as refused:
        check_repeats(6)
    assert str(refused.value).endswith("(CUDA_VISIBLE_DEVICES; in this multi-process run, fewer processes or fewer "
                                       "devices each: each shows 2 of them (on the CPU, its XLA_FLAGS' "
                                       "--xla_force_host_platform_device_count)).")


def test_without_a_device_limit_the_host_memory_is_shared_by_the_local_devices(monkeypatch):
    import cljax.devices.memory as memory

    class NoStats:
        platform = "cpu"

        def memory_stats(self):
            return None

    monkeypatch.setattr(memory.jax, "local_devices", lambda: [NoStats()] * 4)
    monkeypatch.setattr(memory.jax, "local_device_count", lambda: 4)
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 8000)
    assert device_budget() == (2000, "host available memory")

    class Limited(NoStats):
        platform = "gpu"

        def memory_stats(self):
            return {"bytes_limit": 5000}

    monkeypatch.setattr(memory.jax, "local_devices", lambda: [Limited()] * 4)
    assert device_budget() == (5000, "gpu bytes_limit")  # the device's own limit, not shared


def test_the_usable_cores_are_this_process_affinity_not_the_machine(monkeypatch):
    # A SLURM allocation of 2 of a node's 64 cores: the CPU split, the pairing and the workers take 2.
    import os

    from cljax import host

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert host.usable_cores() == 2
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # not Linux: the machine's count
    assert host.usable_cores() == 64
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # not known: one
    assert host.usable_cores() == 1


def test_a_split_asked_for_after_jax_started_says_so(monkeypatch, capsys):
    """Something that uses JAX before the split (a settings check once did, and every CBP and
    ReDo run on a CPU then ran on one device, unsaid) leaves the run on the devices JAX started
    with: configure_cpu_devices says so on stderr, and keeps what JAX has."""
    import jax

    from cljax.devices import configure_cpu_devices

    jax.devices()  # started, as in this test process
    wanted = jax.local_device_count() + 1
    monkeypatch.setenv("CLJAX_CPU_DEVICES", str(wanted))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert configure_cpu_devices(wanted) is None
    err = capsys.readouterr().err
    if jax.default_backend() != "cpu":  # the CPU split changes nothing a GPU host's run uses: nothing said
        assert err == ""
        return
    assert err.startswith(f"warning: JAX had started before cljax could split the CPU into {wanted} devices: this run "
                          f"uses {jax.local_device_count()} ")
    assert err.count("\n") == 1
    monkeypatch.setenv("CLJAX_CPU_DEVICES", "off")  # asked for nothing: nothing said
    assert configure_cpu_devices(wanted) is None
    assert capsys.readouterr().err == ""
