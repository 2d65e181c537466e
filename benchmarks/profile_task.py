"""Where the time of cljax's per-task program goes: a ``jax.profiler`` trace of the real task
program, summarised by part of the model (benchmarks/profile_attribution.py has the rules).

The program is built as benchmarks/throughput.py builds it (its ``cljax_unit``: a synthetic
config of ``--steps`` steps and one snapshot, synthetic uint8 data of the real shapes, the
backend's default lowering, on as many CPU devices as a run of R would use); it is compiled and
run once outside the trace, then ``--calls`` calls are traced, each inside a
``jax.profiler.TraceAnnotation`` named ``cljax_profile_call``. The events are read from the
raw profile (``*.xplane.pb``, through ``jax.profiler.ProfileData``), beside the
``perfetto_trace.json.gz`` for a viewer: that file holds at most about a million events, fewer
than a long CPU trace has (there, every op of every repeat is an event: the repeats loop).

Figures (seconds are totals over the traced calls; the markdown gives them per call):

- op time: the summed durations of the op events, each less the op events nested in it on its
  own thread or stream. On a GPU, kernels of one stream run one after another, so op time is
  the stream's busy time; on the CPU, ops of a device run on several threads at once, so op
  time counts thread-seconds and exceeds the busy time (``parallelism`` = op time / busy).
  Every share is a share of op time;
- busy: the length of the union of all op events' intervals (any thread, stream or device),
  the time something of the program ran;
- execution: from a call's first op to its last; gaps = execution - busy, the time inside an
  execution when no op ran (on a GPU: launch gaps, host work between kernels; on the CPU: the
  thunk executor's scheduling and the loops' bookkeeping);
- call wall: the annotated calls, from the Python call to the results being ready; it exceeds
  execution by the dispatch before the first op and the wait after the last.

On a GPU, XLA's command buffers (CUDA graphs) launch kernels that a trace may not attribute to
their HLO instructions; ``--command-buffers off`` (the default) compiles without them (XLA_FLAGS
``--xla_gpu_enable_command_buffer=``, set before JAX starts), so kernels are attributed and the
gaps are those of launching kernel by kernel; ``default`` keeps XLA's setting. No effect on the
CPU.

    python benchmarks/profile_task.py [--repeats 32] [--steps 50] [--conv-impl lax] [--out DIR] [--json PATH]
    python benchmarks/profile_task.py --quick --json /tmp/profile.json   # a smoke run: tiny sizes, its time mostly compiling
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, when run as a file

from bench_args import output_file, output_folder, positive_int  # noqa: E402
from cljax.config import config_choices  # noqa: E402
from profile_attribution import CATEGORIES, attribute_hlo, short_op_name  # noqa: E402
from profile_events import op_events, summarise  # noqa: E402

CALL_ANNOTATION = "cljax_profile_call"
COMMAND_BUFFER_OFF = "--xla_gpu_enable_command_buffer="

LABELS = {"evaluation": "evaluation (expert, test set)", "update": "update (options, optimisers)",
          "rng_init": "random keys, expert init", "pool": "max-pools (fwd + bwd, all layers)",
          "conv1_backward": "conv1 backward", "conv1_forward": "conv1 forward",
          "conv_other": "conv2, conv3 (fwd + bwd)",
          "dense": "dense layers (fwd + bwd)", "loss": "loss (fwd + bwd)", "model_other": "model, outside its layers",
          "data": "data (batch gathers, slices)", "other": "other (loop state copies...)",
          "unattributed": "unattributed"}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="profile_task.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=positive_int, default=None, help="R (default 32; --quick: 2)")
    p.add_argument("--steps", type=positive_int, default=None, help="training steps per call (default 50; --quick: 4)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 32; --quick: 8")
    p.add_argument("--calls", type=positive_int, default=None, help="calls traced (default 3; --quick: 1)")
    p.add_argument("--conv-impl", choices=config_choices("conv_impl"), default="auto",
                   help="the config's conv_impl (auto: im2col)")
    p.add_argument("--matmul-precision", choices=config_choices("matmul_precision"), default=None,
                   help="the config's --matmul-precision (default: the config's default)")
    p.add_argument("--command-buffers", choices=("off", "default"), default="off",
                   help="XLA:GPU command buffers: off (attributable kernels; the default) or XLA's default")
    p.add_argument("--out", type=output_folder, default=None, help="folder for the trace and profile.json (default: a temporary "
                                               "folder, removed)")
    p.add_argument("--json", dest="json_path", type=output_file, default=None, help="write the report here (default with --out: "
                                                                   "OUT/profile.json)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, its time mostly compiling")
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (2 if q else 32)
    args.steps = args.steps or (4 if q else 50)
    args.batch_size = args.batch_size or (8 if q else 32)
    args.calls = args.calls or (1 if q else 3)
    if args.json_path is None and args.out:
        args.json_path = str(Path(args.out) / "profile.json")
    return args


def configure(args) -> dict:
    """Before JAX starts: the command-buffer flag and one CPU device per core (as throughput.py
    and ``cljax run`` split the CPU; a no-op once JAX has started and with CLJAX_CPU_DEVICES=off)."""
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)()
    flags = os.environ.get("XLA_FLAGS", "")
    if args.command_buffers == "off" and COMMAND_BUFFER_OFF not in flags.split() and not started:
        os.environ["XLA_FLAGS"] = (flags + " " + COMMAND_BUFFER_OFF).strip()
    from cljax.devices import configure_cpu_devices
    from cljax.host import usable_cores

    configure_cpu_devices(usable_cores())
    in_effect = COMMAND_BUFFER_OFF in os.environ.get("XLA_FLAGS", "").split()
    return {"command_buffers": "off" if in_effect else "default", "jax_started_before": started,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def capture(call, calls: int, trace_dir: Path) -> tuple[Path, list[float]]:
    """Trace ``calls`` calls, each in a TraceAnnotation; (the perfetto trace file, wall seconds per call)."""
    import jax

    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0  # Python function events: not needed, and many
    walls = []
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True, profiler_options=options):
        for _ in range(calls):
            t0 = time.perf_counter()
            with jax.profiler.TraceAnnotation(CALL_ANNOTATION):
                call()
            walls.append(time.perf_counter() - t0)
    files = sorted(trace_dir.glob("plugins/profile/*/perfetto_trace.json.gz"), key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"no perfetto_trace.json.gz under {trace_dir}")
    return files[-1], walls


def read_trace(path: Path) -> list[dict]:
    """The events of a perfetto_trace.json.gz (the viewer's file: at most about a million events)."""
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return data.get("traceEvents", []) if isinstance(data, dict) else data


def read_xspace(path: Path) -> tuple[list[dict], int]:
    """The events of the raw profile (``*.xplane.pb``, every event; the JSON is cut at about a
    million) as trace events, each plane a process and each of its lines a thread, keeping what
    the profile reads (device planes' events, host events with an ``hlo_op``, the calls'
    annotations); and the count of all its events."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(path))
    out, total = [], 0
    for pid, plane in enumerate(data.planes):
        device = plane.name.startswith("/device:")
        out.append({"ph": "M", "pid": pid, "name": "process_name", "args": {"name": plane.name}})
        for tid, line in enumerate(plane.lines):
            out.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": line.name}})
            for e in line.events:
                total += 1
                stats = dict(e.stats)
                if device or "hlo_op" in stats or e.name == CALL_ANNOTATION:
                    out.append({"ph": "X", "pid": pid, "tid": tid, "ts": e.start_ns / 1e3, "dur": e.duration_ns / 1e3,
                                "name": e.name, "args": stats})
    return out, total


def load_events(trace_file: Path) -> tuple[list[dict], dict]:
    """The trace's events, from the raw profile beside the perfetto file when there is one."""
    raw = sorted(trace_file.parent.glob("*.xplane.pb"))
    if raw:
        events, total = read_xspace(raw[0])
        return events, {"source": raw[0].name, "events": total}
    events = read_trace(trace_file)
    return events, {"source": trace_file.name, "events": len(events)}


def call_spans(events: list[dict]) -> list[tuple[float, float]]:
    """(start, end) of the annotated calls, trace microseconds."""
    return sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events
                  if e.get("ph") == "X" and e.get("name") == CALL_ANNOTATION and "dur" in e)


