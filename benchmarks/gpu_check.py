"""One command that checks cljax on a GPU machine and measures it: ``make gpu-check``.

It downloads and installs nothing: the image must already hold jax, flax, optax, numpy, tqdm,
matplotlib and pytest (torch for the peers); the project runs from this checkout through
PYTHONPATH. Fashion-MNIST comes from ``--fashion-dir`` (``$FASHION_DIR``). Every stage runs in
its own process group with a time limit cut to what is left of ``--budget`` (480 s), and
``check.json`` and ``summary.md`` in ``--out`` (``$GPU_CHECK_OUT``) are rewritten after every
stage, so a call that is cut short still leaves the stages it finished. Stages, in order:

- env: versions, devices, the GPU's name and memory, what is missing;
- tests: the GPU-relevant tests, ``pytest -x`` (``--maxfail``) with a junit xml, each failure's
  traceback written as it happens (pytest_failures_now.py), in ``--test-workers`` pytest-xdist
  workers when xdist is there (``--tests rest``: the others; ``--tests all``: the whole suite);
- throughput, throughput_large: ``throughput.py`` at R = 1, 32 and then at 128, 512 against the
  torch peers (on CUDA; the process peer only in the first), two calls so that each keeps its
  table if the other runs out of time;
- profile: a jax.profiler trace of the task program at R = 128, summarised by where the time
  goes (profile_task.py);
- fashion: ``cljax run`` on Fashion-MNIST, 5 tasks, R = 32, default settings; seconds per task,
  and wall seconds from one task's folder to the next;
- lop: a run shaped like the loss-of-plasticity protocol (600 training and 100 test images per
  class, batch 100, many epochs, every task evaluated) for ``--lop-tasks`` tasks; the same figures;
- variants: one task of Fashion-MNIST under each --matmul-precision, --compute-dtype bfloat16,
  the other convolutions (XLA's ``lax``, and the fused first layer of cljax/models/fused.py with
  XLA's or im2col's later layers), the other learner/expert pairing and repeat-axis lowering, and
  --scan-unroll, at R = 32, 128 and 1: samples/s and the largest differences from the default;
  and whether the default gives the same bits run to run and compiled again (gpu_variants.py);
- deterministic (only when asked for, ``--stages deterministic``: a second call if the variants
  show that the GPU's results change run to run or compile to compile): the default and the other
  convolutions at R = 32 under XLA's ``--xla_gpu_exclude_nondeterministic_ops``, in a process of
  its own: whether they compile (XLA has no deterministic select-and-scatter, the gradient of
  reduce_window's max-pool; the im2col and fused paths have none), their speed, and whether their
  bits repeat.

summary.md opens with the goals as measured and the one second call to make next
(gpu_check_goals.py); ``--follow-up SECONDS`` makes it at once, into ``OUT/follow_up``.

``--smoke`` runs every stage at a tiny size on the CPU, in under a minute, also on a GPU machine
(JAX_PLATFORMS=cpu unless it is set: the smoke checks the script, and its stage limits are the
CPU's); the test suite runs it (tests/test_gpu_check.py).

    python benchmarks/gpu_check.py --out results/gpu_check --fashion-dir /usr/share/datasets/fashion-mnist
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke
    python3 benchmarks/gpu_check.py --out /tmp/gc --export $OUT --fashion-dir results/fashion --budget 460 --follow-up 110
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # its sibling modules, and this checkout's cljax

from bench_args import positive_int, positive_seconds  # noqa: E402
from cljax.config import config_choices  # noqa: E402  (jax-free: jax is imported in the stages' processes)
from gpu_check_env import stage_env  # noqa: E402
from gpu_check_export import export  # noqa: E402
from gpu_check_read import FAILURES_NOW, read_junit, read_pytest_log, read_run  # noqa: E402
from gpu_check_tests import ids_env, test_workers, tests_left, tests_to_run  # noqa: E402
from pytest_failures_now import ENV  # noqa: E402
# --smoke checks the script, not the model: a small MLP (it compiles in a fraction of the CNN's
# time), and one size for the variants, fashion and lop stages, so that their programs are
# compiled once and then found in the persistent compilation cache.
SMOKE_SIZE = {"model": "mlp", "mlp_hidden": 16, "n_repeats": 2, "n_train_per_class": 40, "n_test_per_class": 20,
              "n_subsamples": 8, "epochs": 1, "batch_size": 20, "log_frequency": 2}
# (stage, seconds it may take: full, smoke), in the order the stages run: what a GPU session must
# learn first (the tests at the defaults, the goals' table) before the candidates (variants).
# The full budgets sum to 460 s, the --budget of the one-call GPU session; they are sized from the
# first H200 session's stage times (docs/benchmark.md, "Measured on an H200"). The smoke's one
# test takes 3-6 s, but pytest's session end took 15 s more at times on a loaded 2-core host.
BUDGETS = {"env": (15, 20), "tests": (130, 60), "throughput": (70, 30), "throughput_large": (60, 30),
           "profile": (35, 30), "fashion": (30, 30), "lop": (50, 30), "variants": (70, 40), "deterministic": (60, 30)}
# pytest-xdist workers of the full tests stage: the tests' compilations are CPU work, and a GPU
# machine has the cores (16 on the H200 lent here); each worker's JAX takes GPU memory as it needs
# it (XLA_PYTHON_CLIENT_PREALLOCATE=false). The smoke's one test runs without workers.
TEST_WORKERS = 4
FASHION_STAGES = ("tests", "variants", "fashion", "deterministic")  # fail at once without the data: others get the time
OPTIONAL = ("deterministic",)  # run only when --stages names them
SMOKE_CACHE = "compilation_cache"  # in OUT: the smoke's stages share it (smoke_env)


# ---- stages that run in a child process (python gpu_check.py --stage NAME) ---------------------
def stage_variants(args) -> dict:
    """One task under each precision, compute dtype and lowering (gpu_variants.py)."""
    from gpu_variants import measure_variants

    size = dict(SMOKE_SIZE) if args.smoke else dict(epochs=1, log_frequency=50)
    return measure_variants(args.fashion_dir, args.smoke, size, Path(args.out) / "stage_variants.json",
                            rounds=1 if args.smoke else 3)


def stage_deterministic(args) -> dict:
    """The default and the other convolution under XLA's deterministic-ops flag (gpu_variants.py)."""
    from gpu_variants import measure_variants

    size = dict(SMOKE_SIZE) if args.smoke else dict(epochs=1, log_frequency=50)
    return measure_variants(args.fashion_dir, args.smoke, size, Path(args.out) / "stage_deterministic.json",
                            rounds=1 if args.smoke else 3, which="deterministic")


