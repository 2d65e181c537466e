"""Continual backprop (``--use-cbp``, tag ``cbp``), Dohare et al. 2024, "Loss of plasticity in
deep continual learning" (Nature): a small fraction of the hidden units that contribute least is
replaced by fresh units at every step, so the network keeps a supply of units at their initial,
plastic state.

For each unit layer l of the model (``cljax.models.units``: CNN conv channels and dense units,
MLP dense units), after the optimiser step (hook ``step_reset``), with h_j the unit's
activity on the step's batch (the network after the step, evaluation mode; a channel's is its
mean over positions after the pool), w_b the examples' weights (replayed images included) and
W_out the reader's kernel:

    u_j   <- eta u_j + (1 - eta) <|h_j|> sum|W_out[..., j, :]|     contribution utility
    a_j   <- a_j + 1                                               age in steps
    E      = {j : a_j > m}                                         eligible (mature) units
    acc_l <- acc_l + rho |E|                                       fractional count
    n      = min(floor(acc_l), |E|);  acc_l <- acc_l - n
    replace the n units of E with the lowest u_j / (1 - eta^a_j) (ties: the lower index)

``--cbp-utility adaptable`` ranks by the utility of the authors' continual-ImageNet code (their
``adaptable_contribution``) instead: the activity centred on its running mean (bias-corrected
like the utility) and divided by the mean size of the unit's incoming weights,

    mu_j  <- eta mu_j + (1 - eta) <h_j>                                            running mean
    u_j   <- eta u_j + (1 - eta) <|h_j - mu_j / (1 - eta^a_j)|> sum|W_out[..., j, :]| / mean|W_in[..., j]|

(a_j already counts the step; mu_j = 0 for a fresh unit). It differs from theirs in two ways: a
channel's activity is its per-image mean over positions (theirs centres each position, so a
channel's variation within an image counts there, not here: conv channels with more than one
pooled position rank differently), and sum|W_out| is their mean times the reader's fan-out, the
same factor for every unit of a layer, which leaves the ranking within a layer as it is.

The ranking is bias-corrected for age, as in the authors' code: u_j starts at 0, so a unit that
has just matured carries only 1 - eta^(m+1) of its running contribution (0.64 at LoP's eta 0.99,
m 100) and would be replaced again unless it contributed about 1.6 times the weakest old unit.

A replaced unit gets fresh incoming weights (kernel column and bias) from the model's
initialiser, zero outgoing weights, u_j = 0 and a_j = 0, and the optimiser state of every weight
it touched is set to 0 (cljax/options/_units.py). rho = ``--cbp-rate``, m = ``--cbp-maturity``,
eta = ``--cbp-decay``; the defaults are Dohare et al.'s (3e-4, 100, 0.99).

State of one repeat, kept across tasks and saved in the checkpoint: per unit layer, u (U,)
float32, a (U,) int32 and acc () float32, and mu (U,) float32 under ``--cbp-utility adaptable``.

Three settings take the authors' continual-ImageNet code's choices where they differ from the
method above (docs/methods.md): ``--cbp-count all`` (the fractional count adds rho x all the
layer's units once any is mature), ``--cbp-optimizer-state keep`` (a replaced unit's weights keep
their momentum, as their code does under SGD) and ``--cbp-fresh uniform`` (fresh incoming weights
from U(-1/sqrt(fan-in), 1/sqrt(fan-in)) and a zero bias, their ``init='default'`` bounds).

Difference from the authors' code, on purpose: the reader's bias is not adjusted for the removed
unit's mean contribution (the update above is the whole method here), as in their convolutional
version; their fully connected one adjusts it. The ranking's age correction (above) came in
with the run record's schema 4 (cljax/code_changes.changed_since).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from cljax.models.units import unit_activity, unit_layers
from cljax.options import Option, register_option, run_steps
from cljax.options._units import (incoming_abs_means, outgoing_abs_sums, reset_if_any, uniform_fresh, unit_widths_of,
                                  weighted_mean, weighted_mean_abs)
from cljax.registry import param


@dataclass(frozen=True)
class CBPParams:
    rate: float = param(3e-4, "continual backprop: replacement rate rho, the fraction of a layer's mature units "
                        "replaced per step (accumulated until it makes a whole unit)", min=0.0, max=1.0)
    maturity: int = param(100, "continual backprop: maturity threshold m, steps a unit must age before it may be "
                          "replaced", min=0)
    decay: float = param(0.99, "continual backprop: decay eta of the running contribution utility", min=0.0, max=1.0)
    utility: str = param("contribution", "continual backprop: what ranks the units: contribution (mean |h| x "
                         "|outgoing weights|, the paper's) or adaptable (mean |h - its running mean| x |outgoing "
                         "weights| / mean |incoming weights|, the authors' continual-ImageNet code's)",
                         choices=("contribution", "adaptable"))
    count: str = param("mature", "continual backprop: what the replacement rate counts: mature (rho x the layer's "
                       "mature units per step, the paper's) or all (rho x all its units per step once any is mature, "
                       "the authors' code's)", choices=("mature", "all"))
    optimizer_state: str = param("reset", "continual backprop: the optimiser state (momentum) of a replaced unit's "
                                 "weights: reset (set to 0) or keep (as the authors' code does under SGD)",
                                 choices=("reset", "keep"))
    fresh: str = param("init", "continual backprop: a replaced unit's incoming weights: init (a draw of the model's "
                       "initialiser) or uniform (U(-b, b), b = 1 / sqrt(fan-in), bias 0: the authors' continual-"
                       "ImageNet code's)", choices=("init", "uniform"))


def select_lowest(utility_U, eligible_U, n):
    """Mask of the ``n`` eligible units with the lowest utility (ties: the lower index)."""
    score = jnp.where(eligible_U, utility_U, jnp.inf)
    rank = jnp.argsort(jnp.argsort(score, stable=True), stable=True)
    return eligible_U & (rank < n)


def _unbiased(value, unbiased):
    """A running average over the steps a unit has lived, corrected for its start at 0 (as is
    where the correction is 0: eta = 1, which never moves it)."""
    return jnp.where(unbiased > 0, value / jnp.where(unbiased > 0, unbiased, 1.0), value)


def cbp_update(state, activity, out_sums, weights_B, rate: float, maturity: int, decay: float, in_means=None,
               count_all: bool = False):
    """One step of the utilities, ages and counts. Returns (state, {layer: replace mask}). A
    layer whose state holds a running mean ``mean`` takes the adaptable utility, which needs
    ``in_means`` ({layer: (U,) mean |incoming weight|}). ``count_all``: the fractional count adds
    rate x all the layer's units once any is mature (--cbp-count all), not rate x the mature ones."""
    new_state, masks = {}, {}
    for layer, s in state.items():
        age = s["age"] + 1
        unbiased = 1.0 - decay ** age.astype(jnp.float32)  # > 0 for every unit unless eta = 1
        h, extra = activity[layer], {}
        if "mean" in s:  # --cbp-utility adaptable
            mean = decay * s["mean"] + (1.0 - decay) * weighted_mean(h, weights_B)
            contribution = (weighted_mean_abs(h - _unbiased(mean, unbiased), weights_B) * out_sums[layer]
                            / jnp.maximum(in_means[layer], jnp.finfo(jnp.float32).tiny))  # all-zero fan-in: not 0/0
            extra = {"mean": mean}
        else:
            contribution = weighted_mean_abs(h, weights_B) * out_sums[layer]
        utility = decay * s["utility"] + (1.0 - decay) * contribution
        eligible = age > maturity
        n_eligible = eligible.sum()
        counted = jnp.where(n_eligible > 0, eligible.size, 0) if count_all else n_eligible
        acc = s["acc"] + rate * counted.astype(jnp.float32)
        n = jnp.minimum(jnp.floor(acc).astype(jnp.int32), n_eligible)
        replace = select_lowest(_unbiased(utility, unbiased), eligible, n)
        new_state[layer] = {"utility": jnp.where(replace, 0.0, utility), "age": jnp.where(replace, 0, age),
                            "acc": acc - n.astype(jnp.float32),
                            **{k: jnp.where(replace, 0.0, v) for k, v in extra.items()}}
        masks[layer] = replace
    return new_state, masks


