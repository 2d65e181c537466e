"""The fused first layer (cljax/models/fused.py): convolution, ReLU and max-pool as one
computation, against the three operations written in numpy (exact, on any backend) and with XLA's
convolution and reduce_window: values and the gradients of image, kernel and bias, with ties in
the pool windows, more than one input channel, sizes the pool does not divide, under vmap, and in
bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cljax.models.fused import FusedConvPool, conv_relu_pool


def three_ops(x, kernel, bias, pool):
    y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + bias)
    return lax.reduce_window(y, -jnp.inf, lax.max, (1, pool, pool, 1), (1, pool, pool, 1), "VALID")


def numpy_conv(x, kernel):
    """A SAME convolution in float64 numpy: (xp, z), the padded image and the pre-activations."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    (_, H, W, _), k = x.shape, kernel.shape[0]
    xp = np.pad(x, ((0, 0), (k // 2, k - 1 - k // 2), (k // 2, k - 1 - k // 2), (0, 0)))
    z = sum(np.einsum("bhwc,co->bhwo", xp[:, ti : ti + H, tj : tj + W], kernel[ti, tj])
            for ti in range(k) for tj in range(k))
    return xp, z


def numpy_reference(x, kernel, bias, pool, g):
    """conv (SAME) + bias -> ReLU -> max-pool, and the gradients of x, kernel and bias for the
    output gradient g, in float64 numpy: a window's gradient goes to its first maximum (row-major),
    and only where ReLU is on (ReLU'(0) = 0), as XLA's reduce_window gradient routes it."""
    kernel, bias, g = (np.asarray(a, np.float64) for a in (kernel, bias, g))
    (B, H, W, _), (k, c_out), pad = x.shape, (kernel.shape[0], kernel.shape[3]), kernel.shape[0] // 2
    xp, z = numpy_conv(x, kernel)
    z = z + bias
    taps = [(ti, tj) for ti in range(k) for tj in range(k)]
    ho, wo = H // pool, W // pool

    def windows(a):  # (B, H, W, O) -> (B, ho, wo, O, pool^2), positions row-major
        return a[:, : ho * pool, : wo * pool].reshape(B, ho, pool, wo, pool, -1).transpose(0, 1, 3, 5, 2, 4).reshape(
            B, ho, wo, -1, pool * pool)

    relu = np.maximum(z, 0)
    y, first = windows(relu).max(-1), windows(relu).argmax(-1)  # argmax: the first maximum
    routed = (np.arange(pool * pool) == first[..., None]) * (y > 0)[..., None] * g[..., None]
    g_pre = np.zeros_like(z)
    g_pre[:, : ho * pool, : wo * pool] = routed.reshape(B, ho, wo, c_out, pool, pool).transpose(
        0, 1, 4, 2, 5, 3).reshape(B, ho * pool, wo * pool, c_out)
    d_kernel = np.stack([np.einsum("bhwc,bhwo->co", xp[:, ti : ti + H, tj : tj + W], g_pre) for ti, tj in taps])
    d_xp = np.zeros_like(xp)
    for ti, tj in taps:
        d_xp[:, ti : ti + H, tj : tj + W] += np.einsum("bhwo,co->bhwc", g_pre, kernel[ti, tj])
    d_x = d_xp[:, pad : pad + H, pad : pad + W]
    return y, (d_x, d_kernel.reshape(kernel.shape), g_pre.sum(axis=(0, 1, 2)))


def integer_case(shape, c_out, pool, seed):
    """Small integers: every sum is exact in float32, so the two computations must agree bit for
    bit, and the windows are full of tied maxima (constant blocks, repeated values)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float32)
    x[0, : 2 * pool, : 2 * pool] = 2.0  # a constant block: identical pre-activations in whole windows
    kernel = rng.integers(-2, 3, (3, 3, shape[-1], c_out)).astype(np.float32)
    bias = rng.integers(-3, 4, (c_out,)).astype(np.float32)  # some channels off everywhere, some on
    return jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(bias)


@pytest.mark.parametrize("shape, c_out, pool", [((3, 10, 11, 1), 16, 3), ((2, 8, 8, 3), 5, 2), ((2, 9, 9, 2), 4, 3)])
def test_values_and_all_gradients_are_the_three_operations_ties_included(shape, c_out, pool):
    """Bit for bit against numpy (exact sums of small integers in any order, on any backend), and
    on the CPU against XLA's convolution and reduce_window."""
    x, kernel, bias = integer_case(shape, c_out, pool, seed=sum(shape))
    y, vjp = jax.vjp(jax.jit(lambda *a: conv_relu_pool(*a, pool)), x, kernel, bias)
    assert y.shape == (shape[0], shape[1] // pool, shape[2] // pool, c_out)
    g = jnp.asarray(np.random.default_rng(1).integers(-3, 4, y.shape).astype(np.float32))
    grads = vjp(g)
    y_np, grads_np = numpy_reference(x, kernel, bias, pool, g)
    np.testing.assert_array_equal(y, y_np)
    for name, got, ref in zip(("image", "kernel", "bias"), grads, grads_np, strict=True):
        np.testing.assert_array_equal(got, ref, err_msg=name)
    pre = numpy_conv(x, kernel)[1]  # exact: on a GPU, cuDNN's convolution could round ties apart
    h, w = shape[1] // pool * pool, shape[2] // pool * pool
    win = pre[:, :h, :w].reshape(shape[0], h // pool, pool, w // pool, pool, c_out)
    windows_with_ties = int(  # windows whose maximum is not unique: the case has them
        ((win == win.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4)) > 1).sum())
    assert windows_with_ties > 10
    if jax.default_backend() == "cpu":  # XLA:CPU's convolution is exact on small integers; cuDNN's
        # algorithms (Winograd) need not be, and then its ties are not these ties
        y_ref, vjp_ref = jax.vjp(lambda *a: three_ops(*a, pool), x, kernel, bias)
        np.testing.assert_array_equal(y, y_ref)
        for name, got, ref in zip(("image", "kernel", "bias"), grads, vjp_ref(g), strict=True):
            assert got.shape == ref.shape and got.dtype == ref.dtype, name
            np.testing.assert_array_equal(got, ref, err_msg=name)  # the first maximum gets it, as XLA's pool gradient


def test_float_data_agrees_to_rounding_and_dropped_rows_get_no_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((4, 14, 14, 1), np.float32))
    kernel = jnp.asarray(0.5 * rng.standard_normal((3, 3, 1, 8)).astype(np.float32))
    bias = jnp.asarray(0.1 * rng.standard_normal(8).astype(np.float32))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a, 3)))  # noqa: E731
    got = jax.jit(jax.grad(loss(conv_relu_pool), argnums=(0, 1, 2)))(x, kernel, bias)
    ref = jax.grad(loss(three_ops), argnums=(0, 1, 2))(x, kernel, bias)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    # 14 = 4 x 3 + 2: the pool keeps convolution rows 0-11, whose taps reach image row 12; row 13
    # feeds only the rows it drops (and so for columns)
    assert float(jnp.abs(got[0][:, 12]).max()) > 0 and got[0][:, 13:].size > 0
    np.testing.assert_array_equal(got[0][:, 13:], 0.0)
    np.testing.assert_array_equal(got[0][:, :, 13:], 0.0)


