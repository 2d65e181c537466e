"""The compiled programs of a run, and the ONE place where the repeat axis R and the device
split appear.

``train_task`` and ``evaluate_snapshots`` are written for one repeat; here they are mapped over
the repeats a device holds (``map_repeats``: ``jax.vmap``, or a loop of ``lax.map`` over single
repeats, faster on the CPU), and over the devices with ``jax.shard_map`` (each device runs its
R / n_devices repeats; repeats never communicate). The per-repeat keys are drawn here, for all R
repeats, before the split, so a repeat's numbers do not depend on how R is divided.

How the program lowers (loop or vmap, learner and expert paired or separate, the convolution,
the devices) is a ``Lowering``, chosen per backend and recorded in every task's metadata.json.
Each choice changes how the program runs, not what it computes (the same numbers up to float
rounding, tests/test_sharding.py; ``--scan-unroll`` is one of them). Two settings of the run
recorded beside them are the exceptions: the matmul precision (``--matmul-precision``, applied
to every matmul and convolution the programs trace; on a GPU it changes the numbers, TF32 at
"default") and the compute dtype (``--compute-dtype``, the network's activations).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from functools import partial, wraps
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from cljax.devices.mesh import REPEATS_AXIS, device_count, mesh_devices, repeat_mesh
from cljax.errors import CljaxError
from cljax.evaluate import evaluate_snapshots
from cljax.heads import HeadSpec, n_heads_of
from cljax.host import usable_cores
from cljax.models import (ModelContext, build_model, check_compute_dtype, check_model_outputs, make_net,
                          resolve_conv_impl)
from cljax.options import keeps_batch, make_options
from cljax.registry import generation as registry_generation
from cljax.rules import make_rule
from cljax.step import (KEY_EXPERT_INIT, KEY_EXPERT_RULE, KEY_HEAD, KEY_LEARNER_INIT, KEY_OPTIONS, KEY_SHUFFLE,
                        KEY_STEPS, Parts, init_learner, make_optimizer)
from cljax.train import Sizes, TaskKeys, train_task


class Lowering(NamedTuple):
    """How a run's program is lowered; recorded in metadata.json."""

    repeats: str  # "loop" (lax.map over a device's repeats) or "vmap"
    learner_expert: str  # "paired" (one call batched over the two models) or "separate"
    conv: str  # one of cljax.models.CONV_IMPLS
    devices: int  # devices R is split over
    matmul_precision: str  # jax.default_matmul_precision of every traced matmul and convolution (--matmul-precision)
    compute_dtype: str  # the network's activations, matmuls and convolutions (--compute-dtype)
    scan_unroll: int  # training steps per iteration of the step loop (--scan-unroll)

    def record(self) -> dict:
        return {**self._asdict(), "backend": jax.default_backend()}


def with_precision(fn, precision: str):
    """``fn`` traced under ``jax.default_matmul_precision(precision)``: every matmul and
    convolution without a precision of its own takes it (it is fixed in the traced program, so
    it holds however and whenever ``fn`` is jitted, lowered or called)."""

    @wraps(fn)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return traced


def loop_repeats_default() -> bool:
    """A device's repeats one after another (``lax.map``) on a CPU, where a repeat's activations
    then stay in cache; batched (``jax.vmap``) on accelerators (docs/benchmark.md)."""
    return jax.default_backend() == "cpu"


def paired_models_default(n_devices: int) -> bool:
    """The learner's and the expert's directions in one call batched over the pair: on
    accelerators, and on a CPU device with one core to itself; not on a CPU device that spans
    several cores, where XLA spreads each model's own ops over the cores better
    (docs/benchmark.md)."""
    return jax.default_backend() != "cpu" or usable_cores() <= n_devices


def map_repeats(fn, in_axes: tuple, loop: bool):
    """``fn`` of one repeat mapped over the repeat axis, axis ``in_axes[i]`` of argument i (every
    leaf; None: shared); outputs carry R on axis 0. ``loop``: ``lax.map`` over the repeats, each
    reading its slice in place (no copy of the inputs with R moved first), else ``jax.vmap``."""
    if not loop:
        return jax.vmap(fn, in_axes=in_axes)

    def looped(*args):
        n = next(jax.tree.leaves(a)[0].shape[ax] for a, ax in zip(args, in_axes) if ax is not None)

        def one(r):
            return fn(*(a if ax is None else jax.tree.map(
                lambda leaf, ax=ax: lax.dynamic_index_in_dim(leaf, r, ax, keepdims=False), a)
                for a, ax in zip(args, in_axes)))

        return lax.map(one, jnp.arange(n))

    return looped


