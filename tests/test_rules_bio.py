"""Bio's action selection and reward on a linear policy whose input is one unit vector per example:
row b of the kernel is example b's logits, and row b of the direction is example b's own update,
-w_b / sum(w) * delta_b * (d u_a / d z_b), from which the chosen action can be read. With two
outputs the action shows (only the chosen unit moves); with one it cannot: delta * (2a - 1) is
the same for both actions (see test_bio_with_one_output_moves_every_example_by_y_minus_pi)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.losses import log_probs
from cljax.registry import RULES
from cljax.rules.bio import BioParams
from cljax.rules.rl import sample_actions
from tests.rules_kit import LinearPolicy, compiled_rule, fashion_batch

B = 240
REWARD = {"01": (1.0, 0.0), "pm1": (1.0, -1.0)}  # (correct, wrong), as the module docstring says


@functools.lru_cache(maxsize=None)
def bio_direction(**settings):
    """Bio's direction for the linear policy, compiled, with these BioParams."""
    rule = RULES["Bio"].build(BioParams(**settings), None, LinearPolicy())
    assert rule.init({"w": jnp.zeros((B, 2)), "c": jnp.zeros(2)}, jax.random.key(0)) == {"feedback": {}}
    return jax.jit(functools.partial(rule.direction, LinearPolicy()))


