"""Where the time of a compiled program goes: its profiler trace's op events, attributed to parts
of the model through the program's HLO text (benchmarks/profile_task.py runs it; no JAX here).

Each HLO instruction carries ``metadata={op_name="..."}``, JAX's name stack of the traced op:
transform wrappers (``jvp(CNN)``, ``transpose(jvp(CNN))``, ``vmap(...)``, ``jit(...)``) around
function names, flax module names and ``jax.named_scope`` names, joined by ``/``. A fusion
takes the op_name of the matmul or convolution it computes if any (XLA:CPU fuses a conv
layer's matmul with its bias, relu and max-pool: the fusion's own op_name, its root's, is then
the pool's), else its own, else that of its fused computation's root. ``category`` reads a name stack, first rule that
matches wins:

1. evaluation: a segment ``evaluate`` (the expert's evaluation on the task's test set);
2. update: a segment ``update`` (options and optimiser updates, whatever they run inside);
3. rng_init: random keys (``_threefry*``, ``random_*``) and sampled initial values
   (``_truncated_normal``, ``_uniform``, ``_normal``): the keys of every step and the expert's
   re-initialisation (its other init ops, a few scalings, count as forward layers);
4. pool: a segment ``pool`` (the max-pools of every layer, forward and backward);
5. conv1_backward: a segment ``conv1`` in a stack with a ``transpose(`` (the backward pass);
6. conv1_forward: a segment ``conv1``;
7. conv_other: a segment ``conv<N>``, N > 1;
8. dense: a segment ``dense<N>`` or ``head`` (flax module names of the dense layers);
9. loss: a segment ``log_sigmoid``, ``softplus``, ``log_softmax``, ``logsumexp``,
   ``take_along_axis``, ``nll_and_correct``, or a differentiated anonymous function
   (``jvp()``, ``transpose(jvp())``: the loss's own reductions);
10. model_other: a segment ``CNN`` (or another module class: a capitalised name) outside the
    named layers (activations after dense layers, the images' conversion, the spatial mean);
11. data: ``dynamic_index_in_dim``, ``dynamic_update_index_in_dim``, ``_shuffle``, or a
    ``gather``/``dynamic_slice``/``dynamic_update_slice`` primitive (the batch, a repeat's
    slice, the trace written per step);
12. other: the rest, with the instructions XLA added without an op_name (layout copies...).

``backward`` (not a category; it cuts across them): a ``transpose(`` anywhere in the stack.

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

CATEGORIES = ("evaluation", "update", "rng_init", "pool", "conv1_backward", "conv1_forward", "conv_other", "dense",
              "loss", "model_other", "data", "other", "unattributed")
CONTAINER_OPCODES = frozenset({"while", "call", "conditional"})
HEAVY_OPCODES = frozenset({"dot", "convolution", "custom-call"})  # what a fusion's time is mostly spent on
DERIVED_LINES = ("XLA Modules", "XLA Ops", "XLA TraceMe", "Steps", "Framework", "TensorFlow", "Source code",
                 "Launch Stats")  # lines a viewer derives from the streams: copies of their time

_RNG = re.compile(r"^(_threefry|threefry|random_|_truncated_normal|truncated_normal|_uniform|_normal)")
_LOSS = frozenset({"log_sigmoid", "softplus", "log_softmax", "logsumexp", "take_along_axis", "nll_and_correct"})
_DATA_SCOPES = frozenset({"dynamic_index_in_dim", "dynamic_update_index_in_dim", "_shuffle"})
_DATA_PRIMITIVES = frozenset({"gather", "dynamic_slice", "dynamic_update_slice"})
_WRAPPER = re.compile(r"^([A-Za-z_][\w.<>-]*)\((.*)\)$")

_HEAD = re.compile(r"^\s+(?:ROOT\s+)?%?(?P<name>[^\s=%]+)\s*=\s*(?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_OPCODE = re.compile(r"^\s*(?P<opcode>[\w-]+)\(")
_CALLS = re.compile(r"\bcalls=%?(?P<name>[\w.\-]+)")
_OP_NAME = re.compile(r'op_name="(?P<value>(?:[^"\\]|\\.)*)"')
_MODULE = re.compile(r"^HloModule\s+(?P<name>[^\s,]+)")


# ---- names ---------------------------------------------------------------------------------
def segments(op_name: str) -> list[tuple[str, tuple[str, ...]]]:
    """``a/transpose(jvp(CNN))/conv1`` -> [("a", ()), ("CNN", ("transpose", "jvp")), ("conv1", ())]:
    each segment's name without its transform wrappers, and the wrappers."""
    out = []
    for part in _split(op_name):
        wrappers = []
        m = _WRAPPER.match(part)
        while m:
            wrappers.append(m.group(1))
            part = m.group(2)
            m = _WRAPPER.match(part)
        out.append((part, tuple(wrappers)))
    return out


