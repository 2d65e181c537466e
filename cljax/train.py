"""The per-task program: one jitted function that trains the continual learner and a fresh
expert side by side on the same batches, for R repeats at once, and returns the snapshots.

Data flow inside ``run_task`` (all on the device, no host sync):

    train_images_NRHW uint8 --(per-epoch, per-repeat permutations)--> step indices (steps, B, R)
    scan over steps:  batch (B, R, H, W) gathered from the indices
                      vmap over R: learner step (rule + options + optimiser), expert step (rule + SGD)
    every log_frequency steps: stack the learner's weights and train metrics, evaluate the
                      expert on the current task -> outputs of an outer scan, leading axis L

Then ``evaluate`` runs the stacked weights (task start + L snapshots) on the test sets of all
T tasks, resident in one call or streamed K tasks at a time; the result is the same function of
the same inputs either way. Both stay on the device until the one transfer at task end.

The repeat axis is added only here, around single-repeat functions: by ``jax.vmap``, or on a
CPU by a loop over the repeats (``over_repeats``), which is faster there. With R split over
several devices (GPUs, or a CPU host split one device per core), the whole program runs inside
one ``shard_map``: each device trains its R / n repeats, and the repeats never communicate.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from cljax.devices import REPEATS_AXIS, device_count, repeat_mesh
from cljax.host import usable_cores
from cljax.losses import nll_and_correct
from cljax.models import CLASSIFIER_GROUP, make_model
from cljax.options import keeps_batch, make_options
from cljax.rules import make_rule

# Fixed stream ids of the key lineage: seed -> root -> (learner init | task t -> expert init,
# shuffling, per-step keys). fold_in by ids (not split) so a resumed run draws the same keys.
KEY_LEARNER_INIT, KEY_TASKS = 0, 1
KEY_EXPERT_INIT, KEY_SHUFFLE, KEY_STEPS, KEY_OPTIONS, KEY_EXPERT_RULE = 0, 1, 2, 3, 4
KEY_LEARNER_RULE = 2  # folded into a repeat's init key (after its split into params / options)


class LearnerState(NamedTuple):
    """Everything the continual learner carries across tasks; every leaf has leading axis R."""

    params: Any
    opt_state: Any
    rule_state: Any
    option_states: tuple


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


def loop_repeats_default() -> bool:
    """Whether the training and evaluation steps run a device's repeats one after another
    (``lax.map``) instead of batched (``jax.vmap``). On a CPU the loop keeps a repeat's
    activations in cache and is 1.1-2.0x faster at R = 4..32 (benchmarks/throughput.py); on
    accelerators the batched form is the right one."""
    return jax.default_backend() == "cpu"


def paired_models_default(n_devices: int) -> bool:
    """Whether the learner and the expert compute their update directions in one call batched
    over the pair (``jax.vmap``) when they train on the same batch: the first layer's patches
    are built once, and each op does the work of both. Yes on accelerators and on a CPU device
    with one core to itself (the default split, 2 CPU devices: 1.02-1.10x for SL at R = 4-32,
    1.04x for RL, 0.93-1.00x for Bio; docs/benchmark.md); no on a CPU device that spans several
    cores, where XLA spreads each of the two models' own ops over the cores better (0.77-0.93x
    paired). On a GPU the pairing is the natural batched form, but it is not measured yet."""
    return jax.default_backend() != "cpu" or usable_cores() <= n_devices


def over_repeats(fn, in_axes: tuple, loop: bool):
    """``fn`` of one repeat mapped over the repeat axis, which is axis ``in_axes[i]`` of argument
    i (every leaf of it); outputs carry R on axis 0. ``loop``: a ``lax.map`` over single repeats
    (the same numbers up to float rounding), else ``jax.vmap``."""
    if not loop:
        return jax.vmap(fn, in_axes=in_axes)

    def looped(*args):
        leading = tuple(jax.tree.map(lambda a, ax=ax: jnp.moveaxis(a, ax, 0), arg) for arg, ax in zip(args, in_axes))
        return lax.map(lambda one: fn(*one), leading)

    return looped


class TaskProgram(NamedTuple):
    """The pieces of an experiment's compiled task program and how to start its state."""

    init_learner: Any  # key -> LearnerState (leading R)
    run_task: Any  # jitted (learner, train_x, train_y, cur_test_x, cur_test_y, task_idx, task_key) -> (learner, trace)
    evaluate: Any  # jitted (weights_LR, test_x_KNRHW, test_y_KNR) -> (acc, loss (L,R,K), reps (L,R,K,S,H))
    apply_fn: Any  # (params, images_BHW) -> (logits, hidden), one repeat
    init_params: Any  # key -> params, one repeat
    paired_models: bool  # learner and expert directions batched over the pair (paired_models_default)


