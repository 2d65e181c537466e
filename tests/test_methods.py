"""Plasticity methods (L2, L2-init, continual backprop, ReDo, shrink+perturb's Gaussian noise):
each against a hand computation on a tiny MLP, the CNN's unit activity in both lowerings, vmap
against the repeat loop, and the one-line errors. One compiled program per run with replay and UL
under every rule: tests/test_options.py; byte-identical resume: tests/test_reliability.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.models import CONV_IMPLS
from cljax.models.units import unit_activity
from cljax.options.cbp import select_lowest
from cljax.program import build_parts
from cljax.rules import make_rule
from cljax.setting_match import differing_settings
from cljax.step import LearnerState, learner_update
from tests.backend import FRESH_DRAW, SEPARATELY_COMPILED, WHY_FRESH_DRAW, assert_drawn_where, assert_same

TINY_IMAGE = (1, 3)  # the MLP flattens it: 3 inputs


def tiny(**flat):
    """A 3 -> 4 -> 4 -> 1 MLP, its parts and a deterministic input batch of 5 images."""
    config = Config.from_flat(dict(model="mlp", mlp_hidden=4, mlp_depth=2, lr=0.5, **flat))
    parts = build_parts(config, TINY_IMAGE)
    params, _ = parts.net.init(jax.random.key(0))
    images = jnp.asarray(np.arange(15).reshape(5, 1, 3) * 17 % 256, jnp.uint8)
    labels = jnp.asarray([0, 1, 1, 0, 1], jnp.int32)
    return config, parts, params, images, labels


def forward_np(params, images):
    """The MLP by hand: post-ReLU activities of dense1 and dense2, (B, 4) each."""
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    h1 = np.maximum(x @ np.asarray(params["dense1"]["kernel"]) + np.asarray(params["dense1"]["bias"]), 0)
    h2 = np.maximum(h1 @ np.asarray(params["dense2"]["kernel"]) + np.asarray(params["dense2"]["bias"]), 0)
    return {"dense1": h1, "dense2": h2}


def np_tree(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---- L2 and L2-init ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_l2_terms_are_added_to_the_direction_before_the_optimiser(algorithm):
    """theta' = theta - lr (d + c1 theta + c2 (theta - theta_0)) with plain SGD, for every rule."""
    config, parts, params, images, labels = tiny(algorithm=algorithm, use_l2=True, l2_decay=0.03, use_l2_init=True,
                                                 l2_init_decay=0.2)
    theta_0 = params
    theta = jax.tree.map(lambda p: p + 0.1, params)  # away from theta_0
    rule = make_rule(config, parts.net)
    option_states = tuple(o.init(theta_0, jax.random.key(1)) for o in parts.options)
    state = LearnerState(theta, {}, parts.learner_tx.init(theta), rule.init(theta, jax.random.key(2)), option_states)
    weights = jnp.ones(5)
    direction = jax.jit(lambda p: rule.direction(parts.net, p, {}, state.rule_state, images, labels, weights,
                                                 jax.random.key(3))[0])(theta)
    new = jax.jit(lambda s, d: learner_update(parts, s, d, s.rule_state, {}, images, weights, jax.random.key(4)))(
        state, direction)
    expected = jax.tree.map(lambda p, p0, d: p - 0.5 * (d + 0.03 * p + 0.2 * (p - p0)),
                            np_tree(theta), np_tree(theta_0), np_tree(direction))
    for got, want in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # theta_0 is the learner's initial parameters, kept unchanged in the option state
    for got, want in zip(jax.tree.leaves(new.option_states[1]["theta_0"]), jax.tree.leaves(theta_0)):
        np.testing.assert_array_equal(got, want)


# ---- continual backprop ---------------------------------------------------------------------


def test_select_lowest_is_a_mask_of_the_n_lowest_eligible():
    utility = jnp.asarray([0.3, 0.1, 0.2, 0.1, 0.0])
    eligible = jnp.asarray([True, True, True, True, False])
    np.testing.assert_array_equal(select_lowest(utility, eligible, 2), [False, True, False, True, False])
    np.testing.assert_array_equal(select_lowest(utility, eligible, 1), [False, True, False, False, False])  # tie: lower index
    np.testing.assert_array_equal(select_lowest(utility, eligible, 0), [False] * 5)


