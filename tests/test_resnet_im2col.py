"""The ResNet's im2col lowering (``--conv-impl im2col``, the CPU's default) against its ``lax``
one: the same parameters and BatchNorm statistics, initialised alike, and the same logits,
representations, running averages and gradients, weight-0 examples left out of the batch
statistics in both; ``fused`` has no first layer of its own in the ResNet and runs as ``lax``.
That the im2col lowering trains faster on the CPU is docs/benchmark.md's, not a test's."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.models import MODELS, ModelContext, build_model, check_compute_dtype, make_net
from cljax.run_split import recorded_split
from tests.test_model_numbers import images_of, random_like
from tests.backend import FRESH_DRAW, assert_same

SMALL = dict(width=4, blocks=2, hidden=8)


def nets(image_shape, impls=("lax", "im2col"), dtype="float32", **params):
    return {impl: make_net(build_model("resnet", MODELS["resnet"].params(**{**SMALL, **params}),
                                       ModelContext(2, image_shape, impl, dtype)), image_shape, dtype)
            for impl in impls}


def close(got, want, tol=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=tol, atol=tol)


@pytest.mark.parametrize("image_shape", [(28, 28), (13, 11, 3)])
def test_im2col_is_the_resnet_as_written(image_shape):
    """Against the network in XLA's convolution computed in float64: logits and representations
    in evaluation, and in training the logits, the new running averages and the gradients, with
    two weight-0 examples (replay's empty slots). Odd sides exercise the stride-2 padding
    (13 -> 7 -> 4); random parameters and running averages (not the initial ones), so that no
    term hides behind a zero or a one. The reference is float64 because XLA:CPU's own float32
    convolution is the less exact of the two on the odd sides (docs/benchmark.md)."""
    net = nets(image_shape, ("im2col",))["im2col"]
    params, state = random_like(jax.eval_shape(net.init, jax.random.key(0)), 3)
    images = images_of((6, *image_shape), 4)
    weights = jnp.asarray([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])

    def outputs(net, params, state):
        def loss(p):
            logits, hidden, new_state = net.apply(p, state, images, True, weights)
            return jnp.sum(weights * jnp.tanh(logits).sum(axis=1)) + 1e-2 * jnp.sum(hidden ** 2), (logits, new_state)

        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return net.apply(params, state, images, False)[:2], aux, grads

    got = jax.jit(partial(outputs, net))(params, state)
    with jax.enable_x64(True):
        reference = nets(image_shape, ("lax",), "float64")["lax"]
        wide = jax.tree.map(lambda a: np.asarray(a, np.float64), (params, state))
        want = jax.tree.map(np.asarray, jax.jit(partial(outputs, reference))(*wide))
    for g, w in zip(jax.tree.leaves(got[:2]), jax.tree.leaves(want[:2]), strict=True):  # to each one's largest
        np.testing.assert_allclose(np.asarray(g) / np.abs(w).max(), w / np.abs(w).max(), rtol=0, atol=2e-5)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want[2]))
    close(jax.tree.map(lambda g: g / scale, got[2]), jax.tree.map(lambda g: g / scale, want[2]), tol=2e-6)
    assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(got[1][1]), jax.tree.leaves(state)))


def test_im2col_and_lax_build_the_same_parameters_and_statistics():
    built = nets((13, 11, 3))
    init = {impl: jax.jit(net.init)(jax.random.key(0)) for impl, net in built.items()}
    assert jax.tree.structure(init["lax"]) == jax.tree.structure(init["im2col"])
    for a, b in zip(jax.tree.leaves(init["im2col"]), jax.tree.leaves(init["lax"]), strict=True):  # same initial values
        assert_same(a, b, **FRESH_DRAW, why="the same initialiser's draw in two separately compiled init programs")


def test_each_conv_impl_runs_the_resnet_as_its_lowering():
    """im2col and fused-im2col: no XLA convolution in the program, only matmuls; lax and fused
    (the ResNet has no fused first layer): XLA's convolution."""
    built = nets((12, 12), ("lax", "fused", "im2col", "fused-im2col"))
    for impl, net in built.items():
        params, state = jax.eval_shape(net.init, jax.random.key(0))
        text = str(jax.make_jaxpr(lambda p, s, x, net=net: net.apply(p, s, x, True))(
            params, state, jax.ShapeDtypeStruct((2, 12, 12), jnp.uint8)))
        assert ("conv_general_dilated" in text) == (impl in ("lax", "fused")), impl


def test_the_im2col_resnet_computes_in_bfloat16_when_asked():
    """check_compute_dtype finds its matmuls in bfloat16; its outputs stay near float32's."""
    low, full = (nets((8, 8), ("im2col",), dtype, blocks=1)["im2col"] for dtype in ("bfloat16", "float32"))
    check_compute_dtype(low, "resnet", "bfloat16")
    params, state = jax.jit(full.init)(jax.random.key(0))
    images = images_of((4, 8, 8), 5)
    got, want = (jax.jit(net.apply, static_argnums=3)(params, state, images, False)[0] for net in (low, full))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)


def test_a_resnet_recorded_before_schema_5_ran_xlas_convolution_whatever_its_lowering_says():
    """Before schema 5 the ResNet ignored --conv-impl: a resume of such a run compares the split
    it really ran on (lax), so continuing it in the im2col lowering is warned about."""
    split = {"backend": "cpu", "devices": 1, "processes": 1, "lowering": {"conv": "im2col", "repeats": "loop"}}
    old = {"schema": 4, "config": {"model": "resnet"}, "split": split}
    assert recorded_split(old)["lowering"] == {"conv": "lax", "repeats": "loop"}
    assert split["lowering"]["conv"] == "im2col"  # the record itself is left as it is
    for unchanged in ({**old, "schema": 5}, {**old, "config": {"model": "cnn"}}, {**old, "config": {}}):
        assert recorded_split(unchanged) == split
    assert recorded_split({**old, "split": None}) is None and recorded_split(None) is None


def test_an_old_resnet_resumes_in_the_lowering_it_ran_with_when_named(capsys):
    """Its record says --conv-impl auto (im2col today), but it ran lax: `--conv-impl lax` resumes
    it as it ran (it was refused as other settings), the same command still resumes it, and the
    warning of a resume in another lowering names the flag that keeps it."""
    from cljax.config import Config
    from cljax.run_split import warn_if_other_split
    from cljax.setting_match import resume_differences

    split = {"backend": "cpu", "devices": 1, "processes": 1, "lowering": {"conv": "im2col", "repeats": "loop"}}
    old = {"schema": 4, "config": Config(model="resnet").to_dict(), "split": split}
    for conv in ("lax", "auto"):
        assert resume_differences(old, Config(model="resnet", conv_impl=conv), None) == {}
    assert list(resume_differences(old, Config(model="resnet", conv_impl="fused"), None)) == ["conv_impl"]
    new = {**old, "schema": 5}  # it ran the im2col it records: lax is another lowering
    assert list(resume_differences(new, Config(model="resnet", conv_impl="lax"), None)) == ["conv_impl"]
    assert resume_differences(new, Config(model="resnet", conv_impl="im2col"), None) == {}
    warn_if_other_split(recorded_split(old), split, 3)
    err = capsys.readouterr().err
    assert "started on 1 cpu device(s) x 1 process(es), lax convolutions" in err
    assert err.rstrip().endswith("from task 3 on its numbers can differ from an uninterrupted run's in the last bits"
                                 ", which training can grow into other accuracies within a few tasks (recorded in each task's "
                                 "metadata.json); to keep it, rerun with --conv-impl lax.")