def profile(args, setup: dict | None = None) -> dict:
    import jax

    from throughput import cljax_settings, cljax_unit, load_average

    load_start = load_average()
    # compiled and run once (the warm-up) here, outside the trace
    call, samples, compile_seconds, n_devices, _ = cljax_unit(args.repeats, args.steps, args.batch_size, None,
                                                              settings=cljax_settings(args))
    module, attribution = attribute_hlo(call.compiled.as_text())
    with tempfile.TemporaryDirectory(prefix="cljax_profile_") as tmp:
        trace_dir = Path(args.out) / "trace" if args.out else Path(tmp)
        trace_file, walls = capture(call, args.calls, trace_dir)
        events, source = load_events(trace_file)
    spans = call_spans(events)
    ops, skipped = op_events(events, attribution, module)
    if not spans:  # no annotation in the trace: one span over every op
        spans = [(min(o.start for o in ops), max(o.end for o in ops))] if ops else []
    summary = summarise(ops, attribution, spans)
    for op in summary["top_ops"]:
        op["op_name_short"] = short_op_name(op["op_name"])
    device = jax.devices()[0]
    return {
        "settings": {"repeats": args.repeats, "steps": args.steps, "batch_size": args.batch_size, "calls": args.calls,
                     "conv_impl": args.conv_impl, "conv": call.lowering["conv"],
                     "matmul_precision": call.lowering["matmul_precision"],
                     "repeat_axis": call.lowering["repeats"], "learner_expert": call.lowering["learner_expert"],
                     "devices": n_devices, "lowering": call.lowering,
                     "samples_per_call": samples, "quick": args.quick, **(setup or {})},
        "backend": jax.default_backend(),
        "device_kind": getattr(device, "device_kind", str(device)),
        "jax_version": jax.__version__,
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "compile_seconds": compile_seconds,
        "call_seconds_python": walls,
        "hlo_module": module,
        "hlo_instructions": len(attribution),
        "trace_file": str(trace_file) if args.out else None,
        "trace_source": source["source"],
        "trace_events": source["events"],
        "skipped_events": skipped,
        "categories_order": list(CATEGORIES),
        **summary,
    }


