"""Worker processes for the analysis's solves: ``cljax analyze --workers N``.

GLUE solves R x 256 small QPs per task folder, mostly on one core: most of the analysis of a
long run. Two solves in flight in one process can hang XLA:CPU's LAPACK kernels
(:mod:`cljax.analysis.order`), so the solves go to other processes, each with its own XLA. The
main process goes on reading the next task folders meanwhile.

A worker is ``python -m cljax.analysis.workers``, fed pickled calls of cljax's own module-level
functions on its stdin, one at a time, and answering each on its stdout. It is plain pipes, not
``multiprocessing``: a stopped ``cljax analyze`` leaves through ``os._exit`` (cljax.cli), where a
multiprocessing pool's workers printed broken-pipe tracebacks and its semaphores a leak warning.
Here a worker reads the end of its stdin and exits. A worker runs in its own session, so a
Ctrl-C on the terminal reaches the main process alone; SLURM's SIGTERM, sent to every process of
the job, ends it quietly.
A computation gives the same bits in a worker as in the main process: the same program, compiled
by the same XLA for the same shapes (tests/test_analysis_workers.py).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import traceback
from collections import deque
from typing import Any, Callable

from cljax.errors import CljaxError
from cljax.host import usable_cores


# "auto" starts workers for runs of at least this many task folders (a worker takes seconds to
# start and compile), one per usable core, at most AUTO_MAX
AUTO_FOLDERS, AUTO_MAX = 64, 8
# Host memory of one worker: JAX, XLA and GLUE's compiled solves (about 0.38 GiB of RSS measured
# at R = 30: docs/benchmark.md, "The analysis's GLUE in worker processes"), rounded up
BYTES_PER_WORKER = 2**30 // 2


def worker_count(requested: int | str, n_folders: int, glue: bool, spare_bytes: float = float("inf")) -> int:
    """The worker processes of an analysis: ``requested`` (an int >= 1; 1: none), or for "auto"
    one per usable core (at most AUTO_MAX) when GLUE runs on AUTO_FOLDERS task folders or more.
    1 (none) where JAX computes on an accelerator: GLUE is solved there, in this process.
    ``spare_bytes``: the host memory the analysis leaves free. "auto" starts no more workers than
    fit in it; a number of workers that does not fit is an error naming the fix."""
    if requested != "auto" and not (isinstance(requested, int) and requested >= 1):
        raise CljaxError(f"workers must be 'auto' or a whole number >= 1, got {requested!r}")
    if not glue:
        return 1
    import jax

    if jax.default_backend() != "cpu":
        return 1
    fit = max(spare_bytes, 0) // BYTES_PER_WORKER  # may be inf
    if requested == "auto":
        n = int(min(usable_cores(), AUTO_MAX, fit)) if n_folders >= AUTO_FOLDERS else 1
        return n if n >= 2 else 1
    if requested > 1 and requested > fit:
        raise CljaxError(f"{requested} workers (--workers) take about {requested * BYTES_PER_WORKER / 2**30:.1f} GiB of "
                         f"host memory beside the analysis, and {max(spare_bytes, 0) / 2**30:.1f} GiB are left: use "
                         f"{f'--workers {int(fit)} or fewer' if fit >= 2 else '--workers 1 (none)'}, or a machine with "
                         f"more memory.")
    return requested


class Done:
    """A call's result, available now (the in-process path, and a worker's answer once read)."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value

    def ready(self) -> bool:
        return True


class _Call:
    """A call sent to a worker; ``result()`` waits for its answer (each worker has one at a time)."""

    def __init__(self, pool: "Workers", proc: subprocess.Popen):
        self.pool, self.proc, self.answered, self.value = pool, proc, False, None

    def result(self) -> Any:
        if not self.answered:
            self.value, self.answered = self.pool._answer(self.proc), True
        return self.value

    def ready(self) -> bool:
        """Whether its answer was read (``result()`` would not wait)."""
        return self.answered


class Workers:
    """``n`` worker processes; ``submit(fn, *args)`` sends the call to a free one, waiting for the
    oldest call when every worker has one. ``n`` <= 1: every call runs here, at once."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.procs: list[subprocess.Popen] = []
        self.free: deque[subprocess.Popen] = deque()
        self.busy: deque[_Call] = deque()  # the calls in flight, oldest first

    def submit(self, fn: Callable, *args, **kwargs):
        if self.n == 1:
            return Done(fn(*args, **kwargs))
        if not self.free and len(self.procs) < self.n:
            self.free.append(self._start())
        while not self.free:  # the oldest call's worker (its answer is kept); one answered already frees none
            self.busy.popleft().result()
        call = _Call(self, self.free.popleft())
        self.busy.append(call)
        try:
            pickle.dump((fn, args, kwargs), call.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            call.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise CljaxError(self._ended(call.proc)) from None
        return call

    def _start(self) -> subprocess.Popen:
        import jax

        # On the CPU only (cljax.analysis.driver), with this process's compilation cache, if any.
        # Its own session: a Ctrl-C on the terminal reaches this process alone, which stops them.
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "CLJAX_COMPILATION_CACHE": jax.config.jax_compilation_cache_dir or "off"}
        proc = subprocess.Popen([sys.executable, "-m", "cljax.analysis.workers"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc

    def _answer(self, proc: subprocess.Popen) -> Any:
        try:
            ok, value = pickle.load(proc.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise CljaxError(self._ended(proc)) from None
        self.free.append(proc)
        if not ok:
            raise RuntimeError(f"an analysis worker process raised:\n{value}")
        return value

    def _ended(self, proc: subprocess.Popen) -> str:
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "none yet"
        return (f"an analysis worker process ended before it answered (exit status {code}; killed for memory?): "
                f"run `cljax analyze` with fewer --workers, or --workers 1 (no worker processes)")

    def close(self) -> None:
        """End the workers: each reads the end of its stdin and exits (killed if it does not)."""
        for proc in self.procs:
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


IN_PROCESS = Workers(1)  # every call run at once, here


def _serve() -> None:
    """A worker's loop: answer each call read from stdin with (True, result) or (False, traceback)."""
    from cljax import enable_compilation_cache

    enable_compilation_cache()  # (its parent's folder, or off: Workers._start)
    out = os.fdopen(os.dup(1), "wb")  # the answers' own channel: anything printed goes to stderr
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while True:
        try:
            fn, args, kwargs = pickle.load(requests)
        except (EOFError, OSError):
            break  # the parent closed its end, or is gone
        try:
            answer = (True, fn(*args, **kwargs))
        except Exception:
            answer = (False, traceback.format_exc())
        try:
            pickle.dump(answer, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
        except (BrokenPipeError, OSError):
            break
    os._exit(0)  # (no JAX teardown: nothing is left to write)


if __name__ == "__main__":
    _serve()
