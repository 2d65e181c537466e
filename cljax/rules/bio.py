"""Bio: a three-factor reward-modulated rule with fixed random feedback, in the spirit of AGREL
(Roelfsema & van Ooyen 2005, Neural Computation 17:2176) and BrainProp (Pozzi, Bohte &
Roelfsema 2020, NeurIPS), with the feedback weights of feedback alignment (Lillicrap et al. 2016)
in place of the transposed forward weights.

For each example (weights w_b as in the rule contract; pi = softmax(log_probs(logits))):

1. Action selection. ``--bio-policy softmax``: a ~ pi(. | x); ``egreedy``: a = argmax pi with
   probability 1 - eps, else a uniform label (eps = ``--bio-epsilon``).
2. Global reward-prediction error. r = reward of a (``--rl-reward``: 1/0 or +1/-1). The network
   reads pi(a) as the probability that a is rewarded, so the expected reward of the chosen action
   is E_a = r_wrong + (r_correct - r_wrong) * pi(a), and delta = r - E_a (one scalar per example,
   broadcast to every synapse: the neuromodulatory third factor).
3. Attention gating. Only the chosen output unit feeds back: its activity is u_a = z_a (the
   logit of label a) with two outputs, and u_a = (2a - 1) z with one output (the single unit
   codes label 1 with +z and label 0 with -z). The error signal of the output layer is
   e_out = d u_a / d z (1 on the chosen unit, 0 elsewhere; +-1 for one output).
4. Feedback. Each layer l with a kernel (dense and convolutional) has a fixed random feedback
   kernel B_l, the shape of its forward kernel W_l, drawn once at init from the rule's key like
   the forward initialiser (LeCun normal) and never learned. The feedback arriving at the output
   of layer l is carried down through B_{l+1} instead of W_{l+1}^T, and through the network's
   fixed operations (ReLU derivative f'(post), max-pool routing to the winning position, average
   pool) as they are:
       fb_out = e_out
       fb_l  = (B_{l+1} applied transposed to fb_{l+1}) * f'(post_l)     (pooling in between)
   A convolution's feedback is the transposed convolution with B_{l+1}. (The first layer's B
   is drawn too, for a uniform state, but nothing lies below it to receive its feedback.)
5. Update (descent convention, the optimiser subtracts lr * direction):
       dense:  direction W_l[i, j] = - sum_b w_b delta_b  pre_l[b, i] fb_l[b, j] / sum_b w_b
               direction bias_l[j] = - sum_b w_b delta_b  fb_l[b, j] / sum_b w_b
       conv:   the same local outer product at every spatial position p, summed over positions:
               direction W_l[k, i, j] = - sum_b w_b delta_b sum_p patch_l[b, p, (k, i)] fb_l[b, p, j] / sum_b w_b
   i.e. delta x (post-synaptic feedback x f'(post)) x pre-synaptic activity, for every layer.

Implementation: this is exactly ``-delta * d u_a / d theta`` computed by autodiff with every
layer's backward map to its *input* replaced by the same layer with B_l in place of W_l (a
custom VJP installed with ``flax.linen.intercept_methods`` around ``apply_fn``); the backward map
to the layer's own parameters is the exact local outer product above. So the rule works with any
model of the registry whose learned layers are linear in their input with a ``kernel`` parameter
and that keeps no mutable state (BatchNorm's backward pass is not a local rule: the ResNet is
refused in one line).

With one output, delta * (2a - 1) = (r_correct - r_wrong) * (y - pi(1)) for either action, not
only in expectation: the update is the cross-entropy gradient with feedback alignment in the
hidden layers (the reason the rule learns), and the action never matters: with one output
``--bio-policy`` and ``--bio-epsilon`` change nothing; with two the chosen unit, and so the
action, sets the update. With either, delta = (r_correct - r_wrong) * (1[a = y] - pi(a)): the pm1
reward is the 01 rule at twice the learning rate.
Training metrics are those of SL (label NLL, greedy accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from cljax.errors import CljaxError
from cljax.losses import log_probs, nll_and_correct, weighted_mean
from cljax.registry import param
from cljax.rules import Rule, register_rule
from cljax.rules.rl import REWARD_HELP, REWARDS, rewards, sample_actions


@dataclass(frozen=True)
class BioParams:
    reward: str = param("01", REWARD_HELP, choices=tuple(REWARDS), flag="rl-reward")
    policy: str = param("softmax", "Bio: action selection, sample the policy (softmax) or epsilon-greedy (egreedy); "
                        "with --out-dim 1 the update does not depend on the action, so this changes nothing (up "
                        "to float rounding)",
                        choices=("softmax", "egreedy"))
    epsilon: float = param(0.1, "Bio: exploration rate of --bio-policy egreedy (no effect with --out-dim 1)",
                           min=0.0, max=1.0, applies_when=("bio_policy", "egreedy"))


def kernel_layers(params, prefix=()):
    """Paths (tuples of names) of the sub-dicts of ``params`` that hold a ``kernel``."""
    if "kernel" in params:
        return [prefix]
    return [p for name, sub in params.items() if isinstance(sub, dict) for p in kernel_layers(sub, prefix + (name,))]


def init_feedback(params, key):
    """One fixed random feedback kernel per kernel layer: a normal of variance 1 / fan-in, the
    variance of the forward init's LeCun normal (not truncated, as flax's is)."""
    paths = kernel_layers(params)
    feedback = {}
    for i, path in enumerate(paths):
        shape = params_at(params, path)["kernel"].shape
        fan_in = 1
        for d in shape[:-1]:
            fan_in *= d
        draw = jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
        feedback["/".join(path)] = draw / jnp.sqrt(jnp.float32(fan_in))
    return feedback


def params_at(params, path):
    for name in path:
        params = params[name]
    return params


def feedback_layer_call(layer, layer_params, feedback_kernel, x):
    """``layer`` applied to x with its parameters; backward: exact to the parameters, through the
    feedback kernel (not the forward kernel) to the input."""

    def forward(p, fb, inp):
        return layer.apply({"params": p}, inp)

    def forward_res(p, fb, inp):
        return forward(p, fb, inp), (p, fb, inp)

    def backward(res, g):
        p, fb, inp = res
        _, vjp_params = jax.vjp(lambda q: layer.apply({"params": q}, inp), p)
        _, vjp_input = jax.vjp(lambda v: layer.apply({"params": {**p, "kernel": fb}}, v), inp)
        return vjp_params(g)[0], jnp.zeros_like(fb), vjp_input(g)[0]

    call = jax.custom_vjp(forward)
    call.defvjp(forward_res, backward)
    return call(layer_params, feedback_kernel, x)


def feedback_interceptor(feedback):
    """A flax method interceptor that routes each kernel layer through ``feedback_layer_call``."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        name = "/".join(module.path)
        if context.method_name != "__call__" or name not in feedback or kwargs or len(args) != 1:
            return next_fun(*args, **kwargs)
        layer = module.clone(parent=None)  # unbound copy: applied functionally, path () (not intercepted)
        return feedback_layer_call(layer, module.variables["params"], feedback[name], args[0])

    return intercept


