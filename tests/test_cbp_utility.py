"""``--cbp-utility adaptable``: continual backprop ranking its units by the utility of the authors'
continual-ImageNet code (the activity centred on its running mean, over the mean size of the
unit's incoming weights), against a float64 computation by hand; the default's state and
records are unchanged. The resume of its state: tests/test_reliability.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.options.cbp import cbp_update
from cljax.setting_match import differing_settings
from tests.test_methods import forward_np, tiny


def adaptable_by_hand(state, h, out_sums, in_means, weights, rate, maturity, decay):
    """One step of the adaptable utility in float64: (state, replace mask)."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    age = state["age"] + 1
    mean = decay * state["mean"] + (1 - decay) * (w[:, None] * h).sum(0)
    centred = h - mean / (1 - decay ** age)
    utility = decay * state["utility"] + (1 - decay) * (w[:, None] * np.abs(centred)).sum(0) * out_sums / in_means
    eligible = age > maturity
    acc = state["acc"] + rate * eligible.sum()
    n = min(int(np.floor(acc)), int(eligible.sum()))
    ranked = np.where(eligible, utility / (1 - decay ** age), np.inf)
    replace = np.isin(np.arange(len(age)), np.argsort(ranked, kind="stable")[:n])
    new = {"utility": np.where(replace, 0, utility), "age": np.where(replace, 0, age), "acc": acc - n,
           "mean": np.where(replace, 0, mean)}
    return new, replace


def test_the_adaptable_utility_is_its_update_by_hand_over_steps():
    # Five steps of three units on batches of four (the last example weighted 0): the running
    # mean, its age correction, the division by the incoming weights, the replacement and the
    # fresh unit's mean set to 0. A unit that is always active at the same level has a large
    # plain contribution but no adaptable one: the two utilities replace different units.
    rng = np.random.default_rng(0)
    out_sums, in_means = np.array([1.0, 0.5, 2.0]), np.array([0.2, 1.0, 0.5])
    weights = np.array([1.0, 1.0, 1.0, 0.0])
    state = {"utility": np.zeros(3), "age": np.zeros(3, int), "acc": 0.0, "mean": np.zeros(3)}
    got = {k: jnp.asarray(v, jnp.int32 if k == "age" else jnp.float32) for k, v in state.items()}
    replaced = []
    for step in range(5):
        h = np.abs(rng.normal(size=(4, 3))) * np.array([1.0, 0.3, 0.0]) + np.array([0.0, 0.0, 3.0])
        state, replace = adaptable_by_hand(state, h, out_sums, in_means, weights, 0.5, 0, 0.9)
        got, masks = cbp_update({"l": got}, {"l": jnp.asarray(h, jnp.float32)}, {"l": jnp.asarray(out_sums)},
                                jnp.asarray(weights), rate=0.5, maturity=0, decay=0.9, in_means={"l": jnp.asarray(in_means)})
        got = got["l"]
        np.testing.assert_array_equal(masks["l"], replace)
        np.testing.assert_array_equal(got["age"], state["age"])
        for key in ("utility", "mean", "acc"):  # atol: unit 2's centred 3.0 is float32's rounding of 3 (2.4e-7),
            # times its |W_out| / |W_in| of 4
            np.testing.assert_allclose(got[key], state[key], rtol=2e-6, atol=2e-6, err_msg=f"step {step}: {key}")
        replaced.append(replace.tolist())
    # unit 2 (always 3.0: no adaptable utility, the largest plain contribution) goes first; the
    # plain utility replaces unit 1 (the smallest |h| x |W_out|) instead
    assert replaced[0] == [False, False, True] and sum(map(sum, replaced)) >= 2, replaced
    plain = {k: jnp.asarray(v) for k, v in {"utility": np.zeros(3), "age": np.zeros(3, int), "acc": 0.0}.items()}
    h = np.abs(rng.normal(size=(4, 3))) * np.array([1.0, 0.3, 0.0]) + np.array([0.0, 0.0, 3.0])
    _, masks = cbp_update({"l": plain}, {"l": jnp.asarray(h, jnp.float32)}, {"l": jnp.asarray(out_sums)},
                          jnp.asarray(weights), rate=0.5, maturity=0, decay=0.9)
    assert masks["l"].tolist() == [False, True, False]


