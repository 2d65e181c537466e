"""The models: the CNN's conv implementations (the CPU im2col lowering: channel-major matmul
convolutions, pool before bias and ReLU, hand-written pool and matmul gradients; the fused first
layer, tests/test_fused.py; and the plain ``nn.Conv`` network) against the spec's network written
with XLA's convolution and reduce_window, on real Fashion-MNIST images, ties included; the MLP
and the BatchNorm ResNet through ``make_net``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cljax.config import Config, config_choices
from cljax.data import load_dataset
from cljax.models import (CLASSIFIER_GROUP, CONV_IMPLS, MODELS, ModelContext, as_float_images, build_model, make_net,
                          resolve_conv_impl)
from cljax.models.cnn import CNN
from cljax.models.im2col import kernel_matmul, max_pool_disjoint
from tests.conftest import FASHION_DIR


def reference_cnn(params, images_BHW):
    """conv 3x3 SAME + bias -> ReLU -> max-pool 3/3 VALID, three times; mean; Dense+ReLU x2; head."""
    x = images_BHW.astype(jnp.float32)[..., None] / 255.0
    for name in ("conv1", "conv2", "conv3"):
        p = params[name]
        x = lax.conv_general_dilated(x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x + p["bias"])
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 3, 3, 1), "VALID")
    x = x.mean(axis=(1, 2))
    for name in ("dense1", "dense2"):
        x = jax.nn.relu(x @ params[name]["kernel"] + params[name]["bias"])
    return x @ params["head"]["kernel"] + params["head"]["bias"], x


@pytest.fixture(scope="module")
def images():
    """32 real test images, plus two with ties inside pool windows that carry gradient: a
    saturated block (identical patches, not zero) and a blank image (all-zero patches)."""
    config = Config(dataset="fashion_mnist", data_dir=str(FASHION_DIR))
    x = np.array(load_dataset(config).test_images[:32])
    x[0, 4:16, 4:16] = 255
    x[1] = 0
    return jnp.asarray(x)


_PERTURBED = {}  # out_dim -> params: every lowering builds the same parameters (the test below checks it)


def perturbed_cnn_params(model, images):
    """Compiled, as are the applications below: run op by op, a model compiles each operation
    of each shape on its own, slower than the whole program. Drawn once per output size."""
    if model.out_dim not in _PERTURBED:
        _PERTURBED[model.out_dim] = _perturbed_cnn_params(model)
    return _PERTURBED[model.out_dim]


def _perturbed_cnn_params(model):
    def perturbed(key):
        params = model.init(key, jnp.zeros((1, 28, 28), jnp.uint8))["params"]
        return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape), params)  # biases != 0

    return jax.jit(perturbed)(jax.random.key(3))


def tanh_loss(apply):
    return lambda p: jnp.sum(jnp.tanh(apply(p)[0]))


def assert_grads_close(grads, ref_grads):
    """Each leaf to 2e-5 of its largest reference entry: the conv implementations sum the
    same products in different orders (im2col matmul vs XLA's convolution, bias before or after
    the pool), so they agree to float32 rounding, not bit for bit."""
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        scale = float(jnp.abs(ref).max())
        assert scale > 0, path
        np.testing.assert_allclose(g, ref, atol=2e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
def test_cnn_matches_the_plain_network_and_its_gradients(images, conv_impl):
    model = CNN(out_dim=1, conv_impl=conv_impl)
    params = perturbed_cnn_params(model, images)
    logits, hidden = jax.jit(model.apply)({"params": params}, images)
    ref_logits, ref_hidden = jax.jit(reference_cnn)(params, images)
    assert logits.shape == (32, 1) and hidden.shape == (32, 64)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
    grads = jax.jit(jax.grad(tanh_loss(lambda p: model.apply({"params": p}, images))))(params)
    assert_grads_close(grads, jax.jit(jax.grad(tanh_loss(lambda p: reference_cnn(p, images))))(params))


@pytest.mark.parametrize("conv_impl", [impl for impl in CONV_IMPLS if impl != "lax"])
def test_each_lowering_builds_the_lax_params_and_agrees(images, conv_impl):
    """Same parameter tree and init values (the lowering is not a different network), the same
    outputs and gradients to float32 rounding (see assert_grads_close)."""
    fast, plain = CNN(out_dim=3, conv_impl=conv_impl), CNN(out_dim=3, conv_impl="lax")
    example = jnp.zeros((1, 28, 28), jnp.uint8)
    p_fast, p_plain = (jax.jit(m.init)(jax.random.key(0), example)["params"] for m in (fast, plain))
    assert jax.tree.structure(p_fast) == jax.tree.structure(p_plain)
    jax.tree.map(np.testing.assert_array_equal, p_fast, p_plain)

    params = perturbed_cnn_params(plain, images)
    for got, ref in zip(jax.jit(fast.apply)({"params": params}, images), jax.jit(plain.apply)({"params": params}, images),
                        strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert_grads_close(jax.jit(jax.grad(tanh_loss(lambda p: fast.apply({"params": p}, images))))(params),
                       jax.jit(jax.grad(tanh_loss(lambda p: plain.apply({"params": p}, images))))(params))


def test_cnn_params_are_the_spec_network():
    """Names and shapes of the results' weights (conv1/kernel ...), every implementation."""
    expected = {
        "conv1": {"kernel": (3, 3, 1, 16), "bias": (16,)},
        "conv2": {"kernel": (3, 3, 16, 32), "bias": (32,)},
        "conv3": {"kernel": (3, 3, 32, 64), "bias": (64,)},
        "dense1": {"kernel": (64, 64), "bias": (64,)},
        "dense2": {"kernel": (64, 64), "bias": (64,)},
        "head": {"kernel": (64, 10), "bias": (10,)},
    }
    for conv_impl in CONV_IMPLS:
        model = build_model("cnn", MODELS["cnn"].params(), ModelContext(10, (28, 28), conv_impl))
        assert isinstance(model, CNN) and model.conv_impl == conv_impl
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28), jnp.uint8)))
        assert set(shapes) == {"params"}
        assert jax.tree.map(lambda s: s.shape, shapes["params"]) == expected


