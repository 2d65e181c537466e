"""Learning rules RL and Bio: that they learn on real Fashion-MNIST with their defaults, and
their exact updates on known states (REINFORCE with a running baseline and its logit penalty;
Bio's three-factor rule with fixed random feedback, through the forward pass's pool winners)."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import results
from cljax.config import Config
from cljax.experiment import run_experiment
from cljax.losses import log_probs, weighted_mean
from cljax.models import CONV_IMPLS
from cljax.options.ul import layer_input
from cljax.registry import RULES
from cljax.rules import make_rule
from cljax.rules.bio import feedback_interceptor
from cljax.rules.rl import RLParams, rewards, sample_actions
from cljax.setting_match import differing_settings
from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_tree
from tests.conftest import FASHION_DIR, apply_fn_of
from tests.rules_kit import DEFAULT_LR, LinearPolicy, compiled_rule, assert_trees_equal, config_of, fashion_batch, final_accuracy, jitted, program_of


# ---- RL and Bio learn ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RL", "Bio"])
def test_reward_rules_learn_with_their_defaults(tmp_path, algorithm):
    """Two epochs of 2000 images (124 steps) at the rule's default learning rate; the accuracies
    this reaches at three seeds are in docs/benchmark.md ("Test suite")."""
    config = Config(algorithm=algorithm, dataset="fashion_mnist", data_dir=str(FASHION_DIR),
                    results_dir=str(tmp_path / "results"), num_tasks=2, n_repeats=2, n_train_per_class=1000,
                    n_test_per_class=100, n_subsamples=2, epochs=2, log_frequency=62)
    run = run_experiment(config, progress=False)
    acc = final_accuracy(run.algo_dir)
    current = float(np.mean(np.diag(acc)))
    print(f"{algorithm}: accuracy on the current task at task end {np.diag(acc).round(3)}, mean {current:.3f}")
    assert current >= 0.75
    meta = results.load_metadata(results.task_dirs(run.algo_dir)[0])
    assert config.lr is None and meta["config"]["lr"] == DEFAULT_LR(algorithm)  # the rule's default, resolved


def test_rule_default_lr_applies_only_when_lr_is_unset():
    assert Config(algorithm="RL").lr_value == DEFAULT_LR("RL")
    assert Config(algorithm="Bio").lr_features_value == DEFAULT_LR("Bio")
    assert Config(algorithm="RL", lr=0.3).lr_classifier_value == 0.3
    assert dataclasses.replace(Config(algorithm="SL"), algorithm="RL", rule_params=None).lr_value == DEFAULT_LR("RL")
    assert Config(algorithm="Bio").to_dict()["lr"] == DEFAULT_LR("Bio")


# ---- exact updates of the rules -------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_examples_of_weight_zero_change_nothing(tmp_path, algorithm):
    """What replay appends with weight 0 (an empty buffer) is invisible to the update: the
    direction, the metrics and the rule's state (RL's running baseline)."""
    _, net, rule, (direction, _, _), params = compiled_rule(tmp_path, algorithm=algorithm)
    state = rule.init(params, jax.random.key(2))
    x, y = fashion_batch(24)
    w = jnp.asarray(np.r_[np.ones(16), np.zeros(8)], jnp.float32)
    # Several keys: with one, RL's sampled rewards on the weight-0 part could balance by chance.
    for key in jax.random.split(jax.random.key(1), 4):
        d1, s1, _, m1 = direction(net, params, {}, state, x, y, w, key)
        for x2, y2 in ((x.at[16:].set(200), y.at[16:].set(1 - y[16:])), (x, y.at[16:].set(1 - y[16:]))):
            d2, s2, _, m2 = direction(net, params, {}, state, x2, y2, w, key)
            for a, b in zip(jax.tree.leaves((d1, s1, m1)), jax.tree.leaves((d2, s2, m2))):
                np.testing.assert_array_equal(a, b)


def test_rewards_and_the_uniform_policy_baseline(tmp_path):
    actions, labels = jnp.array([0, 1, 1, 0]), jnp.array([0, 0, 1, 1])
    np.testing.assert_array_equal(rewards(actions, labels, "01"), [1, 0, 1, 0])
    np.testing.assert_array_equal(rewards(actions, labels, "pm1"), [1, -1, 1, -1])
    for kind, b0 in (("01", 0.5), ("pm1", 0.0)):
        config = config_of(tmp_path, algorithm="RL", rl_reward=kind)
        rule = make_rule(config, program_of(config).parts.net)
        assert float(rule.init(None, jax.random.key(0))["baseline"]) == b0


def test_rl_is_reinforce_with_a_running_baseline(tmp_path):
    config = config_of(tmp_path, algorithm="RL", rl_baseline_decay=0.7, rl_entropy=0.3, rl_logit_penalty=0.05)
    program = program_of(config)
    net = program.parts.net
    rule = make_rule(config, net)
    rule_direction, apply, init = jitted(rule, program)
    params = init(jax.random.key(0))
    x, y = fashion_batch(32)
    key = jax.random.key(3)
    state = {"baseline": jnp.float32(0.25)}
    direction, new_state, _, metrics = rule_direction(net, params, {}, state, x, y, jnp.ones(32), key)
    # By hand: the same actions and rewards; d log pi(a) / d theta through the head.
    logits, hidden = apply(params, x)
    actions = sample_actions(key, log_probs(logits))
    r = np.where(np.asarray(actions) == np.asarray(y), 1.0, 0.0)
    np.testing.assert_allclose(new_state["baseline"], 0.7 * 0.25 + 0.3 * r.mean(), rtol=1e-6)
    # Head layer (one sigmoid output): d log pi(a) / dz = a - p, dH / dz = -z p (1 - p) and
    # d z^2 / dz = 2 z, so the head kernel's direction is
    # -mean(((r - b) (a - p) - beta z p (1 - p) - 2 beta_z z) hidden).
    z = np.asarray(logits[:, 0], np.float64)
    p = 1 / (1 + np.exp(-z))
    coef = (r - 0.25) * (np.asarray(actions) - p) - 0.3 * z * p * (1 - p) - 2 * 0.05 * z
    np.testing.assert_allclose(direction["head"]["kernel"][:, 0], -(coef[:, None] * np.asarray(hidden)).mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(direction["head"]["bias"][0], -coef.mean(), rtol=1e-4, atol=1e-6)
    assert metrics["loss"] > 0 and 0 <= metrics["acc"] <= 1


def rl_direction(out_dim=1, **settings):
    """The RL rule's direction for the linear policy, compiled, with these RLParams."""
    rule = RULES["RL"].build(RLParams(**settings), None, LinearPolicy())
    return jax.jit(functools.partial(rule.direction, LinearPolicy()))


