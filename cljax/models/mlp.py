"""A fully connected network on the flattened image."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn

from cljax.models import CLASSIFIER_GROUP, ModelContext, as_float_images, register_model
from cljax.models.units import sow_units
from cljax.registry import param


@dataclass(frozen=True)
class MLPParams:
    hidden: int = param(256, "width of each hidden layer of the MLP", min=1)
    depth: int = param(2, "number of hidden layers of the MLP", min=1, max=1000)


class MLP(nn.Module):
    """Flattened image -> ``depth`` x (Dense ``hidden`` + ReLU), named dense1 ... denseN; the
    last one's output is the representation; head. Any image shape."""

    out_dim: int = 1
    hidden: int = 256
    depth: int = 2
    dtype: str = "float32"  # compute dtype (parameters stay float32)

    def unit_layers(self):
        """Each hidden layer's units with the layer that reads them (cljax.models.units)."""
        names = [f"dense{i + 1}" for i in range(self.depth)] + [CLASSIFIER_GROUP]
        return tuple(zip(names[:-1], names[1:]))

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = as_float_images(images, self.dtype)
        x = x.reshape(x.shape[0], -1)
        for i in range(self.depth):
            x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=f"dense{i + 1}")(x))
            sow_units(self, f"dense{i + 1}", x)
        logits = nn.Dense(self.out_dim, dtype=self.dtype, name=CLASSIFIER_GROUP)(x)
        return logits, x


@register_model("mlp", params=MLPParams, prefix="mlp", ignores=("conv_impl",))  # no convolution
def build_mlp(params: MLPParams, ctx: ModelContext) -> MLP:
    """A multilayer perceptron on the flattened image."""
    return MLP(out_dim=ctx.out_dim, hidden=params.hidden, depth=params.depth, dtype=ctx.compute_dtype)
