"""The environment of a child process that splits its own CPU host (two jax.distributed
processes, one process of several CPU devices, or a sweep's runs, each of which splits it)."""

from __future__ import annotations

import os


def suite_xla_flags(extra: str = "") -> str:
    """This suite's XLA_FLAGS (the fast-compile flags of tests/conftest.py) without a CPU device
    count, plus ``extra``. A child given no XLA_FLAGS compiled at XLA's full optimisation: the two
    processes of each multi-process test spent most of their time compiling."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    return " ".join([*kept, *extra.split()])
