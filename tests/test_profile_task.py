"""benchmarks/profile_task.py: a quick profile of the real task program on the CPU attributes its
op time to the parts of the model, and the attribution rules hold on a hand-written HLO text and
synthetic trace events (a GPU-like trace: device streams, a kernel without annotation,
overlapping streams)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import jax
import pytest

from cljax.models import resolve_conv_impl
from tests.conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_task.py"


@pytest.fixture(scope="module")
def profile_task():
    return load_script(SCRIPT, "cljax_profile_task")


@pytest.fixture(scope="module")
def pa(profile_task):
    """benchmarks/profile_attribution.py, as the script imported it (its sibling, on sys.path)."""
    return sys.modules["profile_attribution"]


@pytest.fixture(scope="module")
def pe(profile_task):
    """benchmarks/profile_events.py, likewise."""
    return sys.modules["profile_events"]


def run_quick(profile_task, out: Path, *extra) -> tuple[dict, dict]:
    """One --quick run (its trace kept in ``out``): its report and the JSON it wrote."""
    flags = os.environ.get("XLA_FLAGS")
    try:
        report = profile_task.main(["--quick", "--out", str(out), *extra])
    finally:  # configure() may add the command-buffer flag: leave the environment as it was
        if flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = flags
    return report, json.loads((out / "profile.json").read_text())


@pytest.fixture(scope="module")
def quick_report(profile_task, tmp_path_factory):
    """The default conv (im2col on the CPU)."""
    return run_quick(profile_task, tmp_path_factory.mktemp("profile"))


def test_quick_profile_attributes_the_task_program(quick_report, profile_task):
    report, written = quick_report
    assert written["categories"] == report["categories"] and written["settings"]["quick"]
    assert report["backend"] == jax.default_backend() and report["device_kind"] and report["jax_version"]
    assert report["settings"]["conv"] == resolve_conv_impl("auto") and report["calls"] == 1
    cats = report["categories"]
    assert list(cats) == report["categories_order"]
    assert math.isclose(sum(c["share"] for c in cats.values()), 1.0, abs_tol=1e-9)
    assert report["attributed_share"] > 0.5
    for part in ("conv1_forward", "conv1_backward", "pool", "evaluation"):
        assert cats[part]["seconds"] > 0, part
    assert report["backward"]["seconds"] > 0 and report["backward"]["share"] < 1
    assert report["op_events"] > 0 and report["op_events_outside_calls"] == 0
    eps = 1e-9
    assert 0 < report["busy_seconds"] <= report["execution_seconds"] + eps <= report["call_wall_seconds"] + 2 * eps
    assert report["gap_seconds"] >= -eps and report["op_seconds"] >= report["busy_seconds"] - eps
    tops = [op["seconds"] for op in report["top_ops"]]
    assert 0 < len(tops) <= 15 and tops == sorted(tops, reverse=True)
    table = profile_task.markdown(report)
    assert "| part | seconds | share of op time |" in table
    assert all(label in table for label in profile_task.LABELS.values())


def test_the_raw_profile_and_the_viewer_file_hold_the_same_ops(quick_report, profile_task):
    report, _ = quick_report
    trace_file = Path(report["trace_file"])
    assert trace_file.name == "perfetto_trace.json.gz" and report["trace_source"].endswith(".xplane.pb")
    viewer = profile_task.read_trace(trace_file)
    raw, total = profile_task.read_xspace(next(trace_file.parent.glob("*.xplane.pb")))
    assert total == report["trace_events"] and len(viewer) < 1_000_000

    def ops(events):
        return sorted((e["args"]["hlo_op"], round(e["dur"], 2)) for e in events
                      if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {}))

    assert ops(raw) == ops(viewer) and len(ops(raw)) > 100
    (s_raw, e_raw), = profile_task.call_spans(raw)
    (s_viewer, e_viewer), = profile_task.call_spans(viewer)
    assert math.isclose(e_raw - s_raw, e_viewer - s_viewer, abs_tol=0.01)


def test_quick_profile_with_xla_convolutions(profile_task, tmp_path):
    """conv lax: XLA's convolution, reduce_window and select_and_scatter, named the same way."""
    report, _ = run_quick(profile_task, tmp_path, "--conv-impl", "lax")
    assert report["settings"]["conv"] == "lax" and report["attributed_share"] > 0.5
    cats = report["categories"]
    for part in ("conv1_forward", "conv1_backward", "pool", "conv_other", "evaluation"):
        assert cats[part]["seconds"] > 0, part
    assert report["backward"]["seconds"] > 0
    assert math.isclose(sum(c["share"] for c in cats.values()), 1.0, abs_tol=1e-9)


