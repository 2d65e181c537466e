"""The host memory a run may take, and the cores it may use, are its cgroups' where those allow
less than the machine's (a SLURM job's --mem, a container's memory limit and CPU quota):
cljax/cgroup.py, on cgroup trees written here in both versions' formats."""

from __future__ import annotations

import os
from pathlib import Path

from cljax import cgroup
from cljax.devices import memory

MiB = 2**20


def _files(folder: Path, **files) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def _process(monkeypatch, tmp_path, memberships: str, mounts: list[tuple[str, str, str, str]]) -> None:
    """This process's /proc/self/cgroup and the mountinfo lines (root, mount point, fstype, superoptions)."""
    (tmp_path / "cgroup").write_text(memberships)
    (tmp_path / "mountinfo").write_text("".join(f"{30 + i} 23 0:{40 + i} {root} {point} rw,relatime - {fstype} "
                                                f"{fstype} {options}\n" for i, (root, point, fstype, options)
                                                in enumerate(mounts)))
    monkeypatch.setattr(cgroup, "PROC_CGROUP", str(tmp_path / "cgroup"))
    monkeypatch.setattr(cgroup, "PROC_MOUNTINFO", str(tmp_path / "mountinfo"))


def test_a_slurm_jobs_limit_above_its_step_is_the_room_less_the_usage_but_its_reclaimable_cache(tmp_path, monkeypatch):
    # v2: the job's cgroup sets --mem; the process sits in a step below it, which sets none.
    top = tmp_path / "sys"
    job = top / "system.slice" / "slurmstepd.scope" / "job_7"
    _files(job, memory_max=str(1000 * MiB), memory_current=str(600 * MiB), memory_stat=f"anon 1\ninactive_file {150 * MiB}\n")
    _files(job / "step_0" / "user" / "task_0", memory_max="max", memory_current=str(500 * MiB), memory_stat="")
    _process(monkeypatch, tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0/user/task_0\n",
             [("/", str(top), "cgroup2", "rw")])
    assert cgroup.cgroup_available_bytes() == (550 * MiB, str(job))  # 1000 - (600 - 150)
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 512 * 2**30)  # a large node's MemAvailable
    assert memory.host_available() == (550 * MiB, f"the memory limit of cgroup {job}")
    assert memory.host_available_bytes() == 550 * MiB
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 100 * MiB)  # the machine has less: it says so
    assert memory.host_available() == (100 * MiB, "the machine's MemAvailable")
    # memory.high (systemd's MemoryHigh, Kubernetes' memory QoS) below memory.max: past it the
    # kernel throttles the job, so it is the limit; "max" is none.
    _files(job, memory_high=str(800 * MiB))
    assert cgroup.cgroup_available_bytes() == (350 * MiB, str(job))  # 800 - (600 - 150)
    _files(job, memory_max="max")
    assert cgroup.cgroup_available_bytes() == (350 * MiB, str(job))
    _files(job, memory_high="max")
    assert cgroup.cgroup_available_bytes() is None


def test_v1_takes_the_tightest_level_and_reads_no_limit_as_none(tmp_path, monkeypatch):
    top = tmp_path / "memory"
    outer, inner = top / "slurm" / "uid_1", top / "slurm" / "uid_1" / "job_2"
    _files(top / "slurm", memory_limit_in_bytes="9223372036854771712", memory_usage_in_bytes="1", memory_stat="")
    _files(outer, memory_limit_in_bytes=str(4000 * MiB), memory_usage_in_bytes=str(3900 * MiB),
           memory_stat=f"inactive_file 5\ntotal_inactive_file {100 * MiB}\n")
    _files(inner, memory_limit_in_bytes=str(2000 * MiB), memory_usage_in_bytes=str(500 * MiB),
           memory_stat=f"total_inactive_file {100 * MiB}\n")
    mounts = [("/", str(tmp_path / "unified"), "cgroup2", "rw"), ("/", str(top), "cgroup", "rw,memory"),
              ("/", str(tmp_path / "cpu"), "cgroup", "rw,cpu")]
    _process(monkeypatch, tmp_path, "5:cpu,cpuacct:/other\n4:memory:/slurm/uid_1/job_2\n0::/\n", mounts)
    assert cgroup.cgroup_available_bytes() == (200 * MiB, str(outer))  # the user's 4000 - 3800 beats the job's 1600
    _files(outer, memory_limit_in_bytes="9223372036854771712")
    assert cgroup.cgroup_available_bytes() == (1600 * MiB, str(inner))
    _files(inner, memory_limit_in_bytes="9223372036854771712")
    assert cgroup.cgroup_available_bytes() is None  # no limit anywhere: the machine's figure stands
    _files(inner, memory_limit_in_bytes="not a number")
    assert cgroup.cgroup_available_bytes() is None  # a level that cannot be read sets nothing


