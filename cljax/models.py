"""Networks behind one registry: name -> factory(config) -> Flax module.

Contract: ``module.apply({"params": p}, images_BHW_uint8)`` returns ``(logits_BxO, hidden_BxH)``,
where ``hidden`` is the representation saved in snapshots. Images arrive as uint8 and are
converted to float inside the network, so data stays 1 byte per pixel on the device.
Top-level parameter collections named ``head`` form the classifier group; all others are
feature layers (for the per-group learning rates).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

MODELS: dict[str, Callable] = {}
CLASSIFIER_GROUP = "head"


def register_model(name: str):
    def wrap(factory):
        MODELS[name] = factory
        return factory

    return wrap


@jax.custom_vjp
def matmul_pg(patches_MK, kernel_KF):
    """patches @ kernel whose kernel gradient is computed as patches^T @ g.

    The same numbers as ``@``; only the lowering differs. XLA otherwise transposes the large
    output gradient (first layer: (B*27*27, 16)) before the weight-gradient dot; this form reads
    it in place: 1.1-1.2x faster training at R = 32 on the CPU for the first layer, another
    1.05x for the other two (docs/benchmark.md)."""
    return patches_MK @ kernel_KF


def _matmul_pg_fwd(patches_MK, kernel_KF):
    return patches_MK @ kernel_KF, (patches_MK, kernel_KF)


def _matmul_pg_bwd(residuals, g_MF):
    patches_MK, kernel_KF = residuals
    d_kernel = lax.dot_general(patches_MK, g_MF, (((0,), (0,)), ((), ())))
    return g_MF @ kernel_KF.T, d_kernel


matmul_pg.defvjp(_matmul_pg_fwd, _matmul_pg_bwd)


class PatchConv(nn.Module):
    """A k x k SAME convolution written as patches @ kernel (im2col), optionally followed by a
    disjoint max-pool (window = stride = ``pool``, VALID).

    Same parameters as ``nn.Conv`` (kernel (k, k, C_in, C_out), bias). XLA runs the matmul
    2.5-7x faster on the CPU than the (grouped, under vmap) convolution ``lax.conv`` lowers to.
    With ``pool > 1`` only the outputs the pool keeps are computed, and the bias is added after
    the pool: max(x + b) = max(x) + b (rounding is monotone), so the result is the same as
    pooling the biased convolution, with 9x less elementwise work on the largest activation.
    """

    features: int
    kernel_size: int = 3
    pool: int = 1

    @nn.compact
    def __call__(self, x_BHWC):
        k, c_in = self.kernel_size, x_BHWC.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c_in, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        h, w, pad = x_BHWC.shape[-3], x_BHWC.shape[-2], k // 2
        h, w = h // self.pool * self.pool, w // self.pool * self.pool  # rows/cols the pool keeps
        xp = jnp.pad(x_BHWC, ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
        patches = jnp.concatenate([xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)], axis=-1)
        kernel_KF = kernel.reshape(k * k * c_in, self.features)
        out = matmul_pg(patches.reshape(-1, k * k * c_in), kernel_KF).reshape(*patches.shape[:-1], self.features)
        if self.pool > 1:
            out = max_pool_disjoint(out, self.pool)
        return out + bias


def _pool_windows(x_BHWC, size: int):
    b, h, w, c = x_BHWC.shape
    ho, wo = h // size, w // size
    return x_BHWC[:, : ho * size, : wo * size].reshape(b, ho, size, wo, size, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_disjoint(x_BHWC, size: int):
    """Max-pool with window = stride = size, VALID: a reshape and a max, cheap under vmap.

    The gradient is JAX's own rule for a max (tied maxima share the output gradient equally),
    written as one mask: XLA lowers JAX's generic rule for ``reduce_max`` to several passes
    over the pre-pool activation, the largest in the network; this form is 1.16x faster
    training at R = 4-32 on the CPU (docs/benchmark.md), with the same gradients
    (tests/test_models.py)."""
    return _pool_windows(x_BHWC, size).max(axis=(2, 4))


def _max_pool_fwd(x_BHWC, size: int):
    y = max_pool_disjoint(x_BHWC, size)
    return y, (x_BHWC, y)


def _max_pool_bwd(size: int, residuals, g_BhwC):
    x_BHWC, y = residuals
    b, h, w, c = x_BHWC.shape
    at_max = jnp.where(_pool_windows(x_BHWC, size) == y[:, :, None, :, None, :], 1.0, 0.0).astype(g_BhwC.dtype)
    share = g_BhwC[:, :, None, :, None, :] / at_max.sum(axis=(2, 4), keepdims=True)
    dx = (at_max * share).reshape(b, y.shape[1] * size, y.shape[2] * size, c)
    dx = jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0)))  # rows/cols the pool drops
    return (dx,)


max_pool_disjoint.defvjp(_max_pool_fwd, _max_pool_bwd)


class CNN(nn.Module):
    """The spec's 3 conv + 2 MLP network: conv 16/32/64 (3x3 SAME, ReLU, max-pool 3x3 stride 3:
    28 -> 9 -> 3 -> 1), global average pool, Dense 64 + ReLU twice (the representation), head."""

    out_dim: int = 1
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 64

    @nn.compact
    def __call__(self, images_BHW):
        x = images_BHW.astype(jnp.float32)[..., None] * (1.0 / 255.0)
        for i, ch in enumerate(self.channels):
            # max-pool commutes with the (monotone) ReLU: pooling first, inside the conv, gives the
            # same activations as relu -> pool and runs the ReLU on 9x fewer values.
            x = nn.relu(PatchConv(ch, pool=3, name=f"conv{i + 1}")(x))
        x = x.mean(axis=(-3, -2))
        x = nn.relu(nn.Dense(self.hidden, name="dense1")(x))
        hidden = nn.relu(nn.Dense(self.hidden, name="dense2")(x))
        logits = nn.Dense(self.out_dim, name=CLASSIFIER_GROUP)(hidden)
        return logits, hidden


@register_model("cnn")
def make_cnn(config) -> nn.Module:
    return CNN(out_dim=config.out_dim)


def make_model(config) -> nn.Module:
    return MODELS[config.model](config)
