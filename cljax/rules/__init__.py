"""Learning rules behind one registry, one contract.

A rule is a pair of pure functions over ONE repeat (the trainer adds the repeat axis by vmap):

    init(params, key) -> rule_state
    direction(apply_fn, params, rule_state, images_BHW, labels_B, weights_B, key)
        -> (update_direction, rule_state, {"loss": scalar, "acc": scalar})

``update_direction`` has the structure of ``params`` and is what the optimiser consumes in
place of a gradient (descent direction convention: the optimiser subtracts lr * direction).
For SL it is the gradient of the loss; for RL the REINFORCE estimate; for Bio a local
three-factor update. ``weights_B`` (float, >= 0) weighs each example in the batch means (an
option such as replay appends examples and masks the ones it does not have with weight 0), so
every batch has a static shape. ``loss``/``acc`` are the weighted training metrics on the batch
before the update. ``key`` of ``init`` draws the rule's own random state (e.g. Bio's fixed
feedback weights). A new rule is one new file that calls :func:`register_rule`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    init: Callable[[Any], Any]
    direction: Callable[..., tuple[Any, Any, dict]]


RULES: dict[str, Callable[[Any], Rule]] = {}
DEFAULT_LR: dict[str, float] = {}  # the rule's learning rate when --lr is not set


def register_rule(name: str, default_lr: float = 0.05):
    """Register ``factory(config) -> Rule`` under ``name`` (the --algorithm value)."""

    def wrap(factory):
        RULES[name] = factory
        DEFAULT_LR[name] = default_lr
        return factory

    return wrap


def make_rule(config) -> Rule:
    return RULES[config.algorithm](config)


from cljax.rules import sl  # noqa: E402,F401  (entries register on import)
from cljax.rules import rl  # noqa: E402,F401
from cljax.rules import bio  # noqa: E402,F401
