"""The network's output read as a distribution over the two labels, shared by every rule.

``out_dim == 1``: one logit z, p(label 1) = sigmoid(z) (binary cross-entropy).
``out_dim == 2``: two logits, softmax. Evaluation (loss = negative log-likelihood of the true
label, accuracy = greedy choice) is the same for every learning rule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def log_probs(logits_BxO):
    """(B, O) logits -> (B, 2) log-probabilities of labels 0 and 1."""
    if logits_BxO.shape[-1] == 1:
        z = logits_BxO[..., 0]
        return jnp.stack([jax.nn.log_sigmoid(-z), jax.nn.log_sigmoid(z)], axis=-1)
    return jax.nn.log_softmax(logits_BxO, axis=-1)


def nll_and_correct(logits_BxO, labels_B):
    """Per-example negative log-likelihood of the true label and greedy correctness (B,).
    Correctness is NaN where a logit is not finite: a diverged network has no accuracy (argmax
    of NaNs is label 0, which would score it at chance), and the analyses leave it out and count
    it like every other non-finite value."""
    lp = log_probs(logits_BxO)
    # 0 - log p, not -log p: a certain label (log p = 0.0) has NLL +0.0, not -0.0
    nll = 0.0 - jnp.take_along_axis(lp, labels_B[:, None].astype(jnp.int32), axis=-1)[:, 0]
    correct = (jnp.argmax(lp, axis=-1) == labels_B).astype(jnp.float32)
    return nll, jnp.where(jnp.isfinite(logits_BxO).all(axis=-1), correct, jnp.nan)


def nll_and_accuracy(logits_BxO, labels_B):
    """Mean negative log-likelihood and greedy accuracy over the batch."""
    nll, correct = nll_and_correct(logits_BxO, labels_B)
    return nll.mean(), correct.mean()


def weighted_mean(values_B, weights_B):
    """Sum of w * v over sum of w (the batch mean when every weight is 1)."""
    return (weights_B * values_B).sum() / weights_B.sum()
