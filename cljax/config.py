"""The experiment config: one frozen, typed object, validated once, saved with every result.

Every field carries its help text and bounds in ``metadata``; the CLI builds its flags from
them, so ``cljax run --help`` and this file never disagree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cljax.errors import CljaxError


def _f(default, help: str, *, choices=None, min=None, max=None, flag=None):
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max, "flag": flag})


@dataclass(frozen=True)
class Config:
    """A whole experiment. Construct with keywords; call :meth:`validate` (``run`` does)."""

    # what to run
    dataset: str = _f("fashion_mnist", "dataset: fashion_mnist, imagenet_28_gray (a prepared folder), synthetic")
    algorithm: str = _f("SL", "learning rule of the continual learner and the expert", choices=None)
    model: str = _f("cnn", "network architecture (registry in cljax.models)")
    num_tasks: int = _f(5, "T, number of sequential binary tasks (at most n_classes // 2)", min=1)
    n_repeats: int = _f(4, "R, repeats trained at once with vmap, each with its own class pairs", min=1)
    # per-task data
    n_train_per_class: int = _f(1000, "training images per class per task", min=1)
    n_test_per_class: int = _f(250, "test images per class per task (all T tasks are evaluated)", min=1)
    n_subsamples: int = _f(64, "S, test images per task whose representations are saved (even, <= 2*n_test_per_class)", min=2)
    test_source: str = _f("test", "where test images come from: the test split, or a held-out part of the train split", choices=("test", "train_holdout"))
    synthetic_classes: int = _f(20, "number of classes of the synthetic dataset", min=2)
    # optimisation
    epochs: int = _f(5, "passes over a task's training data", min=1)
    batch_size: int = _f(32, "minibatch size per repeat", min=1)
    lr: float | None = _f(None, "learning rate of every parameter group (learner and expert); default: the rule's own "
                          "(SL 0.05, RL 0.1, Bio 0.05), recorded resolved in metadata.json", min=0.0)
    lr_features: float | None = _f(None, "learning rate of the feature layers (default: --lr)", min=0.0)
    lr_classifier: float | None = _f(None, "learning rate of the classifier layer (default: --lr)", min=0.0)
    momentum: float = _f(0.0, "SGD momentum of the continual learner (the expert is plain SGD)", min=0.0, max=0.999)
    out_dim: int = _f(1, "classifier outputs: 1 (sigmoid + binary cross-entropy) or 2 (softmax)", choices=(1, 2))
    eval_batch_size: int = _f(100, "test images per repeat evaluated at once (memory vs speed; results do not depend on it)", min=1)
    eval_chunk_tasks: int = _f(0, "evaluate the T tasks' test sets K at a time, streamed to and from the device "
                               "(0: automatic, resident when everything fits --device-memory, else the largest K that fits; see `cljax plan`)", min=0)
    device_memory: int = _f(0, "device memory budget in bytes per device for the automatic --eval-chunk-tasks "
                            "(0: what the device reports, on the CPU the host's available memory)", min=0)
    representation_dtype: str = _f("float32", "dtype of the saved representations, the largest artifact "
                                   "(bfloat16 is stored as its uint16 bit pattern, see metadata.json)", choices=("float32", "float16", "bfloat16"))
    # logging
    log_frequency: int = _f(25, "steps between snapshots; L = steps_per_task // log_frequency", min=1)
    # bookkeeping
    seed: int = _f(0, "experiment seed: class pairs, initialisation, shuffling all derive from it", min=0)
    results_dir: str = _f("results", "root of the results tree")
    data_dir: str | None = _f(None, "dataset location (default: the dataset's standard place)")
    # learning rules RL and Bio (docs/rules.md)
    rl_reward: str = _f("01", "reward of RL and Bio: 01 (1 if the action is the label, else 0) or pm1 (+1 / -1)", choices=("01", "pm1"))
    rl_baseline_decay: float = _f(0.9, "RL: decay d of the running reward baseline, b <- d*b + (1-d)*batch mean reward", min=0.0, max=1.0)
    rl_entropy: float = _f(0.2, "RL: weight beta of the policy-entropy bonus added to the REINFORCE objective "
                           "(keeps a policy made confident by earlier tasks able to learn)", min=0.0)
    bio_policy: str = _f("softmax", "Bio: action selection, sample the policy (softmax) or epsilon-greedy (egreedy)", choices=("softmax", "egreedy"))
    bio_epsilon: float = _f(0.1, "Bio: exploration rate of --bio-policy egreedy", min=0.0, max=1.0)
    # options of the continual learner (docs/rules.md); each adds a tag to the results-folder name
    use_replay: bool = _f(False, "replay: mix images of earlier tasks from a balanced on-device buffer into every batch (tag replay)")
    replay_size: int = _f(1000, "replay: M, buffer images per repeat, shared equally by the tasks seen so far", min=1)
    replay_batch: int = _f(32, "replay: buffer images added to each batch (weight 0 while the buffer is empty)", min=1)
    add_plasticity: bool = _f(False, "shrink+perturb (Ash & Adams 2020): theta <- lam*theta + sigma*(fresh init draw) (tag sp)")
    sp_mode: str = _f("boundary", "shrink+perturb: at the start of every task after the first (boundary) or after every step (step)", choices=("boundary", "step"))
    sp_lambda: float = _f(0.8, "shrink+perturb: shrink factor lam", min=0.0, max=1.0)
    sp_sigma: float = _f(0.01, "shrink+perturb: perturbation scale sigma", min=0.0)
    use_ul: bool = _f(False, "unsupervised learning: an extra unsupervised update of --ul-layer after every step (tag ul)")
    ul_kind: str = _f("oja", "unsupervised rule: oja (Oja subspace rule), sanger (generalised Hebbian algorithm) or recon "
                      "(tied-weight linear reconstruction of the layer input)", choices=("oja", "sanger", "recon"))
    ul_layer: str = _f("dense1", "unsupervised learning: the dense layer it updates (a top-level parameter name of the model)")
    ul_lr: float = _f(1e-3, "unsupervised learning: its learning rate", min=0.0)

    # ---- derived -------------------------------------------------------------------------
    @property
    def lr_value(self) -> float:
        """--lr, or the rule's own default when it is not set (rules differ in gradient scale)."""
        if self.lr is not None:
            return self.lr
        from cljax.rules import DEFAULT_LR

        return DEFAULT_LR[self.algorithm]

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
        first snapshot.
        """
        head = self.steps_per_task - self.n_logs * self.log_frequency
        return [head + (i + 1) * self.log_frequency for i in range(self.n_logs)]

    @property
    def algorithm_name(self) -> str:
        """The results-tree folder name: the rule, the options in use, the task count."""
        from cljax.options import OPTIONS, active_options

        tags = [OPTIONS[name].tag for name in active_options(self)]
        return "_".join([self.algorithm, *tags, f"T{self.num_tasks}"])

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> "Config":
        """Check types and ranges field by field, then the cross-field rules; raise CljaxError."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_field(f, value)
        from cljax.models import MODELS
        from cljax.rules import RULES

        if self.algorithm not in RULES:
            raise CljaxError(f"unknown algorithm {self.algorithm!r}: choose one of {', '.join(sorted(RULES))}.")
        if self.model not in MODELS:
            raise CljaxError(f"unknown model {self.model!r}: choose one of {', '.join(sorted(MODELS))}.")
        if self.n_subsamples % 2 or self.n_subsamples > self.n_test:
            raise CljaxError(
                f"--n-subsamples {self.n_subsamples} must be even and at most 2 * --n-test-per-class "
                f"= {self.n_test}: lower it or raise --n-test-per-class."
            )
        if self.batch_size > self.n_train:
            raise CljaxError(
                f"--batch-size {self.batch_size} is larger than a task's {self.n_train} training images: "
                f"lower it or raise --n-train-per-class."
            )
        if self.log_frequency > self.steps_per_task:
            raise CljaxError(
                f"--log-frequency {self.log_frequency} is larger than a task's {self.steps_per_task} steps "
                f"(epochs x n_train // batch_size): lower it to at most {self.steps_per_task}."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config: an unset --lr is recorded as the rule's default it resolves to."""
        out = dataclasses.asdict(self)
        from cljax.rules import DEFAULT_LR

        if out["lr"] is None and self.algorithm in DEFAULT_LR:
            out["lr"] = DEFAULT_LR[self.algorithm]
        return out


def _check_field(f: dataclasses.Field, value: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    meta = f.metadata
    expected = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = "None" in expected
    if value is None:
        if not optional:
            raise CljaxError(f"{flag} must be set.")
        return
    if "int" in expected and "float" not in expected:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CljaxError(f"{flag} must be an integer, got {value!r}.")
    elif "float" in expected:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CljaxError(f"{flag} must be a number, got {value!r}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise CljaxError(f"{flag} must be finite, got {value!r}.")
    elif "bool" in expected:
        if not isinstance(value, bool):
            raise CljaxError(f"{flag} must be true or false, got {value!r}.")
    elif "str" in expected and not isinstance(value, str):
        raise CljaxError(f"{flag} must be a string, got {value!r}.")
    if meta.get("choices") is not None and value not in meta["choices"]:
        choices = ", ".join(str(c) for c in meta["choices"])
        raise CljaxError(f"{flag} must be one of {choices}, got {value!r}.")
    if meta.get("min") is not None and value < meta["min"]:
        raise CljaxError(f"{flag} must be at least {meta['min']}, got {value!r}.")
    if meta.get("max") is not None and value > meta["max"]:
        raise CljaxError(f"{flag} must be at most {meta['max']}, got {value!r}.")
