"""What a run will take: device memory and host memory per task, and how evaluation runs (test
sets resident, or streamed K tasks at a time). ``choose_eval_chunk`` is the one place where
resident or chunked evaluation is decided; ``cljax run`` calls it before it writes anything, and
``cljax plan`` (cljax/plan.py) reports the same figures.

A ``Budget`` is sized from the run's own task program (``cljax.program``), built once by the
caller, never here.

Shapes come from ``jax.eval_shape`` of the real task program (traced, never compiled), so a new
rule, option (e.g. a replay buffer in the learner state) or model is accounted for without
touching this file. Device figures are the arrays a task holds at its high-water mark: the
learner state, the task's training data, the current test set, the snapshot buffers, the test
sets of evaluation (all T, or two chunks of K while streaming) and the evaluation outputs (all T,
or two chunks); "T" there is the task slots each snapshot evaluates (``--eval-tasks``: T, 1 or the
window's K). XLA's scratch space is estimated separately and roughly, from the model's
activations. The disk a run takes: ``cljax.budget_disk``.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax.config import Config
from cljax.devices.memory import CGROUP_SOURCE
from cljax.devices.mesh import repeat_sharding
from cljax.errors import CljaxError
from cljax.eval_tasks import eval_slots, eval_tasks_of
from cljax.registry import MODELS
from cljax.units import fmt_bytes

LABEL_DTYPE = np.int32  # labels as TaskData builds them
HEADROOM = 0.9  # a run may plan for this fraction of the device budget (allocator, runtime)
# What a run's process holds beyond the runtime `cljax plan` sees and the arrays the budget counts:
# XLA compiling the task programs, their executables, the writer's buffers. Measured as the peak
# (VmHWM) of `cljax run` against the plan's figure, on the CPU without the compilation cache, for
# several models, rules, options and R (docs/scale.md); a model with larger programs registers
# more (``compile_allowance``).
RUN_EXTRA_HOST_BYTES = 800 * 2**20


# ---- shapes of the task program, traced once per config -----------------------------------------
@dataclasses.dataclass(frozen=True)
class ProgramBytes:
    """Device bytes of one experiment's arrays, summed over repeats (independent of devices)."""

    learner: dict  # part name -> bytes (params, opt_state, rule_state, option:<name>)
    snapshots: dict  # weights (L+1, R, P), train_metrics, expert_metrics
    eval_per_task: dict  # acc, loss, representations of ONE evaluated task, (L+1, R, 1, ...)
    n_params: int  # per repeat
    hidden: int  # H, width of the saved representation
    activation_bytes_per_image: int  # the model's layer outputs for one image (rough scratch basis)
    learner_batch: int  # images per learner step and repeat: --batch-size, plus what options append (replay)
    statistics_images: int = 0  # images per repeat of a snapshot's recomputed BatchNorm statistics (Net.eval_state)


