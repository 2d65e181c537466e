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


# The vector instruction sets XLA:CPU may compile for (cpuinfo's names): which of them the host has
# decides the last bits of a CPU run (FMA or not, the vector width), as XLA_FLAGS' codegen flags do.
SIMD_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
              "asimd", "sve", "sve2")


def cpu_codegen(environ=None, cpuinfo: str = "/proc/cpuinfo") -> dict | None:
    """What XLA:CPU compiles a run's programs for on this host: the CPU's model name, its vector
    instruction sets (``SIMD_FLAGS`` and every ``avx512*``) and ``XLA_FLAGS`` less the device count
    (the split records that). Two hosts that differ in any of them can compute other bits from
    the initialisation on (docs/plasticity.md, "Setting A"). None where ``cpuinfo`` cannot be read."""
    env = os.environ if environ is None else environ
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model is None:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    simd = sorted(f for f in flags if f in SIMD_FLAGS or f.startswith("avx512"))
    xla_flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f)
    return {"cpu": model, "simd": simd, "xla_flags": xla_flags}
