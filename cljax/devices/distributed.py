"""Multi-host runs: joining one with ``jax.distributed`` when the environment asks for it.

``maybe_initialize_distributed()`` calls ``jax.distributed.initialize()`` when the environment
asks for it (``CLJAX_DISTRIBUTED=1``, or a SLURM step with several tasks; outside SLURM also set
``JAX_COORDINATOR_ADDRESS=host:port``, ``CLJAX_NUM_PROCESSES``, ``CLJAX_PROCESS_ID``). Every
process builds the same host arrays (the schedule and data are deterministic functions of the
seed) and hands the devices it owns their slices (``cljax.devices.mesh.put_repeats``); results
come back to every process and only process 0 writes them (``is_writer``).
"""

from __future__ import annotations

import os

import jax

from cljax.errors import CljaxError

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
    kwargs = {arg: _whole_number(var, least) for var, arg, least in (
        ("CLJAX_NUM_PROCESSES", "num_processes", 1), ("CLJAX_PROCESS_ID", "process_id", 0))
        if os.environ.get(var, "").strip()}
    if kwargs.get("process_id", 0) >= kwargs.get("num_processes", float("inf")):
        raise CljaxError(f"CLJAX_PROCESS_ID={kwargs['process_id']} is not below CLJAX_NUM_PROCESSES="
                         f"{kwargs['num_processes']}: process ids run 0 .. {kwargs['num_processes'] - 1}.")
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise CljaxError(
            f"jax.distributed.initialize() failed ({exc}): check JAX_COORDINATOR_ADDRESS, CLJAX_NUM_PROCESSES and "
            f"CLJAX_PROCESS_ID, start cljax before anything else uses JAX in this process, or set "
            f"CLJAX_DISTRIBUTED=0 for a single-host run."
        ) from None
    _distributed_started = True
    return True


def _whole_number(var: str, least: int) -> int:
    try:
        value = int(os.environ[var])
    except ValueError:
        value = least - 1
    if value < least:
        raise CljaxError(f"{var}={os.environ[var]!r} is not a whole number of at least {least}: set it (process ids "
                         f"run 0 .. CLJAX_NUM_PROCESSES - 1), or CLJAX_DISTRIBUTED=0 for a single-host run.")
    return value


def is_writer() -> bool:
    """Only process 0 writes results (every process computes them)."""
    return jax.process_index() == 0
