"""The CNN's fast lowering (channel-major im2col convolutions, pool before bias and ReLU,
hand-written pool and matmul gradients) against the spec's network written plainly with XLA's
convolution and reduce_window, on real Fashion-MNIST images: same outputs, same gradients,
ties included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cljax.config import Config
from cljax.data import load_dataset
from cljax.models import kernel_matmul, make_model, max_pool_disjoint
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


def test_cnn_matches_the_plain_network_and_its_gradients(images):
    model = make_model(Config(dataset="fashion_mnist"))
    params = model.init(jax.random.key(3), images[:1])["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape), params)  # biases != 0
    logits, hidden = model.apply({"params": params}, images)
    ref_logits, ref_hidden = reference_cnn(params, images)
    assert logits.shape == (32, 1) and hidden.shape == (32, 64)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hidden, ref_hidden, rtol=1e-5, atol=1e-5)

    def loss(apply):
        return lambda p: jnp.sum(jnp.tanh(apply(p)[0]))

    grads = jax.grad(loss(lambda p: model.apply({"params": p}, images)))(params)
    ref_grads = jax.grad(loss(lambda p: reference_cnn(p, images)))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for (path, g), ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True):
        scale = float(jnp.abs(ref).max())
        assert scale > 0, path
        np.testing.assert_allclose(g, ref, atol=2e-5 * scale, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_pool_gradient_is_jax_rule_for_max_with_ties():
    """Ties share the gradient equally, as jax.grad of a max does; the rows and columns the
    pool drops (here 8 = 2 x 3 + 2) get none."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 8, 8, 3)).astype(np.float32)  # values 0..2: many ties in every window
    g = jnp.asarray(rng.standard_normal((2, 2, 2, 3)).astype(np.float32))

    def plain(x):
        return x[:, :6, :6].reshape(2, 2, 3, 2, 3, 3).max(axis=(2, 4))

    y, vjp = jax.vjp(lambda x: max_pool_disjoint(x, 3), jnp.asarray(x))  # pools axes 1, 2
    y_ref, vjp_ref = jax.vjp(plain, jnp.asarray(x))
    np.testing.assert_array_equal(y, y_ref)
    (dx,), (dx_ref,) = vjp(g), vjp_ref(g)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dx[:, 6:], 0.0)
    np.testing.assert_array_equal(dx[:, :, 6:], 0.0)
    # each window's gradient sums to the output gradient, however many maxima tie
    np.testing.assert_allclose(dx[:, :6, :6].reshape(2, 2, 3, 2, 3, 3).sum(axis=(2, 4)), g, rtol=1e-5, atol=1e-6)


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