def test_under_vmap_each_repeat_is_its_own_layer():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.random((3, 5, 12, 12, 1), np.float32))  # (R, B, H, W, C)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 1, 6)).astype(np.float32))
    bias = jnp.asarray(0.1 * rng.standard_normal((3, 6)).astype(np.float32))
    grad = jax.grad(lambda k, b, x: jnp.sum(jnp.tanh(conv_relu_pool(x, k, b, 3))), argnums=(0, 1))
    batched = jax.jit(jax.vmap(grad))(kernel, bias, x)
    for r in range(3):
        for a, b in zip(batched, jax.jit(grad)(kernel[r], bias[r], x[r]), strict=True):
            np.testing.assert_allclose(a[r], b, rtol=1e-5, atol=1e-6)


def test_the_module_has_nn_conv_params_and_computes_in_bfloat16():
    x = jnp.asarray(np.random.default_rng(4).random((2, 9, 9, 1), np.float32))
    params = jax.jit(FusedConvPool(7).init)(jax.random.key(0), x)["params"]
    assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 3, 1, 7), "bias": (7,)}
    full = jax.jit(FusedConvPool(7).apply)({"params": params}, x)
    low = jax.jit(FusedConvPool(7, dtype="bfloat16").apply)({"params": params}, x.astype(jnp.bfloat16))
    assert full.dtype == jnp.float32 and low.dtype == jnp.bfloat16 and low.shape == full.shape == (2, 3, 3, 7)
    err = float(jnp.abs(low.astype(jnp.float32) - full).max() / jnp.abs(full).max())
    assert 0 < err < 0.02  # bfloat16's relative step is 2^-8: inputs, kernel and output rounded, sums in float32
    low_module = FusedConvPool(7, dtype="bfloat16")

    def loss(p):
        return jnp.sum(low_module.apply({"params": p}, x.astype(jnp.bfloat16)).astype(jnp.float32))

    grads = jax.jit(jax.grad(loss))(params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(grads))  # the parameters stay float32