@pytest.mark.parametrize("out_dim", [1, 2])
def test_rl_logit_penalty_gradient_is_by_hand(out_dim):
    """The penalty adds 2 beta_z <z dz/dtheta>, z = log pi(1) - log pi(0) (z1 - z0 with two outputs)."""
    x = jax.random.normal(jax.random.key(0), (16, 3))
    params = {"w": jax.random.normal(jax.random.key(1), (3, out_dim)), "c": jnp.full((out_dim,), 0.3)}
    y, w_B, key, state = (jnp.arange(16) % 2).astype(jnp.int32), jnp.ones(16), jax.random.key(2), {"baseline": jnp.float32(0.5)}
    with_penalty = rl_direction(out_dim, logit_penalty=0.07)(params, {}, state, x, y, w_B, key)[0]
    without = rl_direction(out_dim, logit_penalty=0.0)(params, {}, state, x, y, w_B, key)[0]
    logits = np.asarray(x @ params["w"] + params["c"], np.float64)
    z = logits[:, 0] if out_dim == 1 else logits[:, 1] - logits[:, 0]
    dz = np.array([1.0]) if out_dim == 1 else np.array([-1.0, 1.0])  # dz / dlogits
    expected_w = 2 * 0.07 * (z[:, None] * np.asarray(x)).mean(0)[:, None] * dz
    np.testing.assert_allclose(with_penalty["w"] - without["w"], expected_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(with_penalty["c"] - without["c"], 2 * 0.07 * z.mean() * dz, rtol=1e-4, atol=1e-6)


def linear_rule_direction(algorithm, out_dim, seed=0):
    """(direction, metrics) of a rule at its default settings on the linear policy, with one unit
    input per example (row b of the kernel is example b's logits) and weights at random; and the
    problem (pi (B, 2) in float64, labels, normalised weights)."""
    rng, n = np.random.default_rng(seed), 48
    params = {"w": jnp.asarray(rng.normal(0.0, 1.5, (n, out_dim)), jnp.float32), "c": jnp.zeros(out_dim)}
    y, w = jnp.asarray(rng.integers(0, 2, n), jnp.int32), jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)
    rule = RULES[algorithm].build(RULES[algorithm].params(), None, LinearPolicy())
    state = rule.init(params, jax.random.key(1))
    direction, _, _, metrics = jax.jit(functools.partial(rule.direction, LinearPolicy()))(
        params, {}, state, jnp.eye(n), y, w, jax.random.key(2))
    pi = np.exp(np.asarray(log_probs(params["w"]), np.float64))
    return direction, metrics, pi, np.asarray(y), np.asarray(w, np.float64) / np.asarray(w).sum()


