"""Learning rules RL and Bio, options replay / shrink+perturb / unsupervised learning: their exact
updates on known states, that RL and Bio learn and replay reduces forgetting on real
Fashion-MNIST, and that every rule x option combination runs the real path compiled once."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import results
from cljax.checkpoint import write_run_record
from cljax.config import SCHEMA_VERSION, Config, differing_settings, setting_differences
from cljax.errors import CljaxError
from cljax.experiment import algo_dir_of, run_experiment
from cljax.losses import log_probs, weighted_mean
from cljax.models import CONV_IMPLS
from cljax.options import make_options
from cljax.options.replay import draw_replay
from cljax.options.shrink_perturb import ShrinkPerturbParams, shrink_perturb
from cljax.options.ul import hebbian_update, layer_input
from cljax.program import build_task_program
from cljax.registry import RULES
from cljax.rules import make_rule
from cljax.rules.bio import feedback_interceptor
from cljax.rules.rl import RLParams, rewards, sample_actions
from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_tree
from tests.conftest import FASHION_DIR, apply_fn_of, init_params_of, small_config

IMAGE_SHAPE = (28, 28)  # Fashion-MNIST


def DEFAULT_LR(algorithm):
    return RULES[algorithm].extra["default_lr"]


def program_of(config):
    return build_task_program(config, IMAGE_SHAPE)


def with_flat(config, **changes) -> Config:
    return Config.from_flat({**config.to_dict(), **changes})


TINY = dict(lr=None, num_tasks=2, n_repeats=2, n_train_per_class=16, n_test_per_class=8, n_subsamples=2,
            epochs=1, batch_size=16, log_frequency=1, replay_size=20, replay_batch=8)


def config_of(tmp_path, **overrides) -> Config:
    """conftest's one config builder, shrunk to a few steps per task."""
    return small_config(tmp_path, **{**TINY, **overrides})


def final_accuracy(algo_dir):
    """(T, T) matrix, rows = after task t (last snapshot), columns = task evaluated, mean over R."""
    return np.stack([results.load_metrics(d)["test_acc"][-1].mean(0) for d in results.task_dirs(algo_dir)])


@functools.lru_cache(maxsize=None)
def fashion_batch(n=32, seed=0):
    """n real training images and a 0/1 label (class parity), as the rules see a batch."""
    from cljax.data import load_dataset

    data = load_dataset(Config(data_dir=str(FASHION_DIR)))
    idx = np.sort(np.random.default_rng(seed).choice(len(data.train_labels), n, replace=False))
    labels = (np.asarray(data.train_labels)[idx] % 2).astype(np.int32)
    return jnp.asarray(np.asarray(data.train_images)[idx]), jnp.asarray(labels)


def jitted(rule, program):
    """The rule's direction and the model, compiled whole (eager op-by-op dispatch is slow)."""
    return jax.jit(rule.direction, static_argnums=0), jax.jit(apply_fn_of(program)), jax.jit(init_params_of(program))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---- RL and Bio learn ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["RL", "Bio"])
def test_reward_rules_learn_with_their_defaults(tmp_path, algorithm):
    config = Config(algorithm=algorithm, dataset="fashion_mnist", data_dir=str(FASHION_DIR),
                    results_dir=str(tmp_path / "results"), num_tasks=2, n_repeats=2, n_train_per_class=1000,
                    n_test_per_class=100, n_subsamples=2, epochs=5, log_frequency=155)
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


def test_examples_of_weight_zero_change_nothing(tmp_path):
    """What replay appends with weight 0 (an empty buffer) is invisible to the update."""
    program = program_of(config_of(tmp_path))
    net = program.parts.net
    direction, _, init = jitted(make_rule(config_of(tmp_path), net), program)
    params = init(jax.random.key(0))
    x, y = fashion_batch(24)
    w = jnp.asarray(np.r_[np.ones(16), np.zeros(8)], jnp.float32)
    d1, _, _, m1 = direction(net, params, {}, (), x, y, w, jax.random.key(1))
    x2, y2 = x.at[16:].set(200), y.at[16:].set(1 - y[16:])
    d2, _, _, m2 = direction(net, params, {}, (), x2, y2, w, jax.random.key(1))
    for a, b in zip(jax.tree.leaves((d1, m1)), jax.tree.leaves((d2, m2))):
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