def test_a_unit_with_no_incoming_weight_is_ranked_not_nan():
    # all-zero fan-in and a constant activity: 0 / 0 would be NaN, which argsort ranks last
    state = {"l": {"utility": jnp.zeros(2), "age": jnp.full(2, 5), "acc": jnp.float32(0.0), "mean": jnp.zeros(2)}}
    new, masks = cbp_update(state, {"l": jnp.ones((2, 2))}, {"l": jnp.ones(2)}, jnp.ones(2), rate=0.5, maturity=0,
                            decay=0.5, in_means={"l": jnp.asarray([0.0, 1.0])})
    assert np.isfinite(np.asarray(new["l"]["utility"])).all() and int(masks["l"].sum()) == 1


def test_the_hook_reads_the_networks_activity_and_weights():
    # the wiring: the step's activity after the step, sum |W_out| of the reader, mean |W_in| of
    # the layer's kernel (bias left out), the state's running mean kept and set to 0 when replaced
    config, parts, params, images, _ = tiny(use_cbp=True, cbp_utility="adaptable", cbp_rate=0.4, cbp_maturity=2,
                                            cbp_decay=0.9)
    option = parts.options[0]
    state = option.init(params, None)
    assert sorted(state["dense1"]) == ["acc", "age", "mean", "utility"]
    state = {layer: {**s, "age": jnp.asarray([5, 0, 5, 5]), "mean": jnp.asarray([0.1, 0.2, 0.3, 0.4])}
             for layer, s in state.items()}
    weights = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
    opt_state = parts.learner_tx.init(params)
    new, new_params, _ = jax.jit(option.step_reset)(state, params, opt_state, {}, jax.random.key(3), images, weights)
    h = forward_np(params, images)
    replaced = {}
    for layer, reader in (("dense1", "dense2"), ("dense2", "head")):
        s = {k: np.asarray(v, np.float64) for k, v in state[layer].items()}
        kernel = np.asarray(params[layer]["kernel"], np.float64)
        expect, replace = adaptable_by_hand(s, h[layer], np.abs(np.asarray(params[reader]["kernel"])).sum(1),
                                            np.abs(kernel).mean(0), weights, 0.4, 2, 0.9)
        for key in ("utility", "mean", "age", "acc"):
            np.testing.assert_allclose(new[layer][key], expect[key], rtol=1e-5, atol=1e-7, err_msg=f"{layer}: {key}")
        replaced[layer] = replace
        rows = ~replaced["dense1"] if layer == "dense2" else np.ones(len(kernel), bool)  # dense1's fan-out zeroed
        changed = (np.asarray(new_params[layer]["kernel"])[rows] != kernel[rows]).any(0)
        np.testing.assert_array_equal(changed, replace)  # a fresh fan-in for the replaced unit alone
    assert [int(r.sum()) for r in replaced.values()] == [1, 1]  # 3 mature units x 0.4 -> one per layer


def test_the_default_keeps_its_state_and_an_older_record_reads_as_the_default():
    config, parts, params, *_ = tiny(use_cbp=True)
    assert sorted(parts.options[0].init(params, None)["dense1"]) == ["acc", "age", "utility"]  # the checkpoint's as before
    recorded = {k: v for k, v in Config.from_flat(use_cbp=True).to_dict().items() if k != "cbp_utility"}
    assert differing_settings(recorded, Config.from_flat(use_cbp=True)) == []
    assert differing_settings(recorded, Config.from_flat(use_cbp=True, cbp_utility="adaptable")) == ["cbp_utility"]
    with pytest.raises(CljaxError, match="cbp-utility"):
        Config.from_flat(use_cbp=True, cbp_utility="adaptive").validate()
