"""SL: supervised backpropagation of the cross-entropy (binary or softmax)."""

from __future__ import annotations

import jax

from cljax.losses import nll_and_correct
from cljax.rules import Rule, register_rule


def weighted_mean(values_B, weights_B):
    """Sum of w * v over sum of w (the batch mean when every weight is 1)."""
    return (weights_B * values_B).sum() / weights_B.sum()


@register_rule("SL", default_lr=0.05)
def make_sl(config) -> Rule:
    def init(params, key):
        return ()

    def direction(apply_fn, params, rule_state, images_BHW, labels_B, weights_B, key):
        def loss_fn(p):
            logits, _ = apply_fn(p, images_BHW)
            nll_B, correct_B = nll_and_correct(logits, labels_B)
            return weighted_mean(nll_B, weights_B), weighted_mean(correct_B, weights_B)

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, rule_state, {"loss": loss, "acc": acc}

    return Rule(init=init, direction=direction)