def markdown(report: dict) -> str:
    """A table of the parts, the timing per call and the top ops, for docs/benchmark.md."""
    s, n = report["settings"], max(report["calls"], 1)
    cats = report["categories"]
    lines = [
        f"Task program profile: {report['backend']} ({report['device_kind']}), jax {report['jax_version']}; "
        f"R={s['repeats']}, {s['steps']} steps x batch {s['batch_size']}, one snapshot; conv {s['conv']}, repeats "
        f"{s['repeat_axis']}, learner/expert {s['learner_expert']}, {s['devices']} device(s); {report['calls']} "
        f"traced call(s); seconds per call",
        "",
        "| part | seconds | share of op time |",
        "|---|---:|---:|",
    ]
    for c in report["categories_order"]:
        lines.append(f"| {LABELS.get(c, c)} | {cats[c]['seconds'] / n:.4f} | {100 * cats[c]['share']:.1f}% |")
    conv1 = cats["conv1_forward"]["seconds"] + cats["conv1_backward"]["seconds"]
    share1 = cats["conv1_forward"]["share"] + cats["conv1_backward"]["share"]
    lines += [f"| *conv1, forward + backward* | {conv1 / n:.4f} | {100 * share1:.1f}% |",
              f"| *backward pass, across parts* | {report['backward']['seconds'] / n:.4f} | "
              f"{100 * report['backward']['share']:.1f}% |",
              f"| **op time** | {report['op_seconds'] / n:.4f} | 100% |",
              "",
              f"Per call: wall {report['call_wall_seconds'] / n:.4f} s; execution (first op to last) "
              f"{report['execution_seconds'] / n:.4f} s; busy (some op running) {report['busy_seconds'] / n:.4f} s; "
              f"gaps {report['gap_seconds'] / n:.4f} s ({100 * report['gap_share_of_execution']:.1f}% of execution); "
              f"op time / busy {report['parallelism']:.2f}; attributed {100 * report['attributed_share']:.1f}% of op "
              f"time; ops named after the op using their result (XLA made them without an op_name) "
              f"{100 * report['op_name_from_users']['share']:.1f}%, ops left without an op_name "
              f"{100 * report['no_op_name']['share']:.1f}%; fusions spanning several parts "
              f"(counted whole in the part of their matmul or convolution, else of their root) "
              f"{100 * report['mixed_fusions']['share']:.1f}%.",
              f"Machine: {report['cores']} cores, load average {report['load_average_start']} -> "
              f"{report['load_average_end']}; XLA command buffers: {s.get('command_buffers', '?')} (GPU only); "
              f"compile {report['compile_seconds']:.1f} s.",
              "",
              "| op | part | seconds | share | op_name |",
              "|---|---|---:|---:|---|"]
    for op in report["top_ops"]:
        mark = " (mixed)" if op.get("mixed") else " (named by its user)" if op.get("inferred") else ""
        lines.append(f"| {op['op']}{mark} | {op['category']} | {op['seconds'] / n:.4f} | {100 * op['share']:.1f}% | "
                     f"{op.get('op_name_short') or ''} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the profile; print the markdown; write ``--json``; return the report."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup = configure(args)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    report = profile(args, setup)
    print(markdown(report))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"written: {args.json_path}")
    return report


if __name__ == "__main__":
    main()
