"""A small residual network with BatchNorm.

Its ``batch_stats`` are a mutable collection: train it through :func:`cljax.models.make_net`,
which carries them next to the params (batch statistics with ``train=True``, running averages
with ``train=False``).

``conv_impl`` picks how the network is computed, not what it computes (as the CNN's): ``lax``
runs ``nn.Conv`` on (B, H, W, C) activations; ``im2col`` (and ``fused-im2col``: the ResNet has
no fused first layer) runs every convolution as :class:`~cljax.models.im2col.PatchConv`, a
matmul, on channel-major (C, H, W, B) activations, with BatchNorm over axis 0. XLA:CPU runs the
gradients of its own convolutions inside the task loop many times slower than those matmuls
(docs/benchmark.md). Both build the same parameters and statistics, named and shaped alike, and
agree up to float rounding (tests/test_resnet_im2col.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import flax.linen as nn

from cljax.models import CLASSIFIER_GROUP, ModelContext, as_float_images, register_model
from cljax.models.im2col import PatchConv, channel_major_images
from cljax.registry import param

BN_MOMENTUM = 0.9
CHANNEL_MAJOR_IMPLS = ("im2col", "fused-im2col")  # conv_impl values that run the im2col lowering


@dataclass(frozen=True)
class ResNetParams:
    width: int = param(16, "channels of the ResNet's first stage; each later stage doubles them", min=1)
    blocks: int = param(2, "residual blocks per stage of the ResNet", min=1, max=1000)
    hidden: int = param(64, "width of the ResNet's representation layer (after the pool)", min=1)
    bn_eval_images: int = param(256, "evaluate every snapshot with BatchNorm statistics recomputed from the snapshot's "
                                "weights on this many of the task's training images (precise BatchNorm); 0: with the "
                                "running averages, which lag the weights (docs/metrics.md)", min=0, absent=0)


def conv_bn(features: int, k: int, strides: int, channel_major: bool, dtype: str, conv_name: str, bn_name: str,
            train: bool, mask, momentum: float = BN_MOMENTUM):
    """The k x k SAME convolution without bias (BatchNorm's bias replaces it), then BatchNorm:
    a function of the activation, in either layout. Called inside a compact module, so the layers
    are that module's ``conv_name`` and ``bn_name``."""
    if channel_major:
        patch_conv = PatchConv(features, k, strides=strides, use_bias=False, dtype=dtype, name=conv_name)
        conv = lambda x: patch_conv(x)[0]  # noqa: E731
    else:  # 1 x 1 VALID is 1 x 1 SAME
        conv = nn.Conv(features, (k, k), strides=strides, padding="SAME" if k > 1 else "VALID", use_bias=False,
                       dtype=dtype, name=conv_name)
    bn = nn.BatchNorm(use_running_average=not train, momentum=momentum, axis=0 if channel_major else -1,
                      dtype=dtype, name=bn_name)
    return lambda x: bn(conv(x), mask=mask)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU. With ``strides > 1`` or a change of
    width the input goes through a strided 1 x 1 projection + BN first. ``channel_major``: the
    activation is (C, H, W, B) and ``mask`` broadcasts to it (im2col), else (B, H, W, C)."""

    features: int
    strides: int = 1
    dtype: str = "float32"  # compute dtype (parameters and BatchNorm statistics stay float32)
    channel_major: bool = False
    bn_momentum: float = BN_MOMENTUM

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        layer = partial(conv_bn, self.features, channel_major=self.channel_major, dtype=self.dtype, train=train,
                        mask=mask, momentum=self.bn_momentum)
        y = nn.relu(layer(3, self.strides, conv_name="conv1", bn_name="bn1")(x))
        y = layer(3, 1, conv_name="conv2", bn_name="bn2")(y)
        if self.strides != 1 or x.shape[0 if self.channel_major else -1] != self.features:
            x = layer(1, self.strides, conv_name="proj", bn_name="proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU at ``width``; three stages of ``blocks`` basic blocks at width,
    2 x width, 4 x width, the later two starting with a stride-2 block (28 -> 28 -> 14 -> 7);
    global average pool; Dense ``hidden`` + ReLU (the representation); head.

    ``bn_eval_images`` > 0: evaluation uses BatchNorm statistics recomputed on that many training
    images (``cljax.models.make_net``'s ``eval_state``, through a clone with ``bn_momentum`` 0)."""

    out_dim: int = 1
    width: int = 16
    blocks: int = 2
    stages: int = 3
    hidden: int = 64
    dtype: str = "float32"  # compute dtype (parameters and BatchNorm statistics stay float32)
    conv_impl: str = "lax"
    bn_momentum: float = BN_MOMENTUM  # running average = momentum x old + (1 - momentum) x batch
    bn_eval_images: int = 0

    @nn.compact
    def __call__(self, images, train: bool = False, mask=None):
        """``mask`` (B,): the examples BatchNorm's batch statistics count in training (all when None)."""
        channel_major = self.conv_impl in CHANNEL_MAJOR_IMPLS
        if mask is not None:  # broadcast over the other axes
            mask = mask[None, None, None, :] if channel_major else mask[:, None, None, None]
        x = channel_major_images(images, self.dtype) if channel_major else as_float_images(images, self.dtype)
        x = nn.relu(conv_bn(self.width, 3, 1, channel_major, self.dtype, "stem", "stem_bn", train, mask,
                            self.bn_momentum)(x))
        for s in range(self.stages):
            for b in range(self.blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = BasicBlock(self.width * 2**s, strides, self.dtype, channel_major, self.bn_momentum,
                               name=f"stage{s + 1}_block{b + 1}")(x, train, mask)
        x = x.mean(axis=(1, 2)).T if channel_major else x.mean(axis=(1, 2))  # (B, C)
        hidden = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense")(x))
        logits = nn.Dense(self.out_dim, dtype=self.dtype, name=CLASSIFIER_GROUP)(hidden)
        return logits, hidden


def _compile_host_bytes(params: ResNetParams) -> int:
    """Host memory that compiling the ResNet's task programs takes beyond the CNN's (the base
    allowance of cljax/budget.py): it grows with the blocks, as the programs do (docs/scale.md)."""
    return (600 + 170 * params.blocks) * 2**20


@register_model("resnet", params=ResNetParams, prefix="resnet", compile_host_bytes=_compile_host_bytes)
def build_resnet(params: ResNetParams, ctx: ModelContext) -> ResNet:
    """A small ResNet with BatchNorm (three stages of basic blocks)."""
    return ResNet(out_dim=ctx.out_dim, width=params.width, blocks=params.blocks, hidden=params.hidden,
                  dtype=ctx.compute_dtype, conv_impl=ctx.conv_impl, bn_eval_images=params.bn_eval_images)