def task_keys(task_key, n_repeats: int, sizes: Sizes, n_options: int) -> TaskKeys:
    """Every repeat's keys for one task, leading axis R: the one place the key lineage splits
    over the repeats. Task key -> stream (fold_in by id) -> split over R."""

    def over_repeats(k):
        return jax.random.split(k, n_repeats)

    def per_repeat(keys_XR):  # (X, R) -> (R, X)
        return jnp.swapaxes(keys_XR, 0, 1)

    k_steps = jax.random.fold_in(task_key, KEY_STEPS)
    step_pairs = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(k_steps, i)))(jnp.arange(sizes.steps))
    k_options = jax.random.fold_in(task_key, KEY_OPTIONS)

    def option_keys(hook_id):
        k_hook = jax.random.fold_in(k_options, hook_id)
        return per_repeat(jnp.stack([over_repeats(jax.random.fold_in(k_hook, i)) for i in range(max(n_options, 1))]))

    return TaskKeys(
        expert_init=over_repeats(jax.random.fold_in(task_key, KEY_EXPERT_INIT)),
        expert_rule=over_repeats(jax.random.fold_in(task_key, KEY_EXPERT_RULE)),
        shuffle=per_repeat(jax.vmap(over_repeats)(jax.random.split(jax.random.fold_in(task_key, KEY_SHUFFLE),
                                                                   sizes.epochs))),
        learner_steps=per_repeat(jax.vmap(over_repeats)(step_pairs[:, 0])),
        expert_steps=per_repeat(jax.vmap(over_repeats)(step_pairs[:, 1])),
        task_start=option_keys(0),
        task_end=option_keys(1),
        head=over_repeats(jax.random.fold_in(task_key, KEY_HEAD)),
    )


class TaskProgram(NamedTuple):
    """A run's compiled programs and what they were built from."""

    init_learner: Any  # seed key -> LearnerState (leading R)
    run_task: Any  # jitted (learner, train_x_NR, train_y_NR, cur_test_x_NR, cur_test_y_NR, task_idx, task_key) -> (learner, trace)
    evaluate: Any  # jitted ((weights, model_state) (L,R,...), test_x_KNR, test_y_KNR, task_ids_K) -> acc, loss (L,R,K), reps (L,R,K,S,H)
    parts: Parts
    sizes: Sizes
    lowering: Lowering


def build_parts(config, image_shape, conv_impl: str | None = None, paired: bool = False) -> Parts:
    """The model, rule, options and optimisers of a (validated) config."""
    conv = conv_impl or resolve_conv_impl(config.conv_impl)
    outputs = config.out_dim * n_heads_of(config)  # one block of out_dim per head (cljax/heads.py)
    module = build_model(config.model, config.model_params,
                         ModelContext(outputs, tuple(image_shape), conv, config.compute_dtype))
    net = make_net(module, tuple(image_shape), config.compute_dtype)
    check_compute_dtype(net, config.model, config.compute_dtype)
    check_model_outputs(net, config.model, outputs, needs_head=(
        "--head reset" if config.head == "reset" else
        "--lr-classifier" if config.lr_classifier_value != config.lr_features_value else None))
    return Parts(net=net, rule=make_rule(config, net), options=make_options(config, net),
                 learner_tx=make_optimizer(config, config.momentum), expert_tx=make_optimizer(config, 0.0), paired=paired,
                 heads=HeadSpec.of(config))


