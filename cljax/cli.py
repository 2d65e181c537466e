"""Command line: a thin layer over the library. The flags of ``run`` come from Config and the
registries' params dataclasses (cljax/settings.py)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

from cljax.cli_errors import error_line
from cljax.presets import preset_note
from cljax.command import stop_at_once
from cljax.config import Config, algo_dir_of
from cljax.errors import CljaxError
from cljax.settings import Parser as _Parser
from cljax.stopping import install, keep_exit_code, stoppable
from cljax.settings import (add_repair_flag, add_run_flags, add_settings_flags, check_repair, config_from_args,
                            load_plugins_from_argv, warn_unused)

EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a command whose output pipe closed


def _use_every_core(config: Config, overwrite: bool = False) -> None:
    """On a CPU host, one JAX device per core so the repeats train on all of them (see
    cljax.devices.cpu_split.configure_cpu_devices); before anything starts JAX's backends. A run
    being resumed takes the split it started on again (run.json), so its numbers do not change."""
    from cljax.checkpoint import recorded_split
    from cljax.devices.cpu_split import configure_cpu_devices

    if isinstance(config.n_repeats, int) and config.n_repeats >= 1:  # a bad value is reported by validate()
        configure_cpu_devices(config.n_repeats, recorded=None if overwrite else recorded_split(algo_dir_of(config)))


def _how_to_go_on(config: Config, args):
    """What a stopped run says to do next, read when the stop comes. The same command with
    --overwrite deletes the finished tasks (a requeue of it never got past a stop), unless the
    stop came before --overwrite deleted the earlier run (its run.json as it was): then that
    command is the one that starts again."""
    from cljax.checkpoint import RUN_RECORD

    record = algo_dir_of(config) / RUN_RECORD

    def read():
        try:
            return record.read_bytes()
        except OSError:
            return None

    earlier = read() if args.overwrite else None

    def stopped() -> str:
        if earlier is not None and read() == earlier:
            return (f"--overwrite had deleted nothing yet, and the earlier run in {record.parent} is as it was; run the "
                    f"same command to start again from task 0.")
        n, T = None if args.repair else _checkpoint_next_task(record.parent), config.num_tasks
        if n == 0:  # (a log's last progress line is up to a minute old: the checkpoint says what is saved)
            return "no task had finished, so none is saved; run the same command to start from task 0."
        at = f" from task {n}" if n is not None and n < T else ""
        resume = f"without --overwrite to resume{at} (with it, the run starts again from task 0)" if args.overwrite \
            else f"to resume{at}"
        saved = "the finished tasks are" if n is None else f"task 0 (1 of {T}) is" if n == 1 else \
            f"tasks 0 to {n - 1} ({n} of {T}) are"
        return f"{saved} saved; run the same command {resume}."
    return stopped


def _checkpoint_next_task(algo_dir: Path) -> int | None:
    """The first task a resume trains, from the run's checkpoint (0: none yet; None: unreadable)."""
    from cljax.checkpoint import read_checkpoint_header

    try:
        header = read_checkpoint_header(algo_dir)
    except CljaxError:  # (a stop's line: a damaged checkpoint is the resume's to report)
        return None
    return 0 if header is None else header[0]


def _cmd_run(argv: list[str]) -> int:
    parser = _Parser(prog="cljax run", description="Run a continual-learning experiment and write its results tree. "
                     "Rerunning the same command resumes an interrupted run from its first unfinished task.")
    load_plugins_from_argv(argv)
    add_settings_flags(parser, argv)
    add_run_flags(parser)
    add_repair_flag(parser)
    args = parser.parse_args(argv)
    check_repair(parser, args)
    config = config_from_args(args)
    warn_unused(parser, args)
    _use_every_core(config, args.overwrite)
    from cljax.devices.distributed import maybe_initialize_distributed
    from cljax.experiment import run_experiment
    from cljax.run_result import format_summary

    # Here, before the handlers below: jax.distributed.initialize() puts JAX's own SIGTERM handler
    # in place of the process's, which then trained on to the end through a SLURM preemption.
    maybe_initialize_distributed()
    outcome = stoppable(lambda critical: run_experiment(
        config, overwrite=args.overwrite, progress=False if args.no_progress else "bar" if sys.stderr.isatty() else "log",
        allow_nonfinite=args.allow_nonfinite, critical=critical, repair=args.repair), _how_to_go_on(config, args))
    if outcome.already_finished:
        print(f"this run is already finished ({config.num_tasks} tasks, every task folder verified); "
              f"--overwrite would delete it and train it again.")
    elif 0 < outcome.first_task < config.num_tasks:
        print(f"resumed from task {outcome.first_task}: the table has the tasks trained now (the same command again "
              f"prints every task's row).")
    print(format_summary(outcome))
    from cljax.devices.distributed import is_writer

    stale = _stale_analysis(outcome.algo_dir) if is_writer() else None  # the folder may be process 0's alone
    if stale:
        print(stale)
    if not outcome.already_finished:
        print(f"compile: {outcome.compile_seconds:.1f} s (the task program; the evaluation's compile falls in the first "
              f"task), training and evaluation: {outcome.steps_per_second:.1f} steps/s ({config.n_repeats} repeats x "
              f"(learner + expert), batch {config.batch_size})")
    print(f"results: {outcome.algo_dir}{'' if is_writer() else ' (written by process 0)'}")
    return 0


