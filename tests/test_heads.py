"""The output layer across tasks (--head): reset at every task start (to zero or a fresh draw),
and one head per task. Tiny synthetic runs; each asserts what the saved files hold."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cljax import results
from cljax.cli import main as cli_main
from cljax.errors import CljaxError
from cljax.models import CLASSIFIER_GROUP
from tests.conftest import small_config

# The MLP: the head is the same layer on every model, and the MLP compiles in a fraction of the
# CNN's time.
TINY = dict(dataset="synthetic", synthetic_classes=6, num_tasks=3, n_repeats=2, n_train_per_class=16,
            n_test_per_class=8, n_subsamples=4, epochs=2, batch_size=16, log_frequency=1, model="mlp", mlp_hidden=32)


def run(tmp_path, **overrides):
    from cljax.experiment import run_experiment

    config = small_config(tmp_path, **{**TINY, **overrides})
    return config, run_experiment(config, progress=False)


def split(weights: dict) -> tuple[list, list]:
    """(head leaves, feature leaves) of a weights dict."""
    head = [np.asarray(x) for x in jax.tree_util.tree_leaves(weights[CLASSIFIER_GROUP])]
    features = [np.asarray(x) for k, v in sorted(weights.items()) if k != CLASSIFIER_GROUP
                for x in jax.tree_util.tree_leaves(v)]
    return head, features


@pytest.mark.parametrize("reset_to", ["zero", "init"])
def test_reset_sets_the_output_layer_at_every_task_start_and_keeps_the_features(tmp_path, reset_to):
    config, result = run(tmp_path, head="reset", head_reset_to=reset_to)
    assert result.algo_dir.name == "SL_headreset_T3"
    dirs = results.task_dirs(result.algo_dir)
    starts = []
    for t, d in enumerate(dirs):
        head, features = split(results.load_start_weights(d))
        starts.append(results.load_start_weights(d)[CLASSIFIER_GROUP]["kernel"])
        if reset_to == "zero":
            assert all((h == 0).all() for h in head), t
            # A zero head gives every image logit 0: p = 1/2 and the greedy choice label 0, so
            # every balanced test set scores exactly one half at the task's start.
            np.testing.assert_array_equal(results.load_metrics(d)["start_test_acc"], 0.5)
        else:
            kernel = np.asarray(results.load_start_weights(d)[CLASSIFIER_GROUP]["kernel"])  # (R, H, 1)
            # LeCun normal over fan-in H, truncated at 2 std: 0.88 / sqrt(H) on average.
            assert 0.5 / np.sqrt(kernel.shape[1]) < kernel.std() < 1.5 / np.sqrt(kernel.shape[1])
            assert not np.array_equal(kernel[0], kernel[1])  # each repeat its own draw
        if t == 0:
            continue
        prev_head, prev_features = split(results.load_weights(dirs[t - 1]))
        for s, p in zip(features, prev_features):  # the features go on from the previous task's end
            np.testing.assert_array_equal(s, p[-1])
        assert all(not np.array_equal(s, p[-1]) for s, p in zip(head, prev_head))
    if reset_to == "init":
        assert not np.array_equal(starts[1], starts[2])  # a fresh draw at every task


def test_replay_with_one_head_per_task_is_one_line(tmp_path):
    with pytest.raises(CljaxError, match="--head multi with --use-replay"):
        small_config(tmp_path, **TINY, head="multi", use_replay=True).validate()


def test_the_head_flags_parse_and_an_unknown_head_is_one_line(tmp_path, capsys):
    rc = cli_main(["plan", "--dataset", "synthetic", "--synthetic-classes", "6", "--num-tasks", "3", "--head", "multi",
                   "--results-dir", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli_main(["run", "--head", "many", "--results-dir", str(tmp_path)])
    assert exc.value.code == 2
    assert "--head" in capsys.readouterr().err


def test_multi_trains_each_task_through_its_own_head_and_evaluates_it_there(tmp_path):
    from cljax.data import load_dataset
    from cljax.models import ModelContext, build_model
    from cljax.tasks import TaskData

    config, result = run(tmp_path, head="multi", n_subsamples=16)  # S: every test image
    assert result.algo_dir.name == "SL_headmulti_T3"
    dirs = results.task_dirs(result.algo_dir)
    kernels = [np.asarray(results.load_weights(d)[CLASSIFIER_GROUP]["kernel"]) for d in dirs]  # (L, R, H, T)
    assert kernels[0].shape[-1] == 3
    # Task 0's block is never touched by tasks 1 and 2 (plain SGD: its gradient is exactly zero),
    # while each task moves its own.
    np.testing.assert_array_equal(kernels[2][-1, ..., 0], kernels[0][-1, ..., 0])
    assert not np.array_equal(kernels[2][-1, ..., 2], kernels[1][-1, ..., 2])
    # The saved accuracy of every task after the last one is its own head's: recomputed with the
    # readable model from the saved weights.
    model = build_model(config.model, config.model_params, ModelContext(3, (28, 28), "lax"))
    td = TaskData(load_dataset(config), config)
    acc = results.load_metrics(dirs[-1])["test_acc"][-1]  # (R, T)
    weights = results.load_weights(dirs[-1])
    for t in range(3):
        x_NRHW, y_NR = td.test(result.task_class_pairs[t])
        for r in range(config.n_repeats):
            params = jax.tree.map(lambda w: np.asarray(w[-1, r]), weights)
            logits = np.asarray(model.apply({"params": params}, x_NRHW[:, r])[0])
            own = ((logits[:, t] > 0) == y_NR[:, r]).mean()
            assert abs(own - acc[r, t]) <= 1.0 / config.n_test + 1e-6, (t, r)
    # The probe analysis reads each task through its own block too: on every test image (S here)
    # its head accuracy is the saved one (a logit at 0 may round the other way: one image).
    from cljax.analysis.driver import analyze_run

    analyze_run(result.algo_dir, analyses=["probe"], make_plots=False)
    probe = np.load(result.algo_dir / "analysis" / "probe.npz")
    np.testing.assert_allclose(probe["head_acc_probe_images"][:, -1], acc, atol=1.0 / config.n_test + 1e-6)


def test_multi_with_a_cycled_schedule_is_one_line(tmp_path):
    with pytest.raises(CljaxError, match="--head multi with --task-schedule cycle"):
        small_config(tmp_path, **{**TINY, "num_tasks": 10}, head="multi", task_schedule="cycle").validate()


def test_the_head_reset_value_is_compared_on_resume_only_when_the_head_is_reset():
    from cljax.config import Config
    from cljax.setting_match import setting_differences

    def differences(recorded: dict, now: dict) -> dict:
        return setting_differences(Config.from_flat(dataset="synthetic", **recorded).to_dict(),
                                   Config.from_flat(dataset="synthetic", **now))

    # --head-reset-to acts only under --head reset: elsewhere it cannot change a number.
    assert differences({"head_reset_to": "init"}, {}) == {}
    assert differences({"head": "multi", "head_reset_to": "init"}, {"head": "multi"}) == {}
    assert differences({"head": "reset", "head_reset_to": "init"}, {"head": "reset"}) == {
        "head_reset_to": ("init", "zero")}
    # A change of --head is named as that, not also as the reset value it brings in or out.
    assert differences({"head": "reset"}, {"head": "shared"}) == {"head": ("reset", "shared")}


def test_multi_reads_task_k_through_outputs_k_out_dim_to_k_plus_1_out_dim(tmp_path):
    """With two outputs per task (every other test has one), task k reads exactly the logits
    [2 (k mod T), 2 (k mod T) + 2) of the T * 2 outputs, in their order."""
    import jax.numpy as jnp

    from cljax.heads import HeadSpec, with_head
    from cljax.models import Net

    spec = HeadSpec.of(small_config(tmp_path, **TINY, head="multi", out_dim=2))
    assert spec == HeadSpec("multi", "zero", 3, 2)
    logits = jnp.arange(12.0).reshape(2, 6) * jnp.array([[1.0], [-1.0]])  # unit u of example b: +-u
    net = Net(None, None, lambda params, state, images, train, weights=None: (logits, images, state), (), (28, 28))
    read = jax.jit(lambda t: with_head(net, spec, t).apply(None, {}, jnp.ones(3), True)[0])  # t traced, as in training
    for task in range(7):
        block = task % 3
        np.testing.assert_array_equal(read(task), np.asarray(logits)[:, 2 * block: 2 * block + 2], err_msg=f"task {task}")


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_head_and_the_features_step_at_their_own_rates(tmp_path, momentum):
    """--lr-classifier for the head, --lr-features for every other layer: one step on gradients
    of ones moves each by minus its own rate (momentum's first step is the plain one)."""
    import jax.numpy as jnp

    from cljax.step import make_optimizer

    config = small_config(tmp_path, lr_features=0.1, lr_classifier=0.5)
    params = {"conv1": {"kernel": jnp.zeros(3)}, CLASSIFIER_GROUP: {"kernel": jnp.zeros(2), "bias": jnp.zeros(1)}}
    tx = make_optimizer(config, momentum)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["conv1"]["kernel"], -0.1, rtol=1e-6)
    for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(updates[CLASSIFIER_GROUP][leaf], -0.5, rtol=1e-6)
