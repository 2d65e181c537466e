"""RL: REINFORCE with a running reward baseline (Williams 1992), an entropy bonus (Williams &
Peng 1991) and a penalty on the policy's log-odds, one action per example.

The network's output is read as a policy over the two labels, ``pi = softmax(log_probs(logits))``
(``cljax.losses.log_probs``: sigmoid for one output, softmax for two). For each example of the
batch (weights w_b, see the rule contract; <f> = sum_b w_b f_b / sum_b w_b):

    a_b ~ pi(. | x_b)                                  one action, drawn from the step's key
    r_b = 1[a_b == y_b]          (--rl-reward 01)      or  2 * 1[a_b == y_b] - 1   (pm1)
    z_b = log pi(1 | x_b) - log pi(0 | x_b)            the log-odds (the logit with one output)
    direction = -( <(r - b) grad log pi(a | x)>  +  beta grad <H(pi(. | x))>  -  beta_z grad <z^2> )
    b <- d * b + (1 - d) * <r>                         (d = --rl-baseline-decay)

``direction`` is the negative REINFORCE estimate of the gradient of the expected reward plus
the entropy bonus minus the log-odds penalty (the optimiser subtracts lr * direction, so it
ascends the first two and descends the penalty). The baseline b is per repeat (the rule state,
a scalar), starts at the expected reward of the uniform policy (0.5 for 01, 0 for pm1), and is
updated after the direction is computed with it.

Why two regularisers. In expectation over a_b the REINFORCE direction on z is pi(y | x) times
the cross-entropy's, +-pi(1 - pi) whatever b, and the entropy bonus's, beta z pi(1 - pi), carries
the same factor: both vanish where the policy is saturated, pi(1 - pi) ~ e^-|z|. The entropy bonus
(beta = ``--rl-entropy``) makes |z| = 1 / beta a fixed point on a training image but cannot pull
back an image whose |z| is already large, such as the first images of a new task seen by a
network made confident by the earlier ones; a policy confidently wrong there stays at chance.
The log-odds penalty (beta_z = ``--rl-logit-penalty``) has gradient 2 beta_z z, which grows with
|z| instead of vanishing: it bounds the confidence and brings a saturated policy back to where
REINFORCE learns. beta_z = 0 is the rule without it, bit for bit.

The training metrics are those of SL (negative log-likelihood of the label, greedy accuracy), so
RL and SL curves are comparable; test accuracy is greedy as for every rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from cljax.losses import log_probs, nll_and_correct, weighted_mean
from cljax.registry import param
from cljax.rules import Rule, register_rule

REWARDS = {"01": (1.0, 0.0), "pm1": (1.0, -1.0)}  # (reward if correct, reward if wrong)
REWARD_HELP = "reward of RL and Bio: 01 (1 if the action is the label, else 0) or pm1 (+1 / -1)"


@dataclass(frozen=True)
class RLParams:
    reward: str = param("01", REWARD_HELP, choices=tuple(REWARDS))
    baseline_decay: float = param(0.9, "RL: decay d of the running reward baseline, b <- d*b + (1-d)*batch mean reward",
                                  min=0.0, max=1.0)
    entropy: float = param(0.2, "RL: weight beta of the policy-entropy bonus added to the REINFORCE objective", min=0.0)
    logit_penalty: float = param(0.01, "RL: weight beta_z of the penalty beta_z * <z^2> on the policy's log-odds "
                                 "z = log pi(1) - log pi(0), subtracted from the REINFORCE objective", min=0.0,
                                 absent=0.0)


def sample_actions(key, log_probs_B2):
    """One action per example drawn from the policy, (B,) int32."""
    return jax.random.categorical(key, log_probs_B2, axis=-1).astype(jnp.int32)


def rewards(actions_B, labels_B, reward_kind: str):
    """The reward of each action: r_correct if it is the label, else r_wrong, (B,) float32."""
    r_correct, r_wrong = REWARDS[reward_kind]
    return jnp.where(actions_B == labels_B, r_correct, r_wrong).astype(jnp.float32)


@register_rule("RL", params=RLParams, default_lr=0.1)
def make_rl(params: RLParams, config, net) -> Rule:
    """REINFORCE with a running reward baseline, an entropy bonus and a log-odds penalty."""
    reward_kind, decay, beta, beta_z = params.reward, params.baseline_decay, params.entropy, params.logit_penalty
    r_correct, r_wrong = REWARDS[reward_kind]

    def init(model_params, key):
        return {"baseline": jnp.asarray(0.5 * (r_correct + r_wrong), jnp.float32)}

    def direction(net, model_params, model_state, rule_state, images, labels_B, weights_B, key):
        baseline = rule_state["baseline"]

        def surrogate(p):
            logits, _, new_state = net.apply(p, model_state, images, True, weights_B)
            lp_B2 = log_probs(logits)
            actions_B = sample_actions(key, jax.lax.stop_gradient(lp_B2))
            reward_B = rewards(actions_B, labels_B, reward_kind)
            lp_action_B = jnp.take_along_axis(lp_B2, actions_B[:, None], axis=-1)[:, 0]
            # Its gradient is the REINFORCE estimate of grad E[r]; negated = descent direction.
            objective = weighted_mean((reward_B - baseline) * lp_action_B, weights_B)
            if beta:
                entropy_B = -(jnp.exp(lp_B2) * lp_B2).sum(-1)
                objective = objective + beta * weighted_mean(entropy_B, weights_B)
            if beta_z:
                log_odds_B = lp_B2[:, 1] - lp_B2[:, 0]
                objective = objective - beta_z * weighted_mean(log_odds_B ** 2, weights_B)
            return -objective, (logits, reward_B, new_state)

        grads, (logits, reward_B, new_state) = jax.grad(surrogate, has_aux=True)(model_params)
        nll_B, correct_B = nll_and_correct(logits, labels_B)
        new_baseline = decay * baseline + (1.0 - decay) * weighted_mean(reward_B, weights_B)
        metrics = {"loss": weighted_mean(nll_B, weights_B), "acc": weighted_mean(correct_B, weights_B)}
        return grads, {"baseline": new_baseline}, new_state, metrics

    return Rule(init=init, direction=direction)
