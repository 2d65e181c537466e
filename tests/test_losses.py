"""The loss shared by every rule (cljax.losses) against numpy by hand: the log-probabilities
of one logit (sigmoid) and two (softmax), the true label's NLL, greedy correctness (NaN where
a logit is not finite) and the weighted mean."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cljax.losses import log_probs, nll_and_correct, weighted_mean


def test_one_logit_is_a_sigmoid_and_two_are_a_softmax_over_the_labels():
    z = np.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(np.exp(log_probs(jnp.asarray(z[:, None], jnp.float32))),
                               np.stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], axis=-1), rtol=1e-6)
    two = np.array([[1.0, 2.0], [0.5, -1.0]])
    np.testing.assert_allclose(np.exp(log_probs(jnp.asarray(two, jnp.float32))),
                               np.exp(two) / np.exp(two).sum(-1, keepdims=True), rtol=1e-6)


def test_the_nll_is_the_true_labels_and_correctness_the_greedy_choice():
    logits = np.array([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], np.float32)
    labels = np.array([1, 1, 0])
    nll, correct = nll_and_correct(jnp.asarray(logits), jnp.asarray(labels))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(nll, -np.log(p[np.arange(3), labels]), rtol=1e-6)
    np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0])


def test_a_certain_label_has_an_nll_of_plus_zero():
    """Two logits far apart make the true label's log-probability exactly 0.0: its NLL, and the
    mean a run stores as the loss, are +0.0, not -0.0 (which would print as a negative loss)."""
    nll, _ = nll_and_correct(jnp.array([[200.0, 0.0], [0.0, 200.0]], jnp.float32), jnp.array([0, 1]))
    assert np.asarray(nll).tolist() == [0.0, 0.0]
    assert not np.signbit(np.asarray(nll)).any() and not np.signbit(np.asarray(nll.mean()))


def test_an_example_with_any_non_finite_logit_has_no_correctness():
    """Two logits, one of them NaN or infinite: argmax would still pick a label (and score it),
    but the example is NaN, whichever logit is the bad one; finite examples are scored."""
    logits = jnp.array([[np.nan, 1.0], [0.0, np.inf], [-np.inf, 0.0], [2.0, 1.0]], jnp.float32)
    _, correct = nll_and_correct(logits, jnp.array([1, 1, 1, 0]))
    assert np.isnan(np.asarray(correct[:3])).all()
    assert float(correct[3]) == 1.0


def test_the_weighted_mean_divides_by_the_sum_of_the_weights():
    np.testing.assert_allclose(float(weighted_mean(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 3.0]))),
                               (2.0 + 9.0) / 4.0, rtol=1e-6)
