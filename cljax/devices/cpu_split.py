"""Splitting the host CPU into several JAX devices, so that the repeats use every core."""

from __future__ import annotations

import os

import jax

from cljax.devices.distributed import wants_distributed
from cljax.errors import CljaxError
from cljax.host import usable_cores

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
