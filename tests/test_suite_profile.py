"""benchmarks/suite_profile.py: the per-test profile of a pytest run, on a two-test file."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTS = """
import subprocess, sys
import jax, jax.numpy as jnp

def test_compiles():
    assert float(jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.float32(0.5))) > 0

def test_a_child():
    assert subprocess.run([sys.executable, "-c", "sum(range(10**6))"]).returncode == 0
"""


def test_rows_hold_each_tests_compile_and_its_childs_cpu_and_the_summary_reads_them(tmp_path):
    (tmp_path / "test_tiny.py").write_text(TESTS)
    out = tmp_path / "prof"
    env = {**os.environ, "SUITE_PROFILE_OUT": str(out), "PYTHONPATH": str(ROOT / "benchmarks")}
    env.pop("PYTEST_XDIST_WORKER", None)  # this worker's name: the child is a pytest of its own
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "suite_profile", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_tiny.py")], env=env, capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["test"].split("::")[1]: r for r in json.loads((out / "rows_main.json").read_text())}
    assert sorted(rows) == ["test_a_child", "test_compiles"]
    assert rows["test_compiles"]["events"]["/jax/core/compile/backend_compile_duration"] > 0
    assert "/jax/core/compile/backend_compile_duration" not in rows["test_a_child"]["events"]
    assert rows["test_a_child"]["child_cpu"] > 0 and rows["test_compiles"]["child_cpu"] == 0
    assert all(r["wall"] > 0 and r["self_cpu"] >= 0 for r in rows.values()), rows
    text = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_profile.py"), str(out), "1"],
                          capture_output=True, text=True, timeout=60)
    lines = text.stdout.splitlines()
    assert text.returncode == 0 and lines[0].startswith("2 tests: ") and "test_tiny.py" in text.stdout
    assert sum(line.startswith("  ") and "::" in line for line in lines) == 1  # the top 1
    empty = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "suite_profile.py"), str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and empty.stderr.strip().startswith(f"error: {tmp_path} holds no rows_*.json")
