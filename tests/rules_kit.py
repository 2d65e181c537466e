"""What the rule and option tests share (tests/test_rules.py, tests/test_options.py): tiny
configs, real Fashion-MNIST batches, the compiled rule direction and model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cljax import results
from cljax.config import Config
from cljax.program import build_task_program
from cljax.registry import RULES
from cljax.rules import make_rule
from tests.conftest import FASHION_DIR, apply_fn_of, init_params_of, small_config

IMAGE_SHAPE = (28, 28)  # Fashion-MNIST


def DEFAULT_LR(algorithm):
    return RULES[algorithm].extra["default_lr"]


def program_of(config):
    return build_task_program(config, IMAGE_SHAPE)


def with_flat(config, **changes) -> Config:
    return Config.from_flat({**config.to_dict(), **changes})


TINY = dict(lr=None, num_tasks=2, n_repeats=2, n_train_per_class=16, n_test_per_class=8, n_subsamples=2,
            epochs=1, batch_size=16, log_frequency=1, replay_size=20, replay_batch=8)


def config_of(tmp_path, **overrides) -> Config:
    """conftest's one config builder, shrunk to a few steps per task."""
    return small_config(tmp_path, **{**TINY, **overrides})


def final_accuracy(algo_dir):
    """(T, T) matrix, rows = after task t (last snapshot), columns = task evaluated, mean over R."""
    return np.stack([results.load_metrics(d)["test_acc"][-1].mean(0) for d in results.task_dirs(algo_dir)])


@functools.lru_cache(maxsize=None)
def fashion_batch(n=32, seed=0):
    """n real training images and a 0/1 label (class parity), as the rules see a batch."""
    from cljax.data import load_dataset

    data = load_dataset(Config(data_dir=str(FASHION_DIR)))
    idx = np.sort(np.random.default_rng(seed).choice(len(data.train_labels), n, replace=False))
    labels = (np.asarray(data.train_labels)[idx] % 2).astype(np.int32)
    return jnp.asarray(np.asarray(data.train_images)[idx]), jnp.asarray(labels)


def jitted(rule, program):
    """The rule's direction and the model, compiled whole (eager op-by-op dispatch is slow)."""
    return jax.jit(rule.direction, static_argnums=0), jax.jit(apply_fn_of(program)), jax.jit(init_params_of(program))


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def compiled_rule(tmp_path, **overrides):
    """A tiny config's program, net, rule, the compiled (direction, apply, init) and initial params."""
    config = config_of(tmp_path, **overrides)
    program = program_of(config)
    net = program.parts.net
    rule = make_rule(config, net)
    fns = jitted(rule, program)
    return program, net, rule, fns, fns[2](jax.random.key(0))


class LinearPolicy:
    """A tiny stand-in for ``cljax.models.Net``: logits = x W + c, the hidden layer is x."""

    state_collections = ()

    @staticmethod
    def apply(params, model_state, x, train, weights=None):
        return x @ params["w"] + params["c"], x, model_state
