"""Unsupervised learning (``--use-ul``, tag ``ul``): after every supervised step, one extra
unsupervised update of a single dense layer (``--ul-layer``, default ``dense1``) from the
activity the batch produces at that layer's input (hook ``step_end``). Only that layer's
parameters change.

Notation, for the batch (weights w_b, the examples' weights of the rule contract): x_b the
layer's input (captured from the model's forward pass by intercepting the layer's call), W its
kernel (in, out), b its bias, y_b = W^T x_b its linear response (no bias: the Hebbian rules are
rules for linear units), eta = ``--ul-lr``, <.> = sum_b w_b (.) / sum_b w_b.

``--ul-kind oja``: Oja's subspace rule (Oja 1982 for one unit, Oja 1989 for several),
    W <- W + eta (<x y^T> - W <y y^T>)
the units converge to an orthonormal basis of the top-k principal subspace of <x x^T> (with
one unit: the top principal component, unit norm).
``--ul-kind sanger``: the generalised Hebbian algorithm (Sanger 1989),
    W <- W + eta (<x y^T> - W UT[<y y^T>])       UT = upper triangle with the diagonal
so unit j converges to the j-th principal component (unit 1 is exactly Oja's single unit).
``--ul-kind recon``: a tied-weight linear autoencoder of the layer input through the layer
and its transpose, x_hat = W (W^T x + b), one gradient step
    (W, b) <- (W, b) - eta grad <|x - x_hat|^2> / 2
whose minima span the same principal subspace (Baldi & Hornik 1989).

The principal components are those of the uncentred second moment <x x^T> of the layer input
(post-ReLU features are not centred by the network). The input x is a function of the lower
layers, which this update leaves as they are (no gradient flows into them). The images are the
learner's training batch, replayed images included when ``--use-replay`` is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.errors import CljaxError
from cljax.options import Option, register_option
from cljax.registry import param


@dataclass(frozen=True)
class ULParams:
    kind: str = param("oja", "unsupervised rule: oja (Oja subspace rule), sanger (generalised Hebbian algorithm) or recon "
                      "(tied-weight linear reconstruction of the layer input)", choices=("oja", "sanger", "recon"))
    layer: str = param("dense1", "unsupervised learning: the dense layer it updates (a top-level parameter name of the model)")
    lr: float = param(1e-3, "unsupervised learning: its learning rate", min=0.0)


def layer_input(net, params, model_state, images, layer_path: tuple[str, ...]):
    """The input of the layer at ``layer_path`` in the network's forward pass (evaluation
    mode), (B, in)."""
    captured = []

    def capture(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and tuple(context.module.path) == layer_path and not captured:
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        net.apply(params, model_state, images, False)
    return captured[0]


def hebbian_update(kernel_IO, x_BI, weights_B, lr, kind: str):
    """One step of Oja's subspace rule or Sanger's rule on ``kernel`` (in, out)."""
    w = weights_B / weights_B.sum()
    y_BO = x_BI @ kernel_IO
    hebb_IO = x_BI.T @ (w[:, None] * y_BO)  # <x y^T>
    yy_OO = y_BO.T @ (w[:, None] * y_BO)  # <y y^T>
    if kind == "sanger":
        yy_OO = jnp.triu(yy_OO)
    return kernel_IO + lr * (hebb_IO - kernel_IO @ yy_OO)


def reconstruction_update(layer_params, x_BI, weights_B, lr):
    """One gradient step of the tied linear autoencoder's weighted squared error."""
    w = weights_B / weights_B.sum()

    def loss(p):
        x_hat = (x_BI @ p["kernel"] + p["bias"]) @ p["kernel"].T
        return 0.5 * (w * ((x_BI - x_hat) ** 2).sum(-1)).sum()

    grads = jax.grad(loss)(layer_params)
    return jax.tree.map(lambda p, g: p - lr * g, layer_params, grads)


def dense_layers(params, prefix=()):
    """'/'-joined paths of the layers whose parameters are a 2-D kernel and a bias."""
    if "kernel" in params:
        return ["/".join(prefix)] if len(params["kernel"].shape) == 2 and "bias" in params else []
    return [p for name, sub in params.items() if isinstance(sub, dict) for p in dense_layers(sub, prefix + (name,))]


def replace_at(params, path, value):
    if not path:
        return value
    return {**params, path[0]: replace_at(params[path[0]], path[1:], value)}


@register_option("ul", params=ULParams, tag="ul", flag="use-ul",
                 inert=lambda ul, config: "--ul-lr 0 changes no weight" if ul.lr == 0 else None)
def make_ul(ul: ULParams, config, net) -> Option:
    """unsupervised learning: an extra unsupervised update of --ul-layer after every step (tag ul)"""
    kind, lr = ul.kind, ul.lr
    shapes = jax.eval_shape(lambda k: net.init(k)[0], jax.random.key(0))
    if ul.layer not in dense_layers(shapes):
        raise CljaxError(
            f"--ul-layer {ul.layer!r} is not a dense layer of model {config.model!r}: "
            f"choose one of {', '.join(dense_layers(shapes))}."
        )
    path = tuple(ul.layer.split("/"))

    def step_end(state, params, model_state, key, images, weights_B):
        x_BI = jax.lax.stop_gradient(layer_input(net, params, model_state, images, path))
        layer = params
        for name in path:
            layer = layer[name]
        if kind == "recon":
            new_layer = reconstruction_update(layer, x_BI, weights_B, lr)
        else:
            new_layer = {**layer, "kernel": hebbian_update(layer["kernel"], x_BI, weights_B, lr, kind)}
        return state, replace_at(params, path, new_layer)

    return Option(step_end=step_end)
