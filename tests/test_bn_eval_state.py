"""Precise BatchNorm for evaluation (``--resnet-bn-eval-images``): every snapshot of the ResNet
is evaluated with the batch statistics of a fixed, shuffled set of the task's training images
under the snapshot's own weights, not with the running averages, which lag the weights (their
effect on accuracy is measured in docs/metrics.md, not here). Training is unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax.config import Config
from cljax.models import MODELS, ModelContext, build_model, make_net
from cljax.program import build_parts, task_keys
from cljax.setting_match import differing_settings
from cljax.step import init_learner
from cljax.train import Sizes, batch_indices, train_task
from tests.test_model_numbers import conv, images_of, random_like


def resnet(n_images, image_shape=(8, 8), impl="im2col"):
    params = MODELS["resnet"].params(width=2, blocks=1, hidden=4, bn_eval_images=n_images)
    return make_net(build_model("resnet", params, ModelContext(1, image_shape, impl)), image_shape)


@pytest.mark.parametrize("impl", ["lax", "im2col"])
def test_eval_state_is_the_batch_statistics_of_the_chosen_images_under_these_weights(impl):
    """The stem's BatchNorm: mean and (biased) variance over the first n images of ``order``
    of the stem convolution, whatever the running averages were; more images asked than given:
    all of them."""
    net = resnet(3, impl=impl)
    params, state = random_like(jax.eval_shape(net.init, jax.random.key(0)), 1)
    images = images_of((5, 8, 8), 2)
    order = jnp.asarray([4, 0, 2, 1, 3])
    got = jax.jit(net.eval_state)(params, state, images, order)["batch_stats"]["stem_bn"]
    stem = np.asarray(conv(images[np.asarray(order[:3])].astype(jnp.float32)[..., None] / 255.0,
                           params["stem"]["kernel"]), np.float64)
    np.testing.assert_allclose(got["mean"], stem.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["var"], stem.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    other = jax.tree.map(lambda a: a + 1.0, state)  # other running averages: the same statistics
    again = jax.jit(net.eval_state)(params, other, images, order)["batch_stats"]["stem_bn"]
    np.testing.assert_allclose(again["mean"], got["mean"], rtol=1e-6)
    everything = jax.jit(resnet(50, impl=impl).eval_state)(params, state, images, order)["batch_stats"]["stem_bn"]
    all_stem = np.asarray(conv(images.astype(jnp.float32)[..., None] / 255.0, params["stem"]["kernel"]))
    np.testing.assert_allclose(everything["mean"], all_stem.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)


def test_only_a_model_that_asks_for_it_recomputes():
    assert resnet(0).eval_state is None
    for name in ("cnn", "mlp"):
        module = build_model(name, MODELS[name].params(), ModelContext(1, (28, 28), "lax"))
        assert make_net(module, (28, 28)).eval_state is None
    assert MODELS["resnet"].params().bn_eval_images == 256


def test_each_snapshot_is_evaluated_with_the_statistics_of_its_own_weights():
    """One repeat's task: the trace's model state at snapshot l (what the learner's snapshot is
    evaluated and saved with) is eval_state of the snapshot's weights on the first epoch's
    shuffle of the task's images; the task-start row keeps the state the task starts from. The
    lax convolutions: they compile faster than im2col's, and both lowerings' eval_state is checked
    above."""
    config = Config.from_flat(dataset="synthetic", model="resnet", resnet_width=2, resnet_blocks=1, resnet_hidden=4,
                              resnet_bn_eval_images=12, conv_impl="lax", num_tasks=1, n_repeats=1, n_train_per_class=10,
                              n_test_per_class=4, n_subsamples=2, epochs=1, batch_size=4, log_frequency=2).validate()
    parts = build_parts(config, (6, 6))
    sizes = Sizes.of(config)
    learner = init_learner(parts, jax.random.key(1))
    images = images_of((20, 6, 6), 3)
    labels = jnp.asarray(np.arange(20) % 2, jnp.float32)
    keys = jax.tree.map(lambda k: k[0], task_keys(jax.random.key(5), 1, sizes, max(len(parts.options), 1)))
    _, trace = jax.jit(lambda l: train_task(parts, sizes, l, images, labels, images[:8], labels[:8], 0, keys))(learner)
    order = batch_indices(keys.shuffle, 20, sizes.batches_per_epoch, sizes.batch_size).reshape(-1)
    assert sizes.n_logs == 2
    for snap in (1, 2):
        weights = jax.tree.map(lambda a: a[snap], trace["weights"])
        want = jax.jit(parts.net.eval_state)(weights, learner.model_state, images, order)
        got = jax.tree.map(lambda a: a[snap], trace["model_state"])
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    start = jax.tree.map(lambda a: a[0], trace["model_state"])
    for g, w in zip(jax.tree.leaves(start), jax.tree.leaves(learner.model_state), strict=True):
        np.testing.assert_array_equal(g, w)


def test_a_resnet_run_recorded_before_the_setting_resumes_only_with_the_running_averages():
    recorded = {k: v for k, v in Config.from_flat(model="resnet").to_dict().items() if k != "resnet_bn_eval_images"}
    assert differing_settings(recorded, Config.from_flat(model="resnet")) == ["resnet_bn_eval_images"]
    assert differing_settings(recorded, Config.from_flat(model="resnet", resnet_bn_eval_images=0)) == []


def test_the_planner_names_the_models_own_flag_for_the_statistics_pass():
    from cljax.budget_refusal import statistics_flag

    assert statistics_flag(Config.from_flat(model="resnet")) == "--resnet-bn-eval-images"
    assert statistics_flag(Config.from_flat(model="cnn")) == "the cnn model's bn_eval_images"


def test_the_lag_measurement_script_runs_and_reports_each_pair_and_seed(monkeypatch):
    """benchmarks/bn_eval_lag.py (the figures of docs/metrics.md) at its smallest size: one seed,
    a few steps; each accuracy is over the 500 test images of a pair. The ResNet it builds at
    the defaults of its params is the small one of the other tests here (what is checked is the
    script's loop and report, whatever the network's size: the default one took most of the
    test's time to compile and run)."""
    import dataclasses
    import functools
    from pathlib import Path

    from cljax.models.resnet import ResNetParams
    from tests.conftest import FASHION_DIR, load_script

    small = functools.partial(ResNetParams, width=2, blocks=1, hidden=4)
    monkeypatch.setitem(MODELS._entries, "resnet", dataclasses.replace(MODELS["resnet"], params=small))
    script = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "bn_eval_lag.py", "bn_eval_lag")
    report = script.main(["--steps", "2", "--seeds", "1", "--fashion-dir", str(FASHION_DIR)])
    assert list(report) == [2]
    for kind in ("running", "recomputed"):
        acc = np.array(report[2][kind])
        assert acc.shape == (len(script.PAIRS),)
        assert ((acc >= 0) & (acc <= 1)).all()
        np.testing.assert_allclose(acc * 500, np.round(acc * 500), atol=1e-3)
