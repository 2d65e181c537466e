"""Options replay, shrink+perturb and unsupervised learning: their exact updates on known
states, that replay reduces forgetting on real Fashion-MNIST, and that every rule x option
combination runs the real path compiled once."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import results
from cljax.setting_match import differing_settings, setting_differences
from cljax.errors import CljaxError
from cljax.experiment import run_experiment
from cljax.options import make_options
from cljax.options.l2 import L2InitParams
from cljax.options.replay import draw_replay
from cljax.options.shrink_perturb import ShrinkPerturbParams, shrink_perturb
from cljax.options.ul import hebbian_update, layer_input
from cljax.program import build_task_program
from tests.backend import SEPARATELY_COMPILED, assert_same
from tests.conftest import FASHION_DIR, apply_fn_of, init_params_of, load_script
from tests.rules_kit import assert_trees_equal, config_of, fashion_batch, program_of, with_flat


# ---- replay ---------------------------------------------------------------------------------


def _marked_task(t, n):
    """n images whose pixels (0, 0) and (0, 1) say their task and index; labels alternate."""
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = t, np.arange(n)
    return jnp.asarray(images), jnp.asarray(np.arange(n) % 2, jnp.int32)


@pytest.mark.parametrize("M, N", [(90, 200), (90, 40), (3, 10)])
def test_replay_buffer_stays_balanced_over_the_tasks_seen(tmp_path, M, N):
    config = config_of(tmp_path, use_replay=True, replay_size=M)
    option = make_options(config, program_of(config).parts.net)[0]
    task_end, draw = jax.jit(option.task_end), jax.jit(draw_replay, static_argnums=2)
    state = option.init(None, jax.random.key(0))
    _, _, wts = draw(state, jax.random.key(1), 8)
    assert (np.asarray(wts) == 0).all()  # nothing to replay before the first task ends
    kept = {}
    for t in range(5):
        images, labels = _marked_task(t, N)
        state, _ = task_end(state, None, jax.random.key(10 + t), images, labels, jnp.int32(t))
        task = np.asarray(state["task"])
        img = np.asarray(state["images"])
        n = t + 1
        for k in range(n):
            quota = (k + 1) * M // n - k * M // n
            held = task == k
            expected = min(quota, len(kept[k]) if k < t else N)  # filled slots are a prefix of the range
            assert held.sum() == expected, (t, k, held.sum(), expected)
            assert (img[held, 0, 0] == k).all()  # images of that task
            idx = img[held, 0, 1]
            assert len(set(idx.tolist())) == held.sum()  # sampled without replacement
            np.testing.assert_array_equal(np.asarray(state["labels"])[held], idx % 2)
            if k < t:
                assert set(idx.tolist()) <= kept[k]  # an old task only drops images
            elif held.sum() < N:  # a random sample of the task, not its first images (in a task, class A's)
                assert set(idx.tolist()) != set(range(held.sum()))
            kept[k] = set(idx.tolist())
        assert (task >= -1).all() and (task < n).all()
        # a partly filled buffer (M > N after the first task) draws only its filled slots
        _, _, r_w = draw(state, jax.random.key(20 + t), 64)
        assert (np.asarray(r_w) == 1).all(), (t, (task >= 0).sum())
    # draws come from filled slots only and carry weight 1
    r_img, r_lab, r_w = draw(state, jax.random.key(2), 64)
    assert (np.asarray(r_w) == 1).all()
    assert set(np.asarray(r_img)[:, 0, 0].tolist()) <= set(np.asarray(state["images"])[np.asarray(state["task"]) >= 0, 0, 0].tolist())


@pytest.mark.parametrize("M", [4, 10])
def test_replay_keeps_whole_colour_images(M):
    """(N, H, W, 3) images: every slot holds one whole image of the task it names. With M = H = 4 a
    mask shaped for gray images would line up with the rows and mix two tasks' images in a slot."""
    from cljax.options.replay import task_end_update

    state = {"images": jnp.zeros((M, 4, 4, 3), jnp.uint8), "labels": jnp.zeros((M,), jnp.int32),
             "task": jnp.full((M,), -1, jnp.int32)}
    update = jax.jit(task_end_update)
    for t in range(3):
        values = 10 * t + 1 + np.arange(6)  # image n of task t: every pixel 10 t + 1 + n
        images = jnp.asarray(np.broadcast_to(values[:, None, None, None], (6, 4, 4, 3)).astype(np.uint8))
        state = update(state, jax.random.key(t), images, jnp.asarray(np.arange(6) % 2), jnp.int32(t))
        img, task = np.asarray(state["images"]), np.asarray(state["task"])
        assert (task >= 0).sum() == min(M, 6 * (t + 1))
        for slot in np.flatnonzero(task >= 0):
            assert len(np.unique(img[slot])) == 1 and img[slot].flat[0] // 10 == task[slot], (t, slot)