def init_compiler_options() -> dict:
    """XLA's options for the learner's initialisation on this backend. On the CPU, LLVM at XLA's
    default optimisation level (3) spends most of that program's compile on the random-number code
    of its initialisers (threefry's loops, the truncated normal's erf_inv); level 2 compiles it in
    a fraction of that time and gives the same bits (tests/test_initial_state.py checks them;
    docs/benchmark.md, the times). The program runs once per run, so its own speed does not
    matter. Elsewhere: XLA's defaults."""
    return {"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else {}


# The programs built in this process, by everything they are built from: the same setup built
# again (a resume in the same process, the same config with another results folder, a notebook)
# gets the same jitted functions back, and with them jit's caches: nothing is traced, lowered or
# compiled again. The few most recent setups are kept.
_BUILT: OrderedDict = OrderedDict()
KEPT_SETUPS = 4
NOT_IN_PROGRAM = ("results_dir", "device_memory")  # settings a program never reads


def clear_built_programs() -> None:
    """Forget the programs kept by ``build_task_program`` (the next build traces anew)."""
    _BUILT.clear()


def build_task_program(config, image_shape, *, loop_repeats: bool | None = None,
                       paired_models: bool | None = None) -> TaskProgram:
    """The jitted programs of a (validated) config for images of ``image_shape`` (H, W[, C]).
    ``loop_repeats``, ``paired_models``: override the config's --repeat-axis and
    --learner-expert (None: the config's choice; ``auto`` there is the backend's default)."""
    loop = loop_repeats
    if loop is None:
        loop = loop_repeats_default() if config.repeat_axis == "auto" else config.repeat_axis == "loop"
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_PROGRAM}
    key = (json.dumps(settings, sort_keys=True, default=repr), tuple(image_shape), loop, paired_models,
           jax.default_backend(), tuple(d.id for d in mesh_devices()), usable_cores(), registry_generation())
    if key in _BUILT:
        _BUILT.move_to_end(key)
        return _BUILT[key]
    program = _build_task_program(config, image_shape, loop, paired_models)
    _BUILT[key] = program
    while len(_BUILT) > KEPT_SETUPS:
        _BUILT.popitem(last=False)
    return program


def _build_task_program(config, image_shape, loop: bool, paired_models: bool | None) -> TaskProgram:
    n_shards = device_count()
    parts = build_parts(config, image_shape)
    # The pair needs one batch for both: not with an option that changes the learner's (replay).
    same_batch = all(keeps_batch(o) for o in parts.options)
    if paired_models is None:
        if config.learner_expert == "paired" and not same_batch:
            raise CljaxError("--learner-expert paired needs the learner's batch to be the expert's, and --use-replay "
                             "changes it: use --learner-expert auto or separate.")
        paired_models = (paired_models_default(n_shards) if config.learner_expert == "auto"
                         else config.learner_expert == "paired")
    paired = paired_models and same_batch
    parts = parts._replace(paired=paired)
    sizes = Sizes.of(config)
    R = config.n_repeats
    lowering = Lowering("loop" if loop else "vmap", "paired" if paired else "separate",
                        resolve_conv_impl(config.conv_impl), n_shards, config.matmul_precision, config.compute_dtype,
                        config.scan_unroll)

    def init_all(seed_key):
        keys = jax.random.split(jax.random.fold_in(seed_key, KEY_LEARNER_INIT), R)
        return jax.vmap(partial(init_learner, parts))(keys)

    one_task = map_repeats(partial(train_task, parts, sizes), (0, 1, 1, 1, 1, None, 0), loop)
    one_eval = map_repeats(partial(evaluate_snapshots, parts.net, sizes, heads=parts.heads), (1, 2, 2, None), loop)

    def train_shard(learner, train_x, train_y, test_x, test_y, task_idx, keys):
        learner, trace = one_task(learner, train_x, train_y, test_x, test_y, task_idx, keys)
        return learner, jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), trace)  # (R, L, ...) -> (L, R, ...)

    def eval_shard(models_LR, test_x_KNR, test_y_KNR, task_ids_K):
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), one_eval(models_LR, test_x_KNR, test_y_KNR, task_ids_K))

    if n_shards > 1:
        # check_vma off: every output varies over the devices (no value is shared), so there is
        # nothing for the replication check to find, and it would ask for casts in every scan carry.
        mesh, rep, rep1, rep2 = repeat_mesh(), P(REPEATS_AXIS), P(None, REPEATS_AXIS), P(None, None, REPEATS_AXIS)
        train_shard = jax.shard_map(train_shard, mesh=mesh, in_specs=(rep, rep1, rep1, rep1, rep1, P(), rep),
                                    out_specs=(rep, rep1), check_vma=False)
        eval_shard = jax.shard_map(eval_shard, mesh=mesh, in_specs=(rep1, rep2, rep2, P()), out_specs=rep1, check_vma=False)

    def run_task(learner, train_x, train_y, test_x, test_y, task_idx, task_key):
        keys = task_keys(task_key, R, sizes, len(parts.options))
        return train_shard(learner, train_x, train_y, test_x, test_y, task_idx, keys)

    precise = partial(with_precision, precision=config.matmul_precision)
    return TaskProgram(init_learner=jax.jit(precise(init_all), compiler_options=init_compiler_options()),
                       run_task=jax.jit(precise(run_task), donate_argnums=(0,)),
                       evaluate=jax.jit(precise(eval_shard)), parts=parts, sizes=sizes, lowering=lowering)
