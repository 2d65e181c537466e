"""Memory figures: live device buffers, the per-device budget, the host's free and resident memory."""

from __future__ import annotations

import os

import jax

from cljax.cgroup import cgroup_available_bytes

CGROUP_SOURCE = "the memory limit of cgroup"  # host_available's source when a cgroup sets the figure


def live_device_bytes() -> int:
    """Bytes of the device buffers behind every live JAX array of this process, summed over
    its devices. Each buffer counts once: the per-device views of a sharded array (which
    ``jax.live_arrays`` also lists once they have been touched) share their parent's buffers.
    Waits for pending computations (it reads buffer addresses): for measurements only."""
    seen: dict[int, int] = {}  # buffer address -> bytes (one address space per process)
    for arr in jax.live_arrays():
        if arr.is_deleted() or arr.nbytes == 0:
            continue
        parts = [arr] if len(arr.sharding.device_set) == 1 else [s.data for s in arr.addressable_shards]
        for part in parts:
            seen[part.unsafe_buffer_pointer()] = part.nbytes
    return sum(seen.values())


def device_budget() -> tuple[int, str]:
    """Memory per device available to a run, and where the figure comes from: the device's own
    limit (``memory_stats()["bytes_limit"]``), else (CPU) the host's available memory shared by
    the local devices."""
    dev = jax.local_devices()[0]
    stats = None
    try:
        stats = dev.memory_stats()
    except Exception:  # some backends do not implement it
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{dev.platform} bytes_limit"
    return host_available_bytes() // max(jax.local_device_count(), 1), "host available memory"


def host_available_bytes() -> int:
    """The host memory this process may still take: :func:`host_available`'s bytes."""
    return host_available()[0]


def host_available() -> tuple[int, str]:
    """(bytes, where the figure comes from): the machine's available memory, or less where this
    process's cgroup (a SLURM job's --mem, a container's limit) leaves less room
    (:mod:`cljax.cgroup`)."""
    machine, source = _meminfo_available(), "the machine's MemAvailable"
    if machine is None:
        machine, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the machine's free pages"
    group = cgroup_available_bytes()
    if group is not None and group[0] < machine:
        return group[0], f"{CGROUP_SOURCE} {group[1]}"
    return machine, source


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident memory of this process now (not the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