def test_replay_counts_after_five_tasks_match_the_quota(tmp_path):
    """M = 200 over 5 tasks: 200, 100 + 100, 66/67, 50 x 4, then 40 x 5."""
    config = config_of(tmp_path, use_replay=True, replay_size=200)
    option = make_options(config, program_of(config).parts.net)[0]
    task_end = jax.jit(option.task_end)
    state = option.init(None, jax.random.key(0))
    per_task = []
    for t in range(5):
        state, _ = task_end(state, None, jax.random.key(t), *_marked_task(t, 300), jnp.int32(t))
        per_task.append(np.bincount(np.asarray(state["task"]), minlength=5).tolist())
    assert per_task == [[200, 0, 0, 0, 0], [100, 100, 0, 0, 0], [66, 67, 67, 0, 0], [50, 50, 50, 50, 0], [40] * 5]


def test_replay_reduces_forgetting(tmp_path):
    """Six repeats, each its own class pairs, paired (same seed: the same pairs and data with and
    without replay): replay keeps more of tasks 0-3. The protocol is benchmarks/replay_effect.py's,
    run here at seed 1 through the script itself. The MLP, since replay acts on the batch whatever
    the model (the CNN's measurement is in docs/rules.md too). The bounds hold at every seed of the
    96-repeat measurement there (per-seed mean gains 0.128-0.318; at least 5 of 6 repeats
    positive; the current task at least 0.783). A replay that did nothing would give a gain of
    exactly 0."""
    script = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "replay_effect.py", "replay_effect")
    figures = script.main(["--model", "mlp", "--seeds", "1", "1", "--fashion-dir", str(FASHION_DIR),
                           "--out", str(tmp_path / "runs")])[1]
    gain, current = np.array(figures["gain"]), np.array(figures["replay_current"])  # per repeat
    assert gain.shape == current.shape == (6,)
    np.testing.assert_allclose(gain, np.array(figures["replay_earlier"]) - np.array(figures["plain_earlier"]))
    assert gain.mean() > 0.05 and (gain > 0).sum() >= 4
    assert current.mean() >= 0.65  # and it still learns the current task
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["1_plain", "1_replay"]


# ---- shrink and perturb -------------------------------------------------------------------


