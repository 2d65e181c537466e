"""Options' updates recomputed by hand on a tiny MLP: unsupervised learning's Hebbian and
reconstruction steps (exact, with unequal example weights), shrink+perturb's Gaussian noise on
every leaf (independent across leaves, hook keys and repeats, at the configured scale), and
ReDo at tau = 0 (a dead unit is dormant). Their integration: tests/test_options.py,
tests/test_methods.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.options.redo import dormant_masks
from cljax.program import build_parts
from tests.backend import FRESH_DRAW, WHY_FRESH_DRAW, assert_drawn_where, assert_same

TINY_IMAGE = (1, 3)  # the MLP flattens it: 3 inputs
WEIGHTS = np.array([1.0, 0.0, 2.0, 0.5, 3.0])  # unequal, one padded (weight-0) example


def tiny(**flat):
    """A 3 -> 4 -> 4 -> 1 MLP, its parts, its parameters (biases away from 0) and 5 images."""
    parts = build_parts(Config.from_flat(dict(model="mlp", mlp_hidden=4, mlp_depth=2, **flat)), TINY_IMAGE)
    params, _ = parts.net.init(jax.random.key(0))
    params = {k: {**v, "bias": v["bias"] + 0.1 * np.arange(1, v["bias"].size + 1)} for k, v in params.items()}
    images = jnp.asarray(np.arange(15).reshape(5, 1, 3) * 37 % 256, jnp.uint8)
    return parts, params, images


def layer_inputs_np(params, images):
    """The inputs of dense1 and dense2 by hand, float64, (B, I)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    h1 = np.maximum(x @ np.asarray(params["dense1"]["kernel"], np.float64) + np.asarray(params["dense1"]["bias"]), 0)
    return {"dense1": x, "dense2": h1}


# ---- unsupervised learning ------------------------------------------------------------------


def hebbian_np(W, x, w, lr, kind):
    """Oja's subspace rule / Sanger's rule, example by example:
    W + lr sum_b w_b (x_b - W M y_b) y_b^T / sum w, with y = W^T x (M: Sanger's upper triangle)."""
    w = w / w.sum()
    dW = np.zeros_like(W)
    for xb, wb in zip(x, w):
        y = W.T @ xb
        outer = np.outer(y, y)
        if kind == "sanger":
            outer = np.triu(outer)  # unit j is fitted against units 1..j only
        dW += wb * (np.outer(xb, y) - W @ outer)
    return W + lr * dW


def reconstruction_np(W, c, x, w, lr):
    """One descent step of 0.5 <|x - W (W^T x + c)|^2>, its gradient derived by hand:
    dL/dW = -<r z^T + x (W^T r)^T>, dL/dc = -<W^T r>, r = x - W z, z = W^T x + c."""
    w = w / w.sum()
    gW, gc = np.zeros_like(W), np.zeros_like(c)
    for xb, wb in zip(x, w):
        z = W.T @ xb + c
        r = xb - W @ z  # the reconstruction error
        gW -= wb * (np.outer(r, z) + np.outer(xb, W.T @ r))
        gc -= wb * (W.T @ r)
    return W - lr * gW, c - lr * gc


@pytest.mark.parametrize("kind, layer", [("oja", "dense1"), ("sanger", "dense1"), ("sanger", "dense2"),
                                         ("recon", "dense1"), ("recon", "dense2")])
def test_ul_step_is_the_rule_on_the_layer_input_by_hand(kind, layer):
    """The option's step_end moves exactly --ul-layer by its rule, from that layer's input, the
    examples weighted (a weight-0 example counts for nothing), every other leaf unchanged."""
    lr = 0.3
    parts, params, images = tiny(use_ul=True, ul_kind=kind, ul_layer=layer, ul_lr=lr)
    _, new = jax.jit(parts.options[0].step_end)((), params, {}, jax.random.key(1), images, jnp.asarray(WEIGHTS))
    x = layer_inputs_np(params, images)[layer]
    assert (x[WEIGHTS > 0] > 0).any(axis=0).sum() >= 3  # an input with several live coordinates
    W = np.asarray(params[layer]["kernel"], np.float64)
    c = np.asarray(params[layer]["bias"], np.float64)
    if kind == "recon":
        want_W, want_c = reconstruction_np(W, c, x, WEIGHTS, lr)
    else:
        want_W, want_c = hebbian_np(W, x, WEIGHTS, lr, kind), c  # Hebbian rules leave the bias
    assert np.abs(want_W - W).max() > 1e-3  # the step is large enough for the check to see it
    np.testing.assert_allclose(new[layer]["kernel"], want_W, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[layer]["bias"], want_c, rtol=1e-5, atol=1e-6)
    for name in params:
        if name != layer:
            for leaf in params[name]:
                np.testing.assert_array_equal(new[name][leaf], params[name][leaf])