def _host_shape_dtype(leaf) -> tuple[tuple, np.dtype]:
    """Shape and numpy dtype of a leaf as stored (a typed PRNG key as its raw uint32 data)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype)
    return tuple(leaf.shape), np.dtype(leaf.dtype)


def _bytes(tree) -> int:
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape, dtype = _host_shape_dtype(leaf)
        total += math.prod(shape) * dtype.itemsize
    return int(total)


class Budget(NamedTuple):
    """A config, its built task program, the dataset's image shape and the program's sizes."""

    config: Config
    program: Any
    image_shape: tuple
    pb: ProgramBytes

    @classmethod
    def of(cls, config: Config, program, image_shape) -> "Budget":
        return cls(config, program, tuple(image_shape), program_bytes(config, program, tuple(image_shape)))


def program_bytes(config: Config, program, image_shape: tuple) -> ProgramBytes:
    """Trace (not compile) the config's task program and size its arrays."""
    R, N, Nt = config.n_repeats, config.n_train, config.n_test
    sds = jax.ShapeDtypeStruct
    key = jax.eval_shape(lambda: jax.random.key(0))
    # With the shardings the run places them with (cljax.devices.mesh), the arguments trace as
    # the run's own do, so the run's jit finds this trace of run_task in its cache.
    learner = jax.tree.map(lambda a: sds(a.shape, a.dtype, sharding=repeat_sharding(a.ndim, 0)),
                           jax.eval_shape(program.init_learner, key))

    def images(n, *lead):
        return sds((*lead, n, R, *image_shape), jnp.uint8, sharding=repeat_sharding(len(lead) + 2 + len(image_shape),
                                                                                      len(lead) + 1))

    def labels(n, *lead):
        return sds((*lead, n, R), LABEL_DTYPE, sharding=repeat_sharding(len(lead) + 2, len(lead) + 1))

    _, trace = jax.eval_shape(
        program.run_task, learner, images(N), labels(N), images(Nt), labels(Nt), sds((), jnp.int32), key
    )
    acc, loss, reps = jax.eval_shape(program.evaluate, (trace["weights"], trace["model_state"]), images(Nt, 1),
                                     labels(Nt, 1), sds((1,), jnp.int32))

    parts = {"params": _bytes(learner.params), "model_state": _bytes(learner.model_state),
             "opt_state": _bytes(learner.opt_state), "rule_state": _bytes(learner.rule_state)}
    for (name, _), state in zip(config.option_params, learner.option_states):
        parts[f"option:{name}"] = _bytes(state)
    metric_keys = [k for k in trace if k not in ("weights", "model_state")]
    snapshots = {
        "weights": _bytes(trace["weights"]) + _bytes(trace["model_state"]),
        "train_metrics": _bytes([trace[k] for k in metric_keys if not k.startswith("expert_")]),
        "expert_metrics": _bytes([trace[k] for k in metric_keys if k.startswith("expert_")]),
    }

    net = program.parts.net
    one_params, one_state = jax.eval_shape(net.init, key)

    def forward(params, state, x):
        return net.module.apply({"params": params, **state}, x, train=False, capture_intermediates=True,
                                mutable=["intermediates"])

    _, inter = jax.eval_shape(forward, one_params, one_state, sds((1, *image_shape), jnp.uint8))
    from cljax.step import learner_batch  # the program's own: a budget never builds one

    one_repeat = jax.tree.map(lambda leaf: sds(leaf.shape[1:], leaf.dtype), learner)
    B = config.batch_size
    _, batch_labels, _ = jax.eval_shape(lambda *a: learner_batch(program.parts, *a), one_repeat,
                                        sds((B, *image_shape), jnp.uint8), sds((B,), LABEL_DTYPE), key)
    return ProgramBytes(
        learner=parts,
        snapshots=snapshots,
        eval_per_task={"acc": _bytes(acc), "loss": _bytes(loss), "representations": _bytes(reps)},
        n_params=int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(one_params))),
        hidden=int(reps.shape[-1]),
        activation_bytes_per_image=max(_bytes(inter), 1),
        learner_batch=int(batch_labels.shape[0]),
        statistics_images=min(getattr(net.module, "bn_eval_images", 0), config.n_train) if net.eval_state else 0,
    )


# ---- device memory ---------------------------------------------------------------------------------
def device_components(b: Budget, chunk_tasks: int) -> dict:
    """Bytes of every array a task holds on the devices at its high-water mark, summed over
    devices, for evaluation in chunks of ``chunk_tasks`` (== T: resident)."""
    config = b.config
    pb = b.pb
    R, N, Nt = config.n_repeats, config.n_train, config.n_test
    T = eval_slots(config)  # the task slots evaluated per task (all T, or a window)
    per_image = math.prod(b.image_shape) + np.dtype(LABEL_DTYPE).itemsize  # uint8 pixels + label
    resident = chunk_tasks >= T
    # Streaming keeps two chunks in flight: one evaluating, the previous one coming back.
    eval_tasks = T if resident else 2 * chunk_tasks
    out = {f"learner.{k}": v for k, v in pb.learner.items()}
    out["train_data"] = N * R * per_image
    out["current_test_set"] = Nt * R * per_image
    out.update({f"snapshots.{k}": v for k, v in pb.snapshots.items()})
    out["eval_test_sets"] = eval_tasks * Nt * R * per_image
    out.update({f"eval_outputs.{k}": v * eval_tasks for k, v in pb.eval_per_task.items()})
    return out


