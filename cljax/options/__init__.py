"""Options of the continual learner (replay, shrink+perturb, unsupervised learning) behind one
registry, one contract. Each hook is a pure function over ONE repeat; the trainer vmaps them.

    init(params, key) -> state                      per-repeat option state, kept across tasks
    task_start(state, params, key, task_idx) -> (state, params)
    batch(state, images_BHW, labels_B, weights_B, key) -> (images, labels, weights)
                                                    what the learner trains on (static shapes)
    step_end(state, params, key, images_BHW, weights_B) -> (state, params)   after the optimiser step
    task_end(state, params, key, train_images_NHW, train_labels_N, task_idx) -> (state, params)

``weights_B`` are the per-example weights of the rule's batch means (1 for the task's batch);
an option that appends examples it may not have yet gives them weight 0, so shapes stay static.
``step_end`` sees the batch the rule trained on. Unset hooks are identities. The expert never
runs options. An entry registers
``(enabled(config) -> bool, factory(config, apply_fn, init_fn) -> Option, tag)``; ``tag`` is the
option's part of the results-folder name (e.g. ``replay`` in ``SL_replay_T5``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple


def _keep_state_params(state, params, *args):
    return state, params


def _keep_batch(state, images, labels, weights, key):
    return images, labels, weights


class Option(NamedTuple):
    init: Callable[..., Any] = lambda params, key: ()
    task_start: Callable[..., tuple] = _keep_state_params
    batch: Callable[..., tuple] = _keep_batch
    step_end: Callable[..., tuple] = _keep_state_params
    task_end: Callable[..., tuple] = _keep_state_params


def keeps_batch(option: Option) -> bool:
    """Whether the option leaves the learner's batch as it is (so the learner and the expert
    train on the same batch)."""
    return option.batch is _keep_batch


class OptionEntry(NamedTuple):
    enabled: Callable[[Any], bool]
    factory: Callable[..., Option]
    tag: str


OPTIONS: dict[str, OptionEntry] = {}


def register_option(name: str, enabled: Callable[[Any], bool], tag: str):
    def wrap(factory):
        OPTIONS[name] = OptionEntry(enabled, factory, tag)
        return factory

    return wrap


def active_options(config) -> list[str]:
    """Names of the options a config turns on, in registry order."""
    return [name for name, entry in OPTIONS.items() if entry.enabled(config)]


def make_options(config, apply_fn, init_fn) -> tuple[Option, ...]:
    return tuple(OPTIONS[name].factory(config, apply_fn, init_fn) for name in active_options(config))


from cljax.options import replay  # noqa: E402,F401  (entries register on import, in tag order)
from cljax.options import shrink_perturb  # noqa: E402,F401
from cljax.options import ul  # noqa: E402,F401
