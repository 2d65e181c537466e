"""Placement of arrays with a repeat axis on the device(s), and the multi-host setup.

The repeat axis R is the only axis split across devices: a 1-D mesh over every visible device
(all hosts' devices in a multi-host run) with the axis name ``repeats``. Repeats never talk to
each other, so each device runs R / n_devices repeats of the same compiled program and the
numbers do not depend on how many devices share the work.

Multi-host: ``maybe_initialize_distributed()`` calls ``jax.distributed.initialize()`` when the
environment asks for it (``CLJAX_DISTRIBUTED=1``, or a SLURM step with several tasks; outside
SLURM also set ``JAX_COORDINATOR_ADDRESS=host:port``, ``CLJAX_NUM_PROCESSES``, ``CLJAX_PROCESS_ID``). Every
process builds the same host arrays (the schedule and data are deterministic functions of the
seed) and hands the devices it owns their slices; results come back to every process with
``fetch`` and only process 0 writes them (``is_writer``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cljax.errors import CljaxError
from cljax.host import usable_cores

REPEATS_AXIS = "repeats"
_distributed_started = False


def wants_distributed(environ=None) -> bool:
    """Whether this process is one of several of a multi-host run, by its environment."""
    env = os.environ if environ is None else environ
    flag = env.get("CLJAX_DISTRIBUTED", "").strip().lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes"):
        return True
    # A SLURM step (srun) with several tasks: jax.distributed reads the coordinator from it
    # (the batch script itself has no step node list).
    return "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1


def maybe_initialize_distributed() -> bool:
    """Join the multi-host run if the environment says so (once per process). Returns whether
    this process is part of a multi-host run."""
    global _distributed_started
    if _distributed_started or not wants_distributed():
        return _distributed_started
    # On a SLURM step everything is detected; elsewhere the coordinator and this process's
    # place come from JAX_COORDINATOR_ADDRESS, CLJAX_NUM_PROCESSES and CLJAX_PROCESS_ID.
    env = os.environ
    kwargs = {}
    if env.get("CLJAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["CLJAX_NUM_PROCESSES"])
    if env.get("CLJAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["CLJAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise CljaxError(
            f"jax.distributed.initialize() failed ({exc}): start cljax before anything else uses JAX "
            f"in this process, or set CLJAX_DISTRIBUTED=0 for a single-host run."
        ) from None
    _distributed_started = True
    return True


def is_writer() -> bool:
    """Only process 0 writes results (every process computes them)."""
    return jax.process_index() == 0


def device_count() -> int:
    """Devices the repeat axis is split over: every visible one (see :func:`limit_devices`)."""
    return len(mesh_devices())


_device_limit: int | None = None  # None: every visible device


def mesh_devices() -> list:
    devices = jax.devices()
    return devices[:_device_limit] if _device_limit else devices


@contextmanager
def limit_devices(n: int | None):
    """Within the block, split the repeat axis over the first ``n`` visible devices only (None:
    all). For one process that measures several R on a host split into CPU devices (the
    benchmark); a run itself always uses every visible device."""
    global _device_limit
    previous, _device_limit = _device_limit, n
    try:
        yield
    finally:
        _device_limit = previous


@lru_cache(maxsize=None)
def _mesh(devices: tuple) -> Mesh:
    return Mesh(np.asarray(devices, dtype=object), (REPEATS_AXIS,))


def repeat_mesh() -> Mesh:
    """The 1-D mesh over every visible device, axis ``repeats``."""
    return _mesh(tuple(mesh_devices()))


CPU_DEVICES_ENV = "CLJAX_CPU_DEVICES"


def cpu_devices_for(n_repeats: int, cores: int) -> int:
    """The largest divisor of R that is at most ``cores``: as many CPU devices as R splits over."""
    return max(d for d in range(1, min(n_repeats, cores) + 1) if n_repeats % d == 0)


def cpu_devices_wanted(n_repeats: int, environ=None, cores: int | None = None) -> int | None:
    """How many CPU devices a run of R repeats asks for by ``$CLJAX_CPU_DEVICES`` (see
    :func:`configure_cpu_devices`); None: leave JAX's default (one). Raises CljaxError on a
    value that is not usable."""
    env = os.environ if environ is None else environ
    choice = env.get(CPU_DEVICES_ENV, "auto").strip().lower()
    if choice in ("off", "0", "no", "false", "none", "") or wants_distributed(env):
        return None
    if "xla_force_host_platform_device_count" in env.get("XLA_FLAGS", ""):
        return None  # the user split the host already
    if choice == "auto":
        n = cpu_devices_for(n_repeats, usable_cores() if cores is None else cores)
    else:
        try:
            n = int(choice)
        except ValueError:
            raise CljaxError(f"{CPU_DEVICES_ENV}={choice!r} is not understood: use auto, off, or a number of devices "
                             f"that divides --n-repeats.") from None
        if n < 1 or n_repeats % n:
            raise CljaxError(f"{CPU_DEVICES_ENV}={n} does not divide --n-repeats {n_repeats}: use a divisor of it, "
                             f"auto, or off.")
    return n if n > 1 else None


def configure_cpu_devices(n_repeats: int, environ=None) -> int | None:
    """Split the host CPU into several JAX devices, one per core, so that the repeats train on
    every core at once (a repeat's small matrices keep only one core busy; measured in
    docs/benchmark.md). Must run before JAX starts its backends
    (the CLI and sweep jobs call it first thing); on a GPU host it changes nothing the run uses.

    ``$CLJAX_CPU_DEVICES``: ``auto`` (default: the largest divisor of R that is at most the
    usable cores), a number, or ``off``. Left alone when ``XLA_FLAGS`` already sets
    ``--xla_force_host_platform_device_count`` or in a multi-host run. Returns the count set,
    or None. The numbers of a run depend on the split only in the last bits of losses and
    weights (tests/test_sharding.py); each task's metadata lists the devices."""
    n = cpu_devices_wanted(n_repeats, environ)
    if n is None or jax.config.jax_num_cpu_devices == n:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX already started its backends in this process: keep what it has
        return None
    return n


