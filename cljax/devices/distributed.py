"""Multi-host runs: joining one with ``jax.distributed`` when the environment asks for it.

``maybe_initialize_distributed()`` calls ``jax.distributed.initialize()`` when the environment
asks for it (``CLJAX_DISTRIBUTED=1``, or a SLURM step with several tasks; outside SLURM also set
``JAX_COORDINATOR_ADDRESS=host:port``, ``CLJAX_NUM_PROCESSES``, ``CLJAX_PROCESS_ID``). Every
process builds the same host arrays (the schedule and data are deterministic functions of the
seed) and hands the devices it owns their slices (``cljax.devices.mesh.put_repeats``); results
come back to every process and only process 0 writes them (``is_writer``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading

import jax
import numpy as np

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
    ids = slurm_local_device_ids(os.environ)
    if ids is not None:
        kwargs["local_device_ids"] = ids
    if os.environ.get("CLJAX_HEARTBEAT_SECONDS", "").strip():  # how soon a lost process is noticed (JAX: 100 s)
        kwargs["heartbeat_timeout_seconds"] = _whole_number("CLJAX_HEARTBEAT_SECONDS", 1)
    _say_joining(kwargs)
    try:
        _initialize_seeing_signals(kwargs)
    except (RuntimeError, ValueError) as exc:
        raise CljaxError(
            f"jax.distributed.initialize() failed ({exc}): check JAX_COORDINATOR_ADDRESS, CLJAX_NUM_PROCESSES and "
            f"CLJAX_PROCESS_ID, start cljax before anything else uses JAX in this process, or set "
            f"CLJAX_DISTRIBUTED=0 for a single-host run."
        ) from None
    _distributed_started = True
    return True


def _initialize_seeing_signals(kwargs: dict) -> None:
    """``jax.distributed.initialize`` in a thread of its own while this one waits in short joins:
    its wait for the other processes is in C++, where a stop signal's Python handler never ran (a
    SIGUSR1 or a Ctrl-C did nothing for 5 minutes, then the process aborted). Its error is raised
    here."""
    failed: list = []

    def target():
        try:
            jax.distributed.initialize(**kwargs)
        except BaseException as exc:  # handed to the waiting thread
            failed.append(exc)

    joining = threading.Thread(target=target, name="cljax-join", daemon=True)
    joining.start()
    while joining.is_alive():
        joining.join(0.2)
    if failed:
        raise failed[0]


def slurm_local_device_ids(env) -> list[int] | None:
    """The GPUs (CUDA ordinals this process sees) a SLURM task uses: its node's GPUs split evenly
    over the node's tasks, so one task per node uses all of them. Left to JAX (None) outside SLURM,
    when JAX_LOCAL_DEVICE_IDS names them, or when the GPUs or tasks are not known or do not
    divide. JAX alone gives every SLURM task the one GPU of its local rank: with the documented
    one task per node and 8 GPUs, each process used 1 GPU and its 8 shares of the repeats.
    SLURM's per-task binding (--gpus-per-task, --gpu-bind) leaves a task fewer visible GPUs than
    its node has: it then uses all it sees."""
    if env.get("JAX_LOCAL_DEVICE_IDS", "").strip() or not env.get("SLURM_LOCALID", "").strip():
        return None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    on_node, tasks, local = (_count(env.get("SLURM_GPUS_ON_NODE")), _tasks_on_this_node(env),
                             _count(env.get("SLURM_LOCALID")))
    if visible and on_node and len(visible) < on_node:
        return list(range(len(visible)))
    n = len(visible) or on_node
    if not n or not tasks or local is None or n % tasks or local >= tasks:
        return None
    per = n // tasks
    return list(range(local * per, (local + 1) * per))


def _count(text) -> int | None:
    try:
        value = int(str(text).strip())
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _tasks_on_this_node(env) -> int | None:
    """This node's task count in the step: SLURM_STEP_TASKS_PER_NODE (else the job's
    SLURM_TASKS_PER_NODE), a list such as "2(x3),1" read at SLURM_NODEID, else
    SLURM_NTASKS_PER_NODE."""
    for var in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        per_node: list[int] = []
        for part in filter(None, env.get(var, "").split(",")):
            count, _, times = part.partition("(x")
            c, t = _count(count), (_count(times.rstrip(")")) if times else 1)
            if c is None or t is None:
                per_node = []
                break
            per_node += [c] * t
        node = _count(env.get("SLURM_NODEID", "0"))
        if per_node and node is not None and node < len(per_node):
            return per_node[node] or None
    return _count(env.get("SLURM_NTASKS_PER_NODE")) or None


def _say_joining(kwargs: dict) -> None:
    """One line from the first process before it waits for the others (JAX's initialize waits up
    to 5 minutes for them): a plain `cljax run` typed in a shell of a
    several-task SLURM step (srun -n4 --pty bash) joined a run of 4 processes without a word."""
    if os.environ.get("CLJAX_DISTRIBUTED", "").strip():  # asked for by name: it knows
        return
    n, rank = os.environ.get("SLURM_NTASKS", "?"), os.environ.get("SLURM_PROCID", "0")
    if str(kwargs.get("process_id", rank)).strip() == "0":
        print(f"note: this SLURM step has {n} tasks, so this process joins a run of {kwargs.get('num_processes', n)} "
              f"processes and waits for the others (up to 5 minutes; Ctrl-C stops the wait); for a run of this process "
              f"alone, set CLJAX_DISTRIBUTED=0.", file=sys.stderr, flush=True)


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


# Settings of this process's host: a place, spelled otherwise there, or the memory budget its
# automatic evaluation chunk is chosen from (the processes then agree on the smallest chunk).
_PER_HOST = ("results_dir", "data_dir", "device_memory")


def check_same_run(config, data_id: str, found, **more) -> None:
    """Every process of a multi-process run refuses it, in one CljaxError line, unless all of them
    start the same run: the same settings (paths aside), data, plugin files and state of the run
    folder (``found``: its run id, the next task, finished, what a repair replays), and ``more``
    (the run flags, :data:`RUN_FLAGS`, among them).
    A process given other settings trained its share of the repeats with them, and one that saw
    another folder (not shared, or another --results-dir) trained other tasks in the same
    collectives, while process 0 wrote the results as if all were one run. Nothing to do in a
    single-process run."""
    if not _distributed_started or jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    record = found.record or {}
    if isinstance(more.get("plugins"), dict):  # a plugin file by its content: each host may keep it elsewhere
        more["plugins"] = {entry: (src or {}).get("sha256") for entry, src in more["plugins"].items()}
    facts = {**{f"--{k.replace('_', '-')}": v for k, v in config.to_dict().items() if k not in _PER_HOST},
             "data": data_id, "run folder": {"run_id": record.get("run_id"), "next_task": found.next_task,
                                             "finished": found.finished, "replay": found.replay, "repair": found.repair},
             **more}
    names = sorted(facts)
    digests = np.stack([np.frombuffer(hashlib.sha256(json.dumps(facts[n], sort_keys=True, default=str).encode())
                                      .digest()[:8], np.uint8) for n in names])
    every = np.asarray(multihost_utils.process_allgather(digests))  # (processes, facts, 8)
    differ = [n for i, n in enumerate(names) if (every[:, i] != every[0, i]).any()]
    if set(differ) & {"--overwrite", "--repair"}:  # on some only: their folders' states follow from it
        differ = [n for n in differ if n != "run folder"]
    if differ:
        others = [p for p in range(len(every)) if (every[p] != every[0]).any()]
        mine = "; ".join(f"{n} {json.dumps(facts[n], sort_keys=True, default=str)[:160]}" for n in differ[:3])
        fixes = [_FIXES.get(n, "the same command") for n in differ]
        raise CljaxError(f"the processes of this multi-process run do not start the same run: process(es) "
                         f"{', '.join(map(str, others))} differ from process 0 in {', '.join(differ)} (process "
                         f"{jax.process_index()} has {mine}): start every process with "
                         f"{', '.join(dict.fromkeys(fixes))} (nothing was written).")


def smallest_over_processes(chunk_tasks: int) -> int:
    """The automatic evaluation chunk K (``--eval-chunk-tasks 0``) of a multi-process run: the
    smallest that any process chose from its own devices' free memory, so that all run one
    program. A smaller K needs less memory, and every K gives the same numbers (evaluate.py)."""
    if not _distributed_started or jax.process_count() == 1:
        return chunk_tasks
    from jax.experimental import multihost_utils

    return int(np.min(np.asarray(multihost_utils.process_allgather(np.array([chunk_tasks], np.int64)))))


@contextlib.contextmanager
def failures_shared(stage: str):
    """Run a block of this process's own checks (no collective inside) so that, in a
    multi-process run, a process whose check fails still reaches the collective at the block's
    end and tells the others, which then stop in one line at once. Before, they waited in the
    next collective until JAX's heartbeat timeout noticed the process gone (minutes)."""
    if not _distributed_started or jax.process_count() == 1:
        yield
        return
    from jax.experimental import multihost_utils

    failure = None
    try:
        yield
    except Exception as exc:  # a CljaxError, or any other failure that ends this process
        failure = exc
    failed = np.flatnonzero(np.asarray(multihost_utils.process_allgather(np.array([failure is not None], np.int8))))
    if failure is not None:
        raise failure
    if failed.size:
        raise CljaxError(f"process(es) {', '.join(map(str, failed))} of this multi-process run stopped {stage} (the "
                         f"error line of each says why): fix that and start every process again (nothing was "
                         f"written).")


