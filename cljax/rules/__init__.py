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

from cljax.registry import RULES, register_rule


class Rule(NamedTuple):
    init: Callable[[Any, Any], Any]  # (params, key) -> rule_state
    direction: Callable[..., tuple[Any, Any, Any, dict]]


def make_rule(config, net) -> Rule:
    """The config's rule, built with its settings for ``net``."""
    return RULES[config.algorithm].build(config.rule_params, config, net)


__all__ = ["RULES", "Rule", "make_rule", "register_rule"]