def test_parse_args_defaults(profile_task, tmp_path):  # a folder of its own: a file at /tmp/x refused it
    args = profile_task.parse_args(["--out", str(tmp_path / "x")])
    assert (args.repeats, args.steps, args.batch_size, args.calls) == (32, 50, 32, 3)
    assert args.json_path == str(tmp_path / "x" / "profile.json") and args.conv_impl == "auto" and args.command_buffers == "off"


HLO = """HloModule jit_run_task, is_scheduled=true, entry_computation_layout={(f32[8,64]{1,0})->f32[8,64]{1,0}}

%fused_computation (param_0: f32[8,64], param_1: f32[64,64]) -> f32[8,64] {
  %param_0 = f32[8,64]{1,0} parameter(0)
  %param_1 = f32[64,64]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,64]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(run_task)/while/body/transpose(jvp(CNN))/conv1/conv1/dot_general"}
}

%fused_computation.1 (param_0.1: f32[16,8], param_1.1: f32[8,8]) -> f32[16] {
  %param_0.1 = f32[16,8]{1,0} parameter(0)
  %param_1.1 = f32[8,8]{1,0} parameter(1)
  %constant.1 = f32[] constant(-inf)
  %dot.2 = f32[16,8]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(run_task)/jvp(CNN)/conv1/conv1/dot_general"}
  ROOT %reduce_max.1 = f32[16]{0} reduce(%dot.2, %constant.1), dimensions={1}, to_apply=%region_max, metadata={op_name="jit(run_task)/jvp(CNN)/conv1/conv1/pool/reduce_max"}
}

%wrapped_rw_computation (param_0.3: f32[8]) -> (f32[4], s32[4]) {
  %param_0.3 = f32[8]{0} parameter(0)
  ROOT %reduce-window.1 = (f32[4]{0}, s32[4]{0}) reduce-window(%param_0.3, %param_0.3), window={size=2 stride=2}, to_apply=%region
}

%fused_computation.2 (param_0.2: f32[8]) -> f32[8] {
  %param_0.2 = f32[8]{0} parameter(0)
  ROOT %select.1 = f32[8]{0} select(%param_0.2, %param_0.2, %param_0.2), metadata={op_name="jit(run_task)/transpose(jvp(CNN))/conv2/pool/select_n"}
}

ENTRY %main.1 (Arg_0.1: f32[8,64], Arg_1.1: f32[64,64]) -> (f32[8,64], f32[8,64]) {
  %Arg_0.1 = f32[8,64]{1,0} parameter(0), metadata={op_name="x"}
  %Arg_1.1 = f32[64,64]{1,0} parameter(1), metadata={op_name="a \\"quoted\\" name"}
  %fusion.1 = f32[8,64]{1,0} fusion(%Arg_0.1, %Arg_1.1), kind=kOutput, calls=%fused_computation
  %pool_fusion = f32[16]{0} fusion(%Arg_0.1, %Arg_1.1), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(run_task)/jvp(CNN)/conv1/conv1/pool/reduce_max"}
  %fusion.2 = f32[8]{0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_computation.2
  %copy.3 = f32[8,64]{0,1} copy(%fusion.1)
  %wrapped_reduce-window = (f32[4]{0}, s32[4]{0}) fusion(%fusion.2), kind=kLoop, calls=%wrapped_rw_computation
  %get-tuple-element.1 = s32[4]{0} get-tuple-element(%wrapped_reduce-window), index=1
  %concatenate.5 = s32[4]{0} concatenate(%get-tuple-element.1), dimensions={0}
  %scatter.2 = f32[8]{0} scatter(%Arg_0.1, %concatenate.5, %fusion.2), update_window_dims={}, metadata={op_name="jit(run_task)/transpose(jvp(CNN))/conv1/pool/select_and_scatter"}
  %while.2 = (s32[], f32[8]{0}) while(%tuple.1), condition=%cond, body=%body, metadata={op_name="jit(run_task)/while"}
  %call.5 = (s32[], /*index=1*/f32[8]{0}) call(%tuple.1), to_apply=%command_buffer
  %convolution.4 = f32[8,9,9,32]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(run_task)/while/body/evaluate/while/body/CNN/conv2/conv2/conv_general_dilated"}
  %gather.7 = u8[32,28,28]{2,1,0} gather(%x, %i), offset_dims={1,2}, metadata={op_name="jit(run_task)/while/body/closed_call/gather"}
  ROOT %tuple.9 = (f32[8,64]{1,0}, /*index=1*/f32[8,64]{0,1}) tuple(%fusion.1, %copy.3)
}
"""


