"""A profiler trace's op events, summed by part of the model (benchmarks/profile_task.py; the
parts: benchmarks/profile_attribution.py). Plain Python on trace-event dicts (``ph``, ``pid``,
``tid``, ``ts`` and ``dur`` in microseconds, ``name``, ``args``), no JAX.

Op events are the trace's complete events (``ph == "X"``) of the compiled module: on a backend
with device processes (``/device:GPU:0``...) the events of their streams, else (the CPU: ops
run as host thunks) the host events with an ``hlo_op`` argument. An event names its
instruction by ``args.hlo_op``, else by its own name if that is an instruction of the module
(also a GPU kernel name ``fusion_3`` for ``fusion.3``), else it is ``unattributed`` (a cuDNN or
cuBLAS kernel without an annotation, a kernel of a command buffer). Control flow
(``while``, ``call``, ``conditional``) on the host only frames the ops it runs: its events are
left out (on a device stream an event is a kernel, never a frame).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from profile_attribution import CATEGORIES, CONTAINER_OPCODES

DERIVED_LINES = ("XLA Modules", "XLA Ops", "XLA TraceMe", "Steps", "Framework", "TensorFlow", "Source code",
                 "Launch Stats")  # lines a viewer derives from the streams: copies of their time


@dataclass
class OpEvent:
    start: float  # microseconds, the trace's clock
    end: float
    track: tuple  # (pid, tid): one thread or stream
    instruction: str | None  # None: unattributed
    label: str  # the event's name
    exclusive: float = 0.0  # its duration less the op events nested in it on its track


def op_events(events: list[dict], attribution: dict, module: str | None) -> tuple[list[OpEvent], dict]:
    """The op events of ``module`` (see the module doc) and counts of what was left out."""
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e.get("pid")] = str(e.get("args", {}).get("name", ""))
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name", ""))
    device_pids = {pid for pid, name in processes.items() if name.startswith("/device:")}
    seen_modules = {(e.get("args") or {}).get("hlo_module") for e in events if e.get("ph") == "X"}
    module = module if module in seen_modules else None  # named otherwise in this trace: keep every module
    skipped = {"containers": 0, "other_modules": 0, "derived_lines": 0}
    out = []
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        args = e.get("args") or {}
        on_device = e.get("pid") in device_pids
        if device_pids and not on_device:
            continue
        if not device_pids and "hlo_op" not in args:
            continue
        if on_device and threads.get((e.get("pid"), e.get("tid")), "").startswith(DERIVED_LINES):
            skipped["derived_lines"] += 1
            continue
        if module and args.get("hlo_module") not in (None, module):
            skipped["other_modules"] += 1
            continue
        name = _instruction(args.get("hlo_op"), e.get("name", ""), attribution)
        if name is not None and attribution[name]["opcode"] in CONTAINER_OPCODES:
            if not on_device:
                skipped["containers"] += 1
                continue
            name = _instruction(None, e.get("name", ""), attribution)  # a kernel labelled by its command buffer
            if name is not None and attribution[name]["opcode"] in CONTAINER_OPCODES:
                name = None
        start = float(e["ts"])
        out.append(OpEvent(start, start + float(e["dur"]), (e.get("pid"), e.get("tid")), name, str(e.get("name", ""))))
    _set_exclusive(out)
    return out, skipped


def _instruction(hlo_op, event_name: str, attribution: dict) -> str | None:
    for candidate in (hlo_op, event_name, re.sub(r"_(\d+)$", r".\1", event_name)):
        if candidate and candidate in attribution:
            return candidate
    return None


def _set_exclusive(ops: list[OpEvent]) -> None:
    """Each event's duration less that of the events nested in it on its own track."""
    by_track = defaultdict(list)
    for op in ops:
        op.exclusive = op.end - op.start
        by_track[op.track].append(op)
    for track_ops in by_track.values():
        track_ops.sort(key=lambda o: (o.start, -o.end))
        stack = []
        for op in track_ops:
            while stack and stack[-1].end <= op.start:
                stack.pop()
            if stack:
                stack[-1].exclusive -= min(op.end, stack[-1].end) - op.start
            stack.append(op)


def union_length(intervals) -> float:
    """Length of the union of (start, end) intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_end is None or s > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def summarise(ops: list[OpEvent], attribution: dict, call_spans: list[tuple[float, float]], top: int = 15) -> dict:
    """Seconds by category, the backward pass, busy time, gaps and the top ops, over the op
    events inside the timed calls (``call_spans``: their (start, end), trace microseconds; an
    op belongs to the call its midpoint falls in)."""
    us = 1e-6
    per_call = [[] for _ in call_spans]
    outside = 0
    for op in ops:
        mid = (op.start + op.end) / 2
        i = next((i for i, (s, e) in enumerate(call_spans) if s <= mid <= e), None)
        if i is None:
            outside += 1
        else:
            per_call[i].append(op)
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    counts = dict.fromkeys(CATEGORIES, 0)
    by_op = defaultdict(lambda: [0.0, 0])
    backward = no_op_name = mixed = inferred = 0.0
    execution = busy = 0.0
    for call_ops in per_call:
        if not call_ops:
            continue
        execution += max(o.end for o in call_ops) - min(o.start for o in call_ops)
        busy += union_length((o.start, o.end) for o in call_ops)
        for op in call_ops:
            info = attribution.get(op.instruction) if op.instruction else None
            cat = info["category"] if info else "unattributed"
            seconds[cat] += op.exclusive * us
            counts[cat] += 1
            key = op.instruction or f"[unattributed] {op.label}"
            by_op[key][0] += op.exclusive * us
            by_op[key][1] += 1
            if info and info["backward"]:
                backward += op.exclusive * us
            if info and not info["op_name"]:
                no_op_name += op.exclusive * us
            if info and info["mixed"]:
                mixed += op.exclusive * us
            if info and info.get("inferred"):
                inferred += op.exclusive * us
    op_seconds = sum(seconds.values())
    wall = sum(e - s for s, e in call_spans) * us

    def share(x):
        return x / op_seconds if op_seconds > 0 else 0.0

    top_ops = []
    for key, (sec, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
        info = attribution.get(key, {})
        top_ops.append({"op": key, "seconds": sec, "share": share(sec), "events": n,
                        "category": info.get("category", "unattributed"), "opcode": info.get("opcode"),
                        "op_name": info.get("op_name"), "mixed": info.get("mixed", False),
                        "inferred": info.get("inferred", False)})
    return {
        "categories": {c: {"seconds": seconds[c], "share": share(seconds[c]), "events": counts[c]} for c in CATEGORIES},
        "backward": {"seconds": backward, "share": share(backward)},
        "no_op_name": {"seconds": no_op_name, "share": share(no_op_name)},
        "mixed_fusions": {"seconds": mixed, "share": share(mixed)},  # fusions spanning several categories
        "op_name_from_users": {"seconds": inferred, "share": share(inferred)},
        "attributed_share": share(op_seconds - seconds["unattributed"]),
        "op_seconds": op_seconds,
        "calls": len(call_spans),
        "call_wall_seconds": wall,
        "execution_seconds": execution * us,
        "busy_seconds": busy * us,
        "gap_seconds": (execution - busy) * us,
        "gap_share_of_execution": (execution - busy) / execution if execution > 0 else 0.0,
        "outside_execution_seconds": wall - execution * us,
        "parallelism": op_seconds / (busy * us) if busy > 0 else 0.0,
        "op_events": sum(counts.values()),
        "op_events_outside_calls": outside,
        "top_ops": top_ops,
    }