def _stale_analysis(algo_dir: Path) -> str | None:
    """A note when the run's own analysis/ is of fewer task folders than the run now has (an
    analysis of a stopped run, then resumed): its figures are of those tasks only."""
    from cljax.output_guard import earlier_analysis
    from cljax.results import task_dirs

    analysed = (earlier_analysis(Path(algo_dir) / "analysis") or {}).get("n_task_folders")
    now = len(task_dirs(algo_dir, passed=False))
    if isinstance(analysed, int) and analysed < now:
        return (f"note: {Path(algo_dir) / 'analysis'} is of the first {analysed} tasks, and the run now has {now}: run "
                f"`cljax analyze {algo_dir}` again for them all.")
    return None


def _cmd_prepare_imagenet(argv: list[str]) -> int:
    from cljax.data.imagenet import prepare_main

    return prepare_main(argv)


def _cmd_data_info(argv: list[str]) -> int:
    from cljax.data.info import data_info_main

    return data_info_main(argv)


def _cmd_plan(argv: list[str]) -> int:
    parser = _Parser(prog="cljax plan", description="Print what `cljax run` with the same flags will take, before "
                     "anything runs: device memory per task, host memory, disk per task and for the run, and whether "
                     "evaluation keeps all test sets on the device or streams them K tasks at a time.")
    load_plugins_from_argv(argv)
    add_settings_flags(parser, argv)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (default: as text)")
    add_run_flags(parser, " (as in `cljax run`; no effect on the plan)")  # accepted for copy-paste
    args = parser.parse_args(argv)
    config = config_from_args(args)
    warn_unused(parser, args)
    _use_every_core(config)
    from cljax.plan import format_plan, make_plan

    if config.dataset == "imagenet_28_gray" and not config.data_dir:  # planned before the data is prepared
        raise CljaxError("--data-dir is required for imagenet_28_gray, whose images the plan loads: pass the folder "
                         "`cljax prepare-imagenet` wrote, or plan the same shapes before preparing it with `--dataset "
                         "synthetic --synthetic-classes 1000` added (the same device memory, about the same disk; its "
                         "host estimate also counts the synthetic images held in RAM, which a prepared folder, "
                         "memory-mapped, does not).")
    from cljax.devices.distributed import wants_distributed

    if wants_distributed():  # joining would wait for the run's other processes: this host's devices alone
        print("note: plan does not join the multi-process run this environment asks for: it sizes this process's "
              "devices alone. For R repeats over P processes, plan --n-repeats R/P here for the memory per device; "
              "process 0 writes all R repeats, so the run's disk is P times the disk planned.", file=sys.stderr)
    plan = make_plan(config)
    print(json.dumps(plan, indent=1) if args.json else format_plan(plan))
    return 0 if plan["fits"] else 2


def _cmd_sweep(argv: list[str]) -> int:
    from cljax.sweep import sweep_main

    return sweep_main(argv)


