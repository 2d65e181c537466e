"""The spec's network: three conv layers and a two-layer MLP."""

from __future__ import annotations

import flax.linen as nn
import jax

from cljax.models import CLASSIFIER_GROUP, CONV_IMPLS, ModelContext, as_float_images, register_model
from cljax.models.fused import fused_conv_stack
from cljax.models.im2col import im2col_conv_stack
from cljax.models.units import sow_units
from cljax.errors import CljaxError
from cljax.registry import NoParams


class CNN(nn.Module):
    """conv 16/32/64 (3 x 3 SAME, ReLU, max-pool 3 x 3 stride 3: 28 -> 9 -> 3 -> 1), global
    average pool, Dense 64 + ReLU twice (the second is the representation), head.

    ``conv_impl`` picks how the convolution stack is computed, not what it computes: ``lax``
    is the network as written below (XLA's convolution and reduce_window), ``im2col`` the
    CPU lowering of :mod:`cljax.models.im2col`, ``fused`` the first layer as one elementwise
    computation (:mod:`cljax.models.fused`) and the others XLA's, ``fused-im2col`` that first
    layer and the others as im2col's. All build the same parameters (``conv1`` ...
    with ``nn.Conv``'s shapes and initialisers) and agree up to float rounding."""

    out_dim: int = 1
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 64
    conv_impl: str = "lax"
    dtype: str = "float32"  # compute dtype (parameters stay float32)

    def unit_layers(self):
        """Conv channels and dense units, each with the layer that reads it (cljax.models.units)."""
        names = [f"conv{i + 1}" for i in range(len(self.channels))] + ["dense1", "dense2", CLASSIFIER_GROUP]
        return tuple(zip(names[:-1], names[1:]))

    @nn.compact
    def __call__(self, images, train: bool = False):
        if self.conv_impl == "im2col":
            x = im2col_conv_stack(images, self.channels, dtype=self.dtype,
                                  on_layer=lambda name, x_CHWB: sow_units(self, name, x_CHWB.mean(axis=(1, 2)).T))
        elif self.conv_impl in ("fused", "fused-im2col"):
            later = "im2col" if self.conv_impl == "fused-im2col" else "lax"
            x = fused_conv_stack(images, self.channels, dtype=self.dtype, later=later,
                                 on_layer=lambda name, means: sow_units(self, name, means))
        elif self.conv_impl == "lax":
            x = as_float_images(images, self.dtype)
            for i, ch in enumerate(self.channels):
                with jax.named_scope(f"conv{i + 1}"):  # names in the compiled program (benchmarks/profile_task.py)
                    x = nn.relu(nn.Conv(ch, (3, 3), padding="SAME", dtype=self.dtype, name=f"conv{i + 1}")(x))
                    with jax.named_scope("pool"):
                        x = nn.max_pool(x, (3, 3), strides=(3, 3), padding="VALID")
                sow_units(self, f"conv{i + 1}", x.mean(axis=(1, 2)))
            x = x.mean(axis=(1, 2))
        else:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, not {self.conv_impl!r}")
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense1")(x))
        sow_units(self, "dense1", x)
        hidden = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="dense2")(x))
        sow_units(self, "dense2", hidden)
        logits = nn.Dense(self.out_dim, dtype=self.dtype, name=CLASSIFIER_GROUP)(hidden)
        return logits, hidden


@register_model("cnn", params=NoParams, prefix="cnn")
def build_cnn(params: NoParams, ctx: ModelContext) -> CNN:
    """The spec's CNN: 3 conv layers (16/32/64) and 2 dense layers of 64."""
    side = 3 ** len(CNN.channels)  # each conv layer's 3 x 3 VALID pool divides the side by 3
    if min(ctx.image_shape[:2]) < side:
        raise CljaxError(f"the cnn model pools its images by {side} (three 3 x 3 pools), so {ctx.image_shape[0]} x "
                         f"{ctx.image_shape[1]} images leave nothing to read: use images of at least {side} x {side} "
                         f"(--synthetic-size 28), or --model mlp.")
    return CNN(out_dim=ctx.out_dim, conv_impl=ctx.conv_impl, dtype=ctx.compute_dtype)
