"""The split a run computes on (backend, devices, processes and lowering), as run.json and each
task's metadata.json record it: whether a resume continues on the one the run started on, and
the warning when it does not (its numbers can then differ in the last bits)."""

from __future__ import annotations

import sys

from cljax.devices.cpu_split import forced_cpu_devices
from cljax.host import cpu_codegen
from cljax.registry import reads_conv_impl

# Lowering entries added after runs were recorded without them, at the value those runs ran with.
LOWERING_ABSENT = {"matmul_precision": "default", "compute_dtype": "float32", "scan_unroll": 1}


def split_of(program) -> dict:
    """How a run's numbers are computed, down to the last bits: backend, devices, processes,
    lowering and, on the CPU, what XLA compiles for (``host``: the CPU's model and vector
    instruction sets, XLA_FLAGS; cljax.host.cpu_codegen). Recorded in run.json at the start and
    in every task's metadata.json."""
    import jax

    from cljax.devices.mesh import mesh_devices

    split = {"backend": jax.default_backend(), "devices": len(mesh_devices()), "processes": jax.process_count(),
             "lowering": program.lowering.record()}
    host = cpu_codegen() if split["backend"] == "cpu" else None
    return split if host is None else {**split, "host": host}


def recorded_split(record: dict | None) -> dict | None:
    """The split a run's record says it started on, as the run computed: a ResNet recorded before
    schema 5 ran XLA's convolution (``lax``) whatever lowering its record names, since the ResNet
    followed ``--conv-impl`` only from then on."""
    split = (record or {}).get("split")
    if split is None or (record.get("schema") or 1) >= 5 or (record.get("config") or {}).get("model") != "resnet":
        return split
    return {**split, "lowering": {**(split.get("lowering") or {}), "conv": "lax"}}


def conv_as_ran(record: dict | None) -> str | None:
    """The convolution lowering a run computed with (``recorded_split``), None when unrecorded: a
    resume that names it with --conv-impl continues as the run ran, whatever the record's
    --conv-impl (an old ResNet's ``auto`` ran ``lax``; ``auto`` on a GPU once meant ``lax``)."""
    return ((recorded_split(record) or {}).get("lowering") or {}).get("conv")


def same_split(recorded: dict | None, split: dict, model: str | None = None) -> bool:
    """Whether the run started on ``split`` (True when nothing is recorded). A lowering entry the
    record lacks takes the value runs recorded before it ran with (``LOWERING_ABSENT``); the
    convolution lowering of a ``model`` without convolutions is not compared (it never ran)."""
    if recorded is None:
        return True
    lowering = {**LOWERING_ABSENT, **(recorded.get("lowering") or {})}
    if model is not None and not reads_conv_impl(model):
        lowering["conv"] = (split.get("lowering") or {}).get("conv")
    if "host" not in recorded or "host" not in split:  # recorded before 2026-12-07, or a host that says nothing
        recorded, split = {**recorded, "host": None}, {**split, "host": None}
    return {**recorded, "lowering": lowering} == split