def test_a_containers_own_cgroup_mounted_as_its_root_is_read_there(tmp_path, monkeypatch):
    # Without a cgroup namespace the path names the host's cgroup, and the mount's root is that cgroup.
    top = tmp_path / "fs"
    _files(top, memory_max=str(300 * MiB), memory_current=str(100 * MiB), memory_stat="inactive_file 0\n")
    _process(monkeypatch, tmp_path, "0::/docker/abc\n", [("/docker/abc", str(top), "cgroup2", "rw")])
    assert cgroup.cgroup_available_bytes() == (200 * MiB, str(top))
    monkeypatch.setattr(cgroup, "PROC_CGROUP", str(tmp_path / "missing"))
    assert cgroup.cgroup_available_bytes() is None


def test_a_run_larger_than_its_jobs_memory_limit_is_refused_and_plan_names_the_limit(tmp_path, monkeypatch, capsys):
    # A run that fit the node's MemAvailable passed, to be killed by the OOM killer at its SLURM job's --mem.
    from cljax.cli import main

    top = tmp_path / "sys"
    _files(top / "job", memory_max=str(300 * MiB), memory_current=str(100 * MiB), memory_stat="")
    _process(monkeypatch, tmp_path, "0::/job\n", [("/", str(top), "cgroup2", "rw")])
    flags = ["--dataset", "synthetic", "--num-tasks", "2", "--model", "mlp", "--results-dir", str(tmp_path / "r")]
    assert main(["plan", *flags]) == 2
    out = capsys.readouterr().out
    assert f"  {'available now':<34} {'200.0 MiB':>12} (the memory limit of cgroup {top / 'job'})\n" in out
    assert "host memory: DOES NOT FIT: the run needs about" in out
    assert main(["run", *flags, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"of the 200.0 MiB available (the memory limit of cgroup {top / 'job'}): " in err
    assert err.endswith("or run under a larger memory limit (SLURM: --mem). `cljax plan` shows the parts."), err
    assert not (tmp_path / "r").exists()


def test_a_cpu_quota_caps_the_usable_cores_rounded_up(tmp_path, monkeypatch):
    # A container held to 4 CPUs of a 64-core machine by a quota counted 64 cores: 64 CPU devices,
    # 8 analysis workers, 64 preparation workers, all throttled to the quota.
    from cljax.analysis.workers import AUTO_FOLDERS, worker_count
    from cljax.host import usable_cores

    top = tmp_path / "sys"
    _files(top / "kubepods" / "pod1", cpu_max="150000 100000")
    _files(top / "kubepods" / "pod1" / "ctr", cpu_max="max 100000")
    _process(monkeypatch, tmp_path, "0::/kubepods/pod1/ctr\n", [("/", str(top), "cgroup2", "rw")])
    assert cgroup.cgroup_cpus() == 2  # 1.5 CPUs: two threads, throttled
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert usable_cores() == 2
    _files(top / "kubepods" / "pod1", cpu_max="100000 100000")
    assert usable_cores() == 1 and worker_count("auto", AUTO_FOLDERS, True) == 1  # one core: no workers
    _files(top / "kubepods" / "pod1", cpu_max="max 100000")
    assert cgroup.cgroup_cpus() is None and usable_cores() == 64

    v1 = tmp_path / "cpu"
    _files(v1 / "docker", cpu_cfs_quota_us="800000", cpu_cfs_period_us="100000")
    _files(v1 / "docker" / "abc", cpu_cfs_quota_us="400000", cpu_cfs_period_us="100000")
    _process(monkeypatch, tmp_path, "3:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n",
             [("/", str(v1), "cgroup", "rw,cpu,cpuacct"), ("/", str(tmp_path / "memory"), "cgroup", "rw,memory")])
    assert cgroup.cgroup_cpus() == 4 and usable_cores() == 4
    _files(v1 / "docker" / "abc", cpu_cfs_quota_us="-1")
    assert cgroup.cgroup_cpus() == 8
    _files(v1 / "docker", cpu_cfs_quota_us="-1")
    assert cgroup.cgroup_cpus() is None