def test_shrink_perturb_is_its_formula(tmp_path):
    config = config_of(tmp_path, add_plasticity=True, sp_lambda=0.5, sp_sigma=0.1)
    program = program_of(config)
    init = jax.jit(init_params_of(program))

    def hooks(cfg):
        option = make_options(cfg, program.parts.net)[0]
        return jax.jit(option.task_start), jax.jit(option.step_end)

    params, key = init(jax.random.key(0)), jax.random.key(42)
    noise = init(key)  # a fresh draw of the model's initialiser, from the hook's key
    task_start, _ = hooks(config)
    _, out = task_start((), params, key, jnp.int32(3))
    for p, e, o in zip(jax.tree.leaves(params), jax.tree.leaves(noise), jax.tree.leaves(out)):
        np.testing.assert_allclose(o, 0.5 * np.asarray(p) + 0.1 * np.asarray(e), rtol=1e-6, atol=1e-7)
    assert_trees_equal(task_start((), params, key, jnp.int32(0))[1], params)  # task 0: left alone
    # lam = 0, sigma = 1 is a re-initialisation
    reinit, _ = hooks(with_flat(config, sp_lambda=0.0, sp_sigma=1.0))
    assert_trees_equal(reinit((), params, key, jnp.int32(1))[1], noise)
    # step mode acts in step_end, after every step
    _, step_end = hooks(with_flat(config, sp_mode="step"))
    _, stepped = step_end((), params, {}, key, None, None)
    for p, e, o in zip(jax.tree.leaves(params), jax.tree.leaves(noise), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(o, 0.5 * np.asarray(p) + 0.1 * np.asarray(e), rtol=1e-6, atol=1e-7)


def test_shrink_perturb_keeps_a_constant_initialised_parameter_at_its_size(tmp_path):
    """A BatchNorm scale is initialised at 1 for every key: there is no noise to draw, and eps = 1
    would add sigma at every boundary (1.13 after one task, towards sigma / (1 - lam) = 14). It
    shrinks toward its initial value instead, as a bias (at 0) only shrinks; kernels get the formula."""
    config = config_of(tmp_path, model="resnet", resnet_width=4, resnet_blocks=1, resnet_hidden=8, add_plasticity=True)
    program = program_of(config)
    init = jax.jit(init_params_of(program))
    params = jax.tree.map(lambda p: p * 1.05, init(jax.random.key(0)))  # as if trained: the scales at 1.05
    option = make_options(config, program.parts.net)[0]
    key = jax.random.key(42)
    _, out = jax.jit(option.task_start)((), params, key, jnp.int32(1))
    np.testing.assert_allclose(out["stem_bn"]["scale"], 1 + 0.99 * (1.05 - 1), rtol=1e-6)
    np.testing.assert_allclose(out["stem_bn"]["bias"], 0.99 * np.asarray(params["stem_bn"]["bias"]), atol=1e-7)
    noise = init(key)
    np.testing.assert_allclose(out["stem"]["kernel"], 0.99 * np.asarray(params["stem"]["kernel"])
                               + 0.14 * np.asarray(noise["stem"]["kernel"]), rtol=1e-5, atol=1e-7)


def test_shrink_perturb_identity_is_bit_exact(tmp_path):
    config = config_of(tmp_path, add_plasticity=True, sp_lambda=1.0, sp_sigma=0.0)
    program = program_of(config)
    init = jax.jit(init_params_of(program))
    params = jax.tree.map(lambda w: w + 0.01, init(jax.random.key(0)))  # no (signed) zeros
    noise = init(jax.random.key(1))
    assert_trees_equal(jax.jit(shrink_perturb, static_argnums=(2, 3))(params, noise, 1.0, 0.0), params)
    for mode in ("boundary", "step"):
        option = make_options(with_flat(config, sp_mode=mode), program.parts.net)[0]
        assert_trees_equal(jax.jit(option.task_start)((), params, jax.random.key(2), jnp.int32(1))[1], params)
        assert_trees_equal(jax.jit(option.step_end)((), params, {}, jax.random.key(2), None, None)[1], params)


OLD_DEFAULTS = {  # option -> (the settings it defaulted to before, today's defaults, the message's first difference)
    "shrink_perturb": (dict(add_plasticity=True, sp_lambda=0.8, sp_sigma=0.01),
                       dict(sp_lambda=ShrinkPerturbParams().lambda_, sp_sigma=ShrinkPerturbParams().sigma),
                       r"sp_lambda recorded 0\.8, now "),
    "l2_init": (dict(use_l2_init=True, l2_init_decay=1e-4), dict(l2_init_decay=L2InitParams().decay),
                r"l2_init_decay recorded 0\.0001, now 0\.01"),
}


@pytest.mark.parametrize("option", sorted(OLD_DEFAULTS))
def test_a_run_recorded_with_an_options_old_defaults_resumes_with_them(tmp_path, option):
    """run.json records the resolved values: a run made with an option's defaults of before
    (shrink+perturb's 0.8 and 0.01, L2-init's 1e-4) resumes when they are passed, and a resume
    without them names the recorded values."""
    old, defaults, message = OLD_DEFAULTS[option]
    config = config_of(tmp_path, dataset="synthetic", data_dir=None, model="mlp", mlp_hidden=32, **old)
    recorded = config.to_dict()
    assert differing_settings(recorded, config) == []
    today = with_flat(config, **defaults)
    differ = setting_differences(recorded, today)
    assert differ == {k: (recorded[k], today.to_dict()[k]) for k in defaults if recorded[k] != today.to_dict()[k]}
    assert differ  # both options' defaults have changed since
    run_experiment(config, progress=False)  # a run with finished tasks: not replaced
    with pytest.raises(CljaxError, match=message + ".*Pass the recorded values"):
        run_experiment(today, progress=False)
    assert run_experiment(config, progress=False).already_finished  # and passing them finds it


# ---- unsupervised learning ------------------------------------------------------------------


@pytest.mark.parametrize("kind, layer", [("oja", "dense1"), ("sanger", "dense2"), ("recon", "dense1")])
def test_ul_changes_only_its_layer(tmp_path, kind, layer):
    config = config_of(tmp_path, use_ul=True, ul_kind=kind, ul_layer=layer, ul_lr=1e-2)
    program = program_of(config)
    option = make_options(config, program.parts.net)[0]
    params = jax.jit(init_params_of(program))(jax.random.key(0))
    x, _ = fashion_batch(32)
    _, new = jax.jit(option.step_end)((), params, {}, jax.random.key(1), x, jnp.ones(32))
    for name in params:
        for leaf in params[name]:
            same = np.array_equal(params[name][leaf], new[name][leaf])
            changes = name == layer and (leaf == "kernel" or kind == "recon")
            assert same != changes, (name, leaf)


def test_ul_reads_the_layer_input(tmp_path):
    program = program_of(config_of(tmp_path))
    net = program.parts.net
    params = jax.jit(init_params_of(program))(jax.random.key(0))
    x, _ = fashion_batch(8)
    _, hidden = jax.jit(apply_fn_of(program))(params, x)
    head_input = jax.jit(lambda p, v: layer_input(net, p, {}, v, ("head",)))(params, x)
    assert_same(head_input, hidden, cpu_rtol=1e-6, why="the layer's input and the model are two programs",
                **SEPARATELY_COMPILED)


def test_ul_rejects_a_layer_that_is_not_dense(tmp_path):
    from cljax.errors import CljaxError

    config = config_of(tmp_path, use_ul=True, ul_layer="conv2")
    program = program_of(with_flat(config, use_ul=False))
    with pytest.raises(CljaxError, match="dense1"):
        make_options(config, program.parts.net)


@pytest.mark.parametrize("kind", ["oja", "sanger"])
def test_hebbian_rules_find_the_principal_components(kind):
    """Zero-mean Gaussian data with covariance eigenvalues 5, 3, 2, 1, ...: Oja's single unit and
    Sanger's units converge to the principal components (|cosine| > 0.99), with unit norm."""
    d, k = 10, (1 if kind == "oja" else 3)
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(d, d)))
    eig = np.array([5.0, 3.0, 2.0] + [1.0] * (d - 3))
    cov_sqrt = basis * np.sqrt(eig)  # x = basis diag(sqrt(eig)) z

    def step(w, key):
        x = jax.random.normal(key, (64, d)) @ cov_sqrt.T
        return hebbian_update(w, x, jnp.ones(64), 2e-3, kind), None

    w0 = jnp.asarray(rng.normal(size=(d, k)) * 0.1, jnp.float32)
    w, _ = jax.lax.scan(step, w0, jax.random.split(jax.random.key(0), 6000))
    w = np.asarray(w)
    for j in range(k):
        cos = abs(w[:, j] @ basis[:, j]) / np.linalg.norm(w[:, j])
        assert cos > 0.99, (j, cos)
        assert abs(np.linalg.norm(w[:, j]) - 1) < 0.05


