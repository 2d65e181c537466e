"""A work-around for a wait in jaxlib 0.10's CPU LAPACK kernels, for the analysis.

jaxlib 0.10's CPU kernels of batched decompositions (the SVD, eigenvalues and Cholesky factors
that the GLUE analysis uses) hand their chunks to XLA's intra-op thread pool and wait for them.
When as many of them run at once as the pool has threads (two on a 2-core host), every thread
waits and the program never ends (gdb: each pool thread in ``ParallelBatchMap`` ->
``BlockingCounter::Wait``). Without the multi-threaded Eigen pool the kernels run their chunks
themselves. docs/benchmark.md ("The analysis on jaxlib 0.10") has the measurements."""

from __future__ import annotations

import os

FLAG = "--xla_cpu_multi_thread_eigen=false"
FLAG_NAME = "xla_cpu_multi_thread_eigen"


def jaxlib_waits(version: str | None = None) -> bool:
    """Whether this jaxlib (or ``version``) is one whose CPU LAPACK kernels wait on the pool: 0.10.x."""
    if version is None:
        import jaxlib

        version = getattr(jaxlib, "__version__", "")
    parts = version.split(".")
    return len(parts) >= 2 and parts[0] == "0" and parts[1] == "10"


def avoid_lapack_pool_wait(environ=None, version: str | None = None) -> bool:
    """Add ``FLAG`` to ``XLA_FLAGS`` (of ``environ``, default this process's) on a jaxlib whose
    kernels wait, unless the flags already choose that setting. Call it before JAX starts its
    backends (later, XLA has read its flags: no effect). Returns whether it added the flag."""
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if FLAG_NAME in flags or not jaxlib_waits(version):
        return False
    env["XLA_FLAGS"] = (flags + " " + FLAG).strip()
    return True
