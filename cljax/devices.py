"""Placement of arrays with a repeat axis on the device(s)."""

from __future__ import annotations

import jax


def put_repeats(x, repeat_axis: int):
    """Put a host array whose axis ``repeat_axis`` is R on the device."""
    return jax.device_put(x)
