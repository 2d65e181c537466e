"""Training throughput of cljax against a PyTorch reference and the machine's matmul peak.

One process measures, interleaved round by round in a shuffled order (so load from other
processes hits every candidate alike and the ratios hold even on a shared machine):

- cljax: the real per-task program (``cljax.program.build_task_program``, learner + expert fused
  in one ``lax.scan``) on synthetic uint8 data of the real shapes, at each ``--repeats`` R;
  samples/s = steps x batch x R x 2 (learner + expert) / seconds of one ``run_task`` call
  (one snapshot per call: its evaluation is timed, not counted; docs/benchmark.md, "Profile",
  gives its share of the call). The CPU is split into one JAX
  device per core, as ``cljax run`` does, and each R uses as many as it splits over. Unless
  ``--quick``, also the alternatives the defaults were chosen over: the other lowering of the
  repeat axis (``vmap`` vs a loop over repeats), the learner and expert steps the other way
  (paired in one batched call vs separate, ``cljax.program.paired_models_default``) and, on a
  split CPU, one device;
- torch: ``benchmarks/torch_reference.py``, one repeat at a time, counted the same way; its
  throughput does not depend on R (repeats run one after another), so one repeat is timed
  per round and the figure holds for every R. The reference is the usual loop (a shuffling
  DataLoader, each step's loss and accuracy recorded: the work cljax's program does) with as
  many threads as the cores the CPU split counts (``torch.set_num_threads`` = the usable cores:
  affinity, cgroup quota); also timed: the same with one thread (often faster on a loaded
  machine) and the lean loop (in-order slices, no metrics) with the usable cores;
  "best torch" is the fastest of the three. Beside them, the peers of ``torch_peers.py`` (all on
  CUDA when it is present): K processes of the usual loop at once, and torch.func vmap over the
  stacked parameters of R learners and experts; a second table gives cljax's ratio to each;
- peak: a float32 matmul through XLA (jit) at cljax's matmul precision, median over rounds, in
  FLOP/s; the torch peers take the same precision (TF32 on CUDA only when cljax's is not "highest").

Then a 10-task ``run_experiment`` on the synthetic dataset: compilations counted from
``backend_compile`` events, host RSS and device memory after tasks 1 and 10, and the compile
time cold (empty persistent cache) and warm (same run again, cache filled).

    python benchmarks/throughput.py [--repeats 1 4 16 32] [--steps 50] [--json out.json]
    python benchmarks/throughput.py --quick --no-torch --json /tmp/b.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, when run as a file

from bench_args import output_file, output_folder, positive_int  # noqa: E402
from cljax.config import config_choices  # noqa: E402
from throughput_experiment import experiment_figures  # noqa: E402  (found through the entry above)
from throughput_report import markdown, measured_rows, partial_writer  # noqa: E402

IMAGE_SHAPE = (28, 28)  # the synthetic dataset's images, the real shapes

FLOPS_NOTE = (
    "analytic: forward MACs x 2 per sample (conv: H*W*9*C_in*C_out on the 28x28, 9x9, 3x3 inputs; "
    "dense: in*out), training = 3 x forward (forward + input gradient + weight gradient) less conv1's input "
    "gradient (its input is the image)"
)


# ---- figures ---------------------------------------------------------------------------------
def cnn_macs(channels=(16, 32, 64), hidden=64, out_dim=1, size=28, pool=3) -> dict:
    """Forward multiply-accumulates per sample of cljax's CNN, layer by layer."""
    macs, c_in, hw = {}, 1, size
    for i, c_out in enumerate(channels):
        macs[f"conv{i + 1}"] = hw * hw * 9 * c_in * c_out
        c_in, hw = c_out, hw // pool
    macs["dense1"] = c_in * hidden
    macs["dense2"] = hidden * hidden
    macs["head"] = hidden * out_dim
    return macs


def flops_per_sample() -> dict:
    """Training = the forward pass, then the gradients of the weights and of the layers' inputs
    (one forward's work each), less the input gradient of conv1: its input is the image, which
    nothing differentiates."""
    macs = cnn_macs()
    forward = 2 * sum(macs.values())
    return {"macs_per_layer": macs, "forward_flops": forward, "train_flops": 3 * forward - 2 * macs["conv1"]}


