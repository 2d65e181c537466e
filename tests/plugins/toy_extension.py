"""A rule and a model registered from outside the cljax package (loaded as a plugin file)."""

from dataclasses import dataclass

import flax.linen as nn
import jax

from cljax.losses import nll_and_correct, weighted_mean
from cljax.models import as_float_images
from cljax.registry import param, register_model, register_rule
from cljax.rules import Rule


@dataclass(frozen=True)
class SignParams:
    scale: float = param(1.0, "toy: the sign rule's step scale", min=0.0)


@register_rule("ToySign", params=SignParams, default_lr=0.01)
def make_sign(params: SignParams, config, net) -> Rule:
    """signSGD on the cross-entropy: direction = scale * sign(gradient)."""

    def init(model_params, key):
        return ()

    def direction(net, model_params, model_state, rule_state, images, labels_B, weights_B, key):
        def loss_fn(p):
            logits, _, state = net.apply(p, model_state, images, True, weights_B)  # as the README: BatchNorm skips weight 0
            nll, correct = nll_and_correct(logits, labels_B)
            return weighted_mean(nll, weights_B), (weighted_mean(correct, weights_B), state)

        (loss, (acc, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(model_params)
        return jax.tree.map(lambda g: params.scale * jax.numpy.sign(g), grads), rule_state, state, {"loss": loss, "acc": acc}

    return Rule(init=init, direction=direction)


@dataclass(frozen=True)
class LinearParams:
    width: int = param(8, "toy: the linear model's hidden width", min=1)


class Linear(nn.Module):
    out_dim: int
    width: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = as_float_images(images).reshape(images.shape[0], -1)
        hidden = nn.Dense(self.width, name="dense1")(x)
        return nn.Dense(self.out_dim, name="head")(hidden), hidden


@register_model("toy_linear", params=LinearParams, prefix="toy")
def make_linear(params: LinearParams, ctx):
    """A linear map to a hidden layer and a linear head."""
    return Linear(out_dim=ctx.out_dim, width=params.width)