@pytest.mark.parametrize("out_dim", [1, 2])
@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_training_metrics_are_the_weighted_label_nll_and_greedy_accuracy(algorithm, out_dim):
    _, metrics, pi, y, wn = linear_rule_direction(algorithm, out_dim)
    np.testing.assert_allclose(metrics["loss"], -(wn * np.log(pi[np.arange(len(y)), y])).sum(), rtol=1e-5)
    correct = np.argmax(pi, axis=1) == y
    assert 0.2 < correct.mean() < 0.8
    np.testing.assert_allclose(metrics["acc"], (wn * correct).sum(), rtol=1e-5)


def test_correctness_is_nan_where_any_logit_is_not_finite():
    """One non-finite logit of two makes the example's correctness NaN (argmax would pick a label)."""
    from cljax.losses import nll_and_correct

    logits = jnp.asarray([[np.nan, 1.0], [np.inf, 0.0], [0.0, -np.inf], [2.0, 1.0], [np.nan, np.nan], [-1.0, 3.0]])
    _, correct = nll_and_correct(logits, jnp.asarray([0, 0, 1, 0, 1, 0]))
    np.testing.assert_array_equal(np.asarray(correct), [np.nan, np.nan, np.nan, 1.0, np.nan, 0.0])


@pytest.mark.parametrize("out_dim", [1, 2])
def test_sl_direction_is_the_weighted_cross_entropy_gradient(out_dim):
    """d NLL / d logits = pi - onehot(y) (softmax), p(1) - y (sigmoid): example b's row, times w_b / sum w."""
    direction, _, pi, y, wn = linear_rule_direction("SL", out_dim)
    dlogits = pi - np.eye(2)[y] if out_dim == 2 else (pi[:, 1] - y)[:, None]
    np.testing.assert_allclose(direction["w"], wn[:, None] * dlogits, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(direction["c"], (wn[:, None] * dlogits).sum(0), rtol=1e-5, atol=1e-7)


def test_rl_without_logit_penalty_is_the_previous_rule_bit_for_bit(tmp_path):
    """--rl-logit-penalty 0 is the rule as it was before the penalty, bit for bit (on a GPU,
    where the two are separately compiled programs, within tests/backend.py's tolerances)."""
    config = config_of(tmp_path, algorithm="RL", rl_logit_penalty=0.0)
    program = program_of(config)
    net = program.parts.net
    direction, _, init = jitted(make_rule(config, net), program)
    params, (x, y), key = init(jax.random.key(0)), fashion_batch(32), jax.random.key(3)
    state, w_B = {"baseline": jnp.float32(0.25)}, jnp.ones(32)

    @jax.jit
    def previous_direction(params):  # the surrogate of the rule before the penalty, verbatim
        def surrogate(p):
            logits, _, _ = net.apply(p, {}, x, True)
            lp_B2 = log_probs(logits)
            actions_B = sample_actions(key, jax.lax.stop_gradient(lp_B2))
            reward_B = rewards(actions_B, y, "01")
            lp_action_B = jnp.take_along_axis(lp_B2, actions_B[:, None], axis=-1)[:, 0]
            objective = weighted_mean((reward_B - 0.25) * lp_action_B, w_B)
            entropy_B = -(jnp.exp(lp_B2) * lp_B2).sum(-1)
            return -(objective + 0.2 * weighted_mean(entropy_B, w_B))

        return jax.grad(surrogate)(params)

    assert_same_tree(direction(net, params, {}, state, x, y, w_B, key)[0], previous_direction(params), n_acc=32,
                     why="the rule and its verbatim surrogate are two programs", **SEPARATELY_COMPILED)


def test_rl_logit_penalty_brings_a_saturated_policy_back():
    """A policy saturated at z = 20 on every input is at chance on a balanced task. REINFORCE and
    the entropy bonus give it a direction of order e^-20; the penalty's is of order 2 beta_z z,
    towards z = 0, and the policy then learns the task."""
    y = (jnp.arange(64) % 2).astype(jnp.int32)  # balanced: a constant policy is at 0.5
    x = jax.random.normal(jax.random.key(0), (64, 4))
    x = x.at[:, 0].set(jnp.abs(x[:, 0]) * (2 * y - 1))  # the label is the sign of x0
    saturated = {"w": jnp.zeros((4, 1)), "c": jnp.full((1,), 20.0)}
    state, w_B = {"baseline": jnp.float32(0.5)}, jnp.ones(64)
    stuck = rl_direction(logit_penalty=0.0)(saturated, {}, state, x, y, w_B, jax.random.key(1))[0]
    pulled = rl_direction(logit_penalty=0.01)(saturated, {}, state, x, y, w_B, jax.random.key(1))[0]
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(stuck)) < 1e-6
    np.testing.assert_allclose(pulled["c"], 2 * 0.01 * 20.0, rtol=1e-5)  # descent lowers z
    np.testing.assert_allclose(pulled["w"][:, 0], 2 * 0.01 * 20.0 * x.mean(0), rtol=1e-4, atol=1e-6)

    def train(logit_penalty, steps=600, lr=1.0):
        direction = rl_direction(logit_penalty=logit_penalty)

        def step(carry, key):
            params, state = carry
            d, state, _, _ = direction(params, {}, state, x, y, w_B, key)
            return (jax.tree.map(lambda p, g: p - lr * g, params, d), state), None

        (params, _), _ = jax.lax.scan(step, (saturated, state), jax.random.split(jax.random.key(2), steps))
        return float(((x @ params["w"] + params["c"])[:, 0] > 0).astype(jnp.int32).__eq__(y).mean())

    assert train(0.0) == 0.5  # stays at chance (entropy bonus at its default)
    assert train(0.01) >= 0.9