class LinearPolicy:
    """A tiny stand-in for ``cljax.models.Net``: logits = x W + c, the hidden layer is x."""

    state_collections = ()

    @staticmethod
    def apply(params, model_state, x, train, weights=None):
        return x @ params["w"] + params["c"], x, model_state


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
    config = config_of(tmp_path, algorithm="Bio", out_dim=2)
    program = program_of(config)
    net = program.parts.net
    rule = make_rule(config, net)
    _, apply, init = jitted(rule, program)
    params = init(jax.random.key(0))
    state = rule.init(params, jax.random.key(1))
    x, _ = fashion_batch(8)

    @jax.jit
    def intercepted(p, v):
        with nn.intercept_methods(feedback_interceptor(state["feedback"])):
            return apply_fn_of(program)(p, v)

    for a, b in zip(intercepted(params, x), apply(params, x)):
        assert_same(a, b, cpu_rtol=1e-6, cpu_atol=1e-6, why="the intercepted forward pass is another program",
                    **SEPARATELY_COMPILED)


# ---- replay ---------------------------------------------------------------------------------


def _marked_task(t, n):
    """n images whose pixels (0, 0) and (0, 1) say their task and index; labels alternate."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = t, np.arange(n)
    return jnp.asarray(images), jnp.asarray(np.arange(n) % 2, jnp.int32)


@pytest.mark.parametrize("M, N", [(90, 200), (90, 40), (3, 10)])
def test_replay_buffer_stays_balanced_over_the_tasks_seen(tmp_path, M, N):
    config = config_of(tmp_path, use_replay=True, replay_size=M)
    option = make_options(config, program_of(config).parts.net)[0]
    task_end, draw = jax.jit(option.task_end), jax.jit(draw_replay, static_argnums=2)
    state = option.init(None, jax.random.key(0))
    _, _, wts = draw(state, jax.random.key(1), 8)
    assert (np.asarray(wts) == 0).all()  # nothing to replay before the first task ends
    kept = {}
    for t in range(5):
        images, labels = _marked_task(t, N)
        state, _ = task_end(state, None, jax.random.key(10 + t), images, labels, jnp.int32(t))
        task = np.asarray(state["task"])
        img = np.asarray(state["images"])
        n = t + 1
        for k in range(n):
            quota = (k + 1) * M // n - k * M // n
            held = task == k
            expected = min(quota, len(kept[k]) if k < t else N)  # filled slots are a prefix of the range
            assert held.sum() == expected, (t, k, held.sum(), expected)
            assert (img[held, 0, 0] == k).all()  # images of that task
            idx = img[held, 0, 1]
            assert len(set(idx.tolist())) == held.sum()  # sampled without replacement
            np.testing.assert_array_equal(np.asarray(state["labels"])[held], idx % 2)
            if k < t:
                assert set(idx.tolist()) <= kept[k]  # an old task only drops images
            kept[k] = set(idx.tolist())
        assert (task >= -1).all() and (task < n).all()
    # draws come from filled slots only and carry weight 1
    r_img, r_lab, r_w = draw(state, jax.random.key(2), 64)
    assert (np.asarray(r_w) == 1).all()
    assert set(np.asarray(r_img)[:, 0, 0].tolist()) <= set(np.asarray(state["images"])[np.asarray(state["task"]) >= 0, 0, 0].tolist())


def test_replay_counts_after_five_tasks_match_the_quota(tmp_path):
    """M = 200 over 5 tasks: 200, 100 + 100, 66/67, 50 x 4, then 40 x 5."""
    config = config_of(tmp_path, use_replay=True, replay_size=200)
    option = make_options(config, program_of(config).parts.net)[0]
    task_end = jax.jit(option.task_end)
    state = option.init(None, jax.random.key(0))
    per_task = []
    for t in range(5):
        state, _ = task_end(state, None, jax.random.key(t), *_marked_task(t, 300), jnp.int32(t))
        per_task.append(np.bincount(np.asarray(state["task"]), minlength=5).tolist())
    assert per_task == [[200, 0, 0, 0, 0], [100, 100, 0, 0, 0], [66, 67, 67, 0, 0], [50, 50, 50, 50, 0], [40] * 5]


def test_replay_reduces_forgetting(tmp_path):
    """Six repeats, each its own class pairs, paired (same seed: the same pairs and data with and
    without replay): replay keeps more of tasks 0-3. The bounds hold at every seed of the
    48-repeat measurement in docs/rules.md (per-seed mean gains 0.110-0.267; at least 5 of 6
    repeats positive). A replay that did nothing would give a gain of exactly 0."""
    common = dict(dataset="fashion_mnist", data_dir=str(FASHION_DIR), results_dir=str(tmp_path / "results"),
                  num_tasks=5, n_repeats=6, n_train_per_class=300, n_test_per_class=100, n_subsamples=2,
                  epochs=2, log_frequency=36, seed=1)

    def after_last_task(config):  # (R, T) test accuracy after the last task
        last = results.task_dirs(run_experiment(config, progress=False).algo_dir)[-1]
        return results.load_metrics(last)["test_acc"][-1]

    plain = after_last_task(Config.from_flat(common))
    replay = after_last_task(Config.from_flat(common, use_replay=True, replay_size=1000))
    gain = replay[:, :-1].mean(1) - plain[:, :-1].mean(1)  # per repeat, tasks 0-3
    se = gain.std(ddof=1) / np.sqrt(len(gain))
    print(f"replay - plain on tasks 0-3 after task 4, per repeat: {np.round(gain, 3)}; mean {gain.mean():.3f} "
          f"+- {se:.3f} (SE)")
    assert gain.mean() > 0.05 and (gain > 0).sum() >= 4
    assert replay[:, -1].mean() >= 0.65  # and it still learns the current task


# ---- shrink and perturb -------------------------------------------------------------------


def test_shrink_perturb_is_its_formula(tmp_path):
    config = config_of(tmp_path, add_plasticity=True, sp_lambda=0.5, sp_sigma=0.1)
    program = program_of(config)
    init = jax.jit(init_params_of(program))

    def hooks(cfg):
        option = make_options(cfg, program.parts.net)[0]
        return jax.jit(option.task_start), jax.jit(option.step_end)

    params, key = init(jax.random.key(0)), jax.random.key(42)
    noise = init(key)  # a fresh draw of the model's initialiser, from the hook's key
    task_start, _ = hooks(config)
    _, out = task_start((), params, key, jnp.int32(3))
    for p, e, o in zip(jax.tree.leaves(params), jax.tree.leaves(noise), jax.tree.leaves(out)):
        np.testing.assert_allclose(o, 0.5 * np.asarray(p) + 0.1 * np.asarray(e), rtol=1e-6, atol=1e-7)
    assert_trees_equal(task_start((), params, key, jnp.int32(0))[1], params)  # task 0: left alone
    # lam = 0, sigma = 1 is a re-initialisation
    reinit, _ = hooks(with_flat(config, sp_lambda=0.0, sp_sigma=1.0))
    assert_trees_equal(reinit((), params, key, jnp.int32(1))[1], noise)
    # step mode acts in step_end, after every step
    _, step_end = hooks(with_flat(config, sp_mode="step"))
    _, stepped = step_end((), params, {}, key, None, None)
    for p, e, o in zip(jax.tree.leaves(params), jax.tree.leaves(noise), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(o, 0.5 * np.asarray(p) + 0.1 * np.asarray(e), rtol=1e-6, atol=1e-7)


def test_shrink_perturb_keeps_a_constant_initialised_parameter_at_its_size(tmp_path):
    """A BatchNorm scale is initialised at 1 for every key: there is no noise to draw, and eps = 1
    would add sigma at every boundary (1.13 after one task, towards sigma / (1 - lam) = 14). It
    shrinks toward its initial value instead, as a bias (at 0) only shrinks; kernels get the formula."""
    config = config_of(tmp_path, model="resnet", resnet_width=4, resnet_blocks=1, resnet_hidden=8, add_plasticity=True)
    program = program_of(config)
    params = jax.jit(init_params_of(program))(jax.random.key(0))
    params = jax.tree.map(lambda p: p * 1.05, params)  # as if trained: the scales at 1.05
    option = make_options(config, program.parts.net)[0]
    key = jax.random.key(42)
    _, out = jax.jit(option.task_start)((), params, key, jnp.int32(1))
    np.testing.assert_allclose(out["stem_bn"]["scale"], 1 + 0.99 * (1.05 - 1), rtol=1e-6)
    np.testing.assert_allclose(out["stem_bn"]["bias"], 0.99 * np.asarray(params["stem_bn"]["bias"]), atol=1e-7)
    noise = jax.jit(init_params_of(program))(key)
    np.testing.assert_allclose(out["stem"]["kernel"], 0.99 * np.asarray(params["stem"]["kernel"])
                               + 0.14 * np.asarray(noise["stem"]["kernel"]), rtol=1e-5, atol=1e-7)


def test_shrink_perturb_identity_is_bit_exact(tmp_path):
    config = config_of(tmp_path, add_plasticity=True, sp_lambda=1.0, sp_sigma=0.0)
    program = program_of(config)
    init = jax.jit(init_params_of(program))
    params = jax.tree.map(lambda w: w + 0.01, init(jax.random.key(0)))  # no (signed) zeros
    noise = init(jax.random.key(1))
    assert_trees_equal(jax.jit(shrink_perturb, static_argnums=(2, 3))(params, noise, 1.0, 0.0), params)
    for mode in ("boundary", "step"):
        option = make_options(with_flat(config, sp_mode=mode), program.parts.net)[0]
        assert_trees_equal(jax.jit(option.task_start)((), params, jax.random.key(2), jnp.int32(1))[1], params)
        assert_trees_equal(jax.jit(option.step_end)((), params, {}, jax.random.key(2), None, None)[1], params)


def test_a_run_recorded_with_the_old_shrink_perturb_defaults_resumes_with_them(tmp_path):
    """run.json records the resolved lam and sigma: a run made with the defaults of before
    (0.8, 0.01) resumes when they are passed, and a resume without them names the values."""
    old = dict(add_plasticity=True, sp_lambda=0.8, sp_sigma=0.01)
    config = config_of(tmp_path, dataset="synthetic", data_dir=None, **old)
    recorded = config.to_dict()
    assert differing_settings(recorded, config) == []
    today = with_flat(config, sp_lambda=ShrinkPerturbParams().lambda_, sp_sigma=ShrinkPerturbParams().sigma)
    differ = setting_differences(recorded, today)
    assert differ == {k: (recorded[k], today.to_dict()[k]) for k in ("sp_lambda", "sp_sigma") if recorded[k] != today.to_dict()[k]}
    if differ:  # the message says what was recorded, so the user can pass it
        algo_dir = algo_dir_of(config)
        algo_dir.mkdir(parents=True)
        write_run_record(algo_dir, recorded, SCHEMA_VERSION)
        with pytest.raises(CljaxError, match=r"sp_lambda recorded 0\.8, now .*Pass the recorded values"):
            run_experiment(today, progress=False)


# ---- unsupervised learning ------------------------------------------------------------------


@pytest.mark.parametrize("kind, layer", [("oja", "dense1"), ("sanger", "dense2"), ("recon", "dense1")])
def test_ul_changes_only_its_layer(tmp_path, kind, layer):
    config = config_of(tmp_path, use_ul=True, ul_kind=kind, ul_layer=layer, ul_lr=1e-2)
    program = program_of(config)
    option = make_options(config, program.parts.net)[0]
    params = jax.jit(init_params_of(program))(jax.random.key(0))
    x, _ = fashion_batch(32)
    _, new = jax.jit(option.step_end)((), params, {}, jax.random.key(1), x, jnp.ones(32))
    for name in params:
        for leaf in params[name]:
            same = np.array_equal(params[name][leaf], new[name][leaf])
            changes = name == layer and (leaf == "kernel" or kind == "recon")
            assert same != changes, (name, leaf)


def test_ul_reads_the_layer_input(tmp_path):
    program = program_of(config_of(tmp_path))
    net = program.parts.net
    params = jax.jit(init_params_of(program))(jax.random.key(0))
    x, _ = fashion_batch(8)
    _, hidden = jax.jit(apply_fn_of(program))(params, x)
    head_input = jax.jit(lambda p, v: layer_input(net, p, {}, v, ("head",)))(params, x)
    assert_same(head_input, hidden, cpu_rtol=1e-6, why="the layer's input and the model are two programs",
                **SEPARATELY_COMPILED)


def test_ul_rejects_a_layer_that_is_not_dense(tmp_path):
    from cljax.errors import CljaxError

    config = config_of(tmp_path, use_ul=True, ul_layer="conv2")
    program = program_of(with_flat(config, use_ul=False))
    with pytest.raises(CljaxError, match="dense1"):
        make_options(config, program.parts.net)


@pytest.mark.parametrize("kind", ["oja", "sanger"])
def test_hebbian_rules_find_the_principal_components(kind):
    """Zero-mean Gaussian data with covariance eigenvalues 5, 3, 2, 1, ...: Oja's single unit and
    Sanger's units converge to the principal components (|cosine| > 0.99), with unit norm."""
    d, k = 10, (1 if kind == "oja" else 3)
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.array([5.0, 3.0, 2.0] + [1.0] * (d - 3))
    cov_sqrt = basis * np.sqrt(eig)  # x = basis diag(sqrt(eig)) z

    def step(w, key):
        x = jax.random.normal(key, (64, d)) @ cov_sqrt.T
        return hebbian_update(w, x, jnp.ones(64), 2e-3, kind), None

    w0 = jnp.asarray(rng.normal(size=(d, k)) * 0.1, jnp.float32)
    w, _ = jax.lax.scan(step, w0, jax.random.split(jax.random.key(0), 6000))
    w = np.asarray(w)
    for j in range(k):
        cos = abs(w[:, j] @ basis[:, j]) / np.linalg.norm(w[:, j])
        assert cos > 0.99, (j, cos)
        assert abs(np.linalg.norm(w[:, j]) - 1) < 0.05


