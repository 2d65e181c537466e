"""A run stopped at a task boundary and resumed is the run in one go, byte for byte: every array
and pickle of every task folder, and every leaf of the final checkpoint. The registries are
walked, so a new rule, option or model is covered without editing this file: every rule and every
model at least once, each with every option on that the model takes, and momentum (the learner
state of each: parameters, momentum, BatchNorm statistics, the rule's state, each option's). The
checkpoint's arrays come back in their dtypes or are refused. Killed and stopped processes that
resume: tests/test_reliability.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cljax.checkpoint import CHECKPOINT
from cljax.config import Config, option_switch
from cljax.errors import CljaxError
from cljax.registry import MODELS, OPTIONS, RULES

# Tiny, T=3: the learner of task 0's checkpoint trains tasks 1 and 2 again. 8 steps a task.
TINY = dict(dataset="synthetic", synthetic_classes=6, synthetic_size=12, num_tasks=3, n_repeats=2,
            n_train_per_class=8, n_test_per_class=4, n_subsamples=4, epochs=2, batch_size=4, log_frequency=4,
            lr=0.05, momentum=0.9, seed=3)
# Settings under which an option acts within 16 steps (its defaults act later or too little to
# show); an option not named here runs at its defaults.
ACTIVE = {
    "cbp": dict(cbp_rate=0.2, cbp_maturity=2, cbp_utility="adaptable"),
    "redo": dict(redo_every=3, redo_tau=0.5),
    "replay": dict(replay_size=8, replay_batch=2),
    "shrink_perturb": dict(sp_mode="step", sp_noise="gaussian", sp_sigma=1e-3),
    "l2": dict(l2_decay=1e-2),
}
# Each model small, and the dense layer unsupervised learning updates in it.
MODEL = {
    "cnn": dict(synthetic_size=28, ul_layer="dense1"),
    "mlp": dict(mlp_hidden=8, ul_layer="dense1"),
    "resnet": dict(resnet_width=2, resnet_blocks=1, resnet_hidden=8, resnet_bn_eval_images=4, ul_layer="dense"),
}


def with_option(flat: dict, entry) -> dict:
    return {**flat, option_switch(entry): True, **ACTIVE.get(entry.name, {})}


def allowed(flat: dict, entry) -> bool:
    """Whether the option builds on the model of ``flat`` (CBP and ReDo refuse the ResNet)."""
    from cljax.data import load_dataset
    from cljax.program import build_parts

    config = Config.from_flat(with_option(flat, entry))
    try:
        build_parts(config, load_dataset(config).train_images.shape[1:])
    except CljaxError:
        return False
    return True


def cases() -> list[tuple[str, str]]:
    """Every rule and every model at least once: the i-th rule with the i-th model (in name order),
    the shorter list taken round again."""
    rules, models = RULES.names(), MODELS.names()
    return [(rules[i % len(rules)], models[i % len(models)]) for i in range(max(len(rules), len(models)))]


def config_of(rule: str, model: str, results_dir: Path) -> Config:
    """The tiny config of ``rule`` on ``model`` (or on the next model that the rule takes: Bio
    refuses the ResNet's BatchNorm) with every option on that the model takes."""
    models = MODELS.names()
    for name in models[models.index(model):] + models[:models.index(model)]:
        flat = {**TINY, **MODEL.get(name, {}), "algorithm": rule, "model": name, "results_dir": str(results_dir)}
        options = [entry for entry in OPTIONS.entries() if allowed(flat, entry)]
        if options:
            break
    assert len(options) >= min(len(OPTIONS.names()), 5), (  # the built-ins all but CBP and ReDo on the ResNet
        f"{rule} on {name} takes only {[e.name for e in options]}: give the model its tiny settings in MODEL")
    for entry in options:
        flat = with_option(flat, entry)
    return Config.from_flat(flat)


def outputs(run_dir: Path) -> dict:
    """Every task folder's arrays and pickles (bytes) and the checkpoint's leaves (arrays)."""
    out = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.glob("task_*/*"))
           if p.suffix in (".npy", ".pkl")}
    with np.load(run_dir / CHECKPOINT) as z:
        out.update({f"{CHECKPOINT}:{k}": z[k] for k in z.files})
    return out