def _cmd_analyze(argv: list[str]) -> int:
    from cljax.analysis.glue import N_PROBES
    from cljax.analysis.probe import RIDGE

    load_plugins_from_argv(argv)  # before the parser: --help lists the analyses a plugin registers
    from cljax.analysis.registry import registered

    parser = _Parser(prog="cljax analyze", description="Analyse a finished (or partial) run: continual-learning "
                     "metrics, the head vs a linear probe of the representation, the expert's final and best "
                     "snapshot, plasticity metrics, manifold geometry (GLUE); writes ALGO_DIR/analysis/.",
                     epilog=f"analyses, in the order they run: {', '.join(registered())}")
    parser.add_argument("algo_dir", help="results/{dataset}/{algorithm}")
    parser.add_argument("--out", default=None, help="output folder (default: ALGO_DIR/analysis)")
    parser.add_argument("--variant", choices=("final", "auc"), default="final",
                        help="accuracy-matrix variant of the headline numbers: the last snapshot, or the area under "
                        "the accuracy curve from the task start (default: final)")
    parser.add_argument("--tau", type=float, default=0.025, help="dormant-unit threshold (default: 0.025)")
    parser.add_argument("--glue-probes", type=int, default=N_PROBES,
                        help=f"Gaussian probes of the GLUE capacity (default: {N_PROBES})")
    parser.add_argument("--probe-ridge", type=float, default=RIDGE,
                        help=f"ridge of the linear probe, in units of the mean squared norm of the representations "
                             f"it fits (default: {RIDGE})")
    parser.add_argument("--no-glue", action="store_true", help="skip the manifold-capacity analysis")
    parser.add_argument("--no-plots", action="store_true", help="no PNG plots")
    parser.add_argument("--workers", default="auto",
                        help="processes that solve GLUE beside this one, on the CPU: a number (1: none), or auto: one "
                             "per usable core (at most 8, as many as the free memory holds) for a run of 64 task folders "
                             "or more (default: auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar of the task folders (shown on a terminal only)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE",
                        help="a Python file that registers analyses (or rules, models...; repeatable; also $CLJAX_PLUGINS)")
    args = parser.parse_args(argv)
    if args.glue_probes < 2 and not args.no_glue:  # unused under --no-glue
        raise CljaxError(f"--glue-probes must be at least 2 (its Monte-Carlo error needs two), got {args.glue_probes}.")
    if not math.isfinite(args.tau) or args.tau < 0:
        raise CljaxError(f"--tau must be a finite number >= 0, got {args.tau}.")
    if not math.isfinite(args.probe_ridge) or args.probe_ridge <= 0:
        raise CljaxError(f"--probe-ridge must be a finite number > 0, got {args.probe_ridge}.")
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        raise CljaxError(f"--workers must be auto or a whole number >= 1, got {args.workers!r}.")
    from cljax.analysis.driver import writing_now, analyze_run
    from cljax.analysis.summary_text import format_summary
    from cljax.results import runs_near, task_dirs

    if not args.algo_dir.strip():
        raise CljaxError("the run folder is empty: pass a run's folder, results/{dataset}/{algorithm}.")
    if not task_dirs(args.algo_dir):
        raise CljaxError(f"{args.algo_dir} holds no finished task folder (task_000, ...): "
                         f"{writing_now(Path(args.algo_dir)) or runs_near(args.algo_dir)}.")
    summary = stoppable(lambda critical: analyze_run(
        args.algo_dir, args.out, variant=args.variant, tau=args.tau, glue=not args.no_glue,
        glue_n_probes=args.glue_probes, probe_ridge=args.probe_ridge, make_plots=not args.no_plots,
        progress=not args.no_progress, critical=critical,
        workers=args.workers if args.workers == "auto" else int(args.workers)),
        "no analysis file was left half-written; run the same command again for the analysis.")
    out = args.out if args.out is not None else str(Path(args.algo_dir) / "analysis")
    print(format_summary(summary))
    print(f"analysis: {out} (summary.json, arrays .npz{'' if args.no_plots else ', plots .png'})")
    return 0


def _cmd_compare(argv: list[str]) -> int:
    parser = _Parser(prog="cljax compare", description="Several runs side by side: the plasticity gap (the fresh "
                     "expert's current-task accuracy minus the learner's) over tasks, one line per run.")
    parser.add_argument("runs", nargs="+", help="results/{dataset}/{algorithm} of each run, or a sweep's "
                        "--results-dir (its runs, as its sweep.json lists them)")
    parser.add_argument("--out", default=None, help="the plot (PNG) to write (default: none)")
    parser.add_argument("--json", default=None, help="write the comparison as JSON here (default: none)")
    parser.add_argument("--late-from", type=float, default=0.5, help="the late tasks are those from this fraction "
                        "of each run on (default: 0.5, the later half)")
    parser.add_argument("--snapshot", choices=("last", "best"), default="last", help="learner and expert at each "
                        "task's last snapshot (default), or each at its best snapshot of the task, which a one-step "
                        "spike at the task's end does not move")
    args = parser.parse_args(argv)
    if any(not run.strip() for run in args.runs):
        raise CljaxError("a run folder is empty: pass each run's folder, results/{dataset}/{algorithm}.")
    if not 0 <= args.late_from < 1:
        raise CljaxError(f"--late-from {args.late_from} is not in [0, 1): pass the fraction of each run from which "
                         f"its tasks count as late, e.g. 0.5 for the later half.")
    for flag, path, kind in (("--out", args.out, "png"), ("--json", args.json, "comparison")):
        _check_output_file(flag, path, kind)
    from cljax.analysis.compare import compare_runs
    from cljax.analysis.compare_text import format_comparison, protocol_differences
    from cljax.run_search import with_sweeps_runs
    from cljax.analysis.spread import jsonable, readable_json
    from cljax.safe_files import atomic_write

    summary = compare_runs(with_sweeps_runs(args.runs), args.out, late_from=args.late_from, snapshot=args.snapshot)
    print(format_comparison(summary))
    differ = protocol_differences(summary)
    if differ:
        values = "; ".join(f"{k}: {', '.join(v)}" for k, v in differ.items())
        print(f"warning: the runs differ in {', '.join(differ)} ({values}): their gaps are not on one protocol.",
              file=sys.stderr)
    if args.json:
        encoded = readable_json(jsonable(summary)).encode()  # NaN as null
        atomic_write(Path(args.json), lambda f: f.write(encoded))
    if args.out:
        print(f"plot: {args.out}")
    return 0


