"""im2col's PatchConv against flax's nn.Conv with SAME padding, odd and even kernels: the even
ones pad one more row and column after the image than before it, as XLA's SAME does."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.models.im2col import PatchConv


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_patch_conv_is_flax_same_convolution(k):
    x_BHWC = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))
    conv = PatchConv(features=5, kernel_size=k)
    params = conv.init(jax.random.key(0), jnp.transpose(x_BHWC, (3, 1, 2, 0)))
    params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
    out_FHWB, bias = conv.apply(params, jnp.transpose(x_BHWC, (3, 1, 2, 0)))
    got = jnp.transpose(out_FHWB, (3, 1, 2, 0)) + bias
    ref = nn.Conv(5, (k, k), padding="SAME").apply(params, x_BHWC)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