def differing(a: dict, b: dict) -> list[str]:
    assert sorted(a) == sorted(b)
    return [k for k in a if (a[k] != b[k] if isinstance(a[k], bytes) else
                             a[k].dtype != b[k].dtype or a[k].tobytes() != b[k].tobytes())]


@pytest.mark.parametrize("rule,model", cases())
def test_a_run_resumed_after_its_first_task_is_the_run_in_one_go(rule, model, tmp_path):
    from cljax.experiment import run_experiment

    config = config_of(rule, model, tmp_path / "whole")
    stopped = tmp_path / "stopped"

    def stop_after_task_0(t, info):  # what a stop between task 0's checkpoint and task 1's folder leaves
        if t == 0:
            shutil.copytree(tmp_path / "whole", stopped)

    whole = run_experiment(config, progress=False, on_task_end=stop_after_task_0)  # finite, or it is refused
    assert not (stopped / whole.algo_dir.relative_to(tmp_path / "whole") / "task_001").exists()
    resumed = run_experiment(Config.from_flat({**config.to_dict(), "results_dir": str(stopped)}), progress=False)
    assert resumed.first_task == 1
    expected, got = outputs(whole.algo_dir), outputs(resumed.algo_dir)
    assert {k.split("/")[0] for k in expected if k.endswith("weights.npy")} == {"task_000", "task_001", "task_002"}
    assert differing(expected, got) == []


def test_the_checkpoint_gives_back_every_leaf_in_its_dtype(tmp_path):
    """bfloat16 (an option's buffer kept in half the memory, say) is stored by .npy as raw bytes:
    it was read back as a void array, which the resumed program cannot take."""
    import jax
    import jax.numpy as jnp

    from cljax.checkpoint import load_learner, save_learner

    rng = np.random.default_rng(0)
    state = {"w": rng.normal(size=(2, 3)).astype(np.float32), "buffer": jnp.asarray(rng.normal(size=(2, 4)), jnp.bfloat16),
             "age": np.arange(2, dtype=np.int32), "images": np.arange(6, dtype=np.uint8).reshape(2, 3),
             "key": jax.random.split(jax.random.key(1), 2)}
    save_learner(tmp_path, state, 1)
    restored, _ = load_learner(tmp_path, state)
    for name in ("w", "buffer", "age", "images"):
        assert restored[name].dtype == state[name].dtype
        assert np.asarray(restored[name]).tobytes() == np.asarray(state[name]).tobytes()
    assert np.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(state["key"]))


@pytest.mark.parametrize("change", ["dtype", "an array more", "a key as data"])
def test_a_checkpoint_of_another_dtype_or_structure_is_refused_naming_the_array(tmp_path, change):
    """A counter stored as float32 where the learner keeps int32 (a state whose dtype changed in a
    cljax between the stop and the resume): the resume compiled a program for the stored dtype and
    carried it on to the run's end, another computation than the run's. Refused in one line."""
    import jax

    from cljax.checkpoint import load_learner, save_learner

    state = {"age": np.arange(4, dtype=np.int32).reshape(2, 2), "key": jax.random.split(jax.random.key(1), 2)}
    stored = {"dtype": {**state, "age": state["age"].astype(np.float32)},
              "an array more": {**state, "zz": np.zeros(2, np.float32)},
              "a key as data": {**state, "key": np.asarray(jax.random.key_data(state["key"]))}}[change]
    save_learner(tmp_path, stored, 1)
    with pytest.raises(CljaxError) as refused:
        load_learner(tmp_path, state)
    message = str(refused.value)
    assert "\n" not in message and "does not match this config's learner state: pass --overwrite" in message
    assert {"dtype": "its array 0 (['age']) is float32 (2, 2), this config's int32 (2, 2)",
            "an array more": "it holds 3 arrays, this config's learner 2",
            "a key as data": "its array 1 (['key']) is uint32 (2, 2), this config's key<fry> (2,)"}[change] in message
