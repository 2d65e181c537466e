"""im2col's PatchConv against flax's nn.Conv with SAME padding, odd and even kernels, strides 1
and 2 on odd and even sides: XLA's SAME puts an odd padding's extra row and column after the
image, and a stride-s output has ceil(side / s) rows."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.models.im2col import PatchConv, same_padding


@pytest.mark.parametrize("k, strides", [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (3, 2), (3, 3)])
@pytest.mark.parametrize("h, w", [(7, 6), (6, 7), (28, 28)])
def test_patch_conv_is_flax_same_convolution(k, strides, h, w):
    x_BHWC = jax.random.normal(jax.random.key(1), (2, h, w, 3))
    conv = PatchConv(features=5, kernel_size=k, strides=strides)
    params = conv.init(jax.random.key(0), jnp.transpose(x_BHWC, (3, 1, 2, 0)))
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    out_FHWB, bias = conv.apply(params, jnp.transpose(x_BHWC, (3, 1, 2, 0)))
    got = jnp.transpose(out_FHWB, (3, 1, 2, 0)) + bias
    ref = nn.Conv(5, (k, k), strides=strides, padding="SAME").apply(params, x_BHWC)
    assert got.shape == ref.shape == (2, -(-h // strides), -(-w // strides), 5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_without_bias_there_is_no_bias_parameter_and_the_gradient_is_nn_convs():
    """``use_bias=False`` (the ResNet's convolutions, BatchNorm's bias replaces it): the kernel
    alone, and the gradients to kernel and input of a strided convolution are ``nn.Conv``'s."""
    x_BHWC = jax.random.normal(jax.random.key(2), (3, 9, 9, 4))
    conv = PatchConv(features=6, kernel_size=3, strides=2, use_bias=False)
    params = conv.init(jax.random.key(0), jnp.transpose(x_BHWC, (3, 1, 2, 0)))
    assert jax.tree.map(jnp.shape, params) == {"params": {"kernel": (3, 3, 4, 6)}}
    probe = jax.random.normal(jax.random.key(3), (3, 5, 5, 6))

    def patch(p, x):
        out, bias = conv.apply(p, jnp.transpose(x, (3, 1, 2, 0)))
        assert bias is None
        return jnp.sum(jnp.transpose(out, (3, 1, 2, 0)) * probe)

    def plain(p, x):
        return jnp.sum(nn.Conv(6, (3, 3), strides=2, padding="SAME", use_bias=False).apply(p, x) * probe)

    for got, ref in zip(jax.grad(patch, argnums=(0, 1))(params, x_BHWC), jax.grad(plain, argnums=(0, 1))(params, x_BHWC)):
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, k, s, want", [(28, 3, 1, (28, 1, 1)), (28, 3, 2, (14, 0, 1)), (7, 3, 2, (4, 1, 1)),
                                              (6, 2, 1, (6, 0, 1)), (14, 1, 2, (7, 0, 0)), (5, 1, 3, (2, 0, 0))])
def test_same_padding_is_xlas(size, k, s, want):
    assert same_padding(size, k, s) == want
    pads = jax.lax.padtype_to_pads((size,), (k,), (s,), "SAME")[0]
    assert want[1:] == tuple(pads)
