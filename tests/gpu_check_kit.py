"""What the GPU check's tests share: the script's path and its modules, loaded from benchmarks/."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    return load_script(SCRIPT, "cljax_gpu_check")


def load_tests_stage():
    """The tests stage's lists and helpers (benchmarks/gpu_check_tests.py)."""
    return load_script(SCRIPT.parent / "gpu_check_tests.py", "cljax_gpu_check_tests")
