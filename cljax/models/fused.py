"""The CNN's first layer as one elementwise computation: convolution, ReLU and max-pool together.

The first convolution reads one small image and writes the network's largest activation
(H x W x 16 floats per image), which the pool at once cuts by its window's area. Written as
three operations, that activation crosses memory several times per training step: the
convolution writes it, ReLU and the pool read it, and the gradients of the pool, of ReLU and
of the kernel read or write it again. Here each pooled output is computed from the pixels under
its window: for each position of the pool window the k x k taps are multiplied out, the largest
is kept, and the bias and ReLU come after the max (max(z + b) = max(z) + b, and ReLU is
monotone, so the value is that of the three operations up to the order of the sums). Only the
pooled activation is written, with the int8 position of each window's maximum for the gradient.

The gradient follows the plain network's rules: the output gradient goes to the first maximum
of its window (as XLA's max-pool gradient), and nowhere where ReLU is off (ReLU'(0) = 0). The
kernel's gradient is one matmul of the distinct shifted views of the image against that routed
gradient; the image's gradient (zero work when, as in the CNN, the image is data) comes from
the transpose of the same views. tests/test_fused.py checks values and gradients against XLA's
convolution and reduce_window, ties included, and tests/test_models.py the whole CNN.

The later layers are, in ``--conv-impl fused``, XLA's convolution with the disjoint pool of
:mod:`cljax.models.im2col` (a reshape and a max with an elementwise gradient) and, in
``fused-im2col``, that module's patch matmuls. Either way the network has no select-and-scatter:
the pool gradient XLA documents as having no deterministic GPU kernel.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cljax.models import as_float_images
from cljax.models.im2col import PatchConv, conv_pool_relu, max_pool_disjoint

__all__ = ["FusedConvPool", "conv_relu_pool", "fused_conv_stack"]


def _tap_offsets(k: int, pool: int) -> np.ndarray:
    """(pool^2, k^2) ints: the view (:func:`_views`) tap t reads at window position q, the one at
    row offset q_i + t_i and column offset q_j + t_j. For a fixed q, distinct taps read
    distinct views."""
    n = pool + k - 1
    return np.array([[(q // pool + t // k) * n + q % pool + t % k for t in range(k * k)]
                     for q in range(pool * pool)])


def _views(x_BHWC, k: int, pool: int):
    """The image's (pool + k - 1)^2 distinct shifted views, each (B, H // pool, W // pool, C):
    view (di, dj) holds the padded image's pixels (pool * i + di, pool * j + dj), the pixel
    tap (ti, tj) reads at position (qi, qj) of the window of pooled output (i, j), for
    di = qi + ti and dj = qj + tj. SAME padding, as ``nn.Conv``."""
    ho, wo, pad, n = x_BHWC.shape[1] // pool, x_BHWC.shape[2] // pool, k // 2, pool + k - 1
    xp = jnp.pad(x_BHWC, ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
    return [xp[:, di : di + pool * (ho - 1) + 1 : pool, dj : dj + pool * (wo - 1) + 1 : pool]
            for di in range(n) for dj in range(n)]


def _forward(x_BHWC, kernel, bias, pool: int):
    k, c_in = kernel.shape[0], kernel.shape[2]
    if not (kernel.shape[0] == kernel.shape[1] and k % 2 == 1 and 1 <= pool <= 11):
        raise ValueError(f"conv_relu_pool needs an odd square kernel and a pool of 1 to 11 (its window position is "
                         f"an int8), not kernel {kernel.shape[:2]}, pool {pool}")
    acc = jnp.promote_types(x_BHWC.dtype, jnp.float32)  # bfloat16 products summed in float32, as a convolution's
    views, n = [v.astype(acc) for v in _views(x_BHWC, k, pool)], pool + k - 1
    kernel = kernel.astype(acc)
    best = arg = None
    for q in range(pool * pool):
        qi, qj = divmod(q, pool)
        z = None
        for t in range(k * k):
            ti, tj = divmod(t, k)
            view = views[(qi + ti) * n + qj + tj]
            for c in range(c_in):
                term = view[..., c : c + 1] * kernel[ti, tj, c]
                z = term if z is None else z + term
        if best is None:
            best, arg = z, jnp.zeros(z.shape, jnp.int8)
        else:  # strictly greater: the first maximum wins ties
            better = z > best
            best, arg = jnp.where(better, z, best), jnp.where(better, jnp.int8(q), arg)
    y = best + bias.astype(acc)
    out = jnp.maximum(y, 0).astype(x_BHWC.dtype)
    return out, jnp.where(y > 0, arg, jnp.int8(pool * pool))  # pool^2: ReLU off, no gradient


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_relu_pool(x_BHWC, kernel, bias, pool: int):
    """max-pool(ReLU(conv(x, kernel) + bias)): a k x k SAME convolution, then a disjoint max-pool
    (window = stride = ``pool``, VALID), (B, H, W, C_in) -> (B, H // pool, W // pool, C_out)."""
    return _forward(x_BHWC, kernel, bias, pool)[0]


def _conv_relu_pool_fwd(x_BHWC, kernel, bias, pool: int):
    y, arg = _forward(x_BHWC, kernel, bias, pool)
    return y, (x_BHWC, kernel, arg)


def _conv_relu_pool_bwd(pool: int, residuals, g):
    x_BHWC, kernel, arg = residuals
    k, c_in, c_out = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    n2, q2 = (pool + k - 1) ** 2, pool * pool
    stack_views = lambda x: jnp.stack(_views(x, k, pool), axis=3)  # noqa: E731  (B, h, w, n^2, C_in)
    stacked, views_transpose = jax.vjp(stack_views, x_BHWC)
    # the output gradient at each window position that holds the window's first maximum
    routed = (arg[..., None] == jnp.arange(q2, dtype=jnp.int8)).astype(g.dtype) * g[..., None]  # (B, h, w, C_out, q)
    rows = stacked.shape[0] * stacked.shape[1] * stacked.shape[2]
    routed_M = routed.reshape(rows, c_out * q2)
    # the convolution's two gradient matmuls (under the matmul precision, as XLA's own); the taps
    # are picked out of them by indexing, not by a one-hot matmul that the precision would round
    offsets, window = _tap_offsets(k, pool), np.arange(q2)[:, None]  # (q^2, k^2), (q^2, 1)
    by_offset = (stacked.reshape(rows, n2 * c_in).T @ routed_M).reshape(n2, c_in, c_out, q2)
    d_kernel = jnp.moveaxis(by_offset, 3, 1)[offsets, window].sum(axis=0).reshape(kernel.shape)
    d_bias = routed.sum(axis=(0, 1, 2, 4))
    taps = jnp.broadcast_to(kernel.reshape(1, k * k, c_in, c_out), (q2, k * k, c_in, c_out))
    kernel_at_offset = jnp.zeros((n2, q2, c_in, c_out), kernel.dtype).at[offsets, window].set(taps)
    d_stacked = routed_M @ jnp.transpose(kernel_at_offset, (3, 1, 0, 2)).reshape(c_out * q2, n2 * c_in)
    return views_transpose(d_stacked.reshape(stacked.shape))[0], d_kernel, d_bias


conv_relu_pool.defvjp(_conv_relu_pool_fwd, _conv_relu_pool_bwd)


class FusedConvPool(nn.Module):
    """A k x k SAME convolution, ReLU and a disjoint max-pool (window = stride = ``pool``) as
    :func:`conv_relu_pool`, on a (B, H, W, C) activation. Same parameters as ``nn.Conv``
    (kernel (k, k, C_in, C_out), bias), cast to the compute dtype."""

    features: int
    kernel_size: int = 3
    pool: int = 3
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BHWC):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x_BHWC.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_relu_pool(x_BHWC, kernel.astype(self.dtype), bias.astype(self.dtype), self.pool)


