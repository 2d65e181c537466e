"""The MLP and the BatchNorm ResNet against a forward pass written out by hand from their
parameters (numpy and ``lax.conv``), on tiny inputs: their layer structure (residual sums,
projections, strides, the global average pool, BatchNorm's momentum), not only their shapes.
The CNN has its own reference network in tests/test_models.py."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cljax.errors import CljaxError
from cljax.models import as_float_images, make_net
from cljax.models.mlp import MLP
from cljax.models.resnet import BasicBlock, ResNet
from cljax.models.units import sow_units, unit_activity, unit_layers

EPS = 1e-5  # flax BatchNorm's default epsilon


def random_like(shapes, seed):
    """Random values for a tree of parameter shapes (``jax.eval_shape`` of an init: compiling
    the initialisers would cost more than the test): non-zero biases, scales other than 1 and
    running averages other than (0, 1) cannot hide a wrong formula; variances stay positive."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        x = 0.5 * rng.standard_normal(shape.shape).astype(np.float32)
        return jnp.asarray(np.abs(x) + 0.2 if "var" in jax.tree_util.keystr(path) else x)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def conv(x, kernel, stride=1, padding="SAME"):
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bn(x, p, s):
    return (x - s["mean"]) / jnp.sqrt(s["var"] + EPS) * p["scale"] + p["bias"]


def relu(x):
    return jnp.maximum(x, 0)


def reference_block(x, p, s, stride):
    y = relu(bn(conv(x, p["conv1"]["kernel"], stride), p["bn1"], s["bn1"]))
    y = bn(conv(y, p["conv2"]["kernel"]), p["bn2"], s["bn2"])
    if "proj" in p:
        x = bn(conv(x, p["proj"]["kernel"], stride, "VALID"), p["proj_bn"], s["proj_bn"])
    return relu(x + y)


def images_of(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8))


@pytest.mark.parametrize("c_in, features, strides", [(3, 3, 1), (2, 4, 1), (3, 3, 2)])
def test_a_basic_block_is_conv_bn_relu_conv_bn_plus_its_input_or_projection(c_in, features, strides):
    """Evaluation mode: the residual sum, and the 1 x 1 projection exactly when the stride or
    the width changes (a change of width alone needs it too, or the sum cannot be formed)."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, c_in))
    block = BasicBlock(features, strides)
    variables = random_like(jax.eval_shape(lambda key: block.init(key, x, False), jax.random.key(0)), 2)
    params, stats = variables["params"], variables["batch_stats"]
    assert ("proj" in params) == (strides != 1 or c_in != features)
    got = jax.jit(lambda v: block.apply(v, x, False))({"params": params, "batch_stats": stats})
    want = jax.jit(lambda p, s: reference_block(x, p, s, strides))(params, stats)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_resnet_is_stem_three_strided_stages_mean_pool_dense_and_head():
    """width 2, one block per stage: stage widths 2, 4, 8, the later two stages halve the side
    (12 -> 12 -> 6 -> 3), then the spatial mean, Dense + ReLU (the representation) and the head."""
    model = ResNet(out_dim=2, width=2, blocks=1, hidden=3)
    images = images_of((3, 12, 12))
    variables = random_like(jax.eval_shape(model.init, jax.random.key(0), images[:1]), 4)
    p, s = variables["params"], variables["batch_stats"]
    shapes = jax.tree.map(jnp.shape, p)
    assert shapes["stem"]["kernel"] == (3, 3, 1, 2)
    assert [shapes[f"stage{i}_block1"]["conv1"]["kernel"] for i in (1, 2, 3)] == [(3, 3, 2, 2), (3, 3, 2, 4),
                                                                                   (3, 3, 4, 8)]
    assert shapes["dense"]["kernel"] == (8, 3) and shapes["head"]["kernel"] == (3, 2)

    logits, hidden = jax.jit(lambda v: model.apply(v, images, False))({"params": p, "batch_stats": s})

    @jax.jit
    def reference(p, s):
        x = images.astype(jnp.float32)[..., None] / 255.0
        x = relu(bn(conv(x, p["stem"]["kernel"]), p["stem_bn"], s["stem_bn"]))
        for i, stride in ((1, 1), (2, 2), (3, 2)):
            name = f"stage{i}_block1"
            x = reference_block(x, p[name], s[name], stride)
        return x

    x = reference(p, s)
    assert x.shape == (3, 3, 3, 8)
    want_hidden = relu(x.mean(axis=(1, 2)) @ p["dense"]["kernel"] + p["dense"]["bias"])
    np.testing.assert_allclose(hidden, want_hidden, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, want_hidden @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-5)


def test_a_training_step_moves_batchnorm_running_averages_by_a_tenth_of_the_batch_statistics():
    """Momentum 0.9: new = 0.9 old + 0.1 batch (biased variance), read at the stem's BatchNorm."""
    net = make_net(ResNet(out_dim=1, width=2, blocks=1, hidden=3), (6, 6))
    params, state = random_like(jax.eval_shape(net.init, jax.random.key(0)), 6)
    images = images_of((4, 6, 6), 1)
    _, _, new_state = jax.jit(net.apply, static_argnums=3)(params, state, images, True)
    stem = np.asarray(conv(images.astype(jnp.float32)[..., None] / 255.0, params["stem"]["kernel"]), np.float64)
    old, new = state["batch_stats"]["stem_bn"], new_state["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * stem.mean(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * stem.var(axis=(0, 1, 2)),
                               rtol=1e-5, atol=1e-6)


