"""Options of the continual learner (replay, shrink+perturb, unsupervised learning, ...) behind
one registry, one contract. Each hook is a pure function over ONE repeat; the trainer maps them
over the repeats.

    init(params, key) -> state                      per-repeat option state, kept across tasks
    task_start(state, params, key, task_idx) -> (state, params)
    batch(state, images, labels_B, weights_B, key) -> (images, labels, weights)
                                                    what the learner trains on (static shapes)
    direction(state, params, direction) -> direction
                                                    the rule's update direction, changed before
                                                    the optimiser consumes it (L2 terms); it
                                                    gets no key and returns no state: noise or
                                                    a count per step belongs in step_end
    step_end(state, params, model_state, key, images, weights_B) -> (state, params)
                                                    after the optimiser step
    step_reset(state, params, opt_state, model_state, key, images, weights_B)
        -> (state, params, opt_state)               after step_end: may also change the
                                                    learner's optimiser state (unit resets)
    task_end(state, params, key, train_images_N, train_labels_N, task_idx) -> (state, params)

``weights_B`` are the per-example weights of the rule's batch means (1 for the task's batch);
an option that appends examples it may not have yet gives them weight 0, so shapes stay static.
``step_end`` and ``step_reset`` see the batch the rule trained on; ``direction`` has the
structure of ``params`` (descent convention: the optimiser subtracts lr * direction), and the
options change it in registry order. ``opt_state`` is the learner optimiser's (optax) state; its
arrays that mirror a parameter (momentum, Adam's moments) sit under that parameter's path. After
the optimiser step each option runs its ``step_end`` then its ``step_reset``, option by option.
Unset hooks are identities and add nothing to the compiled program. The expert never runs options.

A new option is one file in this folder (or a plugin file)::

    @register_option("name", params=NameParams, tag="nm", flag="use-name")
    def make_name(params: NameParams, config, net) -> Option: ...

``flag`` turns it on (default ``--use-NAME``), its params fields become ``--{prefix}-{field}``
flags (prefix: the name unless given), and ``tag`` is its part of the results-folder name
(e.g. ``replay`` in ``SL_replay_T5``). ``net`` is the model (``cljax.models.Net``): its
``init`` draws fresh parameters, its ``apply`` runs the network. ``inert=fn`` (optional):
``fn(params, config)`` returns why the option would never act in a run of that config (a
period past its last step), or None; the command line warns with it (cljax.settings).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from cljax.errors import CljaxError
from cljax.hook_contract import OPTION_HOOKS, checked_hook
from cljax.models import masks_batch_statistics
from cljax.registry import OPTIONS, register_option


def _keep_state_params(state, params, *args):
    return state, params


def _keep_batch(state, images, labels, weights, key):
    return images, labels, weights


def _keep_direction(state, params, direction):
    return direction


def _keep_state_params_opt(state, params, opt_state, *args):
    return state, params, opt_state


class Option(NamedTuple):
    init: Callable[..., Any] = lambda params, key: ()
    task_start: Callable[..., tuple] = _keep_state_params
    batch: Callable[..., tuple] = _keep_batch
    direction: Callable[..., Any] = _keep_direction
    step_end: Callable[..., tuple] = _keep_state_params
    step_reset: Callable[..., tuple] = _keep_state_params_opt
    task_end: Callable[..., tuple] = _keep_state_params


def run_steps(config) -> tuple[int, str]:
    """The optimiser steps of a whole run, and the text that says how they add up (an option's
    ``inert`` reason: a period or an age past them)."""
    total = config.num_tasks * config.steps_per_task
    return total, f"{total} steps ({config.num_tasks} task(s) x {config.steps_per_task})"


def keeps_batch(option: Option) -> bool:
    """Whether the option leaves the learner's batch as it is (so the learner and the expert
    train on the same batch)."""
    return option.batch is _keep_batch


def _checked(option: Option, name: str) -> Option:
    """``option`` with each hook it sets checked against the contract above where it is traced
    (cljax/hook_contract.py); the identities it leaves unset stay as they are."""
    return option._replace(**{hook: checked_hook(getattr(option, hook), "option", name, hook, OPTION_HOOKS)
                              for hook in OPTION_HOOKS if getattr(option, hook) is not Option._field_defaults[hook]})


def make_options(config, net) -> tuple[Option, ...]:
    """The enabled options of a config, built with their settings, in registry order.

    An option that changes the batch may add examples of weight 0 (replay's empty slots before
    the first task ends): a model with batch statistics must then be told which examples count
    (a ``mask`` argument, cljax.models.Net), or it would count those too."""
    options = tuple(OPTIONS[name].build(params, config, net) for name, params in config.option_params)
    for (name, _), option in zip(config.option_params, options):
        if not isinstance(option, Option):
            raise CljaxError(f"option {name!r}: its builder returned a {type(option).__name__}, not a "
                             f"cljax.options.Option: return one.")
    options = tuple(_checked(option, name) for (name, _), option in zip(config.option_params, options))
    for (name, _), option in zip(config.option_params, options):
        if not keeps_batch(option) and net.state_collections and not masks_batch_statistics(net.module):
            raise CljaxError(
                f"option {name!r} adds examples of weight 0 to the batch, which the batch statistics "
                f"({', '.join(net.state_collections)}) of {type(net.module).__name__} would count: give its "
                "__call__ a mask argument (B,) as cljax/models/resnet.py does, or run without the option.")
    return options


__all__ = ["OPTIONS", "Option", "keeps_batch", "make_options", "register_option"]
