"""Continual backprop's three settings that take the authors' continual-ImageNet code's choices
(docs/methods.md): ``--cbp-count all``, ``--cbp-optimizer-state keep``, ``--cbp-fresh uniform``;
each against its update by hand, the defaults unchanged, and an older record read as the
defaults. The defaults' update by hand: tests/test_methods.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.options.cbp import cbp_update
from cljax.setting_match import differing_settings
from tests.backend import FRESH_DRAW, WHY_FRESH_DRAW, assert_same
from tests.test_methods import tiny

TWO_PROGRAMS = "the fresh weights drawn inside two step programs (optimiser state reset or kept)"

# dense1: 3 of 4 units mature; dense2: none mature. One step at rate 0.4, maturity 100.
STATE = {"dense1": {"utility": jnp.asarray([0.5, 0.0, 0.2, 0.4]), "age": jnp.asarray([200, 0, 200, 150]),
                    "acc": jnp.float32(0.0)},
         "dense2": {"utility": jnp.asarray([0.1, 0.2, 0.3, 0.4]), "age": jnp.asarray([5, 0, 50, 99]),
                    "acc": jnp.float32(0.7)}}


def _step(count_all: bool):
    activity = {layer: jnp.ones((2, 4)) for layer in STATE}
    out_sums = {layer: jnp.ones(4) for layer in STATE}
    return cbp_update(STATE, activity, out_sums, jnp.ones(2), rate=0.4, maturity=100, decay=0.9, count_all=count_all)


def test_count_all_adds_rate_times_every_unit_once_any_is_mature():
    # the paper's count: 0.4 x 3 mature = 1.2 -> one unit, 0.2 left; the authors': 0.4 x 4 = 1.6
    # -> one unit, 0.6 left. A layer with no mature unit counts nothing either way (0.7 kept).
    mature, masks_m = _step(False)
    every, masks_a = _step(True)
    assert float(mature["dense1"]["acc"]) == pytest.approx(0.2, abs=1e-6)
    assert float(every["dense1"]["acc"]) == pytest.approx(0.6, abs=1e-6)
    assert int(masks_m["dense1"].sum()) == int(masks_a["dense1"].sum()) == 1
    for state in (mature, every):
        assert float(state["dense2"]["acc"]) == pytest.approx(0.7, abs=1e-7)
    assert int(masks_a["dense2"].sum()) == 0


def test_count_all_never_replaces_more_than_the_mature_units():
    # 0.4 x 4 over three steps is 4.8 units, but one unit is mature: one at most per step
    state = {"l": {"utility": jnp.zeros(4), "age": jnp.asarray([200, 0, 0, 0]), "acc": jnp.float32(2.5)}}
    new, masks = cbp_update(state, {"l": jnp.ones((2, 4))}, {"l": jnp.ones(4)}, jnp.ones(2), rate=0.4, maturity=100,
                            decay=0.9, count_all=True)
    assert masks["l"].tolist() == [True, False, False, False]
    assert float(new["l"]["acc"]) == pytest.approx(2.5 + 1.6 - 1, abs=1e-6)


def _reset(**flat):
    config, parts, params, images, _ = tiny(use_cbp=True, cbp_rate=0.4, cbp_maturity=100, cbp_decay=0.9,
                                            momentum=0.9, **flat)
    option = parts.options[0]
    state = {**option.init(params, None), **{k: dict(v) for k, v in STATE.items()}}
    opt_state = jax.tree.map(jnp.ones_like, parts.learner_tx.init(params))
    key = jax.random.key(7)
    new_state, new_params, new_opt = jax.jit(option.step_reset)(state, params, opt_state, {}, key, images,
                                                                jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0]))
    return params, opt_state, new_params, new_opt, key


def test_keep_leaves_the_optimiser_state_and_resets_the_weights_as_the_default():
    params, opt_state, p_reset, o_reset, _ = _reset()
    _, _, p_keep, o_keep, _ = _reset(cbp_optimizer_state="keep")
    for a, b in zip(jax.tree.leaves(p_reset), jax.tree.leaves(p_keep)):  # the same unit replaced, the same fresh
        assert_same(a, b, **FRESH_DRAW, why=TWO_PROGRAMS)  # weights (two programs: their draws may round apart)
    assert any((np.asarray(a) != np.asarray(b)).any() for a, b in zip(jax.tree.leaves(p_keep), jax.tree.leaves(params)))
    for a, b in zip(jax.tree.leaves(o_keep), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(a, b)  # momentum kept, the replaced unit's too
    zeroed = sum(int((np.asarray(a) == 0).sum()) for a in jax.tree.leaves(o_reset))
    assert zeroed == 3 + 1 + 4  # the default: the unit's fan-in (3), bias (1) and fan-out (4) momentum at 0


def test_uniform_draws_the_fan_in_from_the_authors_bounds_and_zeroes_the_bias():
    params, _, p_init, _, _ = _reset()
    _, _, p_unif, _, key = _reset(cbp_fresh="uniform")
    j = int(np.flatnonzero((np.asarray(p_init["dense2"]["kernel"]) == 0).all(1))[0])  # the replaced unit: fan-out 0
    bound = 1 / np.sqrt(3)  # dense1's fan-in: the 3 pixels
    column = np.asarray(p_unif["dense1"]["kernel"])[:, j]
    expected = np.asarray(jax.random.uniform(jax.random.fold_in(key, 0), (3, 4), jnp.float32, -bound, bound))[:, j]
    assert_same(column, expected, **FRESH_DRAW, why=WHY_FRESH_DRAW)
    assert (np.abs(column) <= bound).all() and float(p_unif["dense1"]["bias"][j]) == 0.0
    assert (np.asarray(p_unif["dense2"]["kernel"])[j] == 0).all()
    for leaf in ("kernel", "bias"):  # the other units as they were
        np.testing.assert_array_equal(np.delete(np.asarray(p_unif["dense1"][leaf]), j, axis=-1),
                                      np.delete(np.asarray(params["dense1"][leaf]), j, axis=-1))
    assert not np.allclose(column, np.asarray(p_init["dense1"]["kernel"])[:, j])  # not the initialiser's draw


def test_an_older_record_reads_as_the_defaults_and_each_setting_is_part_of_the_resume_key():
    new = ("cbp_count", "cbp_optimizer_state", "cbp_fresh")
    recorded = {k: v for k, v in Config.from_flat(use_cbp=True).to_dict().items() if k not in new}
    assert differing_settings(recorded, Config.from_flat(use_cbp=True)) == []
    authors = Config.from_flat(use_cbp=True, cbp_count="all", cbp_optimizer_state="keep", cbp_fresh="uniform")
    assert sorted(differing_settings(recorded, authors)) == sorted(new)
    with pytest.raises(CljaxError, match="cbp-fresh"):
        Config.from_flat(use_cbp=True, cbp_fresh="kaiming").validate()


# ---- against the authors' ConvGnT, step by step ------------------------------------------------
# Their ConvGnT.test_features (lop/algos/convGnT.py of shibhansh/loss-of-plasticity, read on
# 2026-12-07, util_type 'adaptable_contribution' as their continual-ImageNet cfg/cbp.json runs it),
# restated here in numpy for one layer read by a dense layer: the age counts the step first, the
# running mean takes the step's features before it centres them, the outgoing and incoming
# weights enter as MEANS of |w| (cljax sums the outgoing ones: a factor of the reader's width,
# the same for every unit), the count is a Python float that adds rate x all the layer's units
# once any is mature and is truncated by int(), and the lowest age-corrected utilities among the
# mature units are replaced, their utility, mean and age set to 0.


def convgnt_step(s, h_BU, w_in_FU, w_out_UV, rate, maturity, decay):
    """One step of their code for one layer, in float64: (state, replace mask)."""
    age = s["age"] + 1
    correction = 1 - decay ** age
    mean = decay * s["mean"] + (1 - decay) * h_BU.mean(0)
    contribution = np.abs(w_out_UV).mean(1) * np.abs(h_BU - mean / correction).mean(0) / np.abs(w_in_FU).mean(0)
    util = decay * s["util"] + (1 - decay) * contribution
    eligible = np.flatnonzero(age > maturity)
    replace = np.zeros(len(age), bool)
    acc = s["acc"]
    if len(eligible):
        acc += rate * len(age)
        n = int(acc)
        acc -= n
        replace[eligible[np.argsort(util[eligible] / correction[eligible])[:n]]] = True
    zero = lambda v: np.where(replace, 0, v)  # noqa: E731
    return {"util": zero(util), "mean": zero(mean), "age": zero(age), "acc": acc}, replace


@pytest.mark.parametrize("count_all", [True, False])
def test_count_all_with_the_adaptable_utility_is_their_convgnt_over_steps(count_all):
    # 60 steps of 6 units (rate 0.12: 0.72 units a step once any is mature), the weights and
    # activities random each step (no ties). --cbp-count all replaces the units theirs does, at
    # the steps theirs does; the paper's count (mature) replaces fewer while fresh units are young.
    rng = np.random.default_rng(1)
    U, V, F, B, rate, maturity, decay = 6, 3, 5, 8, 0.12, 4, 0.9
    theirs = {"util": np.zeros(U), "mean": np.zeros(U), "age": np.zeros(U, int), "acc": 0.0}
    ours = {"utility": jnp.zeros(U), "mean": jnp.zeros(U), "age": jnp.zeros(U, jnp.int32), "acc": jnp.float32(0)}
    same_masks, n_replaced = [], 0
    for step in range(60):
        h = np.maximum(rng.normal(0.3, 1.0, (B, U)), 0) * rng.uniform(0.2, 2.0, U)
        w_in, w_out = rng.normal(size=(F, U)), rng.normal(size=(U, V))
        theirs, replace = convgnt_step(theirs, h, w_in, w_out, rate, maturity, decay)
        new, masks = cbp_update({"l": ours}, {"l": jnp.asarray(h, jnp.float32)},
                                {"l": jnp.asarray(np.abs(w_out).sum(1), jnp.float32)}, jnp.ones(B), rate=rate,
                                maturity=maturity, decay=decay,
                                in_means={"l": jnp.asarray(np.abs(w_in).mean(0), jnp.float32)}, count_all=count_all)
        ours, n_replaced = new["l"], n_replaced + int(replace.sum())
        same_masks.append(bool((np.asarray(masks["l"]) == replace).all()))
        if not count_all:
            continue
        assert same_masks[-1], f"step {step}: {np.asarray(masks['l'])} vs theirs {replace}"
        np.testing.assert_array_equal(ours["age"], theirs["age"])
        np.testing.assert_allclose(ours["utility"], theirs["util"] * V, rtol=2e-5, atol=1e-7)  # sum = V x mean
        np.testing.assert_allclose(ours["mean"], theirs["mean"], rtol=2e-5, atol=1e-7)
        assert float(ours["acc"]) == pytest.approx(theirs["acc"], abs=1e-5)
    if count_all:
        assert n_replaced >= 25  # 0.72 a step over the 55 mature steps, fewer while none is mature
    else:
        assert not all(same_masks)  # the paper's count is not theirs


def test_a_conv_channels_utility_against_their_positions():
    # Their conv -> conv utility averages over the batch AND the pooled positions: mean |W_out|
    # over (reader channels, kernel rows, columns) x mean_{b,p} |f - mu|; cljax sows each
    # channel's per-image mean over positions. After ReLU and pool (f >= 0) the contribution
    # utility is theirs times the reader's 3 x 3 x V; the adaptable one centres the per-image
    # mean, never above theirs and equal where a channel is constant over an image's positions.
    from cljax.options._units import incoming_abs_means, outgoing_abs_sums

    rng = np.random.default_rng(2)
    B, P, U, V, decay = 4, 9, 3, 5, 0.9
    params = {"conv1": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, U)), jnp.float32)},
              "conv2": {"kernel": jnp.asarray(rng.normal(size=(3, 3, U, V)), jnp.float32)}}
    layers = (("conv1", "conv2"),)
    out_sums, in_means = outgoing_abs_sums(params, layers), incoming_abs_means(params, layers)
    k_in, k_out = np.abs(np.asarray(params["conv1"]["kernel"])), np.abs(np.asarray(params["conv2"]["kernel"]))
    np.testing.assert_allclose(out_sums["conv1"], k_out.mean(axis=(0, 1, 3)) * 9 * V, rtol=1e-5)
    np.testing.assert_allclose(in_means["conv1"], k_in.mean(axis=(0, 1, 2)), rtol=1e-5)
    f_BPU = np.maximum(rng.normal(size=(B, P, U)), 0)
    f_BPU[:, :, 2] = f_BPU[:, :1, 2]  # channel 2 constant over each image's positions
    fresh = {"utility": jnp.zeros(U), "age": jnp.zeros(U, jnp.int32), "acc": jnp.float32(0)}
    args = dict(rate=0.0, maturity=10, decay=decay)
    activity = {"conv1": jnp.asarray(f_BPU.mean(1), jnp.float32)}
    plain, _ = cbp_update({"conv1": fresh}, activity, out_sums, jnp.ones(B), **args)
    theirs_plain = (1 - decay) * k_out.mean(axis=(0, 1, 3)) * np.abs(f_BPU).mean(axis=(0, 1))
    np.testing.assert_allclose(plain["conv1"]["utility"], theirs_plain * 9 * V, rtol=1e-5)
    adapt, _ = cbp_update({"conv1": {**fresh, "mean": jnp.zeros(U)}}, activity, out_sums, jnp.ones(B),
                          in_means=in_means, **args)
    centred = np.abs(f_BPU - f_BPU.mean(axis=(0, 1))).mean(axis=(0, 1))  # age 1: mu / (1 - eta) is the batch mean
    theirs_adapt = (1 - decay) * k_out.mean(axis=(0, 1, 3)) * centred / k_in.mean(axis=(0, 1, 2)) * 9 * V
    ours = np.asarray(adapt["conv1"]["utility"])
    assert (ours[:2] < 0.9 * theirs_adapt[:2]).all()  # positions that vary: theirs larger
    np.testing.assert_allclose(ours[2], theirs_adapt[2], rtol=1e-5)