def test_the_mlp_is_relu_dense_layers_on_the_flattened_image_and_sows_each_of_them():
    """depth 3: each hidden layer is ReLU(x W + b) of the one before, the last is the
    representation; each declares its units with the layer that reads them, and sows exactly its
    activations."""
    model = MLP(out_dim=2, hidden=5, depth=3)
    net = make_net(model, (4, 4))
    params = random_like(jax.eval_shape(net.init, jax.random.key(0))[0], 7)
    images = images_of((3, 4, 4), 2)
    logits, hidden, _ = net.apply(params, {}, images, False)
    x = np.asarray(images, np.float64).reshape(3, -1) / 255.0
    layers = {}
    for name in ("dense1", "dense2", "dense3"):
        x = np.maximum(x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"]), 0)
        layers[name] = x
    np.testing.assert_allclose(hidden, x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, x @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"]),
                               rtol=1e-5, atol=1e-6)
    assert unit_layers(net, "--use-cbp") == (("dense1", "dense2"), ("dense2", "dense3"), ("dense3", "head"))
    acts = unit_activity(net, params, {}, images)
    assert set(acts) == set(layers)
    for name, want in layers.items():
        np.testing.assert_allclose(acts[name], want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_unit_activity_is_float32_under_a_bfloat16_compute_dtype():
    """The resets compare activities across steps and units: they read them at full precision."""
    net = make_net(MLP(out_dim=1, hidden=4, depth=2, dtype="bfloat16"), (4, 4), "bfloat16")
    params = random_like(jax.eval_shape(net.init, jax.random.key(0))[0], 8)
    acts = unit_activity(net, params, {}, images_of((2, 4, 4)))
    assert {name: a.dtype for name, a in acts.items()} == {"dense1": jnp.float32, "dense2": jnp.float32}


def test_every_declared_unit_layer_must_sow_its_activity_not_only_the_first():
    """A model that sows its first unit layer right and its second with the wrong width is refused."""

    class TwoLayers(nn.Module):
        def unit_layers(self):
            return (("dense1", "dense2"), ("dense2", "head"))

        @nn.compact
        def __call__(self, images, train: bool = False):
            x = as_float_images(images).reshape(images.shape[0], -1)
            x = nn.relu(nn.Dense(4, name="dense1")(x))
            sow_units(self, "dense1", x)
            x = nn.relu(nn.Dense(3, name="dense2")(x))
            sow_units(self, "dense2", x[:, :2])
            return nn.Dense(1, name="head")(x), x

    with pytest.raises(CljaxError, match=r"sows the activity of 'dense2' with shape \(2, 2\) for a batch of 2, "
                                         r"not \(2, 3\)"):
        unit_layers(make_net(TwoLayers(), (4, 4)), "--use-cbp")