def test_ul_recon_reduces_the_reconstruction_error():
    """A small reconstruction step descends: the weighted error is lower after it."""
    parts, params, images = tiny(use_ul=True, ul_kind="recon", ul_layer="dense1", ul_lr=0.05)
    _, new = jax.jit(parts.options[0].step_end)((), params, {}, jax.random.key(1), images, jnp.asarray(WEIGHTS))
    x = layer_inputs_np(params, images)["dense1"]

    def error(p):
        W, c = np.asarray(p["dense1"]["kernel"], np.float64), np.asarray(p["dense1"]["bias"], np.float64)
        return (WEIGHTS * ((x - (x @ W + c) @ W.T) ** 2).sum(1)).sum() / WEIGHTS.sum()

    assert error(new) < error(params) - 1e-4


# ---- shrink+perturb: Gaussian noise ---------------------------------------------------------

LAM, SIGMA = 0.5, 0.05


def gaussian_sp(mode="step", hidden=64):
    """An MLP 784 -> hidden -> hidden -> 1 (two (hidden,) biases of the same shape), S&P with
    absolute Gaussian noise, its parameters (biases away from 0) and a function that returns
    the noise eps = (new - lam theta) / sigma of the hook at a key."""
    config = Config.from_flat(dict(model="mlp", mlp_hidden=hidden, mlp_depth=2, add_plasticity=True, sp_mode=mode,
                                   sp_lambda=LAM, sp_sigma=SIGMA, sp_noise="gaussian"))
    parts = build_parts(config, (28, 28))
    params, _ = parts.net.init(jax.random.key(0))
    params = jax.tree.map(lambda p: p + 0.3, params)
    option = parts.options[0]
    if mode == "step":
        hook = jax.jit(lambda key: option.step_end((), params, {}, key, None, None)[1])
    else:
        hook = jax.jit(lambda key: option.task_start((), params, key, jnp.int32(1))[1])

    def eps_of(new):
        return {f"{layer}/{leaf}": (np.asarray(new[layer][leaf], np.float64) - LAM * np.asarray(params[layer][leaf]))
                / SIGMA for layer in new for leaf in new[layer]}

    return hook, eps_of


@pytest.mark.parametrize("mode", ["step", "boundary"])
def test_gaussian_sp_perturbs_every_leaf_at_sigma_biases_included(mode):
    """--sp-noise gaussian: every leaf, the zero-initialised biases included (no leaf is a
    'constant' here), becomes lam theta + sigma eps with eps standard normal. The bounds are
    > 6 standard errors of the sample's size (std of a sample std ~ 1 / sqrt(2n)); the keys are
    fixed, so the numbers are the same at every run."""
    hook, eps_of = gaussian_sp(mode)
    eps = eps_of(hook(jax.random.key(1)))
    assert set(eps) == {f"{layer}/{leaf}" for layer in ("dense1", "dense2", "head") for leaf in ("kernel", "bias")}
    for name, e in eps.items():
        n = e.size
        assert (e != 0).all(), name  # every entry perturbed: a shrink alone gives eps = 0
        if n >= 64:
            tol = 6 / np.sqrt(2 * n)  # 0.02 for dense1's kernel, 0.53 for a bias of 64
            assert abs(e.std() - 1) < tol and abs(e.mean()) < 6 / np.sqrt(n), (name, e.std(), e.mean())
    big = eps["dense1/kernel"]  # 50,176 draws: the scale is sigma, not a multiple of it
    assert abs(big.std() - 1) < 0.02


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_gaussian_sp_noise_is_independent_across_leaves_keys_and_repeats():
    """Each leaf has its own key: dense1's and dense2's biases (the same shape) get different
    noise; two hook keys give different noise; vmapped over repeats (the accelerators' lowering,
    a key per repeat) every repeat gets its own. Independent draws of n = 64 correlate with
    standard deviation 1/8: |r| < 0.6 is ~5 of them, and 0.999 would be a shared draw."""
    hook, eps_of = gaussian_sp("step")
    a = eps_of(hook(jax.random.key(1)))
    assert abs(_corr(a["dense1/bias"], a["dense2/bias"])) < 0.6
    assert abs(_corr(a["dense1/kernel"][:64], a["dense2/kernel"])) < 0.1  # n = 4096: SE 1/64
    b = eps_of(hook(jax.random.key(2)))
    repeats = jax.vmap(hook)(jax.random.split(jax.random.key(3), 2))
    r0, r1 = (eps_of(jax.tree.map(lambda v, i=i: v[i], repeats)) for i in (0, 1))
    for name in a:
        if a[name].size >= 64:
            assert abs(_corr(a[name], b[name])) < 0.6, name
            assert abs(_corr(r0[name], r1[name])) < 0.6, name
        else:  # the head's single bias: different, at least
            assert not np.allclose(a[name], b[name]) and not np.allclose(r0[name], r1[name]), name