def chosen_unit(logits_BxO, actions_B):
    """Activity of the chosen action's output unit (B,): z_a, or (2a - 1) z with one output."""
    if logits_BxO.shape[-1] == 1:
        return (2.0 * actions_B - 1.0) * logits_BxO[:, 0]
    return jnp.take_along_axis(logits_BxO, actions_B[:, None], axis=-1)[:, 0]


def _inert(params: BioParams, config) -> dict[str, str]:
    """The settings that change nothing in this run (a warning, cljax/settings.py): with one
    output the update does not depend on the action, so neither does the way it is chosen."""
    if config.out_dim != 1:
        return {}
    why = "with --out-dim 1 Bio's update does not depend on the action, so not on how it is chosen (--out-dim 2 uses it)"
    return {"bio_policy": why, "bio_epsilon": why}


@register_rule("Bio", params=BioParams, default_lr=0.05, inert=_inert)
def make_bio(params: BioParams, config, net) -> Rule:
    """A three-factor reward-modulated rule with fixed random feedback."""
    if net.state_collections:
        raise CljaxError(
            f"--algorithm Bio needs a model without mutable state, but --model {config.model} keeps "
            f"{', '.join(net.state_collections)} (BatchNorm's backward pass is not a local rule): choose --model cnn or mlp.")
    reward_kind, policy, epsilon = params.reward, params.policy, params.epsilon
    r_correct, r_wrong = REWARDS[reward_kind]

    def select(key, lp_B2):
        if policy == "softmax":
            return sample_actions(key, lp_B2)
        k_explore, k_action = jax.random.split(key)
        explore_B = jax.random.uniform(k_explore, lp_B2.shape[:1]) < epsilon
        random_B = jax.random.randint(k_action, lp_B2.shape[:1], 0, 2)
        return jnp.where(explore_B, random_B, jnp.argmax(lp_B2, axis=-1)).astype(jnp.int32)

    def init(model_params, key):
        return {"feedback": init_feedback(model_params, key)}

    def direction(net, model_params, model_state, rule_state, images, labels_B, weights_B, key):
        intercept = feedback_interceptor(rule_state["feedback"])

        def modulated_activity(p):
            with nn.intercept_methods(intercept):
                logits, _, _ = net.apply(p, model_state, images, True, weights_B)
            lp_B2 = jax.lax.stop_gradient(log_probs(logits))
            actions_B = select(key, lp_B2)
            reward_B = rewards(actions_B, labels_B, reward_kind)
            expected_B = r_wrong + (r_correct - r_wrong) * jnp.exp(jnp.take_along_axis(lp_B2, actions_B[:, None], -1)[:, 0])
            delta_B = reward_B - expected_B
            # d/dtheta of this (with feedback weights in the backward pass) is the three-factor update.
            return weighted_mean(delta_B * chosen_unit(logits, actions_B), weights_B), logits

        grads, logits = jax.grad(modulated_activity, has_aux=True)(model_params)
        nll_B, correct_B = nll_and_correct(logits, labels_B)
        metrics = {"loss": weighted_mean(nll_B, weights_B), "acc": weighted_mean(correct_B, weights_B)}
        return jax.tree.map(jnp.negative, grads), rule_state, model_state, metrics

    return Rule(init=init, direction=direction)