def machine() -> dict:
    import jax

    from cljax.host import usable_cores

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),  # what the CPU split and the torch peers' threads count
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---- timing units: a callable doing a fixed amount of work, and that amount ---------------------
def peak_unit(n: int, precision: str):
    """A float32 n x n matmul at ``precision``, the one cljax's programs run at: on NVIDIA GPUs
    "highest" is full float32 and "default" TF32, whose peaks differ several times."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), np.float32))
    with jax.default_matmul_precision(precision):
        matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    matmul(a, b).block_until_ready()
    return (lambda: matmul(a, b).block_until_ready()), 2.0 * n**3


def cljax_unit(repeats: int, steps: int, batch_size: int, loop_repeats: bool | None, devices: int | None = None,
               other_pairing: bool = False, settings: dict | None = None):
    """The compiled task program of a synthetic config with ``steps`` steps (one snapshot),
    and a callable running it once; returns (call, samples per call, compile seconds, devices,
    whether learner and expert are paired). ``devices``: how many of the visible devices R is
    split over (None: as many as a run of R would use, the largest divisor of R that is at most
    the visible devices). ``other_pairing``: learner and expert the other way than the default.
    ``settings``: the config's settings that differ from their defaults (``{"matmul_precision":
    "default"}``). The callable's ``compiled`` and ``lowering`` attributes are the compiled
    program (its HLO text: benchmarks/profile_task.py) and its lowering record."""
    import jax

    from cljax.devices import cpu_devices_for, limit_devices
    from cljax.program import paired_models_default

    n = cpu_devices_for(repeats, jax.device_count()) if devices is None else devices
    paired = (not paired_models_default(n)) if other_pairing else None
    with limit_devices(n):  # the program and its data are placed on these n devices
        call, samples, compile_seconds, paired = _cljax_unit(repeats, steps, batch_size, loop_repeats, paired, settings)
    return call, samples, compile_seconds, n, paired


def unit_settings(repeats: int, steps: int, batch_size: int) -> dict:
    """The settings of the timed program that the benchmark fixes (its flags set the size); any
    other setting may be changed (``settings``, versus.py's ``--set``)."""
    return dict(dataset="synthetic", num_tasks=1, n_repeats=repeats, n_train_per_class=steps * batch_size // 2,
                n_test_per_class=50, n_subsamples=16, epochs=1, batch_size=batch_size, log_frequency=steps)


def _cljax_unit(repeats: int, steps: int, batch_size: int, loop_repeats: bool | None, paired_models: bool | None,
                settings: dict | None = None):
    import jax
    import jax.numpy as jnp

    from cljax.config import Config
    from cljax.devices import put_repeats
    from cljax.program import build_task_program, clear_built_programs

    config = Config.from_flat(**unit_settings(repeats, steps, batch_size), **(settings or {})).validate()
    n_per_class = config.n_train_per_class
    clear_built_programs()  # compiled here, not taken back from an earlier build in this process
    program = build_task_program(config, IMAGE_SHAPE, loop_repeats=loop_repeats, paired_models=paired_models)
    rng = np.random.default_rng(repeats)
    n_test = config.n_test
    train_x = put_repeats(rng.integers(0, 256, (config.n_train, repeats, *IMAGE_SHAPE), dtype=np.uint8), 1)
    train_y = put_repeats(np.repeat(np.arange(2, dtype=np.int32), n_per_class)[:, None].repeat(repeats, 1), 1)
    test_x = put_repeats(rng.integers(0, 256, (n_test, repeats, *IMAGE_SHAPE), dtype=np.uint8), 1)
    test_y = put_repeats(np.tile(np.arange(2, dtype=np.int32), n_test // 2)[:, None].repeat(repeats, 1), 1)
    key = jax.random.key(0)
    state = [program.init_learner(key)]
    args = (train_x, train_y, test_x, test_y, jnp.int32(0), key)
    t0 = time.perf_counter()
    run_task = program.run_task.lower(state[0], *args).compile()
    compile_seconds = time.perf_counter() - t0

    def call():
        state[0], trace = run_task(state[0], *args)  # the learner is donated: carry it on
        jax.block_until_ready((state[0], trace))

    call.compiled, call.lowering = run_task, program.lowering.record()
    call()  # warm-up
    return call, config.steps_per_task * batch_size * repeats * 2, compile_seconds, program.parts.paired


def interleaved_medians(units: dict, rounds: int, after_round=None, seed: int = 0) -> dict:
    """Seconds per call of every unit, median over ``rounds``; each round runs every unit once,
    in a new random order (a unit that always ran right after the peak matmul measured up to
    10% slower than the same program elsewhere in the round). ``after_round(medians, done)``
    gets the medians of the rounds done so far after each round."""
    times = {name: [] for name in units}
    rng = np.random.default_rng(seed)
    names = list(units)
    for done in range(1, rounds + 1):
        for i in rng.permutation(len(names)):
            name, call = names[i], units[names[i]]
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
        if after_round:
            after_round({name: float(np.median(ts)) for name, ts in times.items()}, done)
    return {name: float(np.median(ts)) for name, ts in times.items()}


# ---- the command -----------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(prog="throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=positive_int, nargs="+", default=None,
                   help="R values for cljax (default 1 4 16 32, plus 64 128 on a GPU; --quick: 1 2)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per timed call (default 50; --quick: 4)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=None, help="timing rounds, medians reported (default 5; --quick: 1)")
    p.add_argument("--peak-size", type=positive_int, default=None, help="matmul size for the peak (default 4096; --quick: 512)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers (torch not installed)")
    p.add_argument("--torch-processes", type=positive_int, nargs="*", default=None,
                   help="K values of the peer running K processes of the usual loop at once (default: 8 on CUDA, "
                        "one per core on a CPU; none: skip it)")
    p.add_argument("--no-torch-vmap", action="store_true", help="skip the torch.func vmap peer")
    p.add_argument("--matmul-precision", choices=config_choices("matmul_precision"), default=None,
                   help="cljax's --matmul-precision (default: the config's default)")
    p.add_argument("--conv-impl", choices=config_choices("conv_impl"), default="auto",
                   help="cljax's --conv-impl (default auto: im2col)")
    p.add_argument("--no-experiment", action="store_true", help="skip the 10-task run (compilations, memory, cache)")
    p.add_argument("--no-alternatives", action="store_true",
                   help="skip the alternatives (the other repeat-axis lowering, the other learner/expert pairing, one CPU device)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (its time is mostly compiling)")
    p.add_argument("--cache-dir", type=output_folder, default=None,
                   help="persistent compilation cache for the 10-task part (default: a fresh temporary folder, so 'cold' is cold)")
    p.add_argument("--json", dest="json_path", type=output_file, default=None, help="write every figure to this file")
    args = p.parse_args(argv)
    quick = args.quick
    args.steps = args.steps or (4 if quick else 50)
    args.rounds = args.rounds or (1 if quick else 5)
    args.peak_size = args.peak_size or (512 if quick else 4096)
    args.experiment_repeats = 2 if quick else 4
    args.experiment_train_per_class = 2 * args.batch_size if quick else 500
    args.experiment_test_per_class = 8 if quick else 100
    args.experiment_log_frequency = 2 if quick else 10
    if quick:
        args.no_alternatives = True
    return args


def cljax_settings(args) -> dict:
    """The config settings the command line gives cljax's programs (none: the defaults)."""
    return {**({"matmul_precision": args.matmul_precision} if args.matmul_precision else {}),
            **({"conv_impl": args.conv_impl} if args.conv_impl != "auto" else {})}


def program_precision(args) -> str:
    """The --matmul-precision cljax's programs run at here (the config's default when not given)."""
    from cljax.config import Config

    return args.matmul_precision or Config().matmul_precision


def default_repeats(quick: bool) -> list[int]:
    import jax

    if quick:
        return [1, 2]
    return [1, 4, 16, 32] + ([64, 128] if jax.default_backend() == "gpu" else [])


def run_benchmark(args, on_partial=None) -> dict:
    """The report of every unit's medians; ``on_partial(report)`` gets the report so far, marked
    ``partial``, after a first cljax-only round and after each round but the last, so that a run
    cut short by a time limit still leaves its figures."""
    import jax

    from cljax.devices import cpu_devices_for
    from cljax.program import loop_repeats_default

    repeats = args.repeats or default_repeats(args.quick)
    load_start = load_average()
    flops = flops_per_sample()
    units, samples, compile_seconds, n_devices, paired = {}, {}, {}, {}, {}
    call, peak_flops_per_call = peak_unit(args.peak_size, program_precision(args))
    units["peak"] = call
    loop_default = loop_repeats_default()
    # (name, loop_repeats, devices, other pairing): the default, then the alternatives it was chosen over
    variants = [("cljax", None, None, False)]
    if not args.no_alternatives:
        variants.append(("cljax_vmap" if loop_default else "cljax_loop", not loop_default, None, False))
        variants.append(("cljax_other_pairing", None, None, True))
        if jax.default_backend() == "cpu" and jax.device_count() > 1:
            variants.append(("cljax_1device", None, 1, False))
    for R in repeats:
        for name, loop, devices, other_pairing in variants:
            if devices is not None and devices == cpu_devices_for(R, jax.device_count()):
                continue  # the default already runs this R on that many devices: the same program
            call, n, seconds, used, pairs = cljax_unit(R, args.steps, args.batch_size, loop, devices, other_pairing,
                                                       cljax_settings(args))
            units[(name, R)], samples[(name, R)] = call, n
            compile_seconds[(name, R)], n_devices[(name, R)], paired[(name, R)] = seconds, used, pairs
    peers = {}  # name or ("torch_vmap", R) -> description
    measured = {"samples": samples, "peers": peers, "variants": variants, "loop_default": loop_default,
                "compile_seconds": compile_seconds, "n_devices": n_devices, "paired": paired, "flops": flops,
                "peak_flops_per_call": peak_flops_per_call, "repeats": repeats}

    def report(seconds: dict, partial: str | None = None) -> dict:
        rows, alternatives = measured_rows(measured, seconds)
        return {
            **({"partial": partial} if partial else {}),
            "machine": "{cpu}, {cores} cores ({usable_cores} usable), {backend}".format(**machine()),
            "machine_details": machine(),
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "peak_flops_per_s": peak_flops_per_call / seconds["peak"],
            "peak_matmul_size": args.peak_size,
            "flops_per_sample": float(flops["train_flops"]),
            "flops_formula": FLOPS_NOTE,
            "forward_flops_per_sample": float(flops["forward_flops"]),
            "macs_per_layer": flops["macs_per_layer"],
            "settings": {"steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds, "repeats": repeats,
                         "counted": "steps x batch x R x 2 (learner + expert) per second"},
            "torch_version": None if args.no_torch else __import__("torch").__version__,
            "torch_device": next((info["device"] for info in peers.values()), None),
            "matmul_precision": program_precision(args),  # of cljax's programs, the peak matmul and the torch peers
            "conv_impl": args.conv_impl,
            "jax_version": jax.__version__,
            "rows": rows,
            "alternatives": alternatives,
        }

    if not args.no_torch:
        from torch_reference import torch_version

        if torch_version() is None:
            raise SystemExit("error: torch is not importable: install it with `pip install torch==2.13.0` or pass --no-torch")
        if on_partial:  # cljax's rows first: the peers' start (a CUDA context in each process) is untimed
            on_partial(report(interleaved_medians(units, 1), "cljax and the peak only: one round, before the torch peers"))
        from torch_peers import torch_units

        for name, (call, n, info) in torch_units(repeats, args.steps, args.batch_size, args.torch_processes,
                                                 vmap=not args.no_torch_vmap,
                                                 tf32=program_precision(args) != "highest").items():
            units[name], samples[name], peers[name] = call, n, info

    def each_round(medians, done):
        if on_partial and done < args.rounds:
            on_partial(report(medians, f"medians of {done} of {args.rounds} rounds"))

    try:
        seconds = interleaved_medians(units, args.rounds, each_round)
    finally:
        if peers:
            from torch_peers import close_units

            close_units(units)
    return report(seconds)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cljax.devices import configure_cpu_devices
    from cljax.host import usable_cores

    # One CPU device per core, as `cljax run` makes for an R that splits over them
    # ($CLJAX_CPU_DEVICES is honoured); each R then uses as many as it splits over.
    # A no-op with CLJAX_CPU_DEVICES=off (the test suite), once JAX has started, and on a GPU.
    configure_cpu_devices(usable_cores())
    # JAX takes most of a GPU's memory when it starts; the torch peers need theirs.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    import cljax

    previous_cache = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory(prefix="cljax_bench_") as tmp:
        cljax.enable_compilation_cache(args.cache_dir or str(Path(tmp) / "jax_cache"))
        try:
            write_partial = partial_writer(args.json_path)
            report = run_benchmark(args, write_partial)
            if not args.no_experiment:
                if write_partial:
                    write_partial({**report, "partial": "every table, before the 10-task run"})
                report["experiment"] = experiment_figures(args, Path(tmp))
        finally:  # leave the process's cache setting as it was (tests run in one process)
            if previous_cache:
                cljax.enable_compilation_cache(previous_cache)
            else:
                cljax.disable_compilation_cache()
    print(markdown(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"written: {args.json_path}")
    return report


if __name__ == "__main__":
    main()
