"""SL: supervised backpropagation of the cross-entropy (binary or softmax)."""

from __future__ import annotations

import jax

from cljax.losses import nll_and_accuracy
from cljax.rules import Rule, register_rule


@register_rule("SL")
def make_sl(config) -> Rule:
    def init(params):
        return ()

    def direction(apply_fn, params, rule_state, images_BHW, labels_B, key):
        def loss_fn(p):
            logits, _ = apply_fn(p, images_BHW)
            loss, acc = nll_and_accuracy(logits, labels_B)
            return loss, acc

        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, rule_state, {"loss": loss, "acc": acc}

    return Rule(init=init, direction=direction)
