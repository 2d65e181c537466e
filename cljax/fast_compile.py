"""XLA flags that make XLA:CPU compile faster, for runs that check code rather than measure it:
the test suite (tests/conftest.py) and the GPU check's smoke mode (benchmarks/gpu_check.py).

Compilation is most of those runs' time on a small CPU, and XLA's backend optimisation is most of
compilation. Level 1 compiles much faster than the default (3) and still runs long programs fast
(level 0 does not: docs/benchmark.md, "Test suite"); XLA:CPU's older loop emitters
(``xla_cpu_use_fusion_emitters=false``) compile faster again. XLA aborts a process that names a
flag it does not know, so that one is tried in a child process first. The numbers of such a build
may differ from a fully optimised one's by float rounding. Jax-free: it runs before JAX starts.
"""

from __future__ import annotations

import os
import subprocess
import sys

LEVEL_FLAG = "--xla_backend_optimization_level=1"
OPTIONAL_FLAG = "--xla_cpu_use_fusion_emitters=false"


def xla_accepts(flags: str, environ=None) -> bool:
    """Whether this jaxlib's XLA starts with ``flags`` added to XLA_FLAGS."""
    environ = os.environ if environ is None else environ
    env = {**environ, "XLA_FLAGS": (environ.get("XLA_FLAGS", "") + " " + flags).strip(), "JAX_PLATFORMS": "cpu"}
    try:
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.jit(lambda x: x + 1)(1)"], env=env,
                               capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:  # a machine too busy to say: go on without the flag
        return False
    return probe.returncode == 0


def fast_compile_xla_flags(environ=None) -> str | None:
    """``XLA_FLAGS`` of ``environ`` with the fast-compile flags added, or None when it already sets
    an optimisation level (someone chose one)."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return None
    extra = LEVEL_FLAG + (" " + OPTIONAL_FLAG if xla_accepts(OPTIONAL_FLAG, environ) else "")
    return (flags + " " + extra).strip()
