"""A small residual network with BatchNorm.

Its ``batch_stats`` are a mutable collection: train it through :func:`cljax.models.make_net`,
which carries them next to the params (batch statistics with ``train=True``, running averages
with ``train=False``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import flax.linen as nn

from cljax.models import CLASSIFIER_GROUP, ModelContext, as_float_images, register_model
from cljax.registry import param

BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class ResNetParams:
    width: int = param(16, "channels of the ResNet's first stage; each later stage doubles them", min=1)
    blocks: int = param(2, "residual blocks per stage of the ResNet", min=1)
    hidden: int = param(64, "width of the ResNet's representation layer (after the pool)", min=1)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU. With ``strides > 1`` or a change of
    width the input goes through a strided 1 x 1 projection + BN first."""

    features: int
    strides: int = 1
    dtype: str = "float32"  # compute dtype (parameters and BatchNorm statistics stay float32)

    @nn.compact
    def __call__(self, x, train: bool, mask=None):
        bn = partial(nn.BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM, dtype=self.dtype)
        norm = lambda name: lambda v: bn(name=name)(v, mask=mask)  # noqa: E731
        conv = partial(nn.Conv, self.features, use_bias=False, dtype=self.dtype)  # BN's bias replaces it
        y = conv((3, 3), strides=self.strides, padding="SAME", name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = conv((3, 3), padding="SAME", name="conv2")(y)
        y = norm("bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv((1, 1), strides=self.strides, padding="VALID", name="proj")(x)
            x = norm("proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Stem conv3x3-BN-ReLU at ``width``; three stages of ``blocks`` basic blocks at width,
    2 x width, 4 x width, the later two starting with a stride-2 block (28 -> 28 -> 14 -> 7);
    global average pool; Dense ``hidden`` + ReLU (the representation); head."""

    out_dim: int = 1
    width: int = 16
    blocks: int = 2
    stages: int = 3
    hidden: int = 64
    dtype: str = "float32"  # compute dtype (parameters and BatchNorm statistics stay float32)

    @nn.compact
    def __call__(self, images, train: bool = False, mask=None):
        """``mask`` (B,): the examples BatchNorm's batch statistics count in training (all when None)."""
        mask = None if mask is None else mask[:, None, None, None]  # broadcast over (H, W, C)
        x = as_float_images(images, self.dtype)
        x = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, dtype=self.dtype,
                                 name="stem_bn")(x, mask=mask))
        for s in range(self.stages):
            for b in range(self.blocks):
                strides = 2 if s > 0 and b == 0 else 1
                x = BasicBlock(self.width * 2**s, strides, self.dtype, name=f"stage{s + 1}_block{b + 1}")(x, train, mask)
        x = x.mean(axis=(1, 2))
        hidden = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense")(x))
        logits = nn.Dense(self.out_dim, dtype=self.dtype, name=CLASSIFIER_GROUP)(hidden)
        return logits, hidden


@register_model("resnet", params=ResNetParams, prefix="resnet")
def build_resnet(params: ResNetParams, ctx: ModelContext) -> ResNet:
    """A small ResNet with BatchNorm (three stages of basic blocks)."""
    return ResNet(out_dim=ctx.out_dim, width=params.width, blocks=params.blocks, hidden=params.hidden,
                  dtype=ctx.compute_dtype)
