"""The output layer across tasks (``--head``): one shared by every task, the same one reset at
every task start, or one per task.

- ``shared``: every task is read through the same ``out_dim`` outputs. Accuracy on an earlier
  task then measures the representation AND whether the current read-out still separates that
  task's pair (label 0 of one pair and label 0 of another share an output), so "forgetting"
  through a shared head is partly a read-out effect; the linear probe separates the two.
- ``reset``: as ``shared``, but at the start of every task (the first included) the output
  layer's weights and bias are set to zero (``--head-reset-to zero``, the loss-of-plasticity
  protocol's choice) or drawn afresh from the model's initialiser (``init``). The optimiser
  state (momentum) is kept. As under ``shared``, an earlier task is read through the head the
  latest task trained; the task-start evaluation reads the reset head (chance under ``zero``).
- ``multi``: one block of ``out_dim`` outputs per task (the model's output layer has
  ``n_heads * out_dim`` units); task t trains and is evaluated through block ``t mod n_heads``,
  so an earlier task keeps its own read-out and forgetting is that of the representation and of
  the task's own head. Its block gets a zero gradient, not none: with plain SGD it stays as its
  task left it, but the learner's momentum trace, ``--use-l2`` / ``--use-l2-init``,
  shrink+perturb and the unit resets of ``--use-cbp`` / ``--use-redo`` (a reset unit's outgoing
  weights are zeroed into every block) go on moving it. ``n_heads`` is the number of tasks. The expert uses the current task's
  block too (the others stay at their initialisation and are never read).

Everything here is a function of ONE repeat, traced inside the task program; the head index is a
traced integer, so one compiled program serves every task.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cljax.models import CLASSIFIER_GROUP, Net

class HeadSpec(NamedTuple):
    """How a run's program treats its output layer (static)."""

    mode: str = "shared"
    reset_to: str = "zero"
    n_heads: int = 1
    out_dim: int = 1

    @classmethod
    def of(cls, config) -> "HeadSpec":
        return cls(config.head, config.head_reset_to, n_heads_of(config), config.out_dim)


def n_heads_of(config) -> int:
    """Blocks of ``out_dim`` outputs in the output layer: one per task under ``multi``."""
    return config.num_tasks if config.head == "multi" else 1


def with_head(net: Net, spec: HeadSpec, task_idx) -> Net:
    """``net`` reading only task ``task_idx``'s block of outputs (``multi``); ``net`` itself
    otherwise. The rules and the evaluation see ``out_dim`` logits either way."""
    if spec.mode != "multi":
        return net
    first = (jnp.asarray(task_idx, jnp.int32) % spec.n_heads) * spec.out_dim

    def apply(params, state, images, train: bool, weights=None):
        logits, hidden, new_state = net.apply(params, state, images, train, weights)
        return lax.dynamic_slice_in_dim(logits, first, spec.out_dim, axis=-1), hidden, new_state

    return net._replace(apply=apply)


def reset_head(net: Net, spec: HeadSpec, params: Any, key) -> Any:
    """The params with the output layer reset (``reset``: zeros, or a fresh draw from the
    initialiser with ``key``); unchanged under ``shared`` and ``multi``."""
    if spec.mode != "reset":
        return params
    if spec.reset_to == "zero":
        head = jax.tree.map(jnp.zeros_like, params[CLASSIFIER_GROUP])
    else:
        head = net.init(key)[0][CLASSIFIER_GROUP]
    return {**params, CLASSIFIER_GROUP: head}
