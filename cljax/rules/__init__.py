"""Learning rules behind one registry, one contract.

A rule is a pair of pure functions over ONE repeat (the trainer adds the repeat axis):

    init(params, key) -> rule_state
    direction(net, params, model_state, rule_state, images, labels_B, weights_B, key)
        -> (update_direction, rule_state, model_state, {"loss": scalar, "acc": scalar})

``update_direction`` has the structure of ``params`` and is what the optimiser consumes in
place of a gradient (descent convention: the optimiser subtracts lr * direction). For SL it is
the gradient of the loss; for RL the REINFORCE estimate; for Bio a local three-factor update.
``net`` is the model (``cljax.models.Net``): ``net.apply(params, model_state, images, train,
weights_B)`` gives (logits, hidden, model_state); a rule trains with ``train=True``, passes the
batch's weights (a BatchNorm model's statistics then leave out weight-0 examples) and returns
the updated model state (BatchNorm statistics; ``{}`` for most models). ``weights_B`` (float,
>= 0) weighs each example in the batch means (an option such as replay appends examples and masks the ones
it does not have with weight 0), so every batch has a static shape. ``loss``/``acc`` are the
weighted training metrics on the batch before the update. ``key`` of ``init`` draws the rule's
own random state (e.g. Bio's fixed feedback weights).

A new rule is one file in this folder (or a plugin file, ``cljax.registry.load_plugins``)::

    @register_rule("Name", params=NameParams, default_lr=0.05)
    def make_name(params: NameParams, config, net) -> Rule: ...

``params`` is the rule's frozen settings dataclass, whose fields become ``--name-field`` flags.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cljax.errors import CljaxError
from cljax.hook_contract import RULE_HOOKS, checked_hook, same_arrays
from cljax.registry import RULES, register_rule


class Rule(NamedTuple):
    init: Callable[[Any, Any], Any]  # (params, key) -> rule_state
    direction: Callable[..., tuple[Any, Any, Any, dict]]


def make_rule(config, net) -> Rule:
    """The config's rule, built with its settings for ``net``; its direction checked against the
    contract above wherever it is traced (``checked_rule``)."""
    return checked_rule(RULES[config.algorithm].build(config.rule_params, config, net), config.algorithm)


def checked_rule(rule, name: str) -> Rule:
    """``rule`` with a direction that checks what it returns each time it is traced: a direction
    of another structure, shape or dtype than the params would fail deep in the optimiser, or
    broadcast and train silently wrong. The check is Python on the traced shapes (nothing enters
    the compiled program), and the first trace of a run is the planner's, before anything is
    written: a broken rule is one CljaxError line naming it."""
    if not isinstance(rule, Rule):
        raise CljaxError(f"rule {name!r}: its builder returned a {type(rule).__name__}, not a cljax.rules.Rule: "
                         f"return one.")

    hooked = checked_hook(rule.direction, "rule", name, "direction", RULE_HOOKS)  # its signature, now

    def direction(net, params, *args):
        out = hooked(net, params, *args)
        check_direction(out, params, name)
        return out

    return Rule(init=checked_hook(rule.init, "rule", name, "init", RULE_HOOKS), direction=direction)


def check_rule(rule, net, name: str) -> None:
    """The contract check of ``checked_rule`` on one shape-only trace of ``rule`` on a batch of 2,
    without a program (a plugin's own test)."""
    rule = checked_rule(rule, name)
    key = jax.eval_shape(lambda: jax.random.key(0))
    params, model_state = jax.eval_shape(net.init, key)
    images = jax.ShapeDtypeStruct((2, *net.image_shape), jnp.uint8)
    labels, weights = jax.ShapeDtypeStruct((2,), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.float32)

    def call(params, model_state, images, labels, weights, key):
        return rule.direction(net, params, model_state, rule.init(params, key), images, labels, weights, key)

    jax.eval_shape(call, params, model_state, images, labels, weights, key)


def check_direction(out, params, name: str) -> None:
    """One CljaxError line naming the rule when ``out``, what its direction returned for
    ``params``, breaks the contract above."""
    where = f"rule {name!r}"
    if not (isinstance(out, tuple) and len(out) == 4):
        raise CljaxError(f"{where}: direction must return (direction, rule_state, model_state, metrics); it returns "
                         f"{type(out).__name__}{f' of {len(out)}' if isinstance(out, tuple) else ''}.")
    direction, _, _, metrics = out
    if not same_arrays(direction, params):
        raise CljaxError(f"{where}: its direction must have the structure, shapes and dtypes of the params (one "
                         f"array per parameter, as a gradient); it does not.")
    if not (isinstance(metrics, dict) and all(getattr(metrics.get(k), "shape", None) == () for k in ("loss", "acc"))):
        got = (f"a {type(metrics).__name__}" if not isinstance(metrics, dict) else
               ", ".join(f"{k!r} of shape {tuple(metrics[k].shape)}" if hasattr(metrics.get(k), "shape") else
                         f"{k!r}: {'missing' if k not in metrics else type(metrics[k]).__name__}" for k in ("loss", "acc")))
        raise CljaxError(f"{where}: its metrics must be a dict with scalar 'loss' and 'acc' (the batch's weighted "
                         f"means); it returns {got}.")


__all__ = ["RULES", "Rule", "check_direction", "check_rule", "checked_rule", "make_rule", "register_rule"]