def fused_conv_stack(images, channels: tuple[int, ...], pool: int = 3, on_layer=None, dtype="float32",
                     later: str = "lax"):
    """The CNN's convolution stack in this lowering: uint8 images (B, H, W) or (B, H, W, C) ->
    (B, channels[-1]) features. ``conv1`` is :class:`FusedConvPool`; the others, by ``later``:
    ``lax``, ``nn.Conv`` -> disjoint max-pool -> ReLU (the pool commutes with the monotone ReLU);
    ``im2col``, :class:`~cljax.models.im2col.PatchConv` (a batched matmul where XLA's batching of
    ``nn.Conv`` over the repeats makes a grouped convolution) -> ReLU, in the channel-major
    (C, H, W, B) layout, one transpose after conv1. ``on_layer(name, means_BC)``, when given,
    sees each layer's output averaged over space. Called inside a compact module, so the layers
    are that module's ``conv1``, ``conv2``, ... with ``nn.Conv``'s parameters."""
    if later not in ("lax", "im2col"):
        raise ValueError(f"later must be lax or im2col, not {later!r}")
    x = as_float_images(images, dtype)
    for i, ch in enumerate(channels):
        with jax.named_scope(f"conv{i + 1}"):  # names in the compiled program (benchmarks/profile_task.py)
            if i == 0:
                x = FusedConvPool(ch, pool=pool, dtype=dtype, name="conv1")(x)
                if later == "im2col":
                    x = jnp.transpose(x, (3, 1, 2, 0))
            elif later == "im2col":
                x = conv_pool_relu(PatchConv(ch, crop=pool, dtype=dtype, name=f"conv{i + 1}"), x, pool)
            else:
                x = nn.Conv(ch, (3, 3), padding="SAME", dtype=dtype, name=f"conv{i + 1}")(x)
                with jax.named_scope("pool"):
                    x = nn.relu(max_pool_disjoint(x, pool))
        if on_layer is not None:
            on_layer(f"conv{i + 1}", _channel_means(x, later))
    return _channel_means(x, later)


def _channel_means(x, later: str):
    """(B, C): the spatial mean of a (B, H, W, C) activation, or of a (C, H, W, B) one after an
    ``im2col`` layer."""
    return x.mean(axis=(1, 2)).T if later == "im2col" else x.mean(axis=(1, 2))