def problem(out_dim, seed=0):
    """(params, x, labels, weights): logits of both signs and sizes, labels and weights at random."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(0.0, 1.5, (B, out_dim)), jnp.float32), "c": jnp.zeros(out_dim)}
    y = jnp.asarray(rng.integers(0, 2, B), jnp.int32)
    w = jnp.asarray(rng.uniform(0.5, 2.0, B), jnp.float32)
    return params, jnp.eye(B, dtype=jnp.float32), y, w


def run(out_dim, key, seed=0, **settings):
    """The direction, the policy pi (B, 2) in float64 and the problem."""
    params, x, y, w = problem(out_dim, seed)
    d = bio_direction(**settings)(params, {}, {"feedback": {}}, x, y, w, key)[0]
    pi = np.exp(np.asarray(log_probs(params["w"]), np.float64))
    return d, pi, np.asarray(y), np.asarray(w, np.float64)


def chosen_actions(d):
    """The action of each example, read off its row of a two-output direction: the one unit that moved."""
    kernel = np.asarray(d["w"])
    a = np.argmax(np.abs(kernel), axis=1)
    assert (kernel[np.arange(B), 1 - a] == 0).all() and (kernel[np.arange(B), a] != 0).all()
    return a


def expected_two_output_direction(a, pi, y, w, reward):
    """By hand: delta = r(a) - (r_wrong + (r_correct - r_wrong) pi(a)), and only unit a moves, by -w delta / sum w."""
    r_correct, r_wrong = REWARD[reward]
    r = np.where(a == y, r_correct, r_wrong)
    delta = r - (r_wrong + (r_correct - r_wrong) * pi[np.arange(B), a])
    kernel = np.zeros((B, 2))
    kernel[np.arange(B), a] = -w / w.sum() * delta
    return kernel, kernel.sum(0)


@pytest.mark.parametrize("reward", ["01", "pm1"])
def test_bio_with_two_outputs_moves_the_sampled_unit_by_the_reward_prediction_error(reward):
    key = jax.random.key(4)
    d, pi, y, w = run(2, key, reward=reward)
    a = chosen_actions(d)
    params, *_ = problem(2)
    np.testing.assert_array_equal(a, sample_actions(key, log_probs(params["w"])))  # softmax: a ~ pi
    assert {(i, j) for i, j in zip(a, y)} == {(0, 0), (0, 1), (1, 0), (1, 1)}  # every case of action and label
    kernel, bias = expected_two_output_direction(a, pi, y, w, reward)
    np.testing.assert_allclose(d["w"], kernel, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(d["c"], bias, rtol=1e-5, atol=1e-7)
    if reward == "pm1":  # +-1: a correct action moves its unit up (direction < 0), a wrong one down
        moved = np.asarray(d["w"])[np.arange(B), a]
        assert (moved[a == y] < 0).all() and (moved[a != y] > 0).all()
        # delta = (r_correct - r_wrong) (1[a = y] - pi(a)): twice the 01 rule's, action by action
        np.testing.assert_allclose(d["w"], 2 * np.asarray(run(2, key, reward="01")[0]["w"]), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("reward, scale", [("01", 1.0), ("pm1", 2.0)])
def test_bio_with_one_output_moves_every_example_by_y_minus_pi(reward, scale):
    """delta (2a - 1) = y - pi(1) for either action under 01, twice that under pm1: exactly, per example."""
    d, pi, y, w = run(1, jax.random.key(4), reward=reward)
    per_example = -scale * w / w.sum() * (y - pi[:, 1])
    np.testing.assert_allclose(np.asarray(d["w"])[:, 0], per_example, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(d["c"], [per_example.sum()], rtol=1e-5, atol=1e-7)
    # So the action selection changes nothing with one output (docs/rules.md says so).
    for epsilon in (0.0, 1.0):
        other = run(1, jax.random.key(4), reward=reward, policy="egreedy", epsilon=epsilon)[0]
        np.testing.assert_allclose(np.asarray(other["w"])[:, 0], per_example, rtol=1e-5, atol=1e-9)


def test_bio_egreedy_takes_the_greedy_action_but_a_fraction_epsilon_of_uniform_ones():
    greedy = None
    for epsilon in (0.0, 0.3, 1.0):
        d, pi, y, w = run(2, jax.random.key(6), policy="egreedy", epsilon=epsilon)
        a = chosen_actions(d)
        greedy = np.argmax(pi, axis=1)
        kernel, bias = expected_two_output_direction(a, pi, y, w, "01")  # pi(a) is still the softmax's
        np.testing.assert_allclose(d["w"], kernel, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(d["c"], bias, rtol=1e-5, atol=1e-7)
        other = a != greedy
        if epsilon == 0.0:
            assert not other.any(), f"{other.sum()} of {B} actions not greedy at epsilon 0"
        elif epsilon == 0.3:  # a uniform action is the other one half the time: 0.15 expected
            assert 0.08 <= other.mean() <= 0.22, other.mean()
        else:  # every action uniform, whichever the greedy one
            for g in (0, 1):
                assert 0.35 <= other[greedy == g].mean() <= 0.65, (g, other[greedy == g].mean())
    assert 0.3 <= greedy.mean() <= 0.7  # both greedy actions are common


def test_bio_with_two_outputs_on_the_cnn_updates_the_chosen_heads_unit(tmp_path):
    """The real network, two outputs, +-1 reward: the head's kernel column j moves by
    -sum_b w_b delta_b 1[a_b = j] hidden_b / sum w (the chosen unit's error is 1, the other's 0)."""
    _, net, rule, (direction, apply, _), params = compiled_rule(tmp_path, algorithm="Bio", out_dim=2, rl_reward="pm1")
    state = jax.jit(rule.init)(params, jax.random.key(5))
    x, y = fashion_batch(32)
    w, key = jnp.asarray(np.linspace(0.5, 1.5, 32), jnp.float32), jax.random.key(7)
    d = direction(net, params, {}, state, x, y, w, key)[0]
    logits, hidden = apply(params, x)
    a = np.asarray(sample_actions(key, log_probs(logits)))
    pi = np.exp(np.asarray(log_probs(logits), np.float64))
    delta = np.where(a == np.asarray(y), 1.0, -1.0) - (2.0 * pi[np.arange(32), a] - 1.0)
    wn = np.asarray(w, np.float64) / np.asarray(w).sum()
    onehot = np.eye(2)[a]
    np.testing.assert_allclose(d["head"]["kernel"], -np.einsum("b,bi,bj->ij", wn * delta, np.asarray(hidden), onehot),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d["head"]["bias"], -(wn * delta) @ onehot, rtol=1e-4, atol=1e-6)
