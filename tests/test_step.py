"""The plumbing of one step (cljax/step.py), with recording stand-in options on the tiny MLP:
the options' hooks run in registry order, each with its own key, and what each returns is what
the learner keeps (the optimiser state a unit reset zeroes, the model state the rule returns),
for the learner and for the expert."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.config import Config
from cljax.options import Option
from cljax.program import build_parts
from cljax.step import ExpertState, LearnerState, expert_update, learner_batch, learner_update, options_hook


def key_bits(key):
    return np.asarray(jax.random.key_data(key))


def recording_option(shift, scale):
    """direction -> (direction + shift) * scale; step_end and step_reset record their keys in the
    option's state; step_reset also sets the optimiser state to `scale` (as a unit reset changes
    it); every hook that gets a key records it."""

    def init(params, key):
        return {"end": jnp.zeros(2, jnp.uint32), "reset": jnp.zeros(2, jnp.uint32), "hook": jnp.zeros(2, jnp.uint32),
                "batch": jnp.zeros(2, jnp.uint32)}

    def direction(state, params, d):
        return jax.tree.map(lambda x: (x + shift) * scale, d)

    def step_end(state, params, model_state, key, images, weights_B):
        return {**state, "end": jax.random.key_data(key)}, params

    def step_reset(state, params, opt_state, model_state, key, images, weights_B):
        return {**state, "reset": jax.random.key_data(key)}, params, jax.tree.map(
            lambda a: jnp.full_like(a, scale), opt_state)

    def task_start(state, params, key, task_idx):
        return {**state, "hook": jax.random.key_data(key)}, params

    return Option(init=init, direction=direction, step_end=step_end, step_reset=step_reset, task_start=task_start)


def tiny_parts(**flat):
    config = Config.from_flat(dict(model="mlp", mlp_hidden=4, mlp_depth=2, lr=0.5, **flat))
    parts = build_parts(config, (1, 3))
    params, _ = parts.net.init(jax.random.key(0))
    return parts, params


def test_the_learner_update_chains_the_options_and_keeps_what_their_hooks_return():
    parts, params = tiny_parts(momentum=0.9)
    parts = parts._replace(options=(recording_option(1.0, 2.0), recording_option(0.0, 3.0)))
    states = tuple(o.init(params, None) for o in parts.options)
    state = LearnerState(params, {"stats": jnp.zeros(3)}, parts.learner_tx.init(params), {"rule": jnp.ones(1)}, states)
    direction = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    new_model_state, new_rule_state = {"stats": jnp.arange(3.0)}, {"rule": jnp.full(1, 7.0)}
    key = jax.random.key(11)
    images, weights = jnp.zeros((5, 1, 3), jnp.uint8), jnp.ones(5)
    new = jax.jit(lambda s: learner_update(parts, s, direction, new_rule_state, new_model_state, images, weights, key))(
        state)
    # option 0, then option 1, then the optimiser (fresh momentum: one plain SGD step at lr 0.5)
    for got, p in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, np.asarray(p) - 0.5 * ((0.25 + 1.0) * 2.0 + 0.0) * 3.0, rtol=1e-6)
    # the optimiser state the last step_reset returned (its momentum trace set to 3), not the optimiser's own
    for leaf in jax.tree.leaves(new.opt_state):
        np.testing.assert_array_equal(leaf, 3.0)
    # the model and rule state the step was given
    np.testing.assert_array_equal(new.model_state["stats"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(new.rule_state["rule"], [7.0])
    # option i's step_end draws from fold_in(key, i), its step_reset from fold_in of that by 1
    for i, s in enumerate(new.option_states):
        np.testing.assert_array_equal(s["end"], key_bits(jax.random.fold_in(key, i)))
        np.testing.assert_array_equal(s["reset"], key_bits(jax.random.fold_in(jax.random.fold_in(key, i), 1)))
    drawn = {bytes(np.asarray(s[h])) for s in new.option_states for h in ("end", "reset")}
    assert len(drawn) == 4


def test_the_expert_keeps_the_rules_new_state_and_steps_by_plain_sgd():
    parts, params = tiny_parts(momentum=0.9)  # the learner's momentum is not the expert's
    expert = ExpertState(params, {"stats": jnp.zeros(3)}, parts.expert_tx.init(params), {"rule": jnp.ones(1)})
    direction = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    new = jax.jit(lambda e: expert_update(parts, e, direction, {"rule": jnp.full(1, 7.0)}, {"stats": jnp.arange(3.0)}))(
        expert)
    np.testing.assert_array_equal(new.model_state["stats"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(new.rule_state["rule"], [7.0])
    twice = jax.jit(lambda e: expert_update(parts, e, direction, e.rule_state, e.model_state))(new)
    for got, p in zip(jax.tree.leaves(twice.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(got, np.asarray(p) - 2 * 0.5 * 0.25, rtol=1e-6)  # no momentum: two equal steps


def test_each_option_gets_its_own_key_in_the_batch_and_the_boundary_hooks():
    parts, params = tiny_parts()
    seen = []

    def batch_of(i):
        def batch(state, images, labels, weights, key):
            seen.append((i, key_bits(key), np.asarray(weights)))
            return images, labels, weights * (i + 2)
        return batch

    parts = parts._replace(options=tuple(recording_option(0.0, 1.0)._replace(batch=batch_of(i)) for i in range(2)))
    states = tuple(o.init(params, None) for o in parts.options)
    learner = LearnerState(params, {}, parts.learner_tx.init(params), {}, states)
    key = jax.random.key(5)
    _, _, weights = learner_batch(parts, learner, jnp.zeros((4, 1, 3), jnp.uint8), jnp.zeros(4, jnp.int32), key)
    np.testing.assert_array_equal(weights, 6.0)  # ones, then option 0's factor 2, then option 1's 3
    assert [i for i, _, _ in seen] == [0, 1]
    np.testing.assert_array_equal(seen[0][2], 1.0)
    for i, bits, _ in seen:
        np.testing.assert_array_equal(bits, key_bits(jax.random.fold_in(key, i)))
    keys = jax.random.split(jax.random.key(6), 2)
    started = options_hook(parts, "task_start", learner, keys, jnp.int32(1))
    for i, s in enumerate(started.option_states):
        np.testing.assert_array_equal(s["hook"], key_bits(keys[i]))
