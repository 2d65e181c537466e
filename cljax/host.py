"""Facts about the host that do not need JAX (the ImageNet preparation imports this without it)."""

from __future__ import annotations

import os

from cljax.cgroup import cgroup_cpus


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a SLURM allocation), not the
    machine's count; fewer where a cgroup's CPU quota allows fewer (a container's ``--cpus``,
    :func:`cljax.cgroup.cgroup_cpus`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
    quota = cgroup_cpus()
    return cores if quota is None else min(cores, quota)
