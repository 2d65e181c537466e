"""--compute-dtype bfloat16 (activations, matmuls and convolutions in bfloat16, parameters and
everything after the logits in float32) and --scan-unroll (steps per iteration of the compiled
step loop). Read off the lowered programs and checked on small runs: bfloat16 reaches every
matmul and convolution of the training step and of the evaluation, changes the numbers by about
bfloat16's resolution and nothing else, and is part of what a resume must match; unrolling
changes nothing beyond float rounding, and a resume under another unroll is told so (the
lowering record, like another device split)."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.models import CONV_IMPLS, MODELS, ModelContext, build_model, check_compute_dtype, make_net
from cljax.setting_match import differing_settings
from tests.backend import SEPARATELY_COMPILED, assert_same_tree
from tests.test_precision import TINY, lowered_texts

MATMUL_OPS = re.compile(r"stablehlo\.(dot_general|convolution)\b.*:\s*\((tensor<[^)]*)\)\s*->")


def operand_types(text: str) -> list[str]:
    """The operand types of every dot_general and convolution of a StableHLO text."""
    return [m.group(2) for m in MATMUL_OPS.finditer(text)]


@pytest.mark.parametrize("model, conv", [("cnn", impl) for impl in CONV_IMPLS] + [("mlp", "lax")])
def test_bfloat16_reaches_every_matmul_and_convolution_and_the_weights_stay_float32(model, conv):
    config = Config.from_flat(**TINY, model=model, conv_impl=conv, compute_dtype="bfloat16").validate()
    for name, text in lowered_texts(config).items():
        types = operand_types(text)
        # forward and backward of the layers (the fused first layer's forward pass has no matmul)
        assert len(types) >= (3 if model == "mlp" else 5 if conv.startswith("fused") else 6), name
        # every operand of every matmul and convolution, forward and backward, is bfloat16
        assert all("f32" not in t and "bf16" in t for t in types), (name, [t for t in types if "f32" in t][:3])
    float32 = Config.from_flat(**TINY, model=model, conv_impl=conv).validate()
    assert all("bf16" not in t for text in lowered_texts(float32).values() for t in operand_types(text))


def test_bfloat16_changes_the_numbers_by_its_resolution_and_keeps_float32_outputs():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8))
    nets = {dtype: make_net(build_model("cnn", MODELS["cnn"].params(), ModelContext(1, (28, 28), "lax", dtype)),
                            (28, 28), dtype) for dtype in ("float32", "bfloat16")}
    params, state = jax.jit(nets["float32"].init)(jax.random.key(0))  # compiled: op by op, a compile per op
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    out = {dtype: jax.jit(net.apply, static_argnums=3)(params, state, images, False) for dtype, net in nets.items()}
    for i in (0, 1):  # logits, representation
        full, low = np.asarray(out["float32"][i]), np.asarray(out["bfloat16"][i])
        assert low.dtype == np.float32
        err = np.abs(low - full).max() / np.abs(full).max()
        # bfloat16 keeps 8 significant bits (relative step 2^-8 = 0.0039); through five layers
        # the error stays within a few steps and is not zero (the setting took effect)
        assert 0 < err < 0.05, (i, err)


def test_a_model_that_ignores_the_compute_dtype_is_one_clear_error():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, images, train=False):
            hidden = nn.Dense(4)(images.reshape(images.shape[0], -1).astype(jnp.float32))
            return nn.Dense(1)(hidden), hidden

    net = make_net(Plain(), (28, 28), "bfloat16")
    with pytest.raises(CljaxError, match="--compute-dtype bfloat16: model 'plain' computes in float32"):
        check_compute_dtype(net, "plain", "bfloat16")
    check_compute_dtype(net, "plain", "float32")  # nothing to check


def test_the_compute_dtype_is_recorded_and_part_of_the_resume_key_and_the_unroll_is_not():
    from cljax.program import build_task_program

    config = Config.from_flat(**TINY, compute_dtype="bfloat16", scan_unroll=4).validate()
    record = build_task_program(config, (28, 28)).lowering.record()
    assert (record["compute_dtype"], record["scan_unroll"]) == ("bfloat16", 4)
    recorded = Config().to_dict()
    assert differing_settings(recorded, Config.from_flat(compute_dtype="bfloat16")) == ["compute_dtype"]
    assert differing_settings(recorded, Config.from_flat(scan_unroll=8)) == []  # speed only
    older = {k: v for k, v in recorded.items() if k not in ("compute_dtype", "scan_unroll")}
    assert differing_settings(older, Config()) == []  # runs from before it computed in float32
    with pytest.raises(CljaxError, match="--compute-dtype"):
        Config.from_flat(compute_dtype="float16").validate()
    with pytest.raises(CljaxError, match="--scan-unroll"):
        Config.from_flat(scan_unroll=0).validate()


def test_unrolling_the_step_loop_changes_nothing_beyond_rounding_and_a_resume_is_told():
    from cljax.run_split import same_split

    split = {"backend": "cpu", "devices": 1, "processes": 1,
             "lowering": {"repeats": "loop", "learner_expert": "separate", "conv": "im2col", "devices": 1,
                          "backend": "cpu", "matmul_precision": "highest", "compute_dtype": "float32", "scan_unroll": 1}}
    older = {**split, "lowering": {k: v for k, v in split["lowering"].items() if k not in ("compute_dtype", "scan_unroll")}}
    assert same_split(older, split)
    assert not same_split(split, {**split, "lowering": {**split["lowering"], "scan_unroll": 4}})
    from cljax.devices import put_repeats
    from cljax.program import build_task_program

    rng = np.random.default_rng(0)
    base = dict(TINY, model="mlp", mlp_hidden=16, n_train_per_class=24, epochs=2, log_frequency=5)
    R, n, n_test = 2, 48, 8
    x = put_repeats(rng.integers(0, 256, (n, R, 28, 28), dtype=np.uint8), 1)
    y = put_repeats(np.repeat(np.arange(2, dtype=np.int32), n // 2)[:, None].repeat(R, 1), 1)
    tx = put_repeats(rng.integers(0, 256, (n_test, R, 28, 28), dtype=np.uint8), 1)
    ty = put_repeats(np.tile(np.arange(2, dtype=np.int32), n_test // 2)[:, None].repeat(R, 1), 1)
    outs = []
    for unroll in (1, 3):  # 3 does not divide the 5 steps of an interval: the remainder runs too
        config = Config.from_flat(**base, scan_unroll=unroll).validate()
        program = build_task_program(config, (28, 28))
        learner = program.init_learner(jax.random.key(0))
        outs.append(jax.tree.map(np.asarray, program.run_task(learner, x, y, tx, ty, jnp.int32(0), jax.random.key(1))))
    assert config.steps_per_task == 12 and config.n_logs == 2  # two intervals of 5 and a head of 2
    # the same operations in the same order; XLA fuses the unrolled body differently, which can
    # move a float32 result by its last bit (as another device split or conv lowering does)
    assert_same_tree(outs[0], outs[1], n_acc=n_test, cpu_rtol=1e-6, cpu_atol=1e-7,
                     why="the unrolled step loop is another program", **SEPARATELY_COMPILED)
