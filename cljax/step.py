"""The states and the steps of ONE repeat: the continual learner and the expert.

Everything here is a pure function of one repeat's arrays; ``cljax.program`` maps it over the
repeats and the devices. ``Parts`` holds the static pieces every function needs (the model, the
rule, the options, the optimisers) and is passed as the first argument, so the functions are
module-level and the program is built from them, not from closures.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.models import CLASSIFIER_GROUP

# Fixed stream ids of the key lineage: seed -> root -> (learner init | task t -> expert init,
# shuffling, per-step keys). fold_in by ids (not split) so a resumed run draws the same keys.
KEY_LEARNER_INIT, KEY_TASKS = 0, 1
KEY_EXPERT_INIT, KEY_SHUFFLE, KEY_STEPS, KEY_OPTIONS, KEY_EXPERT_RULE = 0, 1, 2, 3, 4
KEY_LEARNER_RULE = 2  # folded into a repeat's init key (after its split into params / options)
KEY_HEAD = 5  # a task's stream for --head reset --head-reset-to init


class LearnerState(NamedTuple):
    """Everything the continual learner carries across tasks (one repeat; the program stacks
    repeats on a leading axis R)."""

    params: Any
    model_state: Any  # the model's mutable collections (BatchNorm statistics); {} for most models
    opt_state: Any
    rule_state: Any
    option_states: tuple


class ExpertState(NamedTuple):
    """A model trained from scratch on the current task only (plain SGD, no options)."""

    params: Any
    model_state: Any
    opt_state: Any
    rule_state: Any


class Parts(NamedTuple):
    """The static pieces of a run's program."""

    net: Any  # cljax.models.Net
    rule: Any  # cljax.rules.Rule
    options: tuple  # cljax.options.Option, enabled ones in registry order
    learner_tx: optax.GradientTransformation
    expert_tx: optax.GradientTransformation
    paired: bool  # learner and expert directions in one call batched over the pair
    heads: Any = None  # cljax.heads.HeadSpec: the output layer across tasks (None: one shared head)


def param_groups(params):
    """Label each top-level layer 'classifier' (the head) or 'features', for per-group rates."""
    return {name: ("classifier" if name == CLASSIFIER_GROUP else "features") for name in params}


def make_optimizer(config, momentum: float) -> optax.GradientTransformation:
    def sgd(lr):
        return optax.sgd(lr, momentum=momentum or None)

    return optax.multi_transform(
        {"features": sgd(config.lr_features_value), "classifier": sgd(config.lr_classifier_value)},
        param_groups,
    )


def init_learner(parts: Parts, key) -> LearnerState:
    """A fresh continual learner from its repeat's init key."""
    k_params, k_opts = jax.random.split(key)
    params, model_state = parts.net.init(k_params)
    opt_keys = jax.random.split(k_opts, max(len(parts.options), 1))
    return LearnerState(
        params=params,
        model_state=model_state,
        opt_state=parts.learner_tx.init(params),
        rule_state=parts.rule.init(params, jax.random.fold_in(key, KEY_LEARNER_RULE)),
        option_states=tuple(o.init(params, k) for o, k in zip(parts.options, opt_keys)),
    )


def init_expert(parts: Parts, key_init, key_rule) -> ExpertState:
    """A fresh expert for one task."""
    params, model_state = parts.net.init(key_init)
    return ExpertState(params, model_state, parts.expert_tx.init(params), parts.rule.init(params, key_rule))


def learner_batch(parts: Parts, state: LearnerState, images, labels_B, key):
    """The batch the learner trains on: the task's, changed by the options (replay appends)."""
    # Per-example weights let an option append examples it may not have yet (replay before
    # the first task ends) with weight 0, so the batch shape stays static.
    weights_B = jnp.ones(labels_B.shape, jnp.float32)
    for i, opt in enumerate(parts.options):
        images, labels_B, weights_B = opt.batch(state.option_states[i], images, labels_B, weights_B,
                                                jax.random.fold_in(key, i))
    return images, labels_B, weights_B


def learner_update(parts: Parts, state: LearnerState, direction, rule_state, model_state, images, weights_B, key):
    """Every option's ``direction`` hook, the optimiser step along the result, then option by
    option its ``step_end`` and its ``step_reset``."""
    for i, opt in enumerate(parts.options):
        direction = opt.direction(state.option_states[i], state.params, direction)
    updates, opt_state = parts.learner_tx.update(direction, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    opt_states = list(state.option_states)
    for i, opt in enumerate(parts.options):
        k_opt = jax.random.fold_in(key, i)
        opt_states[i], params = opt.step_end(opt_states[i], params, model_state, k_opt, images, weights_B)
        opt_states[i], params, opt_state = opt.step_reset(opt_states[i], params, opt_state, model_state,
                                                          jax.random.fold_in(k_opt, 1), images, weights_B)
    return LearnerState(params, model_state, opt_state, rule_state, tuple(opt_states))


def expert_update(parts: Parts, expert: ExpertState, direction, rule_state, model_state) -> ExpertState:
    updates, opt_state = parts.expert_tx.update(direction, expert.opt_state, expert.params)
    return ExpertState(optax.apply_updates(expert.params, updates), model_state, opt_state, rule_state)


def both_steps(parts: Parts, learner: LearnerState, expert: ExpertState, images, labels_B, key_learner, key_expert):
    """One step of the learner (rule + options + optimiser) and of the expert (rule + SGD).
    Returns (learner, learner metrics, expert, expert metrics)."""
    rule, net = parts.rule, parts.net
    k_rule, k_batch, k_end = jax.random.split(key_learner, 3)
    l_images, l_labels, l_weights = learner_batch(parts, learner, images, labels_B, k_batch)
    e_weights = jnp.ones(labels_B.shape, jnp.float32)
    if parts.paired:  # the same batch: both directions in one call batched over the pair
        def direction(params, model_state, rule_state, key):
            return rule.direction(net, params, model_state, rule_state, images, labels_B, e_weights, key)

        pair = jax.tree.map(lambda a, b: jnp.stack([a, b]),
                            (learner.params, learner.model_state, learner.rule_state, k_rule),
                            (expert.params, expert.model_state, expert.rule_state, key_expert))
        out = jax.vmap(direction)(*pair)
        (l_dir, l_rule_state, l_model_state, l_aux), (e_dir, e_rule_state, e_model_state, e_aux) = (
            jax.tree.map(lambda a, i=i: a[i], out) for i in (0, 1))
    else:
        l_dir, l_rule_state, l_model_state, l_aux = rule.direction(
            net, learner.params, learner.model_state, learner.rule_state, l_images, l_labels, l_weights, k_rule)
        e_dir, e_rule_state, e_model_state, e_aux = rule.direction(
            net, expert.params, expert.model_state, expert.rule_state, images, labels_B, e_weights, key_expert)
    with jax.named_scope("update"):  # options and optimisers (benchmarks/profile_task.py)
        learner = learner_update(parts, learner, l_dir, l_rule_state, l_model_state, l_images, l_weights, k_end)
        expert = expert_update(parts, expert, e_dir, e_rule_state, e_model_state)
    return learner, l_aux, expert, e_aux


def options_hook(parts: Parts, hook_name: str, learner: LearnerState, keys, *args) -> LearnerState:
    """Run one task-boundary hook (``task_start``, ``task_end``) of every option; ``keys[i]``
    is option i's key."""
    opt_states = list(learner.option_states)
    params = learner.params
    for i, opt in enumerate(parts.options):
        opt_states[i], params = getattr(opt, hook_name)(opt_states[i], params, keys[i], *args)
    return learner._replace(params=params, option_states=tuple(opt_states))
