"""What this process's control groups let it take: a SLURM job's ``--mem``, a container's memory
limit and CPU quota (``docker --cpus``, a Kubernetes CPU limit). Jax-free.

The machine's figures count the whole machine. /proc/meminfo's MemAvailable is the node's, so
on a node shared by jobs a run that passed every memory check against it could still be
killed by the kernel's OOM killer at its job's limit (SIGKILL: no error line, only the finished
tasks kept). A container held to 4 CPUs of a 64-core machine by a quota (not by a cpuset, which
the CPU affinity already shows) was counted 64 cores: 64 CPU devices, 8 analysis workers,
64 preparation workers, all throttled to the quota.

Both cgroup versions are read: v2 (one hierarchy: ``memory.max`` and ``memory.high``,
``cpu.max``) and v1 (each controller's own: ``memory.limit_in_bytes``, ``cpu.cfs_quota_us``).
The process's cgroup and every cgroup above it up to the mount's root are looked at, since
SLURM limits the job and puts its processes in the job's step cgroups below it; the tightest
level is the answer. A level's memory room is its limit less its usage, where the usage leaves
out the inactive page cache the kernel reclaims before it kills (``inactive_file``).
"""

from __future__ import annotations

import math
from pathlib import Path

PROC_CGROUP = "/proc/self/cgroup"
PROC_MOUNTINFO = "/proc/self/mountinfo"
UNLIMITED = 1 << 62  # v1 writes "no memory limit" as a page-rounded 2**63 - 1


def cgroup_available_bytes() -> tuple[int, str] | None:
    """(bytes, the cgroup folder that sets it): the smallest room any cgroup of this process
    leaves it; None when none sets a memory limit, or none can be read."""
    return _tightest("memory", _memory_room)


def cgroup_cpus() -> int | None:
    """The CPUs the tightest CPU quota of this process's cgroups allows, rounded up (a quota of
    1.5 CPUs runs two threads, throttled); None without a quota."""
    found = _tightest("cpu", _cpu_quota)
    return None if found is None else max(1, math.ceil(found[0]))


def _tightest(controller: str, read) -> tuple[float, str] | None:
    try:
        memberships = Path(PROC_CGROUP).read_text().splitlines()
        mounts = Path(PROC_MOUNTINFO).read_text().splitlines()
    except OSError:
        return None
    best = None
    for version, folder, top in _folders(memberships, mounts, controller):
        for level in [folder, *folder.parents]:
            value = read(level, version)
            if value is not None and (best is None or value < best[0]):
                best = (value, str(level))
            if level == top:
                break
    return best


def _folders(memberships: list[str], mounts: list[str], controller: str):
    """(version, the process's cgroup folder, the mount point above it) of each hierarchy that may
    hold ``controller``: /proc/self/cgroup's path, taken relative to the mount's root (a
    container's mount is its own cgroup)."""
    paths = {}
    for line in memberships:  # "hierarchy-id:controllers:path"; v2's is "0::path"
        parts = line.split(":", 2)
        if len(parts) == 3:
            if parts[0] == "0" and parts[1] == "":
                paths[2] = parts[2]
            elif controller in parts[1].split(","):
                paths[1] = parts[2]
    for line in mounts:  # "... root mountpoint options ... - fstype source superoptions"
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        version = 2 if fstype == "cgroup2" else 1 if fstype == "cgroup" and controller in options else None
        if version is None or version not in paths:
            continue
        path = paths.pop(version)
        if root == "/":
            inside = path
        elif path == root or path.startswith(root + "/"):
            inside = path[len(root):]
        else:  # a cgroup outside what is mounted here: the mount is as far as this process sees
            inside = ""
        top = Path(point.replace("\\040", " "))  # mountinfo escapes a space in a path as \040
        yield version, top / inside.lstrip("/"), top


def _memory_room(level: Path, version: int) -> int | None:
    """Limit less usage (less its inactive page cache) at one cgroup folder; None without a limit.
    v2's limit is the lower of ``memory.max`` (past it the OOM killer) and ``memory.high`` (past it
    the kernel throttles the group and reclaims hard: a run there crawls)."""
    try:
        if version == 2:
            high = level / "memory.high"
            limit = min(_limit(level / "memory.max"), _limit(high) if high.exists() else UNLIMITED)
        else:
            limit = _limit(level / "memory.limit_in_bytes")
        if limit >= UNLIMITED:
            return None
        usage = int((level / ("memory.current" if version == 2 else "memory.usage_in_bytes")).read_text())
        inactive, key = 0, "inactive_file" if version == 2 else "total_inactive_file"
        for line in (level / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                inactive = int(value)
    except (OSError, ValueError):
        return None
    return max(limit - max(usage - inactive, 0), 0)


def _limit(path: Path) -> int:
    """A memory limit file's bytes, v2's "max" (no limit) as UNLIMITED."""
    text = path.read_text().strip()
    return UNLIMITED if text == "max" else int(text)


def _cpu_quota(level: Path, version: int) -> float | None:
    """CPUs of the quota at one cgroup folder (quota / period); None without one."""
    try:
        if version == 2:
            quota, period = (level / "cpu.max").read_text().split()
        else:
            quota, period = (level / "cpu.cfs_quota_us").read_text(), (level / "cpu.cfs_period_us").read_text()
        if quota.strip() in ("max", "-1"):
            return None
        cpus = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cpus if cpus > 0 else None
