"""Devices, one module per job:

- ``mesh``: the 1-D ``repeats`` mesh and the placement of arrays with a repeat axis on it;
- ``cpu_split``: one JAX device per CPU core (``$CLJAX_CPU_DEVICES``), set before JAX starts;
- ``memory``: live device bytes, the per-device budget, host memory;
- ``distributed``: joining a multi-host run.

The names below are the public API (``cljax.devices.configure_cpu_devices(R)`` before a run
from Python, docs/scale.md).
"""

from cljax.devices.cpu_split import CPU_DEVICES_ENV, configure_cpu_devices, cpu_devices_for, cpu_devices_wanted
from cljax.devices.distributed import is_writer, maybe_initialize_distributed, wants_distributed
from cljax.devices.memory import device_budget, host_available_bytes, live_device_bytes, rss_bytes
from cljax.devices.mesh import (REPEATS_AXIS, check_repeats, device_count, fetch, limit_devices, mesh_devices,
                                put_repeats, repeat_mesh, repeat_sharding, shard_repeats)

__all__ = [
    "CPU_DEVICES_ENV", "configure_cpu_devices", "cpu_devices_for", "cpu_devices_wanted", "is_writer",
    "maybe_initialize_distributed", "wants_distributed", "device_budget", "host_available_bytes",
    "live_device_bytes", "rss_bytes", "REPEATS_AXIS", "check_repeats", "device_count", "fetch", "limit_devices",
    "mesh_devices", "put_repeats", "repeat_mesh", "repeat_sharding", "shard_repeats",
]