# ---- every rule with every option, compiled once ------------------------------------------

# Two sets cover both program shapes: replay changes the learner's batch and so turns the
# learner/expert pairing off; S&P (at the boundary), UL and the plasticity methods keep it on.
# Each option's own behaviour is tested above and in test_methods.py; here, that every
# combination a rule meets compiles once and runs. The keys are the folder names' tags.
OPTION_SETS = {
    "l2_redo_sp_ul": dict(use_l2=True, use_redo=True, redo_every=2, add_plasticity=True, use_ul=True),
    "cbp_l2init_replay_sp_ul": dict(use_cbp=True, cbp_maturity=0, cbp_rate=0.05, use_l2_init=True, use_replay=True,
                                    add_plasticity=True, sp_mode="step", sp_lambda=0.999, sp_sigma=1e-3, use_ul=True),
}
UL_KIND = {"SL": "oja", "RL": "sanger", "Bio": "recon"}


# The model of each rule x option set: every rule meets the CNN (the default) with one set and the
# MLP with the other, and each set meets both models; a network of its own costs a compilation, and
# each rule with every option on each model also runs in tests/test_resume_exact.py.
MODEL_OF = {("SL", "l2_redo_sp_ul"): "cnn", ("RL", "l2_redo_sp_ul"): "mlp", ("Bio", "l2_redo_sp_ul"): "cnn",
            ("SL", "cbp_l2init_replay_sp_ul"): "mlp", ("RL", "cbp_l2init_replay_sp_ul"): "cnn",
            ("Bio", "cbp_l2init_replay_sp_ul"): "mlp"}