def test_attribution_of_a_hand_written_hlo(pa):
    module, att = pa.attribute_hlo(HLO)
    assert module == "jit_run_task"
    # a fusion without an op_name: its dot's, in the backward pass
    assert att["fusion.1"]["category"] == "conv1_backward" and att["fusion.1"]["backward"]
    assert att["fusion.1"]["op_name"].endswith("conv1/conv1/dot_general")
    # a fusion named by its root (the pool) but computing conv1's matmul: conv1, and mixed
    assert att["pool_fusion"]["category"] == "conv1_forward" and att["pool_fusion"]["mixed"]
    assert not att["pool_fusion"]["backward"]
    # no matmul inside: its root's op_name (the pool's backward)
    assert att["fusion.2"]["category"] == "pool" and att["fusion.2"]["backward"] and not att["fusion.2"]["mixed"]
    # no op_name, nor any through its user (the ROOT tuple)
    assert att["copy.3"] == {"category": "other", "op_name": None, "opcode": "copy", "backward": False, "mixed": False,
                             "inferred": False}
    # no op_name: that of the op using its result, through a get-tuple-element and an op without
    # an op_name either (the pool's gradient)
    rw = att["wrapped_reduce-window"]
    assert rw["category"] == "pool" and rw["inferred"] and rw["backward"] and rw["op_name"].endswith("select_and_scatter")
    assert att["while.2"]["opcode"] == "while" and att["call.5"]["opcode"] == "call"
    assert att["convolution.4"]["category"] == "evaluation"
    assert att["gather.7"]["category"] == "data"
    assert att["Arg_1.1"]["op_name"] == 'a "quoted" name' and att["Arg_1.1"]["opcode"] == "parameter"
    assert att["tuple.9"]["opcode"] == "tuple" and not att["fusion.1"]["inferred"]