def _split(op_name: str) -> list[str]:
    """Split on the ``/`` outside parentheses (``vmap(jit(f))/g`` has two segments)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(op_name):
        depth += (ch == "(") - (ch == ")")
        if ch == "/" and depth == 0:
            parts.append(op_name[start:i])
            start = i + 1
    parts.append(op_name[start:])
    return [p for p in parts if p]


def category(op_name: str | None) -> str:
    """The part of the task program an op_name belongs to (the precedence of the module doc)."""
    if not op_name:
        return "other"
    segs = segments(op_name)
    names = [name for name, _ in segs]
    wrappers = {w for _, ws in segs for w in ws}
    if "evaluate" in names:
        return "evaluation"
    if "update" in names:
        return "update"
    if any(_RNG.match(name) for name in names):
        return "rng_init"
    if "pool" in names:
        return "pool"
    if "conv1" in names:
        return "conv1_backward" if "transpose" in wrappers else "conv1_forward"
    if any(re.fullmatch(r"conv\d+", name) for name in names):
        return "conv_other"
    if any(re.fullmatch(r"dense\d*|head", name) for name in names):
        return "dense"
    if any(name in _LOSS for name in names) or any(name == "" and "jvp" in ws for name, ws in segs):
        return "loss"
    if any(name[:1].isupper() for name in names):
        return "model_other"
    if any(name in _DATA_SCOPES for name in names) or names[-1] in _DATA_PRIMITIVES:
        return "data"
    return "other"


def is_backward(op_name: str | None) -> bool:
    return bool(op_name) and "transpose(" in op_name


def short_op_name(op_name: str | None) -> str:
    """The op_name without the loop plumbing (``jit(run_task)``, ``while``, ``body``, ``closed_call``)."""
    if not op_name:
        return ""
    plumbing = ("while", "body", "closed_call", "cond")
    keep = [p for p in _split(op_name) if p not in plumbing and not p.startswith("jit(run_")]
    return "/".join(keep)


# ---- the HLO text ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    op_name: str | None  # its own metadata op_name
    calls: str | None  # the fused computation of a fusion
    computation: str


def parse_hlo(text: str) -> tuple[str | None, dict[str, Instruction], dict[str, list[str]]]:
    """(module name, instruction name -> Instruction, computation name -> its instructions' names)."""
    module, instructions, computations, current = None, {}, defaultdict(list), None
    for line in text.splitlines():
        if module is None and (m := _MODULE.match(line)):
            module = m.group("name")
            continue
        if (m := _COMPUTATION.match(line)):
            current = m.group("name")
            continue
        if current is None or not (m := _HEAD.match(line)):
            continue
        rest = m.group("rest")
        rest = rest[_shape_end(rest):]
        op = _OPCODE.match(rest)
        if not op:
            continue
        op_name = _OP_NAME.search(rest)
        calls = _CALLS.search(rest)
        instructions[m.group("name")] = Instruction(
            m.group("name"), op.group("opcode"), op_name.group("value").replace('\\"', '"') if op_name else None,
            calls.group("name") if calls else None, current)
        computations[current].append(m.group("name"))
    return module, instructions, dict(computations)


def _shape_end(rest: str) -> int:
    """Index just past the result shape at the start of ``rest`` (a tuple shape nests parens)."""
    if not rest.startswith("("):
        space = rest.find(" ")
        return len(rest) if space < 0 else space
    depth = 0
    for i, ch in enumerate(rest):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i + 1
    return len(rest)


def fused_instructions(name: str, instructions: dict, computations: dict, _seen=None) -> list[Instruction]:
    """The instructions a fusion computes (its fused computation's, nested fusions opened),
    parameters and constants left out; [] for an instruction that is not a fusion."""
    ins = instructions.get(name)
    if ins is None or ins.opcode != "fusion" or ins.calls is None:
        return []
    seen = _seen if _seen is not None else set()
    if ins.calls in seen:
        return []
    seen.add(ins.calls)
    out = []
    for inner in computations.get(ins.calls, []):
        j = instructions[inner]
        if j.opcode == "fusion":
            out += fused_instructions(inner, instructions, computations, seen)
        elif j.opcode not in ("parameter", "constant"):
            out.append(j)
    return out


def _rank(op_name: str | None) -> int:
    return CATEGORIES.index(category(op_name))


def attribute_hlo(text: str) -> tuple[str | None, dict[str, dict]]:
    """(module name, instruction name -> {"category", "op_name", "opcode", "backward", "mixed"}).
    A fusion takes the op_name of the matmul or convolution it computes (most of its work), else
    its own, else that of its last instruction with one (the root, printed last); ``mixed``:
    its instructions' op_names fall in more than one category."""
    module, instructions, computations = parse_hlo(text)
    out = {}
    for name, ins in instructions.items():
        op_name, mixed = ins.op_name, False
        if ins.opcode == "fusion":
            inner = fused_instructions(name, instructions, computations)
            heavy = [j.op_name for j in inner if j.opcode in HEAVY_OPCODES and j.op_name]
            named = [j.op_name for j in inner if j.op_name]
            op_name = min(heavy, key=_rank) if heavy else (ins.op_name or (named[-1] if named else None))
            mixed = len({category(n) for n in named}) > 1
        out[name] = {"category": category(op_name), "op_name": op_name, "opcode": ins.opcode,
                     "backward": is_backward(op_name), "mixed": mixed}
    return module, out


# ---- the trace -------------------------------------------------------------------------------
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
    backward = no_op_name = mixed = 0.0
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
    op_seconds = sum(seconds.values())
    wall = sum(e - s for s, e in call_spans) * us

    def share(x):
        return x / op_seconds if op_seconds > 0 else 0.0

    top_ops = []
    for key, (sec, n) in sorted(by_op.items(), key=lambda kv: -kv[1][0])[:top]:
        info = attribution.get(key, {})
        top_ops.append({"op": key, "seconds": sec, "share": share(sec), "events": n,
                        "category": info.get("category", "unattributed"), "opcode": info.get("opcode"),
                        "op_name": info.get("op_name"), "mixed": info.get("mixed", False)})
    return {
        "categories": {c: {"seconds": seconds[c], "share": share(seconds[c]), "events": counts[c]} for c in CATEGORIES},
        "backward": {"seconds": backward, "share": share(backward)},
        "no_op_name": {"seconds": no_op_name, "share": share(no_op_name)},
        "mixed_fusions": {"seconds": mixed, "share": share(mixed)},  # fusions spanning several categories
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
