"""L2 regularisation: toward zero (``--use-l2``, tag ``l2``: weight decay) and toward the
learner's initial parameters (``--use-l2-init``, tag ``l2init``: Kumar et al. 2023,
"Maintaining Plasticity in Continual Learning via Regenerative Regularization").

Both add a term to the rule's update direction before the optimiser (hook ``direction``), for
every parameter (kernels, biases, the head):

    --use-l2:       direction <- direction + c theta               c = --l2-decay
    --use-l2-init:  direction <- direction + c (theta - theta_0)   c = --l2-init-decay

theta_0 = the learner's parameters at initialisation (kept in the option state, so saved in the
checkpoint and the same after a resume). For SL this is the gradient of
loss + (c / 2) |theta - theta_0|^2, i.e. Kumar et al.'s loss + lambda |theta - theta_0|^2 with
c = 2 lambda, and PyTorch's ``weight_decay = c`` (Dohare et al. 2024's L2: 3e-6 at lr 0.03). It
is coupled decay: the term goes through the optimiser (momentum) like the gradient. For RL it is
the same penalty added to the negated REINFORCE objective; for Bio, whose direction is not a
gradient, it is a local decay of every synapse toward theta_0 (or 0) at rate lr * c per step,
added to the three-factor update. The expert never runs options.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax

from cljax.options import Option, register_option
from cljax.registry import param


@dataclass(frozen=True)
class L2Params:
    decay: float = param(3e-6, "L2: c in direction + c * theta (loss + c/2 |theta|^2; PyTorch's weight_decay)", min=0.0)


@dataclass(frozen=True)
class L2InitParams:
    # 1e-2, not the former 1e-4, which changed nothing measurable where plasticity is lost; the
    # sweep that chose it is in docs/plasticity.md ("L2-init's decay").
    decay: float = param(1e-2, "L2 toward the initial weights: c in direction + c * (theta - theta_0) "
                         "(loss + c/2 |theta - theta_0|^2)", min=0.0)


def add_l2(direction, params, c: float, target=None):
    """direction + c (params - target), leaf by leaf (target None: zero)."""
    if target is None:
        return jax.tree.map(lambda d, p: d + c * p, direction, params)
    return jax.tree.map(lambda d, p, p0: d + c * (p - p0), direction, params, target)


def _no_decay(flag: str):
    return lambda params, config: f"{flag} 0 adds nothing to the direction" if params.decay == 0 else None


@register_option("l2", params=L2Params, tag="l2", flag="use-l2", inert=_no_decay("--l2-decay"))
def make_l2(params: L2Params, config, net) -> Option:
    """L2 / weight decay: direction + c * theta before the optimiser (tag l2)"""
    c = params.decay
    return Option(direction=lambda state, model_params, direction: add_l2(direction, model_params, c))


@register_option("l2_init", params=L2InitParams, prefix="l2-init", tag="l2init", flag="use-l2-init",
                 inert=_no_decay("--l2-init-decay"))
def make_l2_init(params: L2InitParams, config, net) -> Option:
    """L2 toward the initial weights (regenerative regularisation): direction + c * (theta - theta_0) (tag l2init)"""
    c = params.decay

    def init(model_params, key):
        return {"theta_0": jax.tree.map(lambda p: p.copy(), model_params)}

    def direction(state, model_params, direction):
        return add_l2(direction, model_params, c, state["theta_0"])

    return Option(init=init, direction=direction)