def test_cbp_step_is_its_update_by_hand():
    """Utilities, ages and the fractional count by hand; the replaced unit's fan-in is the
    initialiser's draw from the hook's key, its fan-out 0, its optimiser state 0, the rest intact."""
    config, parts, params, images, labels = tiny(use_cbp=True, cbp_rate=0.4, cbp_maturity=100, cbp_decay=0.9,
                                                 momentum=0.9)
    option = parts.options[0]
    state = option.init(params, None)
    state["dense1"] = {"utility": jnp.asarray([0.5, 0.0, 0.2, 0.4]), "age": jnp.asarray([200, 0, 200, 150]),
                       "acc": jnp.float32(0.0)}
    state["dense2"] = {"utility": jnp.asarray([0.1, 0.2, 0.3, 0.4]), "age": jnp.full(4, 300), "acc": jnp.float32(-0.7)}
    opt_state = jax.tree.map(jnp.ones_like, parts.learner_tx.init(params))
    weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])  # the last example does not count
    key = jax.random.key(7)
    new_state, new_params, new_opt = jax.jit(option.step_reset)(state, params, opt_state, {}, key, images, weights)

    h = forward_np(params, images)
    w = np.asarray(weights) / 4
    readers = {"dense1": "dense2", "dense2": "head"}
    expect_replaced = {}
    for layer, reader in readers.items():
        s = state[layer]
        contribution = (w[:, None] * np.abs(h[layer])).sum(0) * np.abs(np.asarray(params[reader]["kernel"])).sum(1)
        utility = 0.9 * np.asarray(s["utility"]) + 0.1 * contribution
        age = np.asarray(s["age"]) + 1
        eligible = age > 100
        acc = float(s["acc"]) + 0.4 * eligible.sum()
        n = min(int(np.floor(acc)), eligible.sum())
        ranked = np.where(eligible, utility / (1 - 0.9 ** age), np.inf)  # corrected for age
        order = [j for j in np.argsort(ranked, kind="stable")][:n]
        replaced = np.isin(np.arange(4), order)
        expect_replaced[layer] = replaced
        np.testing.assert_allclose(new_state[layer]["utility"], np.where(replaced, 0, utility), rtol=1e-5, atol=1e-8)
        np.testing.assert_array_equal(new_state[layer]["age"], np.where(replaced, 0, age))
        np.testing.assert_allclose(new_state[layer]["acc"], acc - n, rtol=1e-6, atol=1e-7)
    # dense1: 3 mature units, count 1.2 -> one replaced; dense2: 4 mature, -0.7 + 1.6 = 0.9 -> none
    assert expect_replaced["dense1"].sum() == 1 and expect_replaced["dense2"].sum() == 0

    j = int(np.flatnonzero(expect_replaced["dense1"])[0])
    fresh = parts.net.init(key)[0]
    trace = new_opt.inner_states["features"].inner_state[0].trace
    for leaf in ("kernel", "bias"):
        got, old = np.asarray(new_params["dense1"][leaf]), np.asarray(params["dense1"][leaf])
        assert_same(got[..., j], np.asarray(fresh["dense1"][leaf])[..., j], **FRESH_DRAW, why=WHY_FRESH_DRAW)
        np.testing.assert_array_equal(np.delete(got, j, axis=-1), np.delete(old, j, axis=-1))
        np.testing.assert_array_equal(np.asarray(trace["dense1"][leaf])[..., j], 0)
        np.testing.assert_array_equal(np.delete(np.asarray(trace["dense1"][leaf]), j, axis=-1), 1)
    out = np.asarray(new_params["dense2"]["kernel"])
    np.testing.assert_array_equal(out[j], 0)
    np.testing.assert_array_equal(np.delete(out, j, 0), np.delete(np.asarray(params["dense2"]["kernel"]), j, 0))
    np.testing.assert_array_equal(np.asarray(trace["dense2"]["kernel"])[j], 0)
    np.testing.assert_array_equal(np.delete(np.asarray(trace["dense2"]["kernel"]), j, 0), 1)
    for name in ("dense2/bias", "head/kernel", "head/bias"):
        layer, leaf = name.split("/")
        np.testing.assert_array_equal(new_params[layer][leaf], params[layer][leaf])
    np.testing.assert_array_equal(new_opt.inner_states["classifier"].inner_state[0].trace["head"]["kernel"], 1)


