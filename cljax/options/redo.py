"""ReDo (``--use-redo``, tag ``redo``), Sokar et al. 2023, "The Dormant Neuron Phenomenon in
Deep Reinforcement Learning" (ICML): every F steps, the hidden units that are dormant are
recycled.

For each unit layer l of the model (``cljax.models.units``), after the optimiser step of every
F-th step of the run (hook ``step_reset``; the step count is kept across tasks), with h_j the
unit's activity on the step's batch (the network after the step, evaluation mode; a channel's is
its mean over positions after the pool) and w_b the examples' weights:

    s_j = <|h_j|> / ((1/U) sum_k <|h_k|>)          (0 for every unit when the layer is silent)
    reset every unit with s_j <= tau

A reset unit gets fresh incoming weights from the model's initialiser, zero outgoing weights,
and the optimiser state of every weight it touched is set to 0 (cljax/options/_units.py), as in
continual backprop. F = ``--redo-every``, tau = ``--redo-tau``. The batch is the step's own
training batch (replayed images included), where Sokar et al. draw one from the agent's replay
memory. State of one repeat: the step count (int32), saved in the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from cljax.models.units import unit_activity, unit_layers
from cljax.options import Option, register_option, run_steps
from cljax.options._units import reset_if_any, unit_widths_of, weighted_mean_abs
from cljax.registry import param


@dataclass(frozen=True)
class ReDoParams:
    every: int = param(100, "ReDo: F, recycle the dormant units after every F-th step of the run", min=1)
    tau: float = param(0.1, "ReDo: tau, a unit is dormant when its mean |activity| over its layer's mean is <= tau",
                       min=0.0)


def dormant_masks(activity, weights_B, tau: float):
    """{layer: (U,) bool}: s_j <= tau, s_j = <|h_j|> over the layer's mean of it."""
    masks = {}
    for layer, act_BU in activity.items():
        a = weighted_mean_abs(act_BU, weights_B)
        layer_mean = a.mean()
        score = jnp.where(layer_mean > 0, a / jnp.where(layer_mean > 0, layer_mean, 1.0), 0.0)
        masks[layer] = score <= tau
    return masks


def _inert(params: ReDoParams, config) -> str | None:
    total, steps = run_steps(config)
    if unit_widths_of(config) == ():
        return None  # a model without unit layers: the run refuses the option, in one line (cljax/models/units.py)
    if params.every > total:
        return f"its first reset comes after step {params.every} (--redo-every), and the run has {steps}"
    return None


@register_option("redo", params=ReDoParams, tag="redo", flag="use-redo", inert=_inert)
def make_redo(params: ReDoParams, config, net) -> Option:
    """ReDo: every F steps, reset the units whose normalised activity is <= tau (tag redo)"""
    layers = unit_layers(net, "--use-redo")
    every, tau = params.every, params.tau

    def init(model_params, key):
        return {"step": jnp.zeros((), jnp.int32)}

    def step_reset(state, model_params, opt_state, model_state, key, images, weights_B):
        step = state["step"] + 1

        def recycle(operands):
            p, o = operands
            activity = jax.lax.stop_gradient(unit_activity(net, p, model_state, images))
            return reset_if_any(net, p, o, key, layers, dormant_masks(activity, weights_B, tau))

        model_params, opt_state = jax.lax.cond(step % every == 0, recycle, lambda operands: operands,
                                               (model_params, opt_state))
        return {"step": step}, model_params, opt_state

    return Option(init=init, step_reset=step_reset)