class InitWithNestedJits:
    """An initialiser shaped as flax's and jax.random's are: parts inside nested jits, one of
    which reads the key for one of its outputs only."""

    @staticmethod
    def init(key):
        k1, k2 = jax.random.split(key)
        scale = jax.jit(lambda: jnp.full((3,), 0.5))()
        noise, twice = jax.jit(lambda k, c: (jax.random.normal(k, (2,)), 2 * c))(k2, jnp.ones(4))
        return {"kernel": jax.random.normal(k1, (2, 3)), "noise": noise, "scale": scale, "twice": twice}, {}


def test_sp_constant_leaves_are_those_the_initialiser_makes_without_the_key():
    """A constant leaf shrinks toward its value (test_options.py); found on the traced
    initialiser, through nested jits, where two draws of it would also say so."""
    from cljax.options.shrink_perturb import constant_leaves

    kernel, noise, scale, twice = constant_leaves(InitWithNestedJits)  # leaves in key order
    assert kernel is None and noise is None
    np.testing.assert_array_equal(scale, np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(twice, np.full(4, 2.0, np.float32))
    draws = [jax.tree.leaves(InitWithNestedJits.init(jax.random.key(i))[0]) for i in (1, 2)]
    assert [bool((a == b).all()) for a, b in zip(*draws)] == [False, False, True, True]


# ---- ReDo at tau = 0 ------------------------------------------------------------------------


def test_redo_tau_zero_marks_exactly_the_dead_units():
    """s_j <= tau: at tau = 0 a unit whose activity is exactly 0 on every example (of positive
    weight) is dormant, a unit active anywhere is not, and a silent layer is all dormant."""
    act = jnp.asarray([[1.0, 0.0, 0.0, 2.0],
                       [0.5, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 3.0, 1.0]])  # unit 2 fires only in the weight-0 example
    weights = jnp.asarray([1.0, 2.0, 0.0])
    masks = dormant_masks({"a": act, "silent": jnp.zeros((3, 2))}, weights, 0.0)
    np.testing.assert_array_equal(masks["a"], [False, True, True, False])
    np.testing.assert_array_equal(masks["silent"], [True, True])
    # a barely active unit is not dead
    np.testing.assert_array_equal(dormant_masks({"a": act.at[1, 1].set(1e-6)}, weights, 0.0)["a"],
                                  [False, False, True, False])


def test_redo_at_tau_zero_resets_a_dead_unit():
    """Through the option: dense1's unit 2 never fires (bias -100); with tau = 0 its incoming
    weights are a fresh draw and its outgoing weights 0 (but where dense2's own dead units take
    a fresh draw), and nothing else changes in dense1."""
    parts, params, images = tiny(use_redo=True, redo_every=1, redo_tau=0.0)
    params = {**params, "dense1": {**params["dense1"], "bias": params["dense1"]["bias"].at[2].set(-100.0)}}
    option = parts.options[0]
    opt_state = parts.learner_tx.init(params)
    key = jax.random.key(3)
    _, new, _ = jax.jit(option.step_reset)(option.init(params, None), params, opt_state, {}, key, images, jnp.ones(5))
    h1 = layer_inputs_np(params, images)["dense2"]
    assert (h1[:, 2] == 0).all() and (h1[:, [0, 1, 3]] > 0).any(0).all()  # dead unit 2 only
    fresh = parts.net.init(key)[0]
    old_k, new_k = np.asarray(params["dense1"]["kernel"]), np.asarray(new["dense1"]["kernel"])
    assert_same(new_k[:, 2], np.asarray(fresh["dense1"]["kernel"])[:, 2], **FRESH_DRAW, why=WHY_FRESH_DRAW)
    np.testing.assert_array_equal(new_k[:, [0, 1, 3]], old_k[:, [0, 1, 3]])
    assert float(new["dense1"]["bias"][2]) == 0.0
    h2 = np.maximum(h1 @ np.asarray(params["dense2"]["kernel"], np.float64) + np.asarray(params["dense2"]["bias"]), 0)
    dead2 = (h2 == 0).all(0)
    assert_drawn_where(np.asarray(new["dense2"]["kernel"])[2], dead2, np.asarray(fresh["dense2"]["kernel"])[2], 0.0)
