"""Learning rules behind one registry, one contract.

A rule is a pair of pure functions over ONE repeat (the trainer adds the repeat axis by vmap):

    init(params) -> rule_state
    direction(apply_fn, params, rule_state, images_BHW, labels_B, key)
        -> (update_direction, rule_state, {"loss": scalar, "acc": scalar})

``update_direction`` has the structure of ``params`` and is what the optimiser consumes in
place of a gradient (descent direction convention: the optimiser subtracts lr * direction).
For SL it is the gradient of the loss; for RL the REINFORCE estimate; for Bio a local
three-factor update. ``loss``/``acc`` are the training metrics on the batch before the update.
A new rule is one new file that calls :func:`register_rule`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    init: Callable[[Any], Any]
    direction: Callable[..., tuple[Any, Any, dict]]


RULES: dict[str, Callable[[Any], Rule]] = {}


def register_rule(name: str):
    """Register ``factory(config) -> Rule`` under ``name`` (the --algorithm value)."""

    def wrap(factory):
        RULES[name] = factory
        return factory

    return wrap


def make_rule(config) -> Rule:
    return RULES[config.algorithm](config)


from cljax.rules import sl  # noqa: E402,F401  (entries register on import)