def build_task_program(config, *, loop_repeats: bool | None = None, paired_models: bool | None = None) -> TaskProgram:
    """Build the jitted per-task program for a (validated) config. ``loop_repeats``: see
    :func:`loop_repeats_default`; ``paired_models``: see :func:`paired_models_default` (None:
    those choices). Each changes only how the program lowers, not what it computes (the same
    numbers up to float rounding, tests/test_sharding.py)."""
    loop = loop_repeats_default() if loop_repeats is None else loop_repeats
    # R split over D devices: every device runs the same program on its R / D repeats, inside one
    # shard_map (repeats never communicate); below, R is the global count, RL a device's share.
    n_shards = device_count()
    model = make_model(config)
    rule = make_rule(config)
    learner_tx = make_optimizer(config, config.momentum)
    expert_tx = make_optimizer(config, 0.0)
    R, B, S = config.n_repeats, config.batch_size, config.n_subsamples
    RL = R // n_shards
    E, NB, LF, L = config.epochs, config.batches_per_epoch, config.log_frequency, config.n_logs
    head_steps = config.steps_per_task - L * LF
    rep_dtype = jnp.dtype(config.representation_dtype)

    def apply_fn(params, images_BHW):
        return model.apply({"params": params}, images_BHW)

    def init_params(key):
        return model.init(key, jnp.zeros((1, 28, 28), jnp.uint8))["params"]

    options = make_options(config, apply_fn, init_params)
    # The pair needs one batch for both: not with an option that changes the learner's (replay).
    paired = (paired_models_default(n_shards) if paired_models is None else paired_models) and all(
        keeps_batch(o) for o in options)

    def repeat_keys(key):
        """One key per repeat, the same for repeat r however R is split: this device's RL of
        the R keys."""
        keys = jax.random.split(key, R)
        if n_shards == 1:
            return keys
        return lax.dynamic_slice_in_dim(keys, lax.axis_index(REPEATS_AXIS) * RL, RL)

    def init_learner_one(key):
        k_params, k_opts = jax.random.split(key)
        params = init_params(k_params)
        opt_keys = jax.random.split(k_opts, max(len(options), 1))
        return LearnerState(
            params=params,
            opt_state=learner_tx.init(params),
            rule_state=rule.init(params, jax.random.fold_in(key, KEY_LEARNER_RULE)),
            option_states=tuple(o.init(params, k) for o, k in zip(options, opt_keys)),
        )

    def init_learner(seed_key):
        keys = jax.random.split(jax.random.fold_in(seed_key, KEY_LEARNER_INIT), R)
        return jax.vmap(init_learner_one)(keys)

    # ---- single-repeat steps -------------------------------------------------------------
    def learner_batch(state: LearnerState, images_BHW, labels_B, k_batch):
        # Per-example weights let an option append examples it may not have yet (replay before
        # the first task ends) with weight 0, so the batch shape stays static.
        weights_B = jnp.ones(labels_B.shape, jnp.float32)
        for i, opt in enumerate(options):
            images_BHW, labels_B, weights_B = opt.batch(
                state.option_states[i], images_BHW, labels_B, weights_B, jax.random.fold_in(k_batch, i)
            )
        return images_BHW, labels_B, weights_B

    def learner_update(state: LearnerState, direction, rule_state, images_BHW, weights_B, k_end):
        updates, opt_state = learner_tx.update(direction, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        opt_states = list(state.option_states)
        for i, opt in enumerate(options):
            opt_states[i], params = opt.step_end(opt_states[i], params, jax.random.fold_in(k_end, i), images_BHW, weights_B)
        return LearnerState(params, opt_state, rule_state, tuple(opt_states))

    def expert_update(expert, direction, rule_state):
        params, opt_state, _ = expert
        updates, opt_state = expert_tx.update(direction, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, rule_state

    def both_steps(learner: LearnerState, expert, images_BHW, labels_B, key_learner, key_expert):
        """One step of the learner (rule + options + optimiser) and of the expert (rule + SGD)."""
        k_rule, k_batch, k_end = jax.random.split(key_learner, 3)
        l_images, l_labels, l_weights = learner_batch(learner, images_BHW, labels_B, k_batch)
        e_weights = jnp.ones(labels_B.shape, jnp.float32)
        if paired:  # the same batch: both directions in one call batched over the pair
            def direction(params, rule_state, key):
                return rule.direction(apply_fn, params, rule_state, images_BHW, labels_B, e_weights, key)

            pair = jax.tree.map(lambda a, b: jnp.stack([a, b]), (learner.params, learner.rule_state, k_rule),
                                (expert[0], expert[2], key_expert))
            out = jax.vmap(direction)(*pair)
            (l_dir, l_rule_state, l_aux), (e_dir, e_rule_state, e_aux) = (jax.tree.map(lambda a, i=i: a[i], out) for i in (0, 1))
        else:
            l_dir, l_rule_state, l_aux = rule.direction(apply_fn, learner.params, learner.rule_state, l_images, l_labels,
                                                        l_weights, k_rule)
            e_dir, e_rule_state, e_aux = rule.direction(apply_fn, expert[0], expert[2], images_BHW, labels_B, e_weights,
                                                        key_expert)
        learner = learner_update(learner, l_dir, l_rule_state, l_images, l_weights, k_end)
        return learner, l_aux, expert_update(expert, e_dir, e_rule_state), e_aux

    def options_hook(hook_name, learner: LearnerState, key, *args):
        """Run one task-boundary hook of every option, vmapped over repeats."""
        opt_states = list(learner.option_states)
        params = learner.params
        for i, opt in enumerate(options):
            keys = repeat_keys(jax.random.fold_in(key, i))
            hook = getattr(opt, hook_name)
            opt_states[i], params = jax.vmap(hook, in_axes=(0, 0, 0) + tuple(a[1] for a in args))(
                opt_states[i], params, keys, *(a[0] for a in args)
            )
        return learner._replace(params=params, option_states=tuple(opt_states))

    # ---- evaluation ------------------------------------------------------------------------
    n_test = config.n_test
    chunk = max(c for c in range(1, min(config.eval_batch_size, n_test) + 1) if n_test % c == 0)

    def evaluate_one(params_R, x_NRHW, y_NR):
        """Accuracy, loss (R,) and hidden (R, N, H) on one test set, in chunks of test images
        (small chunks keep the convolution patches in cache: 2x faster on the CPU)."""
        x_CKRHW = x_NRHW.reshape(n_test // chunk, chunk, *x_NRHW.shape[1:])
        y_CKR = y_NR.reshape(n_test // chunk, chunk, y_NR.shape[1])

        def one_chunk(xy):
            logits_RKO, hidden_RKH = over_repeats(apply_fn, (0, 1), loop)(params_R, xy[0])
            nll_RK, correct_RK = jax.vmap(nll_and_correct)(logits_RKO, xy[1].T)
            return nll_RK.sum(-1), correct_RK.sum(-1), hidden_RKH

        nll_CR, correct_CR, hidden_CRKH = lax.map(one_chunk, (x_CKRHW, y_CKR))
        hidden_RNH = jnp.moveaxis(hidden_CRKH, 1, 0).reshape(RL, n_test, -1)
        return correct_CR.sum(0) / n_test, nll_CR.sum(0) / n_test, hidden_RNH

    def evaluate(weights_LR, test_x_KNRHW, test_y_KNR):
        """The learner at every snapshot on K tasks' test sets:
        acc, loss (L, R, K) and representations of the S fixed test images (L, R, K, S, H).
        A pure function of (weights, test set), so evaluating the T tasks in one call or in
        chunks of K gives the same numbers."""

        def at_snapshot(params_R):
            def on_task(xy):
                acc_R, loss_R, hidden_RNH = evaluate_one(params_R, *xy)
                return acc_R, loss_R, hidden_RNH[:, :S].astype(rep_dtype)

            acc_KR, loss_KR, reps_KRSH = lax.map(on_task, (test_x_KNRHW, test_y_KNR))
            return acc_KR.T, loss_KR.T, jnp.swapaxes(reps_KRSH, 0, 1)

        return lax.map(at_snapshot, weights_LR)

    # ---- the task program ------------------------------------------------------------------
    def run_task(learner: LearnerState, train_x_NRHW, train_y_NR, test_x_NRHW, test_y_NR, task_idx, task_key):
        """Train the learner and a fresh expert on one task. Returns the learner and the trace:
        weights (L+1, R, ...) (index 0 = task start, then every snapshot), the learner's
        train loss/acc (L, R), and the expert's train and test (current task) loss/acc (L, R)."""
        N = train_x_NRHW.shape[0]
        k_expert = jax.random.fold_in(task_key, KEY_EXPERT_INIT)
        k_shuffle = jax.random.fold_in(task_key, KEY_SHUFFLE)
        k_steps = jax.random.fold_in(task_key, KEY_STEPS)
        k_options = jax.random.fold_in(task_key, KEY_OPTIONS)

        expert_params = jax.vmap(init_params)(repeat_keys(k_expert))
        expert_rule_keys = repeat_keys(jax.random.fold_in(task_key, KEY_EXPERT_RULE))
        expert = (expert_params, jax.vmap(expert_tx.init)(expert_params), jax.vmap(rule.init)(expert_params, expert_rule_keys))

        # Each repeat reshuffles its own data every epoch: indices (steps, B, R).
        def epoch_perm(k):
            return jax.vmap(lambda kk: jax.random.permutation(kk, N))(repeat_keys(k))  # (RL, N)

        perms_ERN = jax.vmap(epoch_perm)(jax.random.split(k_shuffle, E))
        idx_SBR = perms_ERN[:, :, : NB * B].reshape(E, RL, NB, B).transpose(0, 2, 3, 1).reshape(E * NB, B, RL)
        repeat_ids = jnp.arange(RL)[None, :]

        start_params = learner.params
        learner = options_hook("task_start", learner, jax.random.fold_in(k_options, 0), (task_idx, None))

        def step(carry, step_i):
            learner, expert, sums = carry
            idx_BR = lax.dynamic_index_in_dim(idx_SBR, step_i, 0, keepdims=False)
            x_BRHW = train_x_NRHW[idx_BR, repeat_ids]
            y_BR = train_y_NR[idx_BR, repeat_ids]
            key = jax.random.fold_in(k_steps, step_i)
            k_l, k_e = jax.random.split(key)
            # One map over repeats for both models: a repeat's batch stays in cache between
            # its learner and expert steps (1.1-1.2x faster on the CPU than two maps).
            learner, l_aux, expert, e_aux = over_repeats(both_steps, (0, 0, 1, 1, 0, 0), loop)(
                learner, expert, x_BRHW, y_BR, repeat_keys(k_l), repeat_keys(k_e)
            )
            sums = jax.tree.map(jnp.add, sums, (l_aux["loss"], l_aux["acc"], e_aux["loss"], e_aux["acc"], 1))
            return (learner, expert, sums), None

        zero_sums = (jnp.zeros(RL), jnp.zeros(RL), jnp.zeros(RL), jnp.zeros(RL), jnp.zeros((), jnp.int32))

        def interval(carry, interval_i):
            first = head_steps + interval_i * LF
            (learner, expert, sums), _ = lax.scan(step, carry, first + jnp.arange(LF))
            l_loss, l_acc, e_loss, e_acc, count = sums
            e_test_acc, e_test_loss, _ = evaluate_one(expert[0], test_x_NRHW, test_y_NR)
            snapshot = {
                "weights": learner.params,
                "train_loss": l_loss / count,
                "train_acc": l_acc / count,
                "expert_train_loss": e_loss / count,
                "expert_train_acc": e_acc / count,
                "expert_test_loss": e_test_loss,
                "expert_test_acc": e_test_acc,
            }
            return (learner, expert, zero_sums), snapshot

        carry = (learner, expert, zero_sums)
        if head_steps:
            carry, _ = lax.scan(step, carry, jnp.arange(head_steps))
        (learner, expert, _), trace = lax.scan(interval, carry, jnp.arange(L))
        trace["weights"] = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None], s]), start_params, trace["weights"])
        # Task-end hooks (e.g. filling the replay buffer) see the task's data, one repeat each.
        learner = options_hook(
            "task_end", learner, jax.random.fold_in(k_options, 1), (train_x_NRHW, 1), (train_y_NR, 1), (task_idx, None)
        )
        return learner, trace

    if n_shards > 1:
        # check_vma off: every output varies over the devices (no value is shared), so there is
        # nothing for the replication check to find, and it would ask for casts in every scan carry.
        mesh, rep, rep1, rep2 = repeat_mesh(), P(REPEATS_AXIS), P(None, REPEATS_AXIS), P(None, None, REPEATS_AXIS)
        run_task = jax.shard_map(run_task, mesh=mesh, in_specs=(rep, rep1, rep1, rep1, rep1, P(), P()),
                                 out_specs=(rep, rep1), check_vma=False)
        evaluate = jax.shard_map(evaluate, mesh=mesh, in_specs=(rep1, rep2, rep2), out_specs=rep1, check_vma=False)
    return TaskProgram(
        init_learner=jax.jit(init_learner),
        run_task=jax.jit(run_task, donate_argnums=(0,)),
        evaluate=jax.jit(evaluate),
        apply_fn=apply_fn,
        init_params=init_params,
        paired_models=paired,
    )
