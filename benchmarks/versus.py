"""Training throughput of two cljax checkouts, measured in one run: is a change faster or slower?

Each checkout's ``benchmarks/throughput.py`` builds its own task program (learner + expert, the
real per-task program on synthetic data) in a worker process that imports that checkout's
cljax; the driver then asks the workers in turn, round by round in a shuffled order, to run one
call, so load from other processes hits both alike. Prints samples/s (median over rounds) of
each and the ratio.

    python benchmarks/versus.py OLD_CHECKOUT NEW_CHECKOUT [--repeats 32] [--rounds 7] [--json out.json]
    python benchmarks/versus.py OLD NEW --repeats 2 --steps 8 --set model=resnet   # another config

``--set NAME=VALUE`` (repeatable) changes a setting of the synthetic config both build, by its
flat name (``model``, ``conv_impl``, ``resnet_width``, ...); VALUE is read as JSON when it parses
(numbers, true/false) and as text otherwise.

A checkout is a folder holding ``cljax/`` and ``benchmarks/throughput.py`` (a ``git worktree``
of the commit to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from bench_args import one_line_errors, output_file, positive_int  # noqa: E402


def setting(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` -> (NAME, VALUE read as JSON, else as text)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def worker(checkout: str, repeats: int, steps: int, batch_size: int, settings: dict) -> None:
    """Build the program of ``checkout``, then answer each 'run' line on stdin with the seconds of one call."""
    sys.path[:0] = [checkout, str(Path(checkout) / "benchmarks")]
    sys.modules.pop("bench_args", None)  # the driver's, imported above: the checkout's scripts take their own
    from cljax.devices import configure_cpu_devices
    from cljax.host import usable_cores

    configure_cpu_devices(usable_cores())  # as `cljax run` and throughput.py do
    import time

    import throughput

    from cljax.errors import CljaxError

    try:
        call, samples, compile_seconds, n_devices, paired = throughput.cljax_unit(repeats, steps, batch_size, None,
                                                                                   settings=settings)
    except CljaxError as exc:  # this checkout refuses a --set: the driver says so in one line
        print(json.dumps({"refused": " ".join(str(exc).split())}), flush=True)
        return
    print(json.dumps({"samples": samples, "compile_seconds": compile_seconds, "devices": n_devices,
                      "paired": paired}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        t0 = time.perf_counter()
        call()
        print(time.perf_counter() - t0, flush=True)


def answer(w: subprocess.Popen, checkout: str) -> str:
    """The worker's next line; a worker that ended (its traceback is above) is one error line here."""
    line = w.stdout.readline()
    if not line.strip():
        w.kill()
        raise SystemExit(f"error: the worker of {checkout} stopped without an answer (its error is above): check that "
                         f"the checkout builds its program with `python benchmarks/throughput.py --quick --no-torch`.")
    return line


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="versus.py", description=__doc__.split("\n\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--repeats", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--rounds", type=positive_int, default=7)
    p.add_argument("--set", dest="settings", type=setting, action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the config both checkouts build (repeatable)")
    p.add_argument("--json", dest="json_path", type=output_file, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # before anything imports the driver's throughput.py: the checkout's own builds the program
        worker(args.new, args.repeats, args.steps, args.batch_size, dict(args.settings))
        return {}
    from throughput import unit_settings

    own = sorted({name for name, _ in args.settings} & set(unit_settings(1, 1, 1)))
    if own:  # the benchmark fixes these (its --repeats, --steps and --batch-size set the size)
        p.error(f"--set {own[0]}: the benchmark fixes it ({', '.join(sorted(unit_settings(1, 1, 1)))}; "
                f"--repeats, --steps and --batch-size set the size)")
    for checkout in (args.old, args.new):
        if not (Path(checkout) / "cljax").is_dir() or not (Path(checkout) / "benchmarks" / "throughput.py").is_file():
            raise SystemExit(f"error: {checkout} is not a cljax checkout (cljax/ and benchmarks/throughput.py): "
                             f"pass a folder made by `git worktree add`.")
    workers, info = {}, {}
    checkouts = {"old": args.old, "new": args.new}
    for name, checkout in checkouts.items():
        env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}
        workers[name] = subprocess.Popen(
            [sys.executable, __file__, "--worker", "-", str(Path(checkout).resolve()), "--repeats", str(args.repeats),
             "--steps", str(args.steps), "--batch-size", str(args.batch_size),
             *[f"--set={name}={json.dumps(value)}" for name, value in args.settings]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        info[name] = json.loads(answer(workers[name], checkout))  # built and warmed up before the other starts
        if "refused" in info[name]:
            for w in workers.values():
                w.kill()
            raise SystemExit(f"error: {checkout} refuses the settings: {info[name]['refused']}")
    seconds = {name: [] for name in workers}
    rng = np.random.default_rng(0)
    names = list(workers)
    for _ in range(args.rounds):
        for i in rng.permutation(len(names)):
            w = workers[names[i]]
            w.stdin.write("run\n")
            w.stdin.flush()
            seconds[names[i]].append(float(answer(w, checkouts[names[i]])))
    for w in workers.values():
        w.stdin.close()
        w.wait()
    report = {"repeats": args.repeats, "steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds,
              "settings": dict(args.settings),
              "checkouts": {k: str(v) for k, v in checkouts.items()}}
    for name in names:
        median = float(np.median(seconds[name]))
        report[name] = {**info[name], "seconds": seconds[name], "samples_per_second": info[name]["samples"] / median}
    report["new_over_old"] = report["new"]["samples_per_second"] / report["old"]["samples_per_second"]
    for name in names:
        r = report[name]
        print(f"{name}: {r['samples_per_second']:,.0f} samples/s (median of {args.rounds}; {r['devices']} devices, "
              f"paired {r['paired']}, compile {r['compile_seconds']:.1f} s)")
    print(f"new / old: {report['new_over_old']:.3f}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    one_line_errors(main)
