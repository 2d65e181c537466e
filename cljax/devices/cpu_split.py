"""Splitting the host CPU into several JAX devices, so that the repeats use every core."""

from __future__ import annotations

import os
import re

import jax

from cljax.devices.distributed import wants_distributed
from cljax.errors import CljaxError
from cljax.host import usable_cores

CPU_DEVICES_ENV = "CLJAX_CPU_DEVICES"


def cpu_devices_for(n_repeats: int, cores: int) -> int:
    """The largest divisor of R that is at most ``cores``: as many CPU devices as R splits over."""
    return max(d for d in range(1, min(n_repeats, cores) + 1) if n_repeats % d == 0)


def forced_cpu_devices(environ=None) -> int | None:
    """The CPU device count ``XLA_FLAGS`` sets (``--xla_force_host_platform_device_count=N``), which
    overrides ``$CLJAX_CPU_DEVICES``; None when it sets none."""
    env = os.environ if environ is None else environ
    found = re.search(r"xla_force_host_platform_device_count=(\d+)", env.get("XLA_FLAGS", ""))
    return int(found.group(1)) if found else None


def cpu_devices_wanted(n_repeats: int, environ=None, cores: int | None = None, recorded: dict | None = None) -> int | None:
    """How many CPU devices a run of R repeats asks for by ``$CLJAX_CPU_DEVICES`` (see
    :func:`configure_cpu_devices`); None: leave JAX's default (one). ``recorded``: the split a
    run being resumed started on (run.json), which ``auto`` reproduces. Raises CljaxError on a
    value that is not usable."""
    env = os.environ if environ is None else environ
    choice = env.get(CPU_DEVICES_ENV, "auto").strip().lower()
    if choice in ("off", "0", "no", "false", "none", "") or wants_distributed(env):
        return None
    if forced_cpu_devices(env) is not None:
        return None  # the user split the host already
    if choice == "auto":
        n = _recorded_cpu_devices(recorded, n_repeats) or cpu_devices_for(n_repeats, usable_cores() if cores is None else cores)
    else:
        try:
            n = int(choice)
        except ValueError:
            raise CljaxError(f"{CPU_DEVICES_ENV}={choice!r} is not understood: use auto, off, or a number of devices "
                             f"that divides --n-repeats.") from None
        if n < 1:
            raise CljaxError(f"{CPU_DEVICES_ENV}={choice}: give a number of devices of at least 1 that divides --n-repeats "
                             f"{n_repeats}, auto, or off.")
        if n_repeats % n:
            raise CljaxError(f"{CPU_DEVICES_ENV}={n} does not divide --n-repeats {n_repeats}: use a divisor of it, "
                             f"auto, or off.")
    return n if n > 1 else None


def _recorded_cpu_devices(recorded: dict | None, n_repeats: int) -> int | None:
    """The CPU device count of a recorded split, when it is one a single process can take again."""
    if not isinstance(recorded, dict) or recorded.get("backend") != "cpu" or recorded.get("processes") != 1:
        return None
    n = recorded.get("devices")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n_repeats % n == 0 else None


def configure_cpu_devices(n_repeats: int, environ=None, recorded: dict | None = None) -> int | None:
    """Split the host CPU into several JAX devices, one per core, so that the repeats train on
    every core at once (a repeat's small matrices keep only one core busy; measured in
    docs/benchmark.md). Must run before JAX starts its backends
    (the CLI and sweep jobs call it first thing); on a GPU host it changes nothing the run uses.

    ``$CLJAX_CPU_DEVICES``: ``auto`` (default: the split ``recorded`` for the run being resumed,
    so that it goes on computing the same last bits on a host with another core count; else the
    largest divisor of R that is at most the usable cores), a number, or ``off``. Left alone
    when ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count`` or in a
    multi-host run. Returns the count set,
    or None; a warning on stderr when JAX had already started on a CPU host with another count. The numbers of a run depend on the split only in the last bits of losses and
    weights (tests/test_sharding.py); each task's metadata lists the devices."""
    n = cpu_devices_wanted(n_repeats, environ, recorded=recorded)
    if n is None or jax.config.jax_num_cpu_devices == n:
        return None
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # JAX already started its backends in this process: keep what it has
        _warn_started(n)
        return None
    return n


def _warn_started(wanted: int) -> None:
    """A warning line when the split came too late on a CPU host: something used JAX before it
    (a regression of this kind ran every CBP and ReDo run on one device, unsaid). On a GPU host
    the split changes nothing the run uses, so nothing is said there."""
    import sys

    if jax.default_backend() != "cpu" or jax.local_device_count() == wanted:
        return
    print(f"warning: JAX had started before cljax could split the CPU into {wanted} devices: this run uses "
          f"{jax.local_device_count()} (slower here, and its numbers differ from a split run's in the last bits). In Python, call "
          f"cljax.devices.configure_cpu_devices before anything uses JAX; from the CLI this is a bug to report.",
          file=sys.stderr)
