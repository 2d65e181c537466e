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
