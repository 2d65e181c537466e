"""The ``env`` stage of benchmarks/gpu_check.py: what the machine and its image hold (versions,
devices, the GPU's name and memory) and which of the packages the check needs are missing."""

from __future__ import annotations

import os
import subprocess

NEEDED = ("jax", "flax", "optax", "numpy", "tqdm", "matplotlib", "pytest")


def stage_env(args) -> dict:
    import importlib
    import platform

    versions, missing = {}, []
    for name in (*NEEDED, "torch", "scipy"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except ImportError:
            versions[name] = None
            missing += [name] if name in NEEDED else []
    out = {"python": platform.python_version(), "versions": versions, "missing": missing,
           "environment": {k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "CLJAX_", "CUDA_"))}}
    if versions["jax"] is None:  # the stage still says what is missing (its status: failed)
        return out
    import jax

    out["backend"] = jax.default_backend()
    out["devices"] = [str(d) for d in jax.devices()]
    out["device_kind"] = jax.devices()[0].device_kind
    stats = jax.devices()[0].memory_stats() or {}
    out["device_bytes_limit"] = stats.get("bytes_limit")
    if versions["torch"]:
        import torch

        out["torch_cuda"] = torch.cuda.is_available()
        out["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    try:
        out["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia_smi"] = None
    return out