def scratch_parts(b: Budget) -> dict[str, int]:
    """A rough estimate of XLA's temporary buffers (not in jax.live_arrays), for the larger of:
    ``train``, a training step, which keeps learner and expert activations and their gradients
    (x3; the learner's batch includes what options append); ``evaluate``, an evaluation call,
    one batch of eval_batch_size images per repeat and the hidden layer of a whole test set, plus
    a copy of one test set (a call of one slot evaluates it twice: ``map_at_least_twice``);
    ``bn_statistics`` (a model with ``Net.eval_state``), a snapshot's pass over its images."""
    config = b.config
    pb = b.pb
    R, Nt = config.n_repeats, config.n_test
    eval_batch = config.eval_chunk()
    train = 3 * (pb.learner_batch + config.batch_size) * R * pb.activation_bytes_per_image + 2 * pb.learner["params"]
    one_test_set = Nt * R * (math.prod(b.image_shape) + np.dtype(LABEL_DTYPE).itemsize)
    evaluate = 2 * eval_batch * R * pb.activation_bytes_per_image + R * Nt * pb.hidden * 4 + one_test_set
    parts = {"train": int(train), "evaluate": int(evaluate)}
    if pb.statistics_images:  # a snapshot's BatchNorm statistics: one pass over these images
        parts["bn_statistics"] = int(pb.statistics_images * R * pb.activation_bytes_per_image)
    return parts


def scratch_bytes(b: Budget) -> int:
    return max(scratch_parts(b).values())


