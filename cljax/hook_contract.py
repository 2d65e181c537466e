"""The call contract of a rule's and an option's hooks, checked where they are traced.

A hook of the wrong arity, or one that returns a value of another kind, failed deep in cljax's
step (a TypeError at the call, a tuple unpacked wrong, a scan carry of another shape) with a
traceback that names no file of the plugin. Each hook is wrapped so that its arguments are bound
to its signature before the call and what it returns is checked after it, on the traced shapes:
Python at trace time, nothing enters the compiled program. A break is one CljaxError line naming
the entry, the hook, what it must take or return, and its file.
"""

from __future__ import annotations

import functools
import inspect

import jax

from cljax.errors import CljaxError
from cljax.registry import source_file

# hook -> its parameters, and what it returns: the names of a tuple's parts, a "params" part
# keeps the params' structure, shapes and dtypes, an "opt_state" part the optimiser state's.
OPTION_HOOKS = {
    "init": (("params", "key"), None),
    "task_start": (("state", "params", "key", "task_idx"), ("state", "params")),
    "batch": (("state", "images", "labels_B", "weights_B", "key"), ("images", "labels", "weights")),
    "direction": (("state", "params", "direction"), "params"),
    "step_end": (("state", "params", "model_state", "key", "images", "weights_B"), ("state", "params")),
    "step_reset": (("state", "params", "opt_state", "model_state", "key", "images", "weights_B"),
                   ("state", "params", "opt_state")),
    "task_end": (("state", "params", "key", "train_images_N", "train_labels_N", "task_idx"), ("state", "params")),
}
RULE_HOOKS = {
    "init": (("params", "key"), None),
    "direction": (("net", "params", "model_state", "rule_state", "images", "labels_B", "weights_B", "key"), None),
}


def _signature_problem(fn, n_args: int) -> str | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: the call itself says
        return None
    try:
        sig.bind(*range(n_args))
    except TypeError:
        return str(sig)
    return None


def same_arrays(a, b) -> bool:
    """Whether two pytrees have one structure, and leaves of the same shapes and dtypes."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    shape = lambda x: (getattr(x, "shape", None), getattr(x, "dtype", None))  # noqa: E731
    return [shape(x) for x in jax.tree.leaves(a)] == [shape(x) for x in jax.tree.leaves(b)]


def checked_hook(fn, kind: str, name: str, hook: str, hooks: dict):
    """``fn``, the ``hook`` of ``kind`` entry ``name``, checked against ``hooks[hook]`` at each call."""
    takes, returns = hooks[hook]
    inner = inspect.unwrap(fn.func if isinstance(fn, functools.partial) else fn)  # where its code is
    line = getattr(getattr(inner, "__code__", None), "co_firstlineno", None)
    where = f"{kind} {name!r}: its {hook} ({source_file(inner)}{f', line {line}' if line else ''})"
    sig = _signature_problem(fn, len(takes))
    if sig is not None:  # known before any call: refused when the entry is built
        raise CljaxError(f"{where} is {hook}{sig}; it must take ({', '.join(takes)}): fix its signature.")

    @functools.wraps(fn)
    def call(*args):
        out = fn(*args)
        inputs = dict(zip(takes, args))
        if returns == "params":
            if not same_arrays(out, inputs["params"]):
                raise CljaxError(f"{where} must return a pytree of the params' structure, shapes and dtypes; it "
                                 f"does not.")
        elif returns is not None:
            if not (isinstance(out, tuple) and len(out) == len(returns)):
                got = (f"a tuple of {len(out)}" if isinstance(out, tuple) else
                       "an array" if hasattr(out, "shape") else f"a {type(out).__name__}")
                raise CljaxError(f"{where} must return ({', '.join(returns)}); it returns {got}.")
            for part, value in zip(returns, out):
                if part in ("params", "opt_state") and not same_arrays(value, inputs[part]):
                    raise CljaxError(f"{where} returns {part} of another structure, shapes or dtypes than it was "
                                     f"given: return them changed in value only.")
        return out

    return call