def check_repeats(n_repeats: int) -> None:
    """R must split evenly over the devices; say how to fix it otherwise."""
    n = device_count()
    if n_repeats % n:
        lower, upper = (n_repeats // n) * n, (n_repeats // n + 1) * n
        options = f"{lower} or {upper}" if lower else f"{upper}"
        raise CljaxError(
            f"--n-repeats {n_repeats} does not split over the {n} visible devices: use a multiple of {n} "
            f"(e.g. {options}), or show fewer devices (CUDA_VISIBLE_DEVICES; on the CPU, {CPU_DEVICES_ENV}=auto)."
        )


def repeat_sharding(ndim: int, repeat_axis: int) -> NamedSharding:
    """Axis ``repeat_axis`` of an ``ndim``-D array split over the mesh, the rest replicated."""
    spec = [None] * ndim
    spec[repeat_axis] = REPEATS_AXIS
    return NamedSharding(repeat_mesh(), PartitionSpec(*spec))


def put_repeats(x, repeat_axis: int):
    """Put an array whose axis ``repeat_axis`` is R on the device(s), R split over the mesh.

    The one placement point of train data, test sets and (via ``shard_repeats``) the learner."""
    x_shape = np.shape(x)
    check_repeats(x_shape[repeat_axis])
    sharding = repeat_sharding(len(x_shape), repeat_axis)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Multi-host: every process holds the whole host array; each fills the shards it owns.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_repeats(tree):
    """Every leaf of a pytree with leading axis R (e.g. the learner state), split over R."""
    return jax.tree.map(lambda leaf: put_repeats(leaf, 0), tree)


def fetch(tree):
    """Device arrays -> host numpy (the task's one transfer). Multi-host: every process gets
    the whole arrays, gathered from the devices of all processes."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)) if isinstance(a, jax.Array) else a,
        tree,
    )


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
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident memory of this process now (not the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