def test_cbp_ranks_a_just_matured_unit_by_its_age_corrected_utility():
    """A unit that has just matured (age m + 1) carries only 1 - eta^(m+1) of its contribution in
    its running utility (0.64 at LoP's eta 0.99, m 100). Ranked as is, a new unit contributing 1.5
    would be replaced before an old one contributing 1.0; corrected for age, the old one goes."""
    from cljax.options.cbp import cbp_update

    state = {"dense1": {"utility": jnp.asarray([0.95, 1.0]), "age": jnp.asarray([100, 1000]), "acc": jnp.float32(0.0)}}
    activity = {"dense1": jnp.asarray([[1.5, 1.0]])}  # contributions 1.5 (new unit) and 1.0 (old unit)
    new, masks = cbp_update(state, activity, {"dense1": jnp.ones(2)}, jnp.ones(1), rate=0.5, maturity=100, decay=0.99)
    np.testing.assert_allclose(new["dense1"]["utility"], [0.9555, 0.0], rtol=1e-6)  # the old unit is replaced
    assert masks["dense1"].tolist() == [False, True]
    raw_new = 0.99 * 0.95 + 0.01 * 1.5  # 0.9555 < 1.0: the uncorrected ranking would replace the new unit
    assert raw_new < 1.0 < raw_new / (1 - 0.99**101)


def test_cbp_counts_a_unit_mature_after_more_than_m_steps():
    """E = {j : a_j > m}: with m = 3, a unit is first eligible at its 4th step (age 4)."""
    from cljax.options.cbp import cbp_update

    state = {"dense1": {"utility": jnp.zeros(2), "age": jnp.zeros(2, jnp.int32), "acc": jnp.float32(0.0)}}
    activity = {"dense1": jnp.asarray([[1.0, 2.0]])}
    for step in range(1, 5):
        state, masks = cbp_update(state, activity, {"dense1": jnp.ones(2)}, jnp.ones(1), rate=0.5, maturity=3, decay=0.5)
        assert masks["dense1"].tolist() == ([True, False] if step == 4 else [False, False]), step
    assert state["dense1"]["age"].tolist() == [0, 4] and float(state["dense1"]["acc"]) == 0.0  # rate x |E| - n


def test_cbp_without_a_mature_unit_changes_no_weight():
    config, parts, params, images, labels = tiny(use_cbp=True)
    option = parts.options[0]
    opt_state = parts.learner_tx.init(params)
    new_state, new_params, _ = jax.jit(option.step_reset)(option.init(params, None), params, opt_state, {},
                                                          jax.random.key(1), images, jnp.ones(5))
    for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    assert (np.asarray(new_state["dense1"]["age"]) == 1).all()


# ---- ReDo -----------------------------------------------------------------------------------