@pytest.mark.parametrize("op_name, part", [
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/evaluate/while/body/closed_call/CNN/conv1/conv1/add",
     "evaluation"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/update/mul", "update"),
    ("jit(run_task)/while/body/closed_call/CNN/conv1/conv1/jit(_truncated_normal)/erf_inv", "rng_init"),
    ("jit(run_task)/jit(_threefry_split)/task_keys/while", "rng_init"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/jvp(CNN)/conv2/pool/reduce_window_max", "pool"),
    ("jit(run_task)/shard_map/while/body/vmap(transpose(vmap(jvp(CNN))))/conv1/conv1/pool/reduce_sum", "pool"),
    ("jit(run_task)/shard_map/while/body/vmap(transpose(vmap(jvp(CNN))))/conv1/conv1/dot_general", "conv1_backward"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/transpose(jvp(CNN))/conv1/select_n", "conv1_backward"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/jvp(CNN)/conv1/conv1/conv_general_dilated",
     "conv1_forward"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/transpose(jvp(CNN))/conv3/conv3/rev", "conv_other"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/transpose(jvp(CNN))/dense2/dot_general", "dense"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/jvp(CNN)/head/add", "dense"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/jvp(jit(log_sigmoid))/jit(softplus)/exp", "loss"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/transpose(jvp())/neg", "loss"),
    ("jit(run_task)/while/body/closed_call/while/body/closed_call/jvp(CNN)/jit(relu)/max", "model_other"),
    ("jit(run_task)/while/body/closed_call/jit(dynamic_index_in_dim)/dynamic_slice", "data"),
    ("jit(run_task)/while/body/closed_call/vmap(jit(_shuffle))/sort", "data"),
    ("jit(run_task)/while/body/jit(dynamic_update_index_in_dim)/dynamic_update_slice", "data"),
    ("jit(run_task)/while/body/closed_call/concatenate", "other"),
    (None, "other"),
])
def test_category_of_real_op_names(pa, op_name, part):
    assert pa.category(op_name) == part


def _gpu_like_trace():
    """A device with two streams and a derived line, a host with a launch event and the call."""
    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 1, "tid": 10, "name": "thread_name", "args": {"name": "Stream #10(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 11, "name": "thread_name", "args": {"name": "Stream #11(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 12, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]

    def x(pid, tid, ts, dur, name, **args):
        return {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur, "name": name, "args": args}

    return meta + [
        x(2, 1, 0.0, 100.0, "cljax_profile_call"),
        x(2, 1, 5.0, 1.0, "launch", hlo_op="fusion.1", hlo_module="jit_run_task"),  # host side: not a kernel
        x(1, 10, 10.0, 20.0, "fusion_1_kernel", hlo_op="fusion.1", hlo_module="jit_run_task"),
        x(1, 11, 25.0, 25.0, "fusion_2"),  # no annotation, but named like the instruction fusion.2
        x(1, 10, 40.0, 20.0, "sm90_xmma_gemm_f32", hlo_module="jit_run_task"),  # a library kernel, no hlo_op
        x(1, 10, 70.0, 10.0, "kernel_in_a_graph", hlo_op="call.5", hlo_module="jit_run_task"),  # a command buffer's
        x(1, 12, 10.0, 20.0, "fusion.1", hlo_op="fusion.1", hlo_module="jit_run_task"),  # derived line: a copy
        x(1, 10, 90.0, 5.0, "other_program", hlo_op="fusion.1", hlo_module="jit_other"),
        x(1, 10, 200.0, 5.0, "after_the_call", hlo_op="fusion.1", hlo_module="jit_run_task"),
    ]


def test_trace_events_busy_time_and_gaps(profile_task, pa, pe):
    module, att = pa.attribute_hlo(HLO)
    events = _gpu_like_trace()
    ops, skipped = pe.op_events(events, att, module)
    assert skipped == {"containers": 0, "other_modules": 1, "derived_lines": 1}
    assert [o.instruction for o in ops] == ["fusion.1", "fusion.2", None, None, "fusion.1"]
    spans = profile_task.call_spans(events)
    assert spans == [(0.0, 100.0)]
    s = pe.summarise(ops, att, spans)
    us = 1e-6
    assert s["op_events"] == 4 and s["op_events_outside_calls"] == 1
    # streams overlap over [25, 30] and [40, 50]: union [10, 60] + [70, 80] = 60 us of 75 us of kernels
    assert math.isclose(s["op_seconds"], 75 * us)
    assert math.isclose(s["busy_seconds"], 60 * us)
    assert math.isclose(s["execution_seconds"], 70 * us)  # first kernel at 10, last ends at 80
    assert math.isclose(s["gap_seconds"], 10 * us) and math.isclose(s["gap_share_of_execution"], 10 / 70)
    assert math.isclose(s["call_wall_seconds"], 100 * us) and math.isclose(s["outside_execution_seconds"], 30 * us)
    assert math.isclose(s["parallelism"], 75 / 60)
    cats = s["categories"]
    assert math.isclose(cats["unattributed"]["seconds"], 30 * us) and cats["unattributed"]["events"] == 2
    assert math.isclose(cats["conv1_backward"]["seconds"], 20 * us)
    assert math.isclose(cats["pool"]["seconds"], 25 * us)
    assert math.isclose(s["attributed_share"], 45 / 75)
    assert math.isclose(s["backward"]["seconds"], 45 * us)  # fusion.1 (conv1 bwd) and fusion.2 (pool bwd)
    assert math.isclose(sum(c["share"] for c in cats.values()), 1.0)
    assert s["top_ops"][0]["op"] == "fusion.2" and s["top_ops"][-1]["op"].startswith("[unattributed]")


def test_host_thunks_nested_and_control_flow(pa, pe):
    """The CPU: ops are host events with hlo_op; a while frames its body's ops (left out), and an
    op nested in another on the same thread is taken out of the outer one's time."""
    module, att = pa.attribute_hlo(HLO)

    def x(tid, ts, dur, hlo_op, **extra):
        return {"ph": "X", "pid": 7, "tid": tid, "ts": ts, "dur": dur, "name": hlo_op,
                "args": {"hlo_op": hlo_op, "hlo_module": "jit_run_task", **extra}}

    events = [{"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}},
              x(1, 0.0, 50.0, "while.2"), x(1, 1.0, 10.0, "fusion.1"), x(1, 3.0, 4.0, "fusion.2"),
              x(2, 5.0, 10.0, "copy.3"),
              {"ph": "X", "pid": 7, "tid": 1, "ts": 20.0, "dur": 1.0, "name": "end: fusion.1", "args": {}}]
    ops, skipped = pe.op_events(events, att, module)
    assert skipped["containers"] == 1 and [o.instruction for o in ops] == ["fusion.1", "fusion.2", "copy.3"]
    assert [o.exclusive for o in ops] == [6.0, 4.0, 10.0]
    s = pe.summarise(ops, att, [(0.0, 50.0)])
    assert math.isclose(s["op_seconds"], 20e-6) and math.isclose(s["busy_seconds"], 14e-6)  # [1, 15]
    assert math.isclose(s["no_op_name"]["seconds"], 10e-6)  # the copy XLA added


def test_union_length(pe):
    assert pe.union_length([]) == 0.0
    assert pe.union_length([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == 4.0
    assert pe.union_length([(4, 5), (0, 1)]) == 2.0
