"""The part of the model each instruction of a compiled program belongs to, read from its HLO
text (benchmarks/profile_task.py; benchmarks/profile_events.py sums a trace's op events by it).

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
12. other: the rest, and the instructions without an op_name even through their users.

``backward`` (not a category; it cuts across them): a ``transpose(`` anywhere in the stack.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

CATEGORIES = ("evaluation", "update", "rng_init", "pool", "conv1_backward", "conv1_forward", "conv_other", "dense",
              "loss", "model_other", "data", "other", "unattributed")
CONTAINER_OPCODES = frozenset({"while", "call", "conditional"})
HEAVY_OPCODES = frozenset({"dot", "convolution", "custom-call"})  # what a fusion's time is mostly spent on

_RNG = re.compile(r"^(_threefry|threefry|random_|_truncated_normal|truncated_normal|_uniform|_normal)")
_LOSS = frozenset({"log_sigmoid", "softplus", "log_softmax", "logsumexp", "take_along_axis", "nll_and_correct"})
_DATA_SCOPES = frozenset({"dynamic_index_in_dim", "dynamic_update_index_in_dim", "_shuffle"})
_DATA_PRIMITIVES = frozenset({"gather", "dynamic_slice", "dynamic_update_slice"})
_WRAPPER = re.compile(r"^([A-Za-z_][\w.<>-]*)\((.*)\)$")

_HEAD = re.compile(r"^\s+(?:ROOT\s+)?%?(?P<name>[^\s=%]+)\s*=\s*(?P<rest>.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_OPCODE = re.compile(r"^\s*(?P<opcode>[\w-]+)\(")
_CALLS = re.compile(r"\bcalls=%?(?P<name>[\w.\-]+)")
_OPERAND = re.compile(r"%(?P<name>[\w.\-]+)")
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
    operands: tuple[str, ...] = ()


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
        args = rest[op.end() - 1:]
        instructions[m.group("name")] = Instruction(
            m.group("name"), op.group("opcode"), op_name.group("value").replace('\\"', '"') if op_name else None,
            calls.group("name") if calls else None, current, tuple(_OPERAND.findall(args[:_shape_end(args)])))
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
    """(module name, instruction name -> {"category", "op_name", "opcode", "backward", "mixed",
    "inferred"}). A fusion takes the op_name of the matmul or convolution it computes (most of
    its work), else its own, else that of its last instruction with one (the root, printed
    last); ``mixed``: its instructions' op_names fall in more than one category. An instruction
    still without one (XLA made it: a layout copy, the argmax reduce-window XLA:CPU computes
    for a max-pool's gradient) takes that of the nearest op using its result, looking through
    users without one either (tuples, bitcasts, copies...) (``inferred``)."""
    module, instructions, computations = parse_hlo(text)
    own, mixed = {}, {}
    for name, ins in instructions.items():
        op_name, mixed[name] = ins.op_name, False
        if ins.opcode == "fusion":
            inner = fused_instructions(name, instructions, computations)
            heavy = [j.op_name for j in inner if j.opcode in HEAVY_OPCODES and j.op_name]
            named = [j.op_name for j in inner if j.op_name]
            op_name = min(heavy, key=_rank) if heavy else (ins.op_name or (named[-1] if named else None))
            mixed[name] = len({category(n) for n in named}) > 1
        own[name] = op_name
    users = defaultdict(list)
    for ins in instructions.values():
        for operand in ins.operands:
            users[operand].append(ins.name)
    out = {}
    for name, ins in instructions.items():
        op_name = own[name] or _from_users(name, own, users)
        out[name] = {"category": category(op_name), "op_name": op_name, "opcode": ins.opcode,
                     "backward": is_backward(op_name), "mixed": mixed[name], "inferred": op_name != own[name]}
    return module, out


def _from_users(name: str, own: dict, users: dict, depth: int = 4) -> str | None:
    """The op_name of the nearest op using ``name``'s result, through users without one."""
    frontier, seen = list(users.get(name, ())), {name}
    for _ in range(depth):
        following = []
        for user in frontier:
            if user in seen:
                continue
            seen.add(user)
            if own.get(user):
                return own[user]
            following += users.get(user, ())  # a tuple, a bitcast, a copy...: without an op_name either
        frontier = following
    return None