# ---- every rule with every option, compiled once ------------------------------------------

# Two sets cover both program shapes: replay changes the learner's batch and so turns the
# learner/expert pairing off; S&P (at the boundary), UL and the plasticity methods keep it on.
# Each option's own behaviour is tested above and in test_methods.py; here, that every
# combination a rule meets compiles once and runs. The keys are the folder names' tags.
OPTION_SETS = {
    "l2_redo_sp_ul": dict(use_l2=True, use_redo=True, redo_every=2, add_plasticity=True, use_ul=True),
    "cbp_l2init_replay_sp_ul": dict(use_cbp=True, cbp_maturity=0, cbp_rate=0.05, use_l2_init=True, use_replay=True,
                                    add_plasticity=True, sp_mode="step", sp_lambda=0.999, sp_sigma=1e-3, use_ul=True),
}
UL_KIND = {"SL": "oja", "RL": "sanger", "Bio": "recon"}


@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_every_rule_with_every_option_compiles_once(tmp_path, compile_counter, algorithm, options):
    config = config_of(tmp_path, algorithm=algorithm, ul_kind=UL_KIND[algorithm], **OPTION_SETS[options])
    at_task_end = []
    run = run_experiment(config, progress=False, on_task_end=lambda t, info: at_task_end.append(compile_counter.count))
    assert run.algo_dir.name == f"{algorithm}_{options}_T2"
    assert at_task_end[0] > 0 and at_task_end[1] == at_task_end[0]  # the second task compiles nothing
    for d in results.task_dirs(run.algo_dir):
        metrics = results.load_metrics(d)
        assert np.isfinite(metrics["train_loss"]).all() and np.isfinite(metrics["test_acc"]).all()
        assert results.load_metadata(d)["config"]["use_replay"] == config.to_dict()["use_replay"]
