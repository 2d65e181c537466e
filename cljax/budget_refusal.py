"""What a refusal of device memory says: the largest part of a task that does not fit, and the
settings that lower that part (cljax/budget.py sizes the parts and decides)."""

from __future__ import annotations

import dataclasses

from cljax.budget import HEADROOM, Budget, _per_device, device_components, scratch_parts
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.registry import MODELS, OPTIONS
from cljax.units import fmt_bytes


def statistics_flag(config: Config) -> str:
    """The flag of the model's ``bn_eval_images`` (``--resnet-bn-eval-images``), whichever model
    declares it."""
    entry = MODELS[config.model]
    field = next((f for f in dataclasses.fields(entry.params) if f.name == "bn_eval_images"), None)
    return f"--{entry.field_flag(field)}" if field else f"the {config.model} model's bn_eval_images"


def _largest_array(b: Budget, parts: dict, n_devices: int) -> tuple[str, list[str]]:
    """What a refusal says of the largest of a task's arrays (``parts``, ``device_components``),
    and the settings that shrink it: the others would leave the need where it is (a replay buffer
    of 45 of 46 MiB got "lower --n-test-per-class, --n-subsamples or snapshots")."""
    name = max(parts, key=parts.get)
    share = (f" ({fmt_bytes(_per_device(parts[name], n_devices))} of "
             f"{fmt_bytes(_per_device(sum(parts.values()), n_devices))} of arrays)")
    if name.startswith("learner.option:"):
        option = name.split(":", 1)[1]
        entry = OPTIONS[option]
        flags = [f"--{entry.field_flag(f)}" for f in dataclasses.fields(entry.params) if "size" in f.name]
        return f"most of it is option {option}'s state{share}: ", flags or [f"option {option}'s state"]
    if name == "train_data":
        return f"most of it is the task's training images{share}: ", ["--n-train-per-class"]
    if name in ("current_test_set", "eval_test_sets"):
        window = ["--eval-tasks (window:K or current)"] if name == "eval_test_sets" else []
        return f"most of it is the test sets{share}: ", ["--n-test-per-class", *window]
    if name == "eval_outputs.representations":
        dtype = ["--representation-dtype (bfloat16)"] if b.config.representation_dtype == "float32" else []
        return f"most of it is the saved representations{share}: ", [
            "--n-subsamples", "snapshots (raise --log-frequency)", "--eval-tasks (window:K or current)", *dtype]
    if name.startswith(("snapshots.", "eval_outputs.")):
        return f"most of it is the task's snapshots{share}: ", ["snapshots (raise --log-frequency)"]
    return f"most of it is the learner's {name.split('.', 1)[-1]}{share}: ", [f"the --{b.config.model}-* model size"]


def does_not_fit(b: Budget, device_bytes: int, n_devices: int) -> CljaxError:
    """The refusal of a run whose task does not fit ``device_bytes`` per device even evaluating
    one task at a time, naming what lowers its largest part."""
    parts, scratch = device_components(b, 1), scratch_parts(b)
    arrays = sum(parts.values())
    need = _per_device(arrays + max(scratch.values()), n_devices)
    # Name what lowers the largest part: the others would leave the need where it is.
    repeats = ["--n-repeats (or use more devices)"] if b.config.n_repeats > n_devices else []
    if max(scratch.values()) <= arrays:
        part, knobs = _largest_array(b, parts, n_devices)
        knobs = [*knobs, *repeats]
    elif scratch.get("bn_statistics", 0) == max(scratch.values()):
        part, knobs = "most of it is a snapshot's BatchNorm statistics pass: ", [statistics_flag(b.config), *repeats]
    elif scratch["train"] >= scratch["evaluate"]:
        replay = ["--replay-batch"] if b.pb.learner_batch > b.config.batch_size else []
        part, knobs = "most of it is a training step's scratch: ", ["--batch-size", *replay, *repeats]
    else:
        part = "most of it is an evaluation call's scratch: "
        knobs = ["--eval-batch-size", *repeats, "--n-test-per-class"]
    lower = ", ".join(knobs[:-1]) + f" or {knobs[-1]}" if len(knobs) > 1 else knobs[0]
    return CljaxError(
        f"a task needs about {fmt_bytes(need)} ({need:,} bytes) per device even evaluating one task at a time, more "
        f"than {HEADROOM:.0%} ({int(HEADROOM * device_bytes):,} bytes) of the {fmt_bytes(device_bytes)} budget: "
        f"{part}lower {lower}, or raise --device-memory. `cljax plan` shows the parts."
    )