def _check_output_file(flag: str, path: str | None, kind: str) -> None:
    """A file an option writes (``kind``: see output_guard.check_replaces_only_its_own): checked
    before the work that fills it."""
    if path is None:
        return
    if not path.strip():
        raise CljaxError(f"{flag} is empty: pass a file path, or leave it out.")
    target = Path(path)
    if target.is_dir():
        raise CljaxError(f"{flag} {path} is a folder: pass a file path.")
    from cljax.output_guard import check_not_a_run_result, check_png_name, check_replaces_only_its_own  # (JAX)

    check_not_a_run_result(flag, target)
    check_replaces_only_its_own(flag, target, kind)
    if not target.parent.is_dir():
        what = "is a file, not a folder:" if target.parent.exists() else "does not exist: create it or"
        raise CljaxError(f"{flag} {path}: its folder {target.parent} {what} pass another path.")
    from cljax.safe_files import cannot_create_in

    why = cannot_create_in(target.parent)  # where the file's temporary goes
    if why is not None:
        raise CljaxError(f"{flag} {path}: cannot write to {target.parent} ({why}): pass a writable path.")
    if kind == "png":
        check_png_name(flag, path, "the plot")


COMMANDS = {
    "run": (_cmd_run, "run an experiment"),
    "analyze": (_cmd_analyze, "analyse a run: accuracy matrix, BWT/FWT, forgetting, plasticity, GLUE; plots"),
    "compare": (_cmd_compare, "several runs side by side: the plasticity gap over tasks, one line per run"),
    "plan": (_cmd_plan, "print the device memory, host memory, disk and evaluation mode a run will take"),
    "sweep": (_cmd_sweep, "run a grid of settings x seeds, one job per run (submitit: SLURM or local)"),
    "prepare-imagenet": (_cmd_prepare_imagenet, "prepare ImageNet-1k as 28x28 gray from Hugging Face datasets"),
    "data-info": (_cmd_data_info, "describe a prepared dataset folder and draw sample images"),
}


def main(argv: list[str] | None = None) -> int:
    from_shell = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    # First thing: a signal from here on stops the process in one line (until a command installs
    # its own handler: prepare-imagenet's stops its worker processes first).
    previous = install(stop_at_once)
    rc = None
    try:
        if from_shell:  # the command line (not a call from Python): persistent compilation cache on
            from cljax import enable_compilation_cache

            enable_compilation_cache()
        rc = _dispatch(argv)
        if from_shell:
            sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe is a traceback
        return rc
    except BrokenPipeError:  # the reader of the output has gone (`| head`): nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = EXIT_PIPE_CLOSED
        return rc
    finally:
        if from_shell and previous and rc is not None:
            keep_exit_code(rc)  # through the interpreter's shutdown
        elif not from_shell:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: cljax COMMAND [flags]   (cljax COMMAND --help for its flags)", "", "commands:"]
        lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0 if argv else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except BrokenPipeError:
        raise  # not the environment's fault: main() ends quietly
    except (Exception, SystemExit) as exc:  # SystemExit: a plugin's sys.exit (argparse's is re-raised)
        line, at_once = error_line(exc, argv[0], argv[1:])
        if line is None:
            raise  # cljax's own bug: its traceback
        print(f"error: {preset_note(line, argv[1:])}", file=sys.stderr, flush=True)
        if at_once:
            os._exit(2)
        return 2


if __name__ == "__main__":
    sys.exit(main())