STAGES_IN_CHILD = {"env": stage_env, "variants": stage_variants, "deterministic": stage_deterministic}


def smoke_env(env: dict, out: Path) -> dict:
    """The environment of the smoke's stages: the CPU unless JAX_PLATFORMS names a backend (on a
    GPU, under a GPU test run's load, a stage's tiny programs took past its CPU-sized limit),
    compiled with the test suite's fast-compile XLA flags unless XLA_FLAGS sets an optimisation
    level (cljax/fast_compile.py; the smoke checks the script, not the compiler), and one
    persistent compilation cache for them all, OUT/SMOKE_CACHE (the throughput stages take it as
    --cache-dir), so that a program one stage compiled, the next loads."""
    from cljax.fast_compile import fast_compile_xla_flags

    flags = fast_compile_xla_flags(env)
    return {**env, "JAX_PLATFORMS": env.get("JAX_PLATFORMS") or "cpu",
            "XLA_FLAGS": env.get("XLA_FLAGS", "") if flags is None else flags,
            "JAX_COMPILATION_CACHE_DIR": str(out / SMOKE_CACHE),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def stage_env_vars(name: str, env: dict, out: Path, args) -> dict:
    """The environment of one stage: the deterministic stage's XLA flag added to the rest; for
    the tests, the plugins on the path and their files (OUT/FAILURES_NOW, the ids collected and
    finished, the ids ``--tests-from`` keeps)."""
    if name == "tests":
        return {**env, "PYTHONPATH": os.pathsep.join([str(HERE), env["PYTHONPATH"]]), ENV: str(out / FAILURES_NOW),
                **ids_env(args, out)}
    if name != "deterministic":
        return env
    from gpu_variants import DETERMINISTIC_FLAG

    return {**env, "XLA_FLAGS": " ".join(filter(None, [env.get("XLA_FLAGS", ""), DETERMINISTIC_FLAG]))}


# ---- the commands of each stage and what is read back from them -------------------------------
def run_flags(out: Path, name: str) -> list[str]:
    return ["--results-dir", str(out / "runs" / name), "--overwrite", "--no-progress"]


def stage_commands(args) -> dict:
    py, me, out = sys.executable, str(Path(__file__).resolve()), Path(args.out)
    child = [py, me, "--out", str(out), "--fashion-dir", args.fashion_dir] + (["--smoke"] if args.smoke else [])
    cli = [py, "-m", "cljax.cli", "run"]
    T = args.lop_tasks
    profile = ["--repeats", "128"]
    if args.smoke:
        # The profile's --quick program (R = 2, batch 8, 4 steps) for both throughput stages too:
        # they load it from the smoke's compilation cache (smoke_env). XLA_FLAGS are part of that
        # cache's key, so the profile leaves the command-buffer flag (a GPU flag) as it is.
        profile = ["--quick", "--command-buffers", "default"]
        bench, small, large = ["--quick", "--no-torch", "--no-experiment", "--batch-size", "8", "--cache-dir",
                               str(out / SMOKE_CACHE)], ["2"], ["2"]
        T = 2
        fashion = lop = ["--num-tasks", str(T), *(f"--{k.replace('_', '-')}={v}" for k, v in SMOKE_SIZE.items())]
    else:
        bench, small, large = ["--no-alternatives", "--rounds", "3", "--no-experiment"], ["1", "32"], ["128", "512"]
        if not has_torch():
            bench.append("--no-torch")
        fashion = ["--num-tasks", "5", "--n-repeats", "32"]
        lop = ["--num-tasks", str(T), "--n-repeats", "32", "--n-train-per-class", "600", "--n-test-per-class", "100",
               "--batch-size", "100", "--epochs", str(args.lop_epochs), "--log-frequency", "300"]
    lop_data = ["--dataset", "synthetic", "--synthetic-classes", str(2 * T)]
    chosen = program_flags(args)
    commands = {
        "env": child + ["--stage", "env"],
        "tests": [py, "-m", "pytest", f"--maxfail={args.maxfail}", "-v", "-p", "no:cacheprovider", "-p",
                  "pytest_failures_now", "-p", "pytest_ids_now", "--keep-duplicates", *test_workers(args),
                  "--junitxml", str(out / "junit.xml"), *tests_to_run(args)],
        "variants": child + ["--stage", "variants"],
        "profile": [py, str(HERE / "profile_task.py"), *profile,
                    "--out", str(out / "profile_trace"), "--json", str(out / "profile.json"), *chosen],
        # the process peer does not depend on R: timed once, with the smaller R
        **{name: [py, str(HERE / "throughput.py"), *bench, "--repeats", *rs, "--json", str(out / f"{name}.json"),
                  *chosen, *more] for name, rs, more in (("throughput", small, []),
                                                        ("throughput_large", large, ["--torch-processes"]))},
        "fashion": cli + ["--dataset", "fashion_mnist", "--data-dir", args.fashion_dir, *fashion,
                          *run_flags(out, "fashion"), *chosen],
        "lop": cli + lop_data + lop + run_flags(out, "lop") + chosen,
        "deterministic": child + ["--stage", "deterministic"],
    }
    return {name: commands[name] for name in BUDGETS}


def program_flags(args) -> list[str]:
    """--conv-impl and --matmul-precision for the stages that time or run the task program as a
    user would (profile, throughput, fashion, lop), when the check is asked for other than the
    defaults: a second call that measures a candidate against the goals. The variants and tests
    stages keep their own settings."""
    return ((["--conv-impl", args.conv_impl] if args.conv_impl != "auto" else [])
            + (["--matmul-precision", args.matmul_precision] if args.matmul_precision else []))


def has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def collect(name: str, out: Path) -> dict | None:
    if name in STAGES_IN_CHILD:
        path = out / f"stage_{name}.json"
    elif name in ("throughput", "throughput_large", "profile"):
        path = out / f"{name}.json"
    elif name == "tests":
        result = read_junit(out / "junit.xml") or read_pytest_log(out / "tests.log")
        left = tests_left(out)
        return result and {**result, "tracebacks": FAILURES_NOW if (out / FAILURES_NOW).exists() else None,
                           **({"ids": left} if left is not None else {})}
    else:
        return read_run(out / "runs" / name)
    return json.loads(path.read_text()) if path.exists() else None


# ---- the orchestrator ----------------------------------------------------------------------------
def run_stage(command: list[str], timeout: float, log: Path, env: dict) -> tuple[str, int | None]:
    """Run ``command`` in its own process group for at most ``timeout`` seconds; the whole group
    is killed at the limit (pytest's and the CLI's children, the torch peer processes)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def orchestrate(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),
           "CLJAX_FASHION_MNIST": args.fashion_dir}  # where the tests read it (tests/conftest.py)
    if args.smoke:
        env = smoke_env(env, out)
    deadline = time.monotonic() + args.budget
    report = {"mode": "smoke" if args.smoke else "full", "budget_seconds": args.budget,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fashion_dir": args.fashion_dir, "stages": {},
              "program_flags": program_flags(args), "finished": False}
    for name, command in stage_commands(args).items():
        left = deadline - time.monotonic()
        limit = min(args.limit.get(name, BUDGETS[name][1 if args.smoke else 0]), left - 2)
        no_data = name in args.stages and name in FASHION_STAGES and not any(Path(args.fashion_dir).glob("*idx*"))
        if name not in args.stages or limit < 3 or no_data:
            why = ("not asked for" if name not in args.stages else f"no Fashion-MNIST IDX files in {args.fashion_dir}"
                   if no_data else "no time left in the budget")
            # asked for and not run (no data, no time) is not ok: "all stages ok" must not hide it
            status = "skipped" if name not in args.stages else "failed" if no_data else "not run"
            report["stages"][name] = {"status": status, "why": why}
        else:
            t0 = time.monotonic()
            log = out / f"{name}.log"
            status, rc = run_stage(command, limit, log, stage_env_vars(name, env, out, args))
            report["stages"][name] = {"status": status, "returncode": rc, "seconds": round(time.monotonic() - t0, 1),
                                      "limit_seconds": round(limit, 1), "command": command, "log": log.name,
                                      "result": collect(name, out)}
            if status != "ok":
                report["stages"][name]["log_tail"] = tail(log)
        write_report(report, out)
    report["finished"] = True
    report["all_ok"] = all(s["status"] in ("ok", "skipped") for s in report["stages"].values())
    write_report(report, out)
    return report


def write_report(report: dict, out: Path) -> None:
    from gpu_check_summary import summary_markdown

    (out / "check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "summary.md").write_text(summary_markdown(report, out))


def parse_args(argv):
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT", "results/gpu_check"),
                   help="folder for check.json, summary.md, logs and runs (default $GPU_CHECK_OUT or results/gpu_check)")
    p.add_argument("--fashion-dir", default=os.environ.get("FASHION_DIR", "/usr/share/datasets/fashion-mnist"),
                   help="Fashion-MNIST IDX files (default $FASHION_DIR or /usr/share/datasets/fashion-mnist)")
    p.add_argument("--smoke", action="store_true", help="every stage at a tiny size (the CPU, under a minute)")
    p.add_argument("--budget", type=positive_seconds, default=480.0,
                   help="seconds for all stages together (default 480)")
    p.add_argument("--stages", nargs="+", default=[s for s in BUDGETS if s not in OPTIONAL], choices=list(BUDGETS),
                   help=f"stages to run (default all but {', '.join(OPTIONAL)})")
    p.add_argument("--tests", nargs="*", default=None,
                   help="test files for the tests stage (default: GPU_TESTS; 'rest': the other GPU-relevant files; "
                        "'all': the whole suite)")
    p.add_argument("--tests-from", default=None, metavar="FILE",
                   help="run only the node ids FILE lists, one per line (a first call's tests_left.txt: what failed "
                        "or did not finish)")
    p.add_argument("--maxfail", type=int, default=1, help="the tests stage stops after this many failures (default 1: -x)")
    p.add_argument("--test-workers", type=int, default=TEST_WORKERS,
                   help=f"pytest-xdist workers of the tests stage (default {TEST_WORKERS})")
    p.add_argument("--limit", nargs="*", default={}, type=stage_limit, metavar="STAGE=SECONDS",
                   help="another time limit for a stage (a second call: --stages tests --tests ... --limit tests=400)")
    p.add_argument("--conv-impl", choices=config_choices("conv_impl"), default="auto",
                   help="--conv-impl of the profile, throughput, fashion and lop stages (default auto)")
    p.add_argument("--matmul-precision", choices=config_choices("matmul_precision"), default=None,
                   help="--matmul-precision of those stages (default: the config's default)")
    p.add_argument("--lop-tasks", type=positive_int, default=2, help="tasks of the loss-of-plasticity-shaped run (default 2)")
    p.add_argument("--lop-epochs", type=positive_int, default=250, help="epochs per task of that run (default 250, as the protocol)")
    p.add_argument("--follow-up", type=float, default=0.0, metavar="SECONDS",
                   help="then make the second call the summary proposes, at once, within SECONDS more, into "
                        "OUT/follow_up (default 0: none; a GPU machine idle between two calls may be handed back)")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="then copy what should come back into the flat folder DIR: the summaries, check.json and "
                        "one logs.tar.gz (the device tool returns 8 files at most: run with --out /tmp/gc --export $OUT)")
    p.add_argument("--stage", default=None, choices=list(STAGES_IN_CHILD), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.limit = dict(args.limit)
    args.fashion_dir = str(Path(args.fashion_dir).expanduser().resolve())  # the stages' tests change folder
    for flag, folder in (("--out", args.out), ("--export", args.export)):  # the stages run in the checkout's root
        if folder and Path(folder).expanduser().exists() and not Path(folder).expanduser().is_dir():
            p.error(f"{flag} {folder} is a file: give a folder")
    if args.tests_from and not Path(args.tests_from).is_file():
        p.error(f"--tests-from {args.tests_from} is not a file: give the tests_left.txt of an earlier call")
    args.out = str(Path(args.out).expanduser().resolve())
    return args


def stage_limit(text: str) -> tuple[str, float]:
    name, _, seconds = text.partition("=")
    if name not in BUDGETS or not seconds.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give STAGE=SECONDS with a stage of {', '.join(BUDGETS)}")
    return name, float(seconds)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.stage:  # a child: one stage, its JSON
        result = STAGES_IN_CHILD[args.stage](args)
        (Path(args.out) / f"stage_{args.stage}.json").write_text(json.dumps(result, indent=1, default=str))
        return 1 if result.get("missing") else 0  # the env stage fails when the image lacks a package
    report = orchestrate(args)
    if args.export:  # now, and again after the follow-up: a device call cut short keeps the first
        export(Path(args.out), Path(args.export))
    if args.follow_up > 0:
        follow_up(args, report)
    print((Path(args.out) / "summary.md").read_text())
    if args.export:
        print(f"exported to {args.export}: {', '.join(export(Path(args.out), Path(args.export)))}")
    return exit_status(report)


def exit_status(report: dict) -> int:
    """0 when every stage of the call, and of its follow-up when one ran, is ok or skipped."""
    return 0 if report["all_ok"] and report.get("follow_up", {}).get("all_ok", True) else 1


def follow_up(args, report: dict) -> None:
    """The second call the summary proposes (gpu_check_goals.next_call), made at once by this
    process into OUT/follow_up with ``--follow-up`` seconds: no one has to read the summary and
    call again before the machine, idle, is handed back. Recorded in the first report."""
    from gpu_check_goals import next_call

    if (report["stages"].get("variants") or {}).get("result") is None:
        report["follow_up"] = {"skipped": "no variants result to choose it from"}
    else:
        proposed, why = next_call(report)
        out = Path(args.out) / "follow_up"
        second = orchestrate(parse_args([*proposed.split(), "--out", str(out), "--fashion-dir", args.fashion_dir,
                                         "--budget", str(args.follow_up), *(["--smoke"] if args.smoke else [])]))
        report["follow_up"] = {"args": proposed, "why": why, "out": out.name, "all_ok": second["all_ok"],
                               "stages": {k: s["status"] for k, s in second["stages"].items()}}
    write_report(report, Path(args.out))


if __name__ == "__main__":
    sys.exit(main())