def warn_if_other_split(recorded: dict | None, split: dict, next_task: int, model: str | None = None) -> None:
    """A resume on another backend, device count or lowering than the run started on: one line.
    The convolution lowering of a ``model`` without convolutions (recorded all the same: the
    backend's) is neither named nor suggested as the fix."""
    if same_split(recorded, split, model):
        return
    convolves = model is None or reads_conv_impl(model)
    hint = ""
    processes = recorded.get("processes") or 1
    if recorded.get("backend") == split["backend"] == "cpu" and processes > 1 and isinstance(recorded.get("devices"), int) \
            and (recorded.get("devices"), processes) != (split["devices"], split.get("processes")):
        # CLJAX_CPU_DEVICES is not read under CLJAX_DISTRIBUTED, and the record counts every process's devices
        hint = (f"; to keep it, rerun as {processes} processes with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={recorded['devices'] // processes} on each")
    elif recorded.get("backend") == split["backend"] == "cpu" and recorded.get("devices") != split["devices"]:
        hint = ("; to keep it, rerun without --xla_force_host_platform_device_count in XLA_FLAGS (it overrides "
                "CLJAX_CPU_DEVICES)" if forced_cpu_devices() is not None
                else f"; to keep it, rerun as one process with CLJAX_CPU_DEVICES={recorded.get('devices')}"
                if split.get("processes", 1) > 1 else f"; to keep it, rerun with CLJAX_CPU_DEVICES={recorded.get('devices')}")
    conv = (recorded.get("lowering") or {}).get("conv")
    if not hint and convolves and conv and conv != (split.get("lowering") or {}).get("conv"):
        hint = f"; to keep it, rerun with --conv-impl {conv}"
    if not hint and recorded.get("host") and split.get("host") and recorded["host"] != split["host"]:
        hint = "; to keep it, resume on a host with the CPU and XLA_FLAGS the run started with"
    print(f"warning: this run started on {describe_split(recorded, convolves)} and continues on "
          f"{describe_split(split, convolves)}: from "
          f"task {next_task} on its numbers can differ from an uninterrupted run's in the last bits, which training can "
          f"grow into other accuracies within a few tasks (recorded in each task's metadata.json){hint}.", file=sys.stderr)


def warn_if_other_eval_chunk(recorded_settings: dict, config, next_task: int) -> None:
    """A resume whose --eval-batch-size evaluates other chunks of the test set than the run
    started with (a speed setting, so not refused): one line, as for another split."""
    before = recorded_settings.get("eval_batch_size")
    if not isinstance(before, int) or before < 1 or config.eval_chunk(before) == config.eval_chunk():
        return
    print(f"warning: this run started with --eval-batch-size {before} ({config.eval_chunk(before)} test images per "
          f"evaluation call) and continues with {config.eval_batch_size} ({config.eval_chunk()}): from task {next_task} "
          f"on its test losses and representations can differ from an uninterrupted run's in the last bits; to keep "
          f"them, rerun with --eval-batch-size {before}.", file=sys.stderr)


def describe_split(split: dict, convolves: bool = True) -> str:
    lowering = split.get("lowering") or {}
    conv = f"{lowering.get('conv', '?')} convolutions, " if convolves else ""
    host = split.get("host")
    cpu = "" if not isinstance(host, dict) else (
        f" ({host.get('cpu')}, {describe_simd(host.get('simd') or [])}, XLA_FLAGS {host.get('xla_flags') or 'unset'!r})")
    return (f"{split.get('devices')} {split.get('backend')} device(s) x {split.get('processes')} process(es){cpu}, "
            f"{conv}repeats {lowering.get('repeats', '?')}, learner and expert "
            f"{lowering.get('learner_expert', '?')}")


def describe_simd(simd: list) -> str:
    """The widest vector instruction sets of a host, in a few words (AVX-512 with FMA, AVX2, ...)."""
    widest = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                                           ("sse4_2", "SSE4.2"), ("sve", "SVE"), ("asimd", "NEON")) if flag in simd),
                  "no vector set named")
    return widest + (" with FMA" if "fma" in simd else " without FMA" if widest.startswith("AVX") else "")


def recorded_pairing(config, record: dict | None) -> bool | None:
    """A resumed run with ``--learner-expert auto`` pairs its learner and expert as it started:
    auto's choice depends on the host's cores, which a requeue onto another node can change, and
    the pairing moves the last bits (docs/scale.md, "Resuming keeps the split"). The pairing to
    build (None: the config's own choice); the config, and what metadata.json records of it, stay
    as the run was started."""
    recorded = (((record or {}).get("split") or {}).get("lowering") or {}).get("learner_expert")
    if config.learner_expert != "auto" or recorded not in ("paired", "separate"):
        return None
    return recorded == "paired"