MODEL_SIZES = {"cnn": {}, "mlp": dict(mlp_hidden=16)}

# 8 steps a task, 2 snapshots: the sizes of the pairing comparison below, which builds the same
# programs as these runs (the l2_redo_sp_ul set keeps the pairing on) and so compiles one of its
# two (the one the CPU's --learner-expert auto picks) no more.
RULE_OPTION_SIZES = dict(n_train_per_class=64, n_test_per_class=16, n_subsamples=8, batch_size=16, log_frequency=4)


def rule_option_config(tmp_path, algorithm, options):
    model = MODEL_OF[algorithm, options]
    return config_of(tmp_path, algorithm=algorithm, ul_kind=UL_KIND[algorithm], model=model, **MODEL_SIZES[model],
                     **RULE_OPTION_SIZES, **OPTION_SETS[options])


@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_every_rule_with_every_option_compiles_once(tmp_path, compile_counter, algorithm, options):
    config = rule_option_config(tmp_path, algorithm, options)
    at_task_end = []
    run = run_experiment(config, progress=False, on_task_end=lambda t, info: at_task_end.append(compile_counter.count))
    assert run.algo_dir.name == f"{algorithm}_{options}_T2"
    assert at_task_end[0] > 0 and at_task_end[1] == at_task_end[0]  # the second task compiles nothing
    for d in results.task_dirs(run.algo_dir):
        metrics = results.load_metrics(d)
        assert np.isfinite(metrics["train_loss"]).all() and np.isfinite(metrics["test_acc"]).all()
        recorded = results.load_metadata(d)["config"]
        assert (recorded["use_replay"], recorded["model"]) == (config.to_dict()["use_replay"], MODEL_OF[algorithm, options])


@pytest.mark.parametrize("algorithm", ["SL", "RL", "Bio"])
def test_paired_learner_and_expert_match_their_separate_steps(tmp_path, algorithm):
    """The learner's and the expert's directions batched over the pair (one vmapped call on the
    shared batch) train to the same numbers as two separate calls, with the options that keep
    the batch on (their step_end still runs on the learner alone: S&P, UL, L2, ReDo); replay
    changes the learner's batch, so it turns the pairing off. (Task 0 of the config the test
    above runs: the program the CPU's --learner-expert auto chose there is not compiled again.)"""
    from tests.test_sharding import TOL, assert_same_numbers, assert_training_moved, first_task

    config = rule_option_config(tmp_path, algorithm, "l2_redo_sp_ul")
    key = jax.random.key(3)
    paired, program = first_task(config, key, paired_models=True)
    separate, separate_program = first_task(config, key, paired_models=False)
    assert program.parts.paired and not separate_program.parts.paired
    assert_same_numbers(paired, separate, config, "paired and separate learner/expert are two programs")
    assert_training_moved(program, key, paired[0], TOL)
    replay = with_flat(config, use_replay=True, replay_size=40, replay_batch=8)
    assert not build_task_program(replay, (28, 28), paired_models=True).parts.paired
