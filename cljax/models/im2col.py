"""The CNN's convolutions lowered for XLA:CPU: im2col matmuls on a channel-major activation.

XLA:CPU runs ``lax.conv`` (grouped, under the repeat vmap) far slower than a matmul, and its
generic gradient of a max-pool makes several passes over the largest activation. Here a 3 x 3
SAME convolution is ``kernel^T @ patches`` on a (C, H, W, B) activation, with the batch as the
minor axis, a disjoint max-pool is a reshape and a max, and both carry hand-written gradients
in layouts XLA:CPU hands to its fast matmul library. The numbers are those of the plain network
(``nn.Conv`` -> ReLU -> ``nn.max_pool``) up to float rounding; tests/test_models.py checks
values and gradients, ties included. Measurements are in docs/benchmark.md.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cljax.models import as_float_images


@jax.custom_vjp
def kernel_matmul(kernel_KF, patches_KM):
    """kernel^T @ patches, (F, M): a convolution as one matmul over channel-major patches.

    The same numbers as ``kernel.T @ patches``; only the lowering differs. Every dot of the
    forward and backward pass is written in a layout XLA:CPU hands to its fast matmul library
    (YNNPACK: row-major operands, the left one contracted on its last axis): the kernel's
    transpose is materialized (it is tiny) rather than folded into the dot, the patches'
    gradient is kernel @ g and the kernel's gradient contracts the patches and g on their
    common last axis, so the large activation is never transposed (docs/benchmark.md)."""
    return lax.optimization_barrier(kernel_KF.T) @ patches_KM


def _kernel_matmul_fwd(kernel_KF, patches_KM):
    return kernel_matmul(kernel_KF, patches_KM), (kernel_KF, patches_KM)


def _kernel_matmul_bwd(residuals, g_FM):
    kernel_KF, patches_KM = residuals
    d_kernel = lax.dot_general(patches_KM, g_FM, (((1,), (1,)), ((), ())))
    return d_kernel, kernel_KF @ g_FM


kernel_matmul.defvjp(_kernel_matmul_fwd, _kernel_matmul_bwd)


class PatchConv(nn.Module):
    """A k x k SAME convolution on a channel-major (C, H, W, B) activation, written as
    kernel^T @ patches (im2col); returns the convolution without its bias, and the bias.

    Same parameters as ``nn.Conv`` (kernel (k, k, C_in, C_out), bias). The batch is the minor
    axis, so the shifts that build the patches, the pool and its gradient move whole vectors of
    images, and every matmul is a plain row-major one (``kernel_matmul``): faster training on
    the CPU than the (B, H, W, C) layout, which was itself faster than the (grouped, under vmap)
    convolution ``lax.conv`` lowers to (docs/benchmark.md). With ``crop > 1`` only the rows and
    columns a following disjoint pool of that size reads are computed (H // crop * crop of them).
    ``strides`` > 1 is ``nn.Conv(strides=...)`` with SAME padding as XLA pads it (the ResNet's
    downsampling convolutions); ``use_bias=False`` makes no bias parameter and returns None for it.

    The caller pools and then adds the bias (``conv_pool_relu``): max(x + b) = max(x) + b
    (rounding is monotone), so the result is that of pooling the biased convolution, with the
    elementwise work on the pooled activation only. The pool stays outside the module, which is
    linear in its input, as ``nn.Conv`` is: a learning rule that swaps the kernel to send its
    error back (Bio's fixed random feedback, :mod:`cljax.rules.bio`) then routes that error
    through the forward pass's pool winners, in every lowering alike.
    """

    features: int
    kernel_size: int = 3
    crop: int = 1  # compute only the rows and columns a disjoint pool of this size keeps
    dtype: str = "float32"  # compute dtype: the kernel is cast to it (the parameters stay float32)
    strides: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x_CHWB):
        k, s, c_in, b = self.kernel_size, self.strides, x_CHWB.shape[0], x_CHWB.shape[3]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, c_in, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,)) if self.use_bias else None
        (h, top, bottom), (w, left, right) = (same_padding(n, k, s) for n in x_CHWB.shape[1:3])
        h, w = h // self.crop * self.crop, w // self.crop * self.crop  # rows/cols the pool keeps
        xp = jnp.pad(x_CHWB, ((0, 0), (top, bottom), (left, right), (0, 0)))
        # rows ordered (tap i, tap j, channel), as kernel.reshape(k * k * c_in, features); built
        # as k column shifts, then k row shifts of those: 2k slices instead of k^2
        shifted_cols = jnp.concatenate([xp[:, :, j : j + s * (w - 1) + 1 : s] for j in range(k)], axis=0)
        patches = jnp.concatenate([shifted_cols[:, i : i + s * (h - 1) + 1 : s] for i in range(k)], axis=0)
        kernel_KF = kernel.reshape(k * k * c_in, self.features).astype(self.dtype)
        out = kernel_matmul(kernel_KF, patches.reshape(k * k * c_in, h * w * b)).reshape(self.features, h, w, b)
        return out, None if bias is None else bias.astype(self.dtype)


def same_padding(size: int, k: int, s: int) -> tuple[int, int, int]:
    """(output size, padding before, padding after) of a k-tap, stride-s SAME convolution along
    an axis of ``size``, as XLA pads it: the output is ceil(size / s), and an odd total padding
    puts its extra row after the image."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def _pool_windows(x_CHWB, size: int):
    c, h, w, b = x_CHWB.shape
    ho, wo = h // size, w // size
    return x_CHWB[:, : ho * size, : wo * size].reshape(c, ho, size, wo, size, b)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_disjoint(x_CHWB, size: int):
    """Max-pool over axes 1 and 2 (H, W) of a 4-d array, window = stride = size, VALID: a
    reshape and a max, cheap under vmap.

    The gradient is JAX's own rule for a max (tied maxima share the output gradient equally),
    written as one mask: XLA lowers JAX's generic rule for ``reduce_max`` to several passes
    over the pre-pool activation, the largest in the network; this form trains faster on the
    CPU (docs/benchmark.md), with the same gradients (tests/test_models.py)."""
    return _pool_windows(x_CHWB, size).max(axis=(2, 4))


def _max_pool_fwd(x_CHWB, size: int):
    y = max_pool_disjoint(x_CHWB, size)
    return y, (x_CHWB, y)


def _max_pool_bwd(size: int, residuals, g_ChwB):
    x_CHWB, y = residuals
    c, h, w, b = x_CHWB.shape
    at_max = jnp.where(_pool_windows(x_CHWB, size) == y[:, :, None, :, None, :], 1.0, 0.0).astype(g_ChwB.dtype)
    share = g_ChwB[:, :, None, :, None, :] / at_max.sum(axis=(2, 4), keepdims=True)
    dx = (at_max * share).reshape(c, y.shape[1] * size, y.shape[2] * size, b)
    dx = jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0)))  # rows/cols the pool drops
    return (dx,)