def test_resume_compares_a_missing_logit_penalty_with_the_rule_before_it():
    """A run recorded before --rl-logit-penalty existed ran without it: it resumes with
    --rl-logit-penalty 0, and is not silently continued with today's default."""
    recorded = Config(algorithm="RL").to_dict()
    del recorded["rl_logit_penalty"]
    assert differing_settings(recorded, Config(algorithm="RL")) == ["rl_logit_penalty"]
    assert differing_settings(recorded, Config.from_flat(algorithm="RL", rl_logit_penalty=0.0)) == []
    assert differing_settings(Config(algorithm="RL").to_dict(), Config(algorithm="RL")) == []


def test_bio_is_the_three_factor_rule_with_fixed_random_feedback(tmp_path):
    config = config_of(tmp_path, algorithm="Bio")
    program = program_of(config)
    net = program.parts.net
    rule = make_rule(config, net)
    rule_direction, apply, init = jitted(rule, program)
    params = init(jax.random.key(0))
    state = jax.jit(rule.init)(params, jax.random.key(5))
    fb = state["feedback"]
    assert sorted(fb) == ["conv1", "conv2", "conv3", "dense1", "dense2", "head"]
    assert all(fb[k].shape == params[k]["kernel"].shape for k in fb)
    assert not np.allclose(fb["head"], params["head"]["kernel"])  # random, not the forward weights
    x, y = fashion_batch(32)
    w = jnp.asarray(np.r_[np.ones(24), np.zeros(8)], jnp.float32)
    key = jax.random.key(7)
    direction, new_state, _, _ = rule_direction(net, params, {}, state, x, y, w, key)
    assert_trees_equal(new_state, state)  # the feedback weights are fixed

    # By hand on the top two layers: a, r, delta = r - pi(a), e = 2a - 1 (one output unit).
    logits, hidden = apply(params, x)
    a = np.asarray(sample_actions(key, log_probs(logits)))
    pi_a = np.asarray(jnp.exp(jnp.take_along_axis(log_probs(logits), jnp.asarray(a)[:, None], -1)[:, 0]))
    delta = np.where(a == np.asarray(y), 1.0, 0.0) - pi_a
    e = 2.0 * a - 1.0
    wn = np.asarray(w) / np.asarray(w).sum()
    # Tolerances: the rule and these references are the same float32 maths in another order
    # (einsum vs XLA's dots), at full float32 (the programs' "highest", and tests/conftest.py for
    # the references): differences of a few ulps, so 1e-4 relative.
    # head: delta x (chosen unit's error) x pre (the representation)
    np.testing.assert_allclose(direction["head"]["kernel"][:, 0], -((wn * delta * e)[:, None] * np.asarray(hidden)).sum(0), rtol=1e-4, atol=1e-6)
    # dense2: delta x (feedback of the chosen unit through B_head x relu'(post)) x pre
    pre2 = np.asarray(jax.jit(lambda p, v: layer_input(net, p, {}, v, ("dense2",)))(params, x))
    post_fb = (e[:, None] * np.asarray(fb["head"])[None, :, 0]) * (np.asarray(hidden) > 0)
    np.testing.assert_allclose(direction["dense2"]["kernel"], -np.einsum("b,bi,bj->ij", wn * delta, pre2, post_fb), rtol=1e-4, atol=1e-6)

    # With the forward kernels as feedback, the rule is the exact gradient of delta * u_a, conv
    # layers included (the per-position outer products): checks the whole feedback path.
    sym_state = {"feedback": {k: params[k]["kernel"] for k in fb}}
    d_sym, _, _, _ = rule_direction(net, params, {}, sym_state, x, y, w, key)

    def modulated(p):
        z, _ = apply_fn_of(program)(p, x)
        return (wn * delta * jnp.asarray(e) * z[:, 0]).sum()

    exact = jax.jit(jax.grad(modulated))(params)
    # 2e-3 relative: the rule's per-position outer products against autodiff's transposed
    # convolutions, sums of many float32 terms of both signs; the largest relative differences
    # are on entries near zero, where the terms cancel (measured: docs/benchmark.md, "Precision")
    for k in params:
        for leaf in ("kernel", "bias"):
            np.testing.assert_allclose(d_sym[k][leaf], -exact[k][leaf], rtol=2e-3, atol=1e-6)
    # and the random feedback does change the hidden layers' update but not the head's
    assert not np.allclose(direction["conv2"]["kernel"], d_sym["conv2"]["kernel"], rtol=1e-2)
    np.testing.assert_allclose(direction["head"]["kernel"], d_sym["head"]["kernel"], rtol=1e-5)


