"""What XLA:CPU compiles for decides a run's bits: the host CPU's vector instruction sets and
XLA_FLAGS (docs/plasticity.md, "Setting A": XLA_FLAGS=--xla_cpu_max_isa=AVX moved the initial
weights and the accuracies from task 2 on). A run records them with its device split, and a resume
on a host that differs says so in one line instead of continuing in silence."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import pytest

import cljax.run_split as run_split
from cljax.experiment import run_experiment
from cljax.host import cpu_codegen
from cljax.run_split import describe_simd, same_split
from tests.backend import on_cpu
from tests.conftest import small_config
from tests.run_folder_kit import RUN_DIR, TINY

CPUINFO = """processor\t: 0
model name\t: Some CPU 9000
flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512bw hypervisor aes
processor\t: 1
model name\t: Some CPU 9000
flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma avx512f avx512bw hypervisor aes
"""
AVX_ONLY = {"cpu": "Older CPU", "simd": ["avx", "sse4_1", "sse4_2"], "xla_flags": ""}


class Stop(Exception):
    pass


def test_the_host_record_is_the_cpu_its_vector_sets_and_xla_flags_less_the_device_count(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=AVX"}
    assert cpu_codegen(env, str(info)) == {"cpu": "Some CPU 9000",
                                           "simd": ["avx", "avx2", "avx512bw", "avx512f", "fma", "sse4_1", "sse4_2"],
                                           "xla_flags": "--xla_cpu_max_isa=AVX"}
    assert cpu_codegen({}, str(info))["xla_flags"] == ""
    assert cpu_codegen({}, str(tmp_path / "none")) is None  # no cpuinfo (not Linux): nothing recorded
    assert describe_simd(["avx", "avx2", "avx512f", "fma"]) == "AVX-512 with FMA"
    assert describe_simd(AVX_ONLY["simd"]) == "AVX without FMA"


def test_another_host_is_another_split_and_a_record_without_one_is_not():
    split = {"backend": "cpu", "devices": 1, "processes": 1,
             "lowering": {"repeats": "loop", "learner_expert": "paired", "conv": "im2col", "devices": 1, "backend": "cpu",
                          "matmul_precision": "highest", "compute_dtype": "float32", "scan_unroll": 1}}
    here = {**split, "host": {"cpu": "Some CPU 9000", "simd": ["avx", "avx2", "fma"], "xla_flags": ""}}
    assert same_split(here, here)
    assert not same_split(here, {**split, "host": AVX_ONLY})
    assert not same_split(here, {**split, "host": {**here["host"], "xla_flags": "--xla_cpu_max_isa=AVX"}})
    assert same_split(split, here) and same_split(here, split)  # recorded before the host was, or none read


def test_a_run_records_its_host_and_a_resume_on_another_cpu_warns(tmp_path, monkeypatch, capsys):
    # the host is given, not read, so the test means the same on any machine (a Mac has no cpuinfo)
    first = {"cpu": "Some CPU 9000", "simd": ["avx", "avx2", "avx512f", "fma"], "xla_flags": ""}
    monkeypatch.setattr(run_split, "cpu_codegen", lambda: first)
    config = small_config(tmp_path, results_dir=str(tmp_path / "r"), **TINY)

    def stop_after_task_0(t, info):
        if t == 0:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(config, progress=False, on_task_end=stop_after_task_0)
    run_dir = tmp_path / "r" / RUN_DIR
    split = json.loads((run_dir / "run.json").read_text())["split"]
    if not on_cpu():  # the host decides the bits of XLA:CPU's programs alone: not recorded, not compared
        assert "host" not in split and split["backend"] == jax.default_backend()
        capsys.readouterr()
        monkeypatch.setattr(run_split, "cpu_codegen", lambda: AVX_ONLY)
        run_experiment(config, progress=False)
        assert "this run started on" not in capsys.readouterr().err
        return
    assert split["host"] == first
    assert json.loads((run_dir / "task_000" / "metadata.json").read_text())["split"]["host"] == first
    capsys.readouterr()

    monkeypatch.setattr(run_split, "cpu_codegen", lambda: AVX_ONLY)  # a requeue onto an older node
    run_experiment(config, progress=False)
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if x.startswith("warning: this run started on"))
    assert "(Some CPU 9000, AVX-512 with FMA, XLA_FLAGS 'unset')" in line  # where it started
    assert "(Older CPU, AVX without FMA, XLA_FLAGS 'unset')" in line
    assert "from task 1 on its numbers can differ" in line
    assert line.endswith("; to keep it, resume on a host with the CPU and XLA_FLAGS the run started with.")
    assert json.loads((run_dir / "task_001" / "metadata.json").read_text())["split"]["host"] == AVX_ONLY
    assert Path(run_dir / "task_001").is_dir()