def _per_device(total: int, n_devices: int) -> int:
    # Every array a task holds has the repeat axis, split evenly over the devices.
    return -(-total // n_devices)


def fit_chunk(b: Budget, device_bytes: int, n_devices: int) -> int:
    """Largest K (T = resident) whose per-device footprint plus scratch fits HEADROOM x budget;
    0 when even K = 1 does not fit."""
    config = b.config
    T = eval_slots(config)
    usable = HEADROOM * device_bytes

    def need(k):
        return chunk_need(b, k, n_devices)

    if need(T) <= usable:
        return T
    # 2K tasks are in flight while streaming, so only 2K < T holds less than resident.
    fitting = [k for k in range((T - 1) // 2, 0, -1) if need(k) <= usable]
    return fitting[0] if fitting else 0


def chunk_need(b: Budget, k: int, n_devices: int) -> int:
    """Bytes per device of a task evaluating K tasks per call, XLA's scratch included."""
    return _per_device(sum(device_components(b, k).values()), n_devices) + _per_device(scratch_bytes(b), n_devices)


def given_chunk_problem(b: Budget, k: int, device_bytes: int, n_devices: int) -> CljaxError | None:
    """The error for an ``--eval-chunk-tasks`` K whose task does not fit the budget, or None."""
    need = chunk_need(b, k, n_devices)
    if need <= HEADROOM * device_bytes:
        return None
    return CljaxError(
        f"--eval-chunk-tasks {b.config.eval_chunk_tasks}: a task then needs about {fmt_bytes(need)} ({need:,} bytes) "
        f"per device, more than {HEADROOM:.0%} ({int(HEADROOM * device_bytes):,} bytes) of the "
        f"{fmt_bytes(device_bytes)} budget: lower it (0 chooses the largest that fits), or raise --device-memory. "
        f"`cljax plan` shows the parts.")


def device_budget_for(config: Config, device_bytes: int | None = None) -> tuple[int, str]:
    if device_bytes:
        return int(device_bytes), "given"
    if config.device_memory:
        return int(config.device_memory), "--device-memory"
    from cljax.devices.memory import device_budget

    return device_budget()


def evaluation_mode(chunk_tasks: int, slots: int) -> dict:
    """How a task's evaluation runs with chunks of ``chunk_tasks`` of its ``slots`` test sets, as
    ``cljax plan`` prints it and each task's metadata.json records it."""
    return {"mode": "resident" if chunk_tasks >= slots else "chunked", "chunk_tasks": min(chunk_tasks, slots)}


def choose_eval_chunk(b: Budget, device_bytes: int | None = None) -> int:
    """Tasks per evaluation call: ``--eval-chunk-tasks`` when set (refused when its task does not
    fit), else T (resident) when the whole task fits the per-device budget (``device_bytes``,
    else ``--device-memory``, else what the device reports), else the largest K that fits. Used
    by ``cljax run`` and ``cljax plan``."""
    config = b.config
    T = eval_slots(config)
    from cljax.devices.mesh import check_repeats, device_count

    check_repeats(config.n_repeats)
    budget, _ = device_budget_for(config, device_bytes)
    if config.eval_chunk_tasks:
        chunk = min(config.eval_chunk_tasks, T)
        problem = given_chunk_problem(b, chunk, budget, device_count())
        if problem is not None:
            raise problem
        return chunk
    chunk = fit_chunk(b, budget, device_count())
    if not chunk:
        from cljax.budget_refusal import does_not_fit  # the refusal's wording: its own module

        raise does_not_fit(b, budget, device_count())
    return chunk


# ---- host -----------------------------------------------------------------------------------------
def host_components(b: Budget, data, chunk: int) -> dict[str, int]:
    """Host bytes of a run beyond the Python/JAX runtime, by part (``data``: the loaded dataset,
    ``chunk``: the evaluation's K). The dataset counts when it is in RAM, not memory-mapped."""
    config, pb = b.config, b.pb
    spec, T, R, L = eval_tasks_of(config), config.num_tasks, config.n_repeats, config.n_logs
    slots = spec.slots(T)
    per_image = math.prod(b.image_shape) + np.dtype(LABEL_DTYPE).itemsize
    return {
        "dataset_in_ram": sum(int(a.nbytes) for a in (data.train_images, data.train_labels, data.test_images,
                                                      data.test_labels) if not isinstance(a, np.memmap)),
        # all / seen: kept on the host only while streaming; a window: its K sets and the next task's
        "test_sets": (T if spec.full else slots + 1) * config.n_test * R * per_image,
        "train_data_current_and_next": 2 * config.n_train * R * per_image,
        "fetched_task_outputs": sum(pb.snapshots.values()) + slots * sum(pb.eval_per_task.values()),
        "results_copies": L * R * pb.n_params * 4 + L * R * slots * config.n_subsamples,
        "learner_copy": sum(pb.learner.values()),
        "compilation_and_executables": compile_allowance(config),  # measured
    }


def compile_allowance(config: Config) -> int:
    """Host bytes for compiling and holding the task programs (an allowance, measured): the base
    one, and what the model registers beyond it (``compile_host_bytes(params)``), for a model
    whose programs are larger than the CNN's, on which the base was measured."""
    extra = MODELS[config.model].extra.get("compile_host_bytes")
    if extra is None:
        return RUN_EXTRA_HOST_BYTES
    try:  # a function of the model's params: one that takes other arguments is the registration's fault
        fits = callable(extra) and inspect.signature(extra).bind(config.model_params) is not None
    except (TypeError, ValueError):
        fits = False
    value = extra(config.model_params) if fits else None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        got = f"returned {value!r}" if fits else f"is {extra if callable(extra) else repr(extra)}"
        raise CljaxError(f"model {config.model!r}: its compile_host_bytes must be a function of its params that returns "
                         f"a whole number of bytes >= 0, and {got}: fix its registration.")
    return RUN_EXTRA_HOST_BYTES + int(value)


def host_total(b: Budget, data, chunk: int) -> int:
    """The run's host bytes: its parts, and on the CPU its device arrays, which live there too,
    twice (the task program's inputs and its outputs are held at once), and XLA's temporaries,
    one training batch's activations: all three grow with R (the ResNet's activations are 17
    times the CNN's per image; docs/scale.md has the measured peaks)."""
    device = 0
    if jax.default_backend() == "cpu":
        batch = b.pb.learner_batch * b.config.n_repeats * b.pb.activation_bytes_per_image
        device = 2 * sum(device_components(b, chunk).values()) + batch
    return sum(host_components(b, data, chunk).values()) + device


def host_problem(b: Budget, data, chunk: int, available: tuple[int, str]) -> CljaxError | None:
    """The error a run that needs more host memory than ``available`` (now, with its dataset
    already loaded; bytes and where the figure comes from, ``devices.memory.host_available``)
    gets, or None. ``cljax run`` refuses before it writes anything."""
    available, source = available
    more = host_total(b, data, chunk) - host_components(b, data, chunk)["dataset_in_ram"]
    if more <= HEADROOM * available:
        return None
    compiling = compile_allowance(b.config)
    model = (f"--{b.config.model}-* settings that make its task programs smaller (compiling them takes "
             f"{fmt_bytes(compiling)}), " if compiling > RUN_EXTRA_HOST_BYTES else "")
    use = [*(["--eval-tasks window:K"] if b.config.eval_tasks in ("all", "seen") else []),
           *(["--representation-dtype bfloat16"] if b.config.representation_dtype == "float32" else [])]
    fix = "run under a larger memory limit (SLURM: --mem)" if source.startswith(CGROUP_SOURCE) else "free memory"
    return CljaxError(
        f"the run needs about {fmt_bytes(more)} ({more:,} bytes) more host memory, more than {HEADROOM:.0%} of the "
        f"{fmt_bytes(available)} available ({source}): lower --n-repeats, --n-train-per-class, --n-test-per-class, "
        f"--n-subsamples or snapshots (raise --log-frequency), {'use ' + ' or '.join(use) + ', ' if use else ''}"
        f"{model}or {fix}. `cljax plan` shows the parts.")