def test_a_kernel_or_pool_it_cannot_take_is_one_clear_error():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="odd square kernel"):
        conv_relu_pool(x, jnp.zeros((2, 2, 1, 4)), jnp.zeros(4), 2)
    with pytest.raises(ValueError, match="pool of 1 to 11"):
        conv_relu_pool(x, jnp.zeros((3, 3, 1, 4)), jnp.zeros(4), 12)


@pytest.mark.parametrize("conv_impl", ["lax", "im2col", "fused", "fused-im2col"])
def test_the_repeats_training_gradient_has_no_select_and_scatter_and_fused_im2col_no_convolution(conv_impl):
    """What the lowerings are for, in the lowered gradient of the CNN vmapped over repeats (as the
    task program runs it): only lax has the max-pool's select-and-scatter (no deterministic GPU
    kernel) and reduce_window; fused-im2col has no convolution at all (the repeats' later layers
    are batched matmuls, not the grouped convolution vmap makes of nn.Conv)."""
    from cljax.models.cnn import CNN

    model = CNN(out_dim=1, conv_impl=conv_impl)
    images = jnp.zeros((2, 8, 28, 28), jnp.uint8)  # (R, B, H, W)
    # shapes only: the lowering reads the arguments' shapes and dtypes, not their values
    params = jax.eval_shape(jax.vmap(lambda key: model.init(key, images[0])["params"]),
                            jax.random.split(jax.random.key(0), 2))

    def loss(p, x):
        return model.apply({"params": p}, x)[0].sum()

    text = jax.jit(jax.vmap(jax.grad(loss))).lower(params, images).as_text()
    assert ("select_and_scatter" in text) == ("reduce_window" in text) == (conv_impl == "lax")
    convolutions = text.count("stablehlo.convolution")
    assert (convolutions == 0) == (conv_impl in ("im2col", "fused-im2col")), convolutions
    if conv_impl == "fused":
        assert "feature_group_count = 2" in text  # nn.Conv's kernel batched over R = 2: a grouped convolution


def test_bfloat16_products_are_summed_in_float32():
    """In bfloat16 the layer rounds once, at its output: its value is the exact result on the
    (rounded) bfloat16 inputs to within one bfloat16 step, with 16 input channels (144 products
    per output), where sums kept in bfloat16 would drift by several steps."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.random((2, 9, 9, 16), np.float32)).astype(jnp.bfloat16)
    kernel = jnp.asarray(0.25 * rng.standard_normal((3, 3, 16, 8)).astype(np.float32)).astype(jnp.bfloat16)
    bias = jnp.asarray(0.1 * rng.standard_normal(8).astype(np.float32)).astype(jnp.bfloat16)
    low = jax.jit(lambda *a: conv_relu_pool(*a, 3))(x, kernel, bias)
    assert low.dtype == jnp.bfloat16 and low.shape == (2, 3, 3, 8)
    exact, _ = numpy_reference(np.asarray(x.astype(jnp.float32)), kernel.astype(jnp.float32),
                               bias.astype(jnp.float32), 3, np.zeros((2, 3, 3, 8), np.float32))
    assert (exact > 0.5).mean() > 0.3  # most outputs on, of some size
    err = np.abs(np.asarray(low.astype(jnp.float32), np.float64) - exact)
    assert (err <= 2.0 ** -7 * np.abs(exact) + 1e-6).all(), float((err / np.maximum(np.abs(exact), 1e-3)).max())