def test_bio_routes_its_feedback_through_the_forward_pool_winners_in_every_lowering(tmp_path):
    # The feedback kernel B replaces W only in the layer's own linear map: the pool after a conv
    # layer must send the error to the winners of the forward pass (W's activity), not to those
    # of B's. A lowering whose conv module holds its pool would re-pick the winners from B x
    # input: conv1 and conv2 then got another update (relative difference ~1, measured).
    x, y = fashion_batch(32)
    w, key = jnp.ones(32), jax.random.key(7)
    params = state = None
    directions = {}
    for impl in CONV_IMPLS:
        config = config_of(tmp_path, algorithm="Bio", conv_impl=impl)
        program = program_of(config)
        rule = make_rule(config, program.parts.net)
        rule_direction, _, init = jitted(rule, program)
        if params is None:  # the lowerings build the same parameters (tests/test_models.py)
            params = init(jax.random.key(0))
            state = jax.jit(rule.init)(params, jax.random.key(5))
        directions[impl] = rule_direction(program.parts.net, params, {}, state, x, y, w, key)[0]
    reference = directions[CONV_IMPLS[0]]
    for impl in CONV_IMPLS[1:]:
        for layer in reference:
            a, b = (np.asarray(d[layer]["kernel"], np.float64) for d in (reference, directions[impl]))
            # the same float32 sums in another order: a relative difference of ~3e-7 (measured)
            assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a), (impl, layer)


def test_bio_feedback_interception_keeps_the_forward_pass(tmp_path):
    program, net, rule, (_, apply, _), params = compiled_rule(tmp_path, algorithm="Bio", out_dim=2)
    state = rule.init(params, jax.random.key(1))
    x, _ = fashion_batch(8)

    @jax.jit
    def intercepted(p, v):
        with nn.intercept_methods(feedback_interceptor(state["feedback"])):
            return apply_fn_of(program)(p, v)

    for a, b in zip(intercepted(params, x), apply(params, x)):
        assert_same(a, b, cpu_rtol=1e-6, cpu_atol=1e-6, why="the intercepted forward pass is another program",
                    **SEPARATELY_COMPILED)