def test_cnn_net_is_the_plain_module_apply(images):
    model = CNN(out_dim=2, conv_impl=resolve_conv_impl("auto"))
    net = make_net(model, (28, 28))
    params, state = net.init(jax.random.key(5))
    assert state == {} and net.state_collections == ()
    jax.tree.map(np.testing.assert_array_equal, params,
                 model.init(jax.random.key(5), jnp.zeros((1, 28, 28), jnp.uint8))["params"])
    for train in (True, False):
        logits, hidden, new_state = net.apply(params, state, images, train)
        ref_logits, ref_hidden = model.apply({"params": params}, images)
        np.testing.assert_array_equal(logits, ref_logits)
        np.testing.assert_array_equal(hidden, ref_hidden)
        assert new_state == {}


def test_conv_impl_resolution_and_image_conversion():
    assert resolve_conv_impl("auto") == "im2col"  # on every backend (docs/benchmark.md, measured on an H200)
    assert [resolve_conv_impl(name) for name in CONV_IMPLS] == list(CONV_IMPLS)
    # the config, `cljax run` and the benchmarks' --conv-impl offer exactly these, and auto
    assert config_choices("conv_impl") == ("auto", *CONV_IMPLS)
    x = jnp.array([[[0, 255], [51, 1]]], jnp.uint8)
    y = as_float_images(x)
    assert y.shape == (1, 2, 2, 1) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y[..., 0], x.astype(jnp.float32) * (1.0 / 255.0))
    assert as_float_images(jnp.zeros((2, 4, 4, 3), jnp.uint8)).shape == (2, 4, 4, 3)


SHAPES = [(28, 28), (28, 28, 1), (32, 32, 3)]


@pytest.mark.parametrize("image_shape", SHAPES)
@pytest.mark.parametrize("name", ["mlp", "resnet", "cnn"])
def test_models_train_on_any_image_shape(name, image_shape):
    """init + apply through make_net on uint8 batches; BatchNorm's running averages move with
    ``train=True`` only; finite, non-zero gradients."""
    B, out_dim = 6, 3
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (B, *image_shape)).astype(np.uint8))
    net = make_net(build_model(name, MODELS[name].params(), ModelContext(out_dim, image_shape, "lax")), image_shape)
    params, state = net.init(jax.random.key(0))
    assert set(params[CLASSIFIER_GROUP]) == {"kernel", "bias"}
    assert net.state_collections == (("batch_stats",) if name == "resnet" else ())
    assert set(state) == set(net.state_collections)

    logits, hidden, eval_state = net.apply(params, state, images, False)
    assert logits.shape == (B, out_dim) and hidden.ndim == 2 and hidden.shape[0] == B
    assert eval_state is state
    _, _, train_state = jax.jit(net.apply, static_argnums=3)(params, state, images, True)
    assert jax.tree.structure(train_state) == jax.tree.structure(state)
    if name == "resnet":
        moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(train_state), jax.tree.leaves(state), strict=True)]
        assert all(moved)

    def loss(p):
        logits, _, new_state = net.apply(p, state, images, True)
        return jnp.sum(jnp.tanh(logits)), new_state

    grads, _ = jax.jit(jax.grad(loss, has_aux=True))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.isfinite(g).all()), jax.tree_util.keystr(path)
    assert float(jnp.abs(grads["head"]["kernel"]).max()) > 0


