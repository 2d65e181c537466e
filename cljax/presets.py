"""Named sets of settings (``cljax run --preset NAME``): a protocol from the literature in one
flag. A preset sets defaults only; a flag given beside it wins, and run.json records the
resolved settings, not the preset's name, so a run's record is complete without this file.

``lop-imagenet``: the continual ImageNet protocol of Dohare et al., "Loss of plasticity in deep
continual learning" (Nature 2024), on a folder prepared by ``cljax prepare-imagenet``:
5000 binary tasks cycling through each repeat's class permutation (500 pairs), 600 training and
100 test images per class, both from the class's training images as in that protocol (ImageNet's
validation split has 50 images a class; ``--test-source train_holdout``), batch 100, 250 epochs per task (3000 steps), SGD lr 0.01 with
momentum 0.9, two outputs with softmax cross-entropy, the output layer set to zero at the start
of every task, 30 repeats. Differences from that code, kept on purpose: the images are
28x28 gray in [0, 1] (``imagenet_28_gray``, the spec's), not LoP's 32x32 colour; the network is
cljax's CNN (the spec's: 3x3 convolutions of 16/32/64 channels, global average, dense 64/64,
LeCun-normal init, 31,746 parameters), not LoP's (5x5 convolutions of 32/64/128, dense 128/128,
PyTorch's init, about 177k), so the accuracy levels and the decline are not the paper's
figure's; only the current task is evaluated, at 10 snapshots per task rather than after every
epoch; the representations of 32 test images per task are saved, as bfloat16 (``--n-subsamples
32 --representation-dtype bfloat16``); an expert is trained beside the learner on every task
(plain SGD at the same rate, without momentum). Also different: the class order and each
class's 600 + 100 images are drawn from the seed, per repeat, where LoP reads one fixed
permutation file and the same 700 images a class; and LoP ran plain backprop for 2000 tasks at
three rates (0.01, 0.001, 0.0001), its methods for 5000 at 0.01 (L2 at 0.03): the preset is one
5000-task run at 0.01. Disk: most of a task folder is its weights at the 10 snapshots (``cljax
plan --preset lop-imagenet`` on 1000 classes: about 42 MiB a task, 204 GiB for the run); ``--log-frequency
3000`` keeps one snapshot a task (39 GiB). Add a method with its flag (``--use-cbp``, ``--use-l2-init``,
``--add-plasticity --sp-mode step``; docs/methods.md, which lists how cljax's CBP differs from
theirs: ``--cbp-utility adaptable --cbp-count all --cbp-optimizer-state keep --cbp-fresh uniform`` take
their code's choices).
"""

from __future__ import annotations

import re

from cljax.errors import CljaxError
from cljax.flags import flag_values

PRESETS: dict[str, dict] = {
    "lop-imagenet": dict(
        dataset="imagenet_28_gray", task_schedule="cycle", num_tasks=5000, n_repeats=30,
        n_train_per_class=600, n_test_per_class=100, test_source="train_holdout", batch_size=100, epochs=250, lr=0.01, momentum=0.9,
        out_dim=2, head="reset", head_reset_to="zero", eval_tasks="current", log_frequency=300,
        n_subsamples=32, representation_dtype="bfloat16",
    ),
}


def preset_from_argv(argv: list[str]) -> dict:
    """The settings of ``--preset NAME`` in ``argv`` ({} without one); an unknown name is one line."""
    names = flag_values(argv, "--preset")
    if not names:
        return {}
    name = names[-1]
    if name not in PRESETS:
        raise CljaxError(f"unknown preset {name!r}: choose one of {', '.join(sorted(PRESETS))} with --preset.")
    return dict(PRESETS[name])


def preset_note(line: str, argv: list[str]) -> str:
    """An error ``line`` of a command run with ``argv``, with what ``--preset`` set among the
    flags it names that ``argv`` does not give: the value it names was never typed."""
    try:
        preset = preset_from_argv(argv)
    except CljaxError:
        return line
    typed = {a.split("=", 1)[0][2:] for a in argv if a.startswith("--")}
    typed |= {g.split("=", 1)[0].lstrip("-").replace("_", "-")  # a sweep's --grid KEY=VALUES sets KEY too
              for g in flag_values(argv, "--grid")}
    named = dict.fromkeys(re.findall(r"--([a-z][a-z0-9-]*)", line))
    set_by = [f"--{flag} {preset[flag.replace('-', '_')]}" for flag in named
              if flag.replace("-", "_") in preset and flag not in typed]
    if not set_by:
        return line
    return f"{line.rstrip('.')} (--preset {flag_values(argv, '--preset')[-1]} sets {', '.join(set_by)}; give the flag to change it)."
