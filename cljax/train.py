"""Train ONE repeat on one task: the continual learner and a fresh expert side by side on the
same batches, with snapshots every ``log_frequency`` steps.

Data flow inside ``train_task`` (all on the device, no host sync):

    train_images_N uint8 --(per-epoch permutations)--> step indices (steps, B)
    scan over steps:  batch (B, H, W) gathered from the indices
                      learner step (rule + options + optimiser), expert step (rule + SGD)
    every log_frequency steps: the learner's weights and train metrics, the expert evaluated
                      on the current task -> outputs of an outer scan, leading axis L

``cljax.program`` maps this over the repeats and devices; the repeat's keys come in as
``TaskKeys`` (drawn there, so a repeat's keys do not depend on how R is split).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cljax.evaluate import evaluate_one
from cljax.heads import reset_head, with_head
from cljax.step import LearnerState, Parts, both_steps, init_expert, options_hook


class Sizes(NamedTuple):
    """The static sizes of a task's program."""

    epochs: int
    batches_per_epoch: int
    batch_size: int
    log_frequency: int
    n_logs: int
    head_steps: int  # steps before the first snapshot interval (the remainder)
    n_subsamples: int
    eval_chunk: int  # test images per forward pass in evaluation
    rep_dtype: Any
    unroll: int  # steps per iteration of the compiled step loop (lax.scan's unroll)

    @classmethod
    def of(cls, config) -> "Sizes":
        return cls(config.epochs, config.batches_per_epoch, config.batch_size, config.log_frequency, config.n_logs,
                   config.steps_per_task - config.n_logs * config.log_frequency, config.n_subsamples, config.eval_chunk(),
                   jnp.dtype(config.representation_dtype), config.scan_unroll)

    @property
    def steps(self) -> int:
        return self.epochs * self.batches_per_epoch


class TaskKeys(NamedTuple):
    """One repeat's keys for one task."""

    expert_init: Any
    expert_rule: Any
    shuffle: Any  # (E,) one per epoch
    learner_steps: Any  # (steps,)
    expert_steps: Any  # (steps,)
    task_start: Any  # (max(n_options, 1),) one per option
    task_end: Any
    head: Any  # --head reset --head-reset-to init: the fresh output layer's draw


def batch_indices(shuffle_keys, n: int, batches_per_epoch: int, batch_size: int):
    """The training examples of every step, (E * batches_per_epoch, batch_size): each epoch is its
    own permutation of the n examples (one key each, ``shuffle_keys`` (E,)), cut into batches;
    the n - batches_per_epoch * batch_size examples an epoch's permutation puts last sit it out."""
    perms_EN = jax.vmap(lambda k: jax.random.permutation(k, n))(shuffle_keys)
    return perms_EN[:, : batches_per_epoch * batch_size].reshape(-1, batch_size)


def evaluation_state(net, model, train_x_N, order_N):
    """The mutable collections a snapshot of ``model`` is evaluated with: recomputed from its
    weights on the task's training images in the order ``order_N`` (the first epoch's shuffle:
    the same images at every snapshot, the classes mixed) when the network says so
    (``Net.eval_state``: the ResNet's precise BatchNorm), else its running averages. Training
    keeps the running averages."""
    if net.eval_state is None:
        return model.model_state
    return net.eval_state(model.params, model.model_state, train_x_N, order_N)


def train_task(parts: Parts, sizes: Sizes, learner: LearnerState, train_x_N, train_y_N, test_x_N, test_y_N, task_idx,
               keys: TaskKeys):
    """Train the learner and a fresh expert on one task (one repeat). Returns the learner and
    the trace: weights and model state (L+1, ...) (index 0 = task start, after the task-start
    options; then every snapshot),
    the learner's train loss/acc (L,), and the expert's train and test (current task) loss/acc (L,)."""
    N, B, LF = train_x_N.shape[0], sizes.batch_size, sizes.log_frequency
    expert = init_expert(parts, keys.expert_init, keys.expert_rule)
    idx_SB = batch_indices(keys.shuffle, N, sizes.batches_per_epoch, B)

    # Task-start hooks (shrink+perturb at a boundary, the head's reset) come first: the trace's
    # row 0, evaluated as the task's start and saved as its start weights, is the state this
    # task's training starts from.
    learner = options_hook(parts, "task_start", learner, keys.task_start, task_idx)
    if parts.heads is not None:  # the output layer across tasks (cljax/heads.py)
        learner = learner._replace(params=reset_head(parts.net, parts.heads, learner.params, keys.head))
        parts = parts._replace(net=with_head(parts.net, parts.heads, task_idx))
    start = (learner.params, learner.model_state)

    def step(carry, step_i):
        learner, expert, sums = carry
        idx_B = lax.dynamic_index_in_dim(idx_SB, step_i, 0, keepdims=False)
        learner, l_aux, expert, e_aux = both_steps(parts, learner, expert, train_x_N[idx_B], train_y_N[idx_B],
                                                   keys.learner_steps[step_i], keys.expert_steps[step_i])
        sums = jax.tree.map(jnp.add, sums, (l_aux["loss"], l_aux["acc"], e_aux["loss"], e_aux["acc"], 1))
        return (learner, expert, sums), None

    zero_sums = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), jnp.zeros((), jnp.int32))

    def interval(carry, interval_i):
        first = sizes.head_steps + interval_i * LF
        (learner, expert, sums), _ = lax.scan(step, carry, first + jnp.arange(LF), unroll=sizes.unroll)
        l_loss, l_acc, e_loss, e_acc, count = sums
        l_state, e_state = (evaluation_state(parts.net, model, train_x_N, idx_SB.reshape(-1))
                            for model in (learner, expert))
        e_test_acc, e_test_loss, _ = evaluate_one(parts.net, expert.params, e_state, test_x_N, test_y_N,
                                                  sizes.eval_chunk)
        snapshot = {
            "weights": learner.params,
            "model_state": l_state,  # what the snapshot is evaluated with (cljax.evaluate)
            "train_loss": l_loss / count,
            "train_acc": l_acc / count,
            "expert_train_loss": e_loss / count,
            "expert_train_acc": e_acc / count,
            "expert_test_loss": e_test_loss,
            "expert_test_acc": e_test_acc,
        }
        return (learner, expert, zero_sums), snapshot

    carry = (learner, expert, zero_sums)
    if sizes.head_steps:
        carry, _ = lax.scan(step, carry, jnp.arange(sizes.head_steps), unroll=sizes.unroll)
    (learner, expert, _), trace = lax.scan(interval, carry, jnp.arange(sizes.n_logs))
    for name, first in zip(("weights", "model_state"), start):
        trace[name] = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s]), first, trace[name])
    # Task-end hooks (e.g. filling the replay buffer) see the task's data.
    learner = options_hook(parts, "task_end", learner, keys.task_end, train_x_N, train_y_N, task_idx)
    return learner, trace
