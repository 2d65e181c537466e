"""The experiment config: one frozen, typed object, validated once, saved with every result.

The top level holds what every run has. The settings of the selected rule, model and dataset
and of each enabled option are their own frozen params dataclasses (``cljax.registry``), held
in ``rule_params``, ``model_params``, ``dataset_params`` and ``option_params``.

Flat settings are the common currency of the command line, sweeps, run.json and metadata.json:
one name per flag (``rl_entropy``, ``use_replay``, ``replay_size``, ...). ``Config.from_flat``
builds a config from them (missing ones take their defaults), ``to_dict`` writes them back for
what is in use. A run's record carries ``SCHEMA_VERSION``; resume compares ``resume_key``s
(cljax/setting_match.py), so a release that adds a setting with a default still resumes old runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cljax.errors import CljaxError
from cljax.flags import check_dataclass, check_value, field_types
from cljax.registry import CONV_IMPLS, DATASETS, MODELS, OPTIONS, RULES, Entry, default_lr, param

# The record's schema: its settings, and what they compute. 3: Bio's feedback through the im2col
# lowerings' pool follows the forward pass; 4: CBP ranks units by their age-corrected utility, BatchNorm
# leaves weight-0 examples out of its statistics, shrink+perturb keeps constant-initialised parameters
# (BatchNorm scales) at their size (a run that a correction touches, recorded before it, is not
# resumed: code_changes.changed_since); 5: the ResNet follows --conv-impl (before, it ran XLA's
# convolution whatever its record's lowering says: run_split.recorded_split).
SCHEMA_VERSION = 5
# Settings that change how fast a run goes, where it is written or what it keeps beside its results, not
# what it computes: a resume need not match them (some change the float rounding, the last bits of losses
# and representations).
SPEED_ONLY = ("results_dir", "eval_batch_size", "eval_chunk_tasks", "device_memory", "scan_unroll", "repeat_axis",
              "learner_expert", "keep_checkpoints")


def _structured(default):
    return field(default=default, metadata={"structured": True})


INT32_MAX = 2**31 - 1
MAX_SNAPSHOTS = 2**20  # per task; beyond it the snapshot list alone fills a host's memory
F32_MAX = 3.4028234663852886e38  # a rate above float32's largest number overflows in the step


@dataclass(frozen=True)
class Config:
    """A whole experiment. Build with :meth:`from_flat` (or keywords); :meth:`validate` checks it."""

    # what to run
    dataset: str = param("fashion_mnist", "dataset (imagenet_28_gray reads a prepared folder; synthetic is for scale tests)")
    algorithm: str = param("SL", "learning rule of the continual learner and the expert")
    model: str = param("cnn", "network architecture")
    num_tasks: int = param(5, "T, number of sequential binary tasks (at most n_classes // 2 with --task-schedule pairs)",
                           min=1)
    n_repeats: int = param(4, "R, repeats trained at once, each with its own class pairs", min=1)
    # per-task data
    n_train_per_class: int = param(1000, "training images per class per task", min=1)
    n_test_per_class: int = param(250, "test images per class per task (see --eval-tasks)", min=1)
    n_subsamples: int = param(64, "S, test images per task whose representations are saved (even, <= 2*n_test_per_class)",
                              min=2)
    test_source: str = param("test", "where test images come from: the test split (test), or a held-out part of the "
                             "train split, disjoint from the training images (train_holdout)",
                             choices=("test", "train_holdout"))
    # optimisation
    epochs: int = param(5, "passes over a task's training data, each in a new order per repeat", min=1)
    batch_size: int = param(32, "minibatch size per repeat; an epoch takes floor(N / B) full batches of its N training "
                                "images, so the N mod B last in that epoch's order sit it out (others each epoch)", min=1)
    lr: float | None = param(None, "learning rate of every parameter group (learner and expert); default: the rule's own, "
                             "recorded resolved in metadata.json; each registered rule's:", min=0.0, max=F32_MAX)
    lr_features: float | None = param(None, "learning rate of the feature layers (default: --lr)", min=0.0,
                                      max=F32_MAX)
    lr_classifier: float | None = param(None, "learning rate of the classifier layer (default: --lr)", min=0.0,
                                        max=F32_MAX)
    momentum: float = param(0.0, "SGD momentum of the continual learner (the expert is plain SGD)", min=0.0, max=0.999)
    out_dim: int = param(1, "classifier outputs: 1 (sigmoid + binary cross-entropy) or 2 (softmax)", choices=(1, 2))
    head: str = param("shared", "output layer across tasks: one for every task (shared), the same one reset at every "
                      "task start (reset), or one block of --out-dim outputs per task, each task trained and evaluated "
                      "through its own (multi); see cljax/heads.py", choices=("shared", "reset", "multi"),
                      absent="shared")
    head_reset_to: str = param("zero", "--head reset: set the output layer to zero (as the loss-of-plasticity protocol) "
                               "or draw it afresh from the initialiser (init)", choices=("zero", "init"), absent="zero",
                               applies_when=("head", "reset"))
    # how the program runs (see `cljax plan`)
    conv_impl: str = param("auto", "convolution lowering: lax (XLA's convolution), im2col (patches @ kernel, batched "
                           "matmuls), fused (the first convolution, ReLU and pool as one elementwise computation, the "
                           "others XLA's), fused-im2col (that first layer, the others im2col's; the ResNet, without a "
                           "fused layer, runs fused as lax and fused-im2col as im2col), auto (im2col, on every "
                           "backend); recorded in metadata.json",
                           choices=("auto", *CONV_IMPLS))
    repeat_axis: str = param("auto", "how a device's repeats run: vmap (batched), loop (one after another, lax.map), "
                             "auto (loop on the CPU, vmap elsewhere); the same numbers up to float rounding (recorded "
                             "with the lowering)", choices=("auto", "vmap", "loop"), absent="auto")
    learner_expert: str = param("auto", "the learner's and the expert's update directions: paired (one call batched "
                                "over the two; needs the same batch for both, so not with replay), separate, auto (paired "
                                "on accelerators and where a CPU device has a core to itself, separate under replay); the "
                                "same numbers up to float rounding (recorded with the lowering)",
                                choices=("auto", "paired", "separate"), absent="auto")
    eval_batch_size: int = param(100, "test images per repeat evaluated at once (memory vs speed; the same results up to the "
                                 "float rounding of losses and representations)",
                                 min=1)
    eval_chunk_tasks: int = param(0, "evaluate the T tasks' test sets K at a time, streamed to and from the device "
                                  "(0: automatic, resident when everything fits --device-memory, else the largest K that "
                                  "fits; see `cljax plan`)", min=0)
    keep_checkpoints: int = param(100, "keep the learner's checkpoint as every N-th task begins (checkpoints/, one "
                                  "checkpoint's size each), so that `cljax run --repair` trains a damaged earlier task "
                                  "folder again from the nearest kept one instead of from task 0 (0: keep none)", min=0)
    device_memory: int = param(0, "device memory budget in bytes per device for the automatic --eval-chunk-tasks "
                               "(0: what the device reports, on the CPU the host's available memory)", min=0,
                               max=2**62)  # a host-side byte count, not a 32-bit integer of the program
    matmul_precision: str = param("highest", "precision of float32 matmuls and convolutions in the task program "
                                  "(jax.default_matmul_precision): highest (full float32 on every backend), high, "
                                  "default (the backend's fastest: TF32 on NVIDIA GPUs); changes the numbers on GPUs and "
                                  "TPUs, not on the CPU; recorded in metadata.json", choices=("default", "high", "highest"),
                                  absent="default")
    compute_dtype: str = param("float32", "dtype the network computes in: float32, or bfloat16 (activations, matmuls "
                               "and convolutions in bfloat16; parameters, gradients, optimiser state, loss and metrics "
                               "stay float32); changes the numbers; recorded in metadata.json",
                               choices=("float32", "bfloat16"), absent="float32")
    scan_unroll: int = param(1, "training steps per iteration of the compiled step loop (lax.scan's unroll): fewer, "
                             "larger iterations, for small R on a GPU; the same computation up to float rounding "
                             "(recorded with the lowering)", min=1, absent=1)
    representation_dtype: str = param("float32", "dtype of the saved representations, the largest artifact (bfloat16 is "
                                      "stored as its uint16 bit pattern, see metadata.json)",
                                      choices=("float32", "float16", "bfloat16"))
    # long runs: the task schedule and which tasks are evaluated (cljax/eval_tasks.py, README)
    task_schedule: str = param("pairs", "task schedule: pairs (task t = classes 2t, 2t+1 of the repeat's permutation, "
                               "T <= n_classes // 2) or cycle (the permutation's pairs repeated end to end, any T)",
                               choices=("pairs", "cycle"), absent="pairs")
    eval_tasks: str = param("all", "tasks evaluated at every snapshot: all (T), seen (T slots, NaN past the current "
                            "task), current (1) or window:K (the current task and the K-1 before it)", absent="all")
    # logging
    log_frequency: int = param(25, "steps between snapshots; L = steps_per_task // log_frequency", min=1)
    # bookkeeping
    seed: int = param(0, "experiment seed: class pairs, initialisation, shuffling all derive from it", min=0,
                      max=2**32 - 1)  # a JAX key keeps 32 bits: seeds 2**32 apart would share initialisations
    results_dir: str = param("results", "root of the results tree")
    data_dir: str | None = param(None, "dataset location")  # its default, each dataset's: cljax/settings.py
    # the selected entries' own settings (None / (): their defaults, filled in by __post_init__)
    rule_params: Any = _structured(None)
    model_params: Any = _structured(None)
    dataset_params: Any = _structured(None)
    option_params: tuple = _structured(())  # ((name, params), ...) of the enabled options, in registry order

    def __post_init__(self):
        for attr, registry, name in (("rule_params", RULES, self.algorithm), ("model_params", MODELS, self.model),
                                     ("dataset_params", DATASETS, self.dataset)):
            if getattr(self, attr) is None and isinstance(name, str) and name in registry:
                object.__setattr__(self, attr, registry[name].params())
        order = OPTIONS.names()
        object.__setattr__(self, "option_params", tuple(sorted(
            ((n, OPTIONS[n].params() if p is None else p) for n, p in dict(self.option_params).items()),
            key=lambda item: order.index(item[0]) if item[0] in order else len(order))))

    # ---- flat settings -------------------------------------------------------------------
    @classmethod
    def from_flat(cls, flat: dict | None = None, **settings) -> "Config":
        """A config from flat settings (flag names with underscores): top-level fields, the
        selected entries' params, ``use_replay=True``-style switches of options. Settings of
        entries not in use are accepted and ignored; an unknown name is an error."""
        flat = {**(flat or {}), **settings}
        top = {f.name: flat[f.name] for f in settings_fields(cls) if f.name in flat}
        if isinstance(top.get("eval_tasks"), str):  # ' all' parses as all: record it so, or a resume would differ
            top["eval_tasks"] = top["eval_tasks"].strip()
        known = set(top)
        picked = {}
        for attr, registry, key in (("rule_params", RULES, "algorithm"), ("model_params", MODELS, "model"),
                                    ("dataset_params", DATASETS, "dataset")):
            name = top.get(key, cls.__dataclass_fields__[key].default)
            for entry in registry.entries():
                known |= set(entry.field_dests())
            if isinstance(name, str) and name in registry:
                picked[attr] = registry[name].params_from(flat)
        options = []
        for entry in OPTIONS.entries():
            switch = option_switch(entry)
            known |= {switch, *entry.field_dests()}
            if flat.get(switch):
                options.append((entry.name, entry.params_from(flat)))
        unknown = sorted(set(flat) - known)
        if unknown:
            raise CljaxError(f"unknown setting(s) {', '.join(unknown)}: see `cljax run --help` for the settings.")
        return cls(**top, **picked, option_params=tuple(options))

    def to_dict(self) -> dict[str, Any]:
        """The resolved flat settings of what this run uses: top-level fields (an unset --lr as
        the rule's default it resolves to), the selected rule's, model's and dataset's params,
        every option's switch and the enabled options' params."""
        out = {f.name: getattr(self, f.name) for f in settings_fields(type(self))}
        if out["lr"] is None and self.algorithm in RULES:
            out["lr"] = self.lr_value
        for params, registry, name in ((self.rule_params, RULES, self.algorithm), (self.model_params, MODELS, self.model),
                                       (self.dataset_params, DATASETS, self.dataset)):
            if params is not None:
                out.update(registry[name].params_to_flat(params))
        enabled = dict(self.option_params)
        for entry in OPTIONS.entries():
            out[option_switch(entry)] = entry.name in enabled
            if entry.name in enabled:
                out.update(entry.params_to_flat(enabled[entry.name]))
        return out

    # ---- derived -------------------------------------------------------------------------
    def option(self, name: str):
        """The params of option ``name`` when it is enabled, else None."""
        return dict(self.option_params).get(name)

    @property
    def lr_value(self) -> float:
        """--lr, or the rule's own default when it is not set (rules differ in gradient scale)."""
        return self.lr if self.lr is not None else default_lr(self.algorithm)

    @property
    def lr_features_value(self) -> float:
        return self.lr_value if self.lr_features is None else self.lr_features

    @property
    def lr_classifier_value(self) -> float:
        return self.lr_value if self.lr_classifier is None else self.lr_classifier

    @property
    def n_train(self) -> int:
        return 2 * self.n_train_per_class

    @property
    def n_test(self) -> int:
        return 2 * self.n_test_per_class

    def eval_chunk(self, eval_batch_size: int | None = None) -> int:
        """Test images per repeat in one evaluation call: the largest divisor of the test set
        that is at most ``eval_batch_size`` (default: this config's)."""
        most = min(self.eval_batch_size if eval_batch_size is None else eval_batch_size, self.n_test)
        return max(c for c in range(1, most + 1) if self.n_test % c == 0)

    @property
    def batches_per_epoch(self) -> int:
        return self.n_train // self.batch_size

    @property
    def steps_per_task(self) -> int:
        return self.epochs * self.batches_per_epoch

    @property
    def n_logs(self) -> int:
        return self.steps_per_task // self.log_frequency

    @property
    def log_steps(self) -> list[int]:
        """Steps (1-based count of updates done in the task) at which snapshots are taken.

        Snapshots are aligned to the end of the task, so the last one is the final state;
        when steps_per_task is not a multiple of log_frequency the remainder runs before the
        first snapshot."""
        head = self.steps_per_task - self.n_logs * self.log_frequency
        return [head + (i + 1) * self.log_frequency for i in range(self.n_logs)]

    @property
    def algorithm_name(self) -> str:
        """The results-tree folder name: the rule, the enabled options' tags, the head when it is not
        shared (``headreset``, ``headmulti``), the task count."""
        head = [] if self.head == "shared" else [f"head{self.head}"]
        return "_".join([self.algorithm, *(OPTIONS[name].tag for name, _ in self.option_params), *head,
                         f"T{self.num_tasks}"])

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check types and ranges field by field, then the cross-field rules; raise CljaxError."""
        types_ = field_types_of(type(self))
        for f in settings_fields(type(self)):
            check_value("--" + f.name.replace("_", "-"), types_[f.name], f.metadata, getattr(self, f.name))
        for registry, name in ((RULES, self.algorithm), (MODELS, self.model), (DATASETS, self.dataset)):
            registry[name]  # an unknown name raises, listing the choices
        for params, entry in ((self.rule_params, RULES[self.algorithm]), (self.model_params, MODELS[self.model]),
                              (self.dataset_params, DATASETS[self.dataset]),
                              *((p, OPTIONS[n]) for n, p in self.option_params)):
            if not isinstance(params, entry.params):
                raise CljaxError(f"the settings of {entry.name} must be a {entry.params.__name__}, got {type(params).__name__}.")
            check_dataclass(params, lambda f, e=entry: "--" + e.field_flag(f))
        if not str(self.results_dir).strip():
            raise CljaxError("--results-dir is empty: give the folder of the results tree (default: results).")
        if self.data_dir is not None and not str(self.data_dir).strip():  # not the default place in disguise
            raise CljaxError("--data-dir is empty: give the dataset's folder (or leave the flag out, for a dataset "
                             "with a standard place: fashion_mnist).")
        if self.n_subsamples % 2:
            near = [n for n in (self.n_subsamples - 1, self.n_subsamples + 1) if 2 <= n <= max(self.n_test, 2)]
            raise CljaxError(f"--n-subsamples {self.n_subsamples} must be even (half of each class): use "
                             f"{' or '.join(map(str, near))}.")
        if self.n_subsamples > self.n_test:
            raise CljaxError(
                f"--n-subsamples {self.n_subsamples} must be at most 2 * --n-test-per-class = {self.n_test}: lower it "
                f"or raise --n-test-per-class.")
        if self.batch_size > self.n_train:
            raise CljaxError(
                f"--batch-size {self.batch_size} is larger than a task's {self.n_train} training images: "
                f"lower it or raise --n-train-per-class.")
        from cljax.eval_tasks import parse_eval_tasks

        if parse_eval_tasks(self.eval_tasks).window > self.num_tasks:  # slots past T would only ever hold NaN
            raise CljaxError(f"--eval-tasks {self.eval_tasks} is wider than the run's {self.num_tasks} tasks: use "
                             f"window:{self.num_tasks} (every task seen so far, as seen), all, or a smaller K.")
        if self.head == "multi" and any(name == "replay" for name, _ in self.option_params):
            raise CljaxError("--head multi with --use-replay: a replayed image would need its own task's head, and "
                             "the batch carries no task per image; choose --head shared or reset, or drop --use-replay.")
        if self.head == "multi" and self.task_schedule == "cycle":
            raise CljaxError("--head multi with --task-schedule cycle: one head per task would grow the output layer "
                             "(and every saved snapshot) with T; choose --head reset (the loss-of-plasticity protocol) or "
                             "shared.")
        if self.steps_per_task * self.num_tasks > INT32_MAX:  # the step counters are int32 on the device
            raise CljaxError(f"the run's {self.num_tasks} x {self.steps_per_task:,} steps pass 2^31 - 1, the range of the "
                             f"step counters: lower --epochs or --num-tasks, or raise --batch-size.")
        if self.n_logs > MAX_SNAPSHOTS:
            raise CljaxError(f"{self.n_logs:,} snapshots per task: each is evaluated on the task's test sets and kept "
                             f"(at most {MAX_SNAPSHOTS:,}); raise --log-frequency.")
        if self.log_frequency > self.steps_per_task:
            raise CljaxError(
                f"--log-frequency {self.log_frequency} is larger than a task's {self.steps_per_task} steps "
                f"(epochs x n_train // batch_size): lower it to at most {self.steps_per_task}.")
        return self


def algo_dir_of(config: Config) -> Path:
    """The run folder: ``{results_dir}/{dataset}/{algorithm}``."""
    return Path(str(config.results_dir)) / str(config.dataset) / config.algorithm_name


def settings_fields(cls) -> list[dataclasses.Field]:
    """The scalar fields of Config (one flag each); the params holders are not among them."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("structured")]


def field_types_of(cls):
    return field_types(cls, {f.name for f in settings_fields(cls)})


def option_switch(entry: Entry) -> str:
    """The flat name of the switch that enables an option (``use_replay``)."""
    return (entry.flag or f"use-{entry.name}").replace("-", "_")


def config_choices(name: str) -> tuple:
    """The values Config's own setting ``name`` accepts: the choices of scripts that pass it on."""
    return next(f for f in settings_fields(Config) if f.name == name).metadata["choices"]


def setting_fields() -> dict[str, Any]:
    """Flat setting name -> its field, for Config's own settings and every registered entry's."""
    fields = {f.name: f for f in settings_fields(Config)}
    for registry in (RULES, MODELS, DATASETS, OPTIONS):
        for entry in registry.entries():
            fields.update(entry.field_dests())
    return fields
