"""SL: supervised backpropagation of the cross-entropy (binary or softmax)."""

from __future__ import annotations

import jax

from cljax.losses import nll_and_correct, weighted_mean
from cljax.rules import Rule, register_rule
from cljax.registry import NoParams


@register_rule("SL", params=NoParams, default_lr=0.05)
def make_sl(params, config, net) -> Rule:
    """Supervised backpropagation of the cross-entropy."""

    def init(model_params, key):
        return ()

    def direction(net, model_params, model_state, rule_state, images, labels_B, weights_B, key):
        def loss_fn(p):
            logits, _, new_state = net.apply(p, model_state, images, True, weights_B)
            nll_B, correct_B = nll_and_correct(logits, labels_B)
            return weighted_mean(nll_B, weights_B), (weighted_mean(correct_B, weights_B), new_state)

        (loss, (acc, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(model_params)
        return grads, rule_state, new_state, {"loss": loss, "acc": acc}

    return Rule(init=init, direction=direction)