@pytest.mark.parametrize("conv_impl", [impl for impl in CONV_IMPLS if impl != "lax"])
def test_each_lowering_takes_colour_images(conv_impl):
    """(B, H, W, C) input (im2col: its own transpose; fused: three input channels per tap),
    same numbers as the lax path."""
    images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (5, 32, 32, 3)).astype(np.uint8))
    fast, plain = CNN(out_dim=4, conv_impl=conv_impl), CNN(out_dim=4, conv_impl="lax")
    params = plain.init(jax.random.key(1), images[:1])["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 3, 16)
    for got, ref in zip(fast.apply({"params": params}, images), plain.apply({"params": params}, images), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_mlp_layers_follow_depth_and_hidden():
    model = build_model("mlp", MODELS["mlp"].params(hidden=32, depth=3), ModelContext(5, (28, 28), "lax"))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28), jnp.uint8)))["params"]
    assert list(shapes) == ["dense1", "dense2", "dense3", "head"]
    assert shapes["dense1"]["kernel"].shape == (784, 32) and shapes["head"]["kernel"].shape == (32, 5)


@pytest.mark.parametrize("size", [2, 3, 6])  # 6: 36 positions a window, more bits than an int32
def test_pool_gradient_is_jax_rule_for_max_with_ties(size):
    """Ties share the gradient equally, as jax.grad of a max does, bit for bit (the mask of the
    maxima is recomputed from the saved input in the backward pass); the rows and columns the
    pool drops get none."""
    rng = np.random.default_rng(size)
    n = 3 * size - 1  # two whole windows a side, and size - 1 rows and columns the pool drops
    x = rng.integers(0, 3, (2, n, n, 3)).astype(np.float32)  # values 0..2: many ties in every window
    x[0, :size, :size, 0] = -0.0  # a window of zeros of both signs
    x[0, :size, :size, 1][0, 0] = 0.0
    g = jnp.asarray(rng.standard_normal((2, 2, 2, 3)).astype(np.float32))
    m = 2 * size

    def plain(x):
        return x[:, :m, :m].reshape(2, 2, size, 2, size, 3).max(axis=(2, 4))

    y, vjp = jax.vjp(lambda x: max_pool_disjoint(x, size), jnp.asarray(x))  # pools axes 1, 2
    y_ref, vjp_ref = jax.vjp(plain, jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(np.asarray(dx).view(np.int32), np.asarray(dx_ref).view(np.int32))  # the bits
    np.testing.assert_array_equal(dx[:, m:], 0.0)
    np.testing.assert_array_equal(dx[:, :, m:], 0.0)
    # each window's gradient sums to the output gradient, however many maxima tie
    np.testing.assert_allclose(dx[:, :m, :m].reshape(2, 2, size, 2, size, 3).sum(axis=(2, 4)), g, rtol=1e-5,
                               atol=1e-6)


def test_kernel_matmul_values_and_gradients_are_the_plain_matmul():
    """kernel^T @ patches and both gradients equal jax.grad of the plain expression (only the
    dot layouts differ), also under vmap (the accelerator lowering of the repeat axis)."""
    rng = np.random.default_rng(1)
    kernel = jnp.asarray(rng.standard_normal((27, 16)).astype(np.float32))
    patches = jnp.asarray(rng.standard_normal((27, 200)).astype(np.float32))
    g = jnp.asarray(rng.standard_normal((16, 200)).astype(np.float32))

    def plain(k, p):
        return k.T @ p

    y, vjp = jax.vjp(kernel_matmul, kernel, patches)
    y_ref, vjp_ref = jax.vjp(plain, kernel, patches)
    assert y.shape == (16, 200)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for got, ref in zip(vjp(g), vjp_ref(g), strict=True):
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    d_kernel = jax.vmap(jax.grad(lambda k, p: jnp.sum(jnp.sin(kernel_matmul(k, p)))))(
        jnp.stack([kernel, 2 * kernel]), jnp.stack([patches, -patches])
    )
    d_ref = jax.grad(lambda k: jnp.sum(jnp.sin(plain(k, -patches))))(2 * kernel)
    np.testing.assert_allclose(d_kernel[1], d_ref, rtol=1e-5, atol=1e-5)


def test_the_cnn_refuses_images_its_pools_reduce_to_nothing():
    # 24 x 24 -> 8 -> 2 -> 0: the global mean of an empty map was NaN at initialisation, and the
    # run stopped with "non-finite loss ... lower --lr".
    from cljax.errors import CljaxError

    with pytest.raises(CljaxError, match=r"pools its images by 27 .* 24 x 24 images leave nothing"):
        build_model("cnn", MODELS["cnn"].params(), ModelContext(1, (24, 24), "lax"))
    with pytest.raises(CljaxError, match=r"26 x 26 images leave nothing"):  # 26 -> 8 -> 2 -> 0
        build_model("cnn", MODELS["cnn"].params(), ModelContext(1, (26, 26), "lax"))
    build_model("cnn", MODELS["cnn"].params(), ModelContext(1, (27, 27), "lax"))


def test_batchnorm_leaves_weight_zero_examples_out_of_its_statistics():
    """Replay appends its slots to every batch with weight 0 until it holds images (the whole first
    task): the ResNet's BatchNorm must not count them, or the zeros halve the stem's batch mean
    and move every running average. Training on a batch plus weight-0 zero images gives the same
    logits for the real images and the same BatchNorm statistics as the batch alone."""
    module = build_model("resnet", MODELS["resnet"].params(width=4, blocks=1, hidden=8),
                         ModelContext(out_dim=1, image_shape=(28, 28), conv_impl="lax"))
    net = make_net(module, (28, 28))
    params, state = net.init(jax.random.key(0))
    images = jax.random.randint(jax.random.key(1), (6, 28, 28), 0, 256).astype(jnp.uint8)
    padded = jnp.concatenate([images, jnp.zeros((4, 28, 28), jnp.uint8)])
    weights = jnp.concatenate([jnp.ones(6), jnp.zeros(4)])
    alone, _, state_alone = net.apply(params, state, images, True, jnp.ones(6))
    mixed, _, state_mixed = net.apply(params, state, padded, True, weights)
    np.testing.assert_allclose(mixed[:6], alone, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(state_alone), jax.tree.leaves(state_mixed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    _, _, state_counted = net.apply(params, state, padded, True)  # without weights: every example counts
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state_alone),
                                                           jax.tree.leaves(state_counted))) > 1e-3