def test_redo_resets_the_dormant_units_every_f_steps():
    config, parts, params, images, labels = tiny(use_redo=True, redo_every=2, redo_tau=0.5, momentum=0.9)
    option = parts.options[0]
    # dense1 unit 2 never fires: a large negative bias
    params = {**params, "dense1": {**params["dense1"], "bias": params["dense1"]["bias"].at[2].set(-100.0)}}
    opt_state = jax.tree.map(jnp.ones_like, parts.learner_tx.init(params))
    step_reset = jax.jit(option.step_reset)
    key = jax.random.key(3)
    state, p1, o1 = step_reset(option.init(params, None), params, opt_state, {}, key, images, jnp.ones(5))
    assert int(state["step"]) == 1
    for a, b in zip(jax.tree.leaves((p1, o1)), jax.tree.leaves((params, opt_state))):
        np.testing.assert_array_equal(a, b)  # step 1 of F = 2: nothing
    state, p2, o2 = step_reset(state, params, opt_state, {}, key, images, jnp.ones(5))
    assert int(state["step"]) == 2
    h = forward_np(params, images)
    fresh = parts.net.init(key)[0]
    dormant = {}
    for layer in ("dense1", "dense2"):
        a = np.abs(h[layer]).mean(0)
        dormant[layer] = (a / a.mean() if a.mean() > 0 else np.zeros(4)) <= 0.5
    assert dormant["dense1"][2] and 0 < dormant["dense1"].sum() < 4 and 0 < dormant["dense2"].sum() < 4
    dormant["head"] = np.zeros(1, bool)
    trace = o2.inner_states["features"].inner_state[0].trace
    # a kernel by hand: columns of reset units fresh, rows of reset input units 0, fresh wins
    for layer, below in (("dense1", np.zeros(3, bool)), ("dense2", dormant["dense1"]), ("head", dormant["dense2"])):
        old, new, draw = (np.asarray(t[layer]["kernel"]) for t in (params, p2, fresh))
        cols, rows = dormant[layer][None, :], below[:, None]
        assert_drawn_where(new, cols, draw, np.where(rows, 0.0, old), err_msg=layer)
        np.testing.assert_array_equal(np.asarray(p2[layer]["bias"]),
                                      np.where(dormant[layer], 0.0, np.asarray(params[layer]["bias"])))
        if layer != "head":
            np.testing.assert_array_equal(np.asarray(trace[layer]["kernel"]), np.where(cols | rows, 0.0, 1.0))


# ---- model contract ------------------------------------------------------------------------


def test_cnn_unit_activity_is_the_same_in_every_lowering():
    configs = {impl: Config.from_flat(dict(conv_impl=impl, use_cbp=True)) for impl in CONV_IMPLS}
    nets = {impl: build_parts(c, (28, 28)).net for impl, c in configs.items()}
    params, _ = nets["lax"].init(jax.random.key(0))
    shapes = jax.tree.map(jnp.shape, nets["im2col"].init(jax.random.key(0))[0])
    assert shapes == jax.tree.map(jnp.shape, params)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (6, 28, 28)), jnp.uint8)
    acts = {impl: jax.jit(lambda p, x, n=n: unit_activity(n, p, {}, x))(params, images) for impl, n in nets.items()}
    assert nets["lax"].module.unit_layers() == (("conv1", "conv2"), ("conv2", "conv3"), ("conv3", "dense1"),
                                                ("dense1", "dense2"), ("dense2", "head"))
    assert {k: v.shape for k, v in acts["lax"].items()} == {"conv1": (6, 16), "conv2": (6, 32), "conv3": (6, 64),
                                                           "dense1": (6, 64), "dense2": (6, 64)}
    for impl in [impl for impl in CONV_IMPLS if impl != "lax"]:
        for k in acts["lax"]:
            np.testing.assert_allclose(acts[impl][k], acts["lax"][k], rtol=1e-4, atol=1e-6, err_msg=f"{impl} {k}")
    # dense2's activity is the representation
    _, hidden, _ = nets["lax"].apply(params, {}, images, False)
    assert_same(acts["lax"]["dense2"], hidden, cpu_rtol=1e-6, why="unit_activity and the model are two programs",
                **SEPARATELY_COMPILED)


@pytest.mark.parametrize("model, impl", [("cnn", impl) for impl in CONV_IMPLS] + [("mlp", "lax")])
def test_the_training_forward_pass_does_not_see_the_unit_contract(monkeypatch, model, impl):
    """Without the collection asked for, sow_units adds nothing: the lowered training forward
    pass is the same program as with the calls removed (methods off cost nothing)."""
    import cljax.models.cnn as cnn
    import cljax.models.mlp as mlp

    net = build_parts(Config.from_flat(dict(model=model, conv_impl=impl)), (28, 28)).net
    params, _ = net.init(jax.random.key(0))
    images = jnp.zeros((4, 28, 28), jnp.uint8)

    def program():
        return jax.jit(lambda p, x: net.apply(p, {}, x, True)).lower(params, images).as_text()

    with_calls = program()
    for module in (cnn, mlp):
        monkeypatch.setattr(module, "sow_units", lambda *args: None)
    assert program() == with_calls