def _inert(params: CBPParams, config) -> str | None:
    total, steps = run_steps(config)
    widths = unit_widths_of(config)
    if widths == ():  # a model without unit layers: the run refuses the option, in one line (cljax/models/units.py)
        return None
    if params.rate == 0:
        return "--cbp-rate 0 replaces no unit"
    if params.maturity >= total:
        return (f"a unit may be replaced once it is {params.maturity + 1} steps old (--cbp-maturity {params.maturity}), "
                f"and the run has {steps}")
    # Until a layer's first replacement its units are all of one age: after step s its count is
    # (s - m) rho U in float32 sums (bounded here with their rounding); a whole unit is needed.
    widest = max(widths or (0,))  # not known (a plugin's model): not judged
    k, per_step = total - params.maturity, params.rate * widest
    if widest and k * per_step * (1 + 2**-23) + k * 2**-24 < 1:
        return (f"a layer replaces its first unit when --cbp-rate x its mature units adds up to one, at step "
                f"{params.maturity + math.ceil(1 / per_step)} in its widest layer ({widest} units, mature after step "
                f"{params.maturity}), and the run has {steps}")
    return None


@register_option("cbp", params=CBPParams, tag="cbp", flag="use-cbp", inert=_inert)
def make_cbp(params: CBPParams, config, net) -> Option:
    """continual backprop: replace the least-contributing mature hidden units by fresh ones (tag cbp)"""
    layers = unit_layers(net, "--use-cbp")
    rate, maturity, decay, adaptable = params.rate, params.maturity, params.decay, params.utility == "adaptable"
    count_all, keep_state = params.count == "all", params.optimizer_state == "keep"
    fresh = uniform_fresh if params.fresh == "uniform" else None

    def init(model_params, key):
        def zeros(layer, dtype=jnp.float32):
            return jnp.zeros(model_params[layer]["kernel"].shape[-1], dtype)

        return {layer: {"utility": zeros(layer), "age": zeros(layer, jnp.int32), "acc": jnp.zeros((), jnp.float32),
                        **({"mean": zeros(layer)} if adaptable else {})} for layer, _ in layers}

    def step_reset(state, model_params, opt_state, model_state, key, images, weights_B):
        activity = jax.lax.stop_gradient(unit_activity(net, model_params, model_state, images))
        state, masks = cbp_update(state, activity, outgoing_abs_sums(model_params, layers), weights_B, rate, maturity,
                                  decay, incoming_abs_means(model_params, layers) if adaptable else None, count_all)
        model_params, opt_state = reset_if_any(net, model_params, opt_state, key, layers, masks, fresh=fresh,
                                               keep_opt_state=keep_state)
        return state, model_params, opt_state

    return Option(init=init, step_reset=step_reset)