def test_a_model_with_batch_statistics_and_no_mask_is_refused_with_an_option_that_adds_weight_zero_examples():
    """Replay's empty slots enter every batch of the first task with weight 0; a BatchNorm model
    whose ``__call__`` takes no ``mask`` would count them, so the option is refused in one line
    naming the fix; without replay, and for the ResNet (which takes ``mask``), it is built."""
    import flax.linen as nn

    from cljax.errors import CljaxError
    from cljax.options import make_options

    class NoMaskBN(nn.Module):
        @nn.compact
        def __call__(self, images, train: bool = False):
            x = as_float_images(images, jnp.float32).reshape(images.shape[0], -1)
            hidden = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))
            return nn.Dense(1, name=CLASSIFIER_GROUP)(hidden), hidden

    net = make_net(NoMaskBN(), (28, 28))
    assert net.state_collections == ("batch_stats",)
    with pytest.raises(CljaxError, match=r"option 'replay' adds examples of weight 0 .*batch_stats.* NoMaskBN.*"
                                         r"mask argument"):
        make_options(Config.from_flat(use_replay=True), net)
    assert make_options(Config(), net) == ()
    resnet = make_net(build_model("resnet", MODELS["resnet"].params(width=4, blocks=1, hidden=8),
                                  ModelContext(out_dim=1, image_shape=(28, 28), conv_impl="lax")), (28, 28))
    assert len(make_options(Config.from_flat(use_replay=True), resnet)) == 1


@pytest.mark.parametrize("conv_impl", ["lax", "im2col"])
def test_the_cnn_averages_its_last_feature_map_when_the_pools_leave_more_than_one_position(conv_impl):
    """84 x 84 images leave a 3 x 3 map after the three pools (84 -> 28 -> 9 -> 3): the features
    are its mean (at 28 x 28 the map is 1 x 1, where a max or a corner would pass as well)."""
    images = jnp.asarray(np.random.default_rng(3).integers(0, 256, (2, 84, 84)).astype(np.uint8))
    model = CNN(out_dim=2, conv_impl=conv_impl)
    params = perturbed_cnn_params(model, images)
    for got, ref in zip(jax.jit(model.apply)({"params": params}, images), reference_cnn(params, images), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
