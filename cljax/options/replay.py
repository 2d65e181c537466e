"""Replay (``--use-replay``, tag ``replay``): a class-balanced-by-task buffer of earlier tasks'
images, kept on the device inside the learner state, mixed into every learner batch
(experience replay as in Rolnick et al. 2019 "Experience Replay for Continual Learning", with a
buffer shared equally by the tasks seen so far, cf. Chaudhry et al. 2019 "On Tiny Episodic
Memories in Continual Learning").

State of one repeat (the trainer keeps it with a leading repeat axis, so the device holds the
buffer as (R, M, H, W) uint8, not the (M, R, H, W) of the data layout: every leaf of the
learner state has leading axis R, which is what the vmapped hooks, the donation of the state
and the sharding of repeats over devices all rely on, and each repeat draws from its own
contiguous block):

    images  (M, H, W) uint8 (the dataset's image shape), labels (M,) int32 (the binary label in its task),
    task    (M,) int32, the task a slot holds, -1 for an empty slot.

Layout after task t (n = t + 1 tasks seen, M = ``--replay-size``): task k owns the contiguous
slots [floor(k M / n), floor((k + 1) M / n)), so every task holds floor or ceil of M / n images.
At the end of task t (hook ``task_end``) each earlier task keeps the first images of its old
range (a uniformly random subset stays one when truncated, because it was stored in random
order) and task t fills its range with a random sample, without replacement, of its training
images. Slots with nothing to hold (M > n_train, or M < n) are marked empty.

Mixing (hook ``batch``): every step appends ``--replay-batch`` images drawn uniformly, with
replacement, from the repeat's non-empty slots (each repeat with its own key) to the current
batch, each with weight 1; the batch becomes B + replay_batch images, a static shape. Before the
first task ends the buffer is empty and the appended images get weight 0, so they change neither
the update nor the metrics. The expert never replays (options run on the learner only).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from cljax.options import Option, register_option
from cljax.registry import param


@dataclass(frozen=True)
class ReplayParams:
    size: int = param(1000, "replay: M, buffer images per repeat, shared equally by the tasks seen so far", min=1)
    batch: int = param(32, "replay: buffer images added to each batch (weight 0 while the buffer is empty)", min=1)


def buffer_layout(task_idx, n_slots: int):
    """Owner task (M,) and rank within its range (M,) of every slot once tasks 0..task_idx are in."""
    n_tasks = task_idx + 1
    slots = jnp.arange(n_slots)
    owner = ((slots + 1) * n_tasks - 1) // n_slots  # the largest k with floor(k M / n) <= slot
    rank = slots - (owner * n_slots) // n_tasks
    return owner, rank


def task_end_update(state, key, train_images_NHW, train_labels_N, task_idx):
    """The buffer after task ``task_idx``: earlier tasks shrink to their new share, the task
    just learned fills its own (one repeat)."""
    M, N = state["task"].shape[0], train_labels_N.shape[0]
    owner, rank = buffer_layout(task_idx, M)
    # Earlier tasks: slot (k, rank) comes from the old range of k (t tasks), if it had that many.
    t_old = jnp.maximum(task_idx, 1)
    old_start = (owner * M) // t_old
    old_size = ((owner + 1) * M) // t_old - old_start
    src_old = jnp.minimum(old_start + rank, M - 1)
    keep_old = (rank < old_size) & (state["task"][src_old] == owner)
    # The new task: a random sample without replacement of its training images.
    src_new = jax.random.permutation(key, N)[jnp.minimum(rank, N - 1)]
    is_new = owner == task_idx
    per_slot = is_new.reshape(-1, *(1,) * (train_images_NHW.ndim - 1))  # (M, 1, 1[, 1]): gray or colour images
    images = jnp.where(per_slot, train_images_NHW[src_new], state["images"][src_old])
    labels = jnp.where(is_new, train_labels_N[src_new].astype(jnp.int32), state["labels"][src_old])
    filled = jnp.where(is_new, rank < N, keep_old)
    return {"images": images, "labels": labels, "task": jnp.where(filled, owner, -1).astype(jnp.int32)}


def draw_replay(state, key, n_draw: int):
    """``n_draw`` buffer images drawn uniformly from the filled slots, their labels, and weights
    (1, or 0 for all of them while the buffer is empty)."""
    filled = state["task"] >= 0
    any_filled = filled.any()
    logits = jnp.where(any_filled, jnp.where(filled, 0.0, -jnp.inf), 0.0)
    idx = jax.random.categorical(key, logits, shape=(n_draw,))
    weights = (filled[idx] & any_filled).astype(jnp.float32)
    return state["images"][idx], state["labels"][idx], weights


def _inert(params: ReplayParams, config) -> str | None:
    if config.num_tasks == 1:
        return "the buffer is filled as a task ends, so a one-task run replays nothing (its images weigh 0)"
    return None


@register_option("replay", params=ReplayParams, tag="replay", flag="use-replay", aliases=("--replay",),
                 inert=_inert)
def make_replay(params: ReplayParams, config, net) -> Option:
    """replay: mix images of earlier tasks from a balanced on-device buffer into every batch (tag replay)"""
    M, n_draw = params.size, params.batch

    def init(model_params, key):
        return {
            "images": jnp.zeros((M, *net.image_shape), jnp.uint8),
            "labels": jnp.zeros((M,), jnp.int32),
            "task": jnp.full((M,), -1, jnp.int32),
        }

    def batch(state, images_BHW, labels_B, weights_B, key):
        r_images, r_labels, r_weights = draw_replay(state, key, n_draw)
        return (
            jnp.concatenate([images_BHW, r_images.astype(images_BHW.dtype)]),
            jnp.concatenate([labels_B, r_labels.astype(labels_B.dtype)]),
            jnp.concatenate([weights_B, r_weights]),
        )

    def task_end(state, model_params, key, train_images_NHW, train_labels_N, task_idx):
        return task_end_update(state, key, train_images_NHW, train_labels_N, task_idx), model_params

    return Option(init=init, batch=batch, task_end=task_end)
