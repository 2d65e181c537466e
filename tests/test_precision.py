"""--matmul-precision: it reaches every matmul and convolution of the compiled programs, is
recorded, and is part of what a resume must match (a run recorded before it existed ran at
JAX's default). On the CPU the setting changes no numbers (XLA:CPU computes float32 dots in
float32 at every precision), so these tests read the lowered programs, where it is visible."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from cljax.config import Config
from cljax.program import build_task_program
from cljax.run_split import same_split
from cljax.setting_match import differing_settings

TINY = dict(dataset="synthetic", num_tasks=1, n_repeats=2, n_train_per_class=8, n_test_per_class=4, n_subsamples=4,
            epochs=1, batch_size=8, log_frequency=2)
MATMUL_OPS = re.compile(r"stablehlo\.(dot_general|convolution)\b")


def lowered_texts(config: Config) -> dict[str, str]:
    """The StableHLO text of the task program and of the evaluation, lowered from shapes only."""
    program = build_task_program(config, (28, 28))
    R, n, n_test = config.n_repeats, config.n_train, config.n_test
    key = jax.random.key(0)
    learner = jax.eval_shape(program.init_learner, key)
    x = jax.ShapeDtypeStruct((n, R, 28, 28), jnp.uint8)
    y = jax.ShapeDtypeStruct((n, R), jnp.int32)
    test_x = jax.ShapeDtypeStruct((n_test, R, 28, 28), jnp.uint8)
    test_y = jax.ShapeDtypeStruct((n_test, R), jnp.int32)
    _, trace = jax.eval_shape(program.run_task, learner, x, y, test_x, test_y, jnp.int32(0), key)
    models = (trace["weights"], trace["model_state"])
    return {
        "run_task": program.run_task.lower(learner, x, y, test_x, test_y, jnp.int32(0), key).as_text(),
        "evaluate": program.evaluate.lower(models, jax.ShapeDtypeStruct((1, n_test, R, 28, 28), jnp.uint8),
                                           jax.ShapeDtypeStruct((1, n_test, R), jnp.int32),
                                           jax.ShapeDtypeStruct((1,), jnp.int32)).as_text(),
    }


@pytest.mark.parametrize("precision, conv", [("highest", "lax"), ("default", "im2col"), ("high", "fused"),
                                             ("high", "fused-im2col")])
def test_the_precision_reaches_every_matmul_and_convolution(precision, conv):
    config = Config.from_flat(**TINY, conv_impl=conv, matmul_precision=precision).validate()
    tag = precision.upper()
    for name, text in lowered_texts(config).items():
        ops = [line for line in text.splitlines() if MATMUL_OPS.search(line)]
        # the CNN's forward and backward: at least three convolutions (or im2col dots) and three dense
        # layers; the fused first layer's forward pass has none (its products are elementwise)
        assert len(ops) >= (5 if conv.startswith("fused") else 6), name
        for line in ops:
            assert f"precision = [{tag}, {tag}]" in line or f"precision_config = [#stablehlo<precision {tag}>, " \
                f"#stablehlo<precision {tag}>]" in line, (name, line)
    assert build_task_program(config, (28, 28)).lowering.record()["matmul_precision"] == precision


def test_the_precision_is_part_of_the_resume_key_and_older_runs_ran_at_the_default():
    assert Config().matmul_precision == "highest"
    recorded = Config().to_dict()
    assert recorded["matmul_precision"] == "highest"
    assert differing_settings(recorded, Config.from_flat(matmul_precision="default")) == ["matmul_precision"]
    older = {k: v for k, v in recorded.items() if k != "matmul_precision"}  # recorded before the setting existed
    assert differing_settings(older, Config()) == ["matmul_precision"]
    assert differing_settings(older, Config.from_flat(matmul_precision="default")) == []


def test_an_older_split_without_the_precision_is_the_same_split_at_the_default():
    split = {"backend": "cpu", "devices": 1, "processes": 1,
             "lowering": {"repeats": "loop", "learner_expert": "separate", "conv": "im2col", "devices": 1,
                          "backend": "cpu", "matmul_precision": "default", "compute_dtype": "float32", "scan_unroll": 1}}
    older = {**split, "lowering": {k: v for k, v in split["lowering"].items() if k != "matmul_precision"}}
    assert same_split(older, split) and same_split(None, split)
    assert not same_split(older, {**split, "lowering": {**split["lowering"], "matmul_precision": "highest"}})


def test_a_bad_precision_is_one_clear_error():
    from cljax.errors import CljaxError

    with pytest.raises(CljaxError, match="--matmul-precision"):
        Config.from_flat(matmul_precision="tf32").validate()
