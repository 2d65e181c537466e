"""Placement of arrays with a repeat axis on the device(s).

The repeat axis R is the only axis split across devices: a 1-D mesh over every visible device
(all hosts' devices in a multi-host run) with the axis name ``repeats``. Repeats never talk to
each other, so each device runs R / n_devices repeats of the same compiled program.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cljax.devices.cpu_split import CPU_DEVICES_ENV, forced_cpu_devices
from cljax.errors import CljaxError

REPEATS_AXIS = "repeats"
_device_limit: int | None = None  # None: every visible device


def device_count() -> int:
    """Devices the repeat axis is split over: every visible one (see :func:`limit_devices`)."""
    return len(mesh_devices())


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


def check_repeats(n_repeats: int) -> None:
    """R must split evenly over the devices; say how to fix it otherwise."""
    n = device_count()
    if n_repeats % n:
        lower, upper = (n_repeats // n) * n, (n_repeats // n + 1) * n
        options = f"{lower} or {upper}" if lower else f"{upper}"
        import jax

        per_process = n // jax.process_count()
        fewer = (f"in this multi-process run, fewer processes or fewer devices each: each shows {per_process} of "
                 f"them" + (" (on the CPU, its XLA_FLAGS' --xla_force_host_platform_device_count)"
                            if forced_cpu_devices() is not None else "") if jax.process_count() > 1
                 else "on the CPU, remove --xla_force_host_platform_device_count from XLA_FLAGS, which overrides "
                      f"{CPU_DEVICES_ENV}" if forced_cpu_devices() is not None
                 else f"on the CPU, {CPU_DEVICES_ENV}=auto")
        raise CljaxError(
            f"--n-repeats {n_repeats} does not split over the {n} visible devices: use a multiple of {n} "
            f"(e.g. {options}), or show fewer devices (CUDA_VISIBLE_DEVICES; {fewer})."
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
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # no numpy form: place its key data
        return jax.random.wrap_key_data(put_repeats(jax.random.key_data(x), repeat_axis), impl=jax.random.key_impl(x))
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
    return jax.tree.map(gathered, tree)


def fetch_owned(tree):
    """``fetch``, as host arrays that own their memory. On the CPU ``jax.device_get`` hands back
    numpy views of a one-device array's buffer, and while a view lives XLA does not reuse
    (donate) that buffer: the learner fetched for the checkpoint was held twice on the device
    while the next task trained, one learner past the plan and past --device-memory."""
    if jax.process_count() > 1:  # gathered from the processes: new host arrays already
        return fetch(tree)
    return jax.tree.map(lambda a: np.array(a, copy=True) if isinstance(a, np.ndarray) and not a.flags.owndata else a,
                        fetch(tree))


def gathered(leaf):
    """One leaf of ``fetch`` across processes: a device array's whole value on the host; a PRNG key
    array (a plugin's state may hold one) as a key array, as ``jax.device_get`` leaves it."""
    from jax.experimental import multihost_utils

    if not isinstance(leaf, jax.Array):
        return leaf
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # no numpy form: gather its key data
        data = np.asarray(multihost_utils.process_allgather(jax.random.key_data(leaf), tiled=True))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