max_pool_disjoint.defvjp(_max_pool_fwd, _max_pool_bwd)


def im2col_conv_stack(images, channels: tuple[int, ...], pool: int = 3, on_layer=None, dtype="float32"):
    """The CNN's whole convolution stack in this lowering: uint8 images (B, H, W) or
    (B, H, W, C) -> (B, channels[-1]) features.

    ``PatchConv(ch, crop=pool, dtype=dtype, name=f"conv{i + 1}")``, the disjoint max-pool and ReLU
    per layer, then the spatial mean;
    ``on_layer(name, x_CHWB)``, when given, sees each layer's output (after pool and ReLU).
    Called inside a compact module, so the convolutions are that module's ``conv1``, ``conv2``,
    ... with ``nn.Conv``'s parameters. The images are transposed once, still as uint8, to the
    channel-major (C, H, W, B) layout; the ReLU runs after the pool (max-pool commutes with the
    monotone ReLU), on the pooled activation only."""
    x = channel_major_images(images, dtype)
    for i, ch in enumerate(channels):
        with jax.named_scope(f"conv{i + 1}"):  # names in the compiled program (benchmarks/profile_task.py)
            x = conv_pool_relu(PatchConv(ch, crop=pool, dtype=dtype, name=f"conv{i + 1}"), x, pool)
        if on_layer is not None:
            on_layer(f"conv{i + 1}", x)
    return x.mean(axis=(1, 2)).T  # (B, C)


def channel_major_images(images, dtype="float32"):
    """uint8 images (B, H, W) or (B, H, W, C) -> floats in [0, 1] of ``dtype``, (C, H, W, B):
    transposed while still one byte per pixel."""
    x = jnp.transpose(images, (1, 2, 0))[None] if images.ndim == 3 else jnp.transpose(images, (3, 1, 2, 0))
    return as_float_images(x, dtype)


def conv_pool_relu(conv: PatchConv, x_CHWB, pool: int):
    """``conv``, the disjoint max-pool (named ``pool`` in the compiled program), the bias, then
    ReLU on the pooled activation (the pool commutes with the monotone ReLU)."""
    x, bias = conv(x_CHWB)
    if pool > 1:
        with jax.named_scope("pool"):
            x = max_pool_disjoint(x, pool)
    return nn.relu(x + bias[:, None, None, None])