@pytest.mark.parametrize("flag", ["use_cbp", "use_redo"])
def test_unit_resets_on_a_model_without_unit_layers_is_one_clear_line(flag):
    config = Config.from_flat({"model": "resnet", flag: True})
    with pytest.raises(CljaxError) as err:
        build_parts(config, (28, 28))
    message = str(err.value)
    assert "\n" not in message and "--" + flag.replace("_", "-") in message and "--model cnn or mlp" in message


# ---- shrink+perturb: LoP's absolute noise ---------------------------------------------------


def test_shrink_perturb_gaussian_noise_is_absolute():
    """--sp-noise gaussian: eps is a standard normal of every parameter, the same scale in
    every layer (init noise scales with each layer's fan-in)."""
    config = Config.from_flat(dict(add_plasticity=True, sp_mode="step", sp_lambda=1.0, sp_sigma=1e-2,
                                   sp_noise="gaussian"))
    parts = build_parts(config, (28, 28))
    params, _ = parts.net.init(jax.random.key(0))
    _, new = jax.jit(parts.options[0].step_end)((), params, {}, jax.random.key(1), None, None)
    for layer in ("conv1", "conv3", "dense1"):
        eps = (np.asarray(new[layer]["kernel"]) - np.asarray(params[layer]["kernel"])) / 1e-2
        assert abs(eps.std() - 1) < 0.1 and abs(eps.mean()) < 0.1, (layer, eps.std())
    # LoP's settings are expressible: weight decay in the gradient plus absolute noise, per step
    lop = Config.from_flat(dict(add_plasticity=True, sp_mode="step", sp_lambda=1.0, sp_sigma=1e-5, sp_noise="gaussian",
                                use_l2=True, l2_decay=1e-5)).validate()
    assert lop.algorithm_name == "SL_l2_sp_T5"
    # a run recorded before --sp-noise existed used the initialiser's noise
    recorded = Config.from_flat(dict(add_plasticity=True)).to_dict()
    del recorded["sp_noise"]
    assert differing_settings(recorded, Config.from_flat(dict(add_plasticity=True))) == []
    assert differing_settings(recorded, Config.from_flat(dict(add_plasticity=True, sp_noise="gaussian"))) == ["sp_noise"]


# ---- the real path: compiled once, with replay and UL, every rule ----------------------------

# Every method with replay, UL and S&P under every rule, compiled once: test_options.py,
# test_every_rule_with_every_option_compiles_once.


# Resume with every method on at once is byte-identical: tests/test_reliability.py,
# test_resume_restores_the_whole_learner_with_replay_momentum_and_the_methods.


def test_unit_resets_are_the_same_under_vmap_and_the_repeat_loop():
    """The accelerators' lowering (vmap: the reset's lax.cond becomes a select over repeats)
    and the CPU's (a loop over repeats) give the same learner: the same units reset, the same
    weights (bit for bit on the CPU; within tests/backend.py's rounding elsewhere)."""
    from cljax.program import build_task_program

    config = Config.from_flat(dict(model="mlp", mlp_hidden=16, num_tasks=2, n_repeats=3, n_train_per_class=32,
                                   n_test_per_class=8, n_subsamples=2, epochs=2, batch_size=16, log_frequency=4,
                                   momentum=0.9, use_cbp=True, cbp_maturity=2, cbp_rate=0.05, use_redo=True,
                                   redo_every=3))
    rng = np.random.default_rng(0)
    data = [jnp.asarray(rng.integers(0, 256, (n, 3, 28, 28)), jnp.uint8) if i % 2 == 0 else
            jnp.asarray(rng.integers(0, 2, (n, 3)), jnp.int32) for i, n in enumerate((64, 64, 16, 16))]
    learners = []
    for loop in (True, False):
        program = build_task_program(config, (28, 28), loop_repeats=loop)
        learner, _ = program.run_task(program.init_learner(jax.random.key(0)), *data, jnp.int32(0), jax.random.key(1))
        learners.append(jax.device_get(learner))
    ages = learners[0].option_states[0]["dense1"]["age"]
    assert (np.asarray(ages) < 8).any()  # some units were replaced during the task's 8 steps
    for a, b in zip(jax.tree.leaves(learners[0]), jax.tree.leaves(learners[1])):  # integers (ages, counts) exact
        assert_same(a, b, why="vmapped and looped repeats are two programs", **SEPARATELY_COMPILED)