# The flags of `cljax run` that are not settings, compared like them: --allow-nonfinite on one
# process only went on past a non-finite loss while process 0 stopped, and both hung in the next
# collective until JAX's shutdown barrier failed (minutes, then pages of C++ traces).
RUN_FLAGS = ("--allow-nonfinite", "--overwrite", "--repair")

_FIXES = {  # what makes a differing fact the same on every process
    **dict.fromkeys(RUN_FLAGS, "the same run flags (--allow-nonfinite, --overwrite, --repair)"),
    "run folder": "a run folder they all share (its path may differ per host)",
    "data": "the same data on every host",
    "plugins": "the same plugin files (their content)",
    "evaluation": "the same --eval-chunk-tasks K",
}


# What a failed collective's error says when another process of the run is gone: gloo's closed or
# reset connection, the coordinator's missed heartbeats. Any other error (out of memory, a
# plugin's callback) is not a lost process, and the same command would fail again.
_LOST = ("gloo", "connection closed", "connection reset", "unavailable", "heartbeat", "coordination service")


def lost_process_line(exc: BaseException) -> str | None:
    """The line for a collective of a multi-process run that failed (another process stopped or
    was killed; gloo reports the connection reset, the coordinator a missed heartbeat), or None
    for anything else: the folder holds every task finished, and the same command resumes it."""
    if not (_distributed_started and isinstance(exc, jax.errors.JaxRuntimeError)):
        return None  # (jax.process_count() would start the backend, and wait for the others, in a failed start)
    what = " ".join(str(exc).split())
    if any(mark in what.lower() for mark in _LOST):
        what = what if len(what) <= 200 else what[:197] + "..."
        return (f"a collective with the other processes of this multi-process run failed ({what}): another process "
                f"has stopped; every task finished is in the run folder: start the same command again on every "
                f"process to resume.")
    return None
