"""Sweeps: a grid of settings x seeds, one run per job, through submitit (SLURM job arrays on a
cluster, local processes elsewhere).

    cljax sweep --grid lr=0.01,0.05 --grid momentum=0,0.9 --seeds 0,1 --executor slurm \
        --slurm-partition gpu --slurm-time 10:00:00 --slurm-gpus 1 --slurm-array-parallelism 8 \
        --results-dir results/lr_sweep [any flag of cljax run]

Every run writes to its own folder, ``{results_dir}/{setting tag}`` (e.g.
``results/lr_sweep/lr-0.01_momentum-0.9_seed-1/fashion_mnist/SL_T5``), and ``sweep.json`` in
``results_dir`` lists the runs, their settings, job ids and folders. A job that SLURM stops
(time limit, preemption) is requeued by submitit and the run resumes from its first unfinished
task: rerunning a finished or interrupted run with the same config is what ``run_experiment``
does by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import sys
import time
from pathlib import Path

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.run_lock import folder_lock
from cljax.safe_files import atomic_write
from cljax.settings import (Parser, add_repair_flag, add_run_flags, add_settings_flags, check_repair, config_from_args,
                            load_plugins_from_argv, parse_setting, setting_specs, unused_settings, warn_unused)
from cljax.sweep_executor import (check_devices, check_slurm_submits, controllers_write_to_log, made_for_the_jobs,
                                   jobs_go_on, make_executor, stop_waiting_says_the_jobs_go_on, sweep_log_folder)
from cljax.sweep_flags import add_sweep_flags, check_sweep_flags, comma_items, sweep_seeds
from cljax.sweep_checks import check_against_data, check_not_trained_twice
from cljax.sweep_report import report_outcomes, run_command


def parse_grid(items: list[str]) -> dict[str, list]:
    """["lr=0.01,0.05", "epochs=1,2"] -> {"lr": [0.01, 0.05], "epochs": [1, 2]}."""
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise CljaxError(f"--grid {item!r}: write NAME=V1,V2,... (e.g. --grid lr=0.01,0.05).")
        name, values = item.split("=", 1)
        name = name.strip().lstrip("-").replace("-", "_")
        if name == "seed":
            raise CljaxError("--grid seed=...: give seeds with --seeds 0,1,2.")
        if name == "results_dir":
            raise CljaxError("--grid results_dir=...: every run gets its own folder under --results-dir.")
        specs = setting_specs()
        if name not in specs:
            settable = sorted(set(specs) - {"seed", "results_dir"})
            raise CljaxError(f"--grid {name}: not a setting of cljax run; choose among {', '.join(settable)}.")
        if name in grid:
            raise CljaxError(f"--grid {name} given twice: list all its values in one --grid {name}=V1,V2.")
        if not values.strip():
            raise CljaxError(f"--grid {name}=: give at least one value.")
        parsed = [parse_setting(name, v)[1] for v in comma_items(values, f"--grid {name}=", "0.01,0.05")]
        grid[name] = parsed
    return grid


def _tag_value(value) -> str:
    """A value as folder-name text, one-to-one: repr for a float (the shortest text that reads
    back as the same float), and every character outside [A-Za-z0-9.+-] (``_`` included, the
    separator of the tag's parts) as ``_`` and two hex digits (``/`` -> ``_2f``), or ``__`` and
    six beyond U+00FF."""
    text = repr(value) if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", lambda m: _escape(m.group()), text)


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"_{code:02x}" if code < 0x100 else f"__{code:06x}"


@dataclasses.dataclass(frozen=True)
class SweepRun:
    tag: str  # the run's folder name under --results-dir
    settings: dict  # the grid values of this run
    config: Config


def expand(base: dict, grid: dict[str, list], seeds: list[int]) -> list[SweepRun]:
    """Every combination of the grid values over the flat base settings ``base``, for every
    seed; each run in its own folder."""
    names = list(grid)
    runs = []
    for combo in itertools.product(*(grid[n] for n in names)):
        for seed in seeds:
            settings = dict(zip(names, combo))
            tag = "_".join([*(f"{n}-{_tag_value(v)}" for n, v in settings.items()), f"seed-{seed}"])
            config = Config.from_flat({**base, **settings, "seed": seed, "results_dir": str(Path(base["results_dir"]) / tag)})
            config.validate()
            runs.append(SweepRun(tag=tag, settings=settings, config=config))
    _check_distinct(runs)
    return runs


def check_grid_used(runs: list[SweepRun], whys: list[dict[str, str]]) -> None:
    """A grid setting that no run of the sweep uses (an option's setting with the option off, a
    model's with another model) would train the same run under several names: one CljaxError
    line, before any job. One that some runs use (``--grid use_cbp=true,false --grid
    cbp_rate=...``) is refused when two runs differ only in settings neither uses (the two
    ``use_cbp=false`` runs there). ``whys``: each run's ``unused_settings``."""
    for name in runs[0].settings if runs else ():
        if all(name in why for why in whys):
            raise CljaxError(f"--grid {name}=...: no run of the sweep uses it ({whys[0][name]}), so its values would "
                             f"train the same run under several names: turn on what it belongs to, or leave it out of "
                             f"the grid.")
    seen: dict = {}
    for run, why in zip(runs, whys):  # settings some runs use: the runs that do not must still differ
        used = tuple((k, repr(v)) for k, v in run.settings.items() if k not in why)
        other, other_why = seen.setdefault((used, run.config.seed), (run, why))
        if other is not run:
            idle = [k for k in run.settings if k in why and k in other_why]
            raise CljaxError(f"--grid: {other.tag} and {run.tag} would train the same run: they differ only in "
                             f"{', '.join(idle)}, which neither uses ({why[idle[0]]}): grid it in a sweep of its own "
                             f"with what it belongs to turned on.")


def run_settings(base: dict, run: SweepRun) -> dict:
    """The flat settings a run of the sweep is made of (before its results folder is set)."""
    return {**base, **run.settings, "seed": run.config.seed}


def _check_distinct(runs: list[SweepRun]) -> None:
    """Two runs of a sweep must never share a folder (a case-insensitive filesystem included):
    checked before any job starts."""
    seen: dict[str, SweepRun] = {}
    for run in runs:
        other = seen.setdefault(run.tag.lower(), run)
        if other is not run:
            same = ", ".join(f"{k}={v!r}" for k, v in run.settings.items())
            raise CljaxError(f"two runs of the sweep would write the same folder {run.tag} ({same or 'no grid'}, seed "
                             f"{run.config.seed}): list each value once in --grid and each seed once in --seeds.")


def run_job(config_dict: dict, overwrite: bool = False, allow_nonfinite: bool = False, repair: bool = False,
            plugins: tuple = (), progress: bool = True, earlier: dict | None = None, on_task_end=None) -> dict:
    """The body of one job: run (or resume) one experiment. Returns a short, picklable summary.
    ``plugins``: the plugin files the sweep loaded (``--plugin`` and ``$CLJAX_PLUGINS``), loaded
    again here before the settings are read, since the job is another process. ``progress``: its
    lines in the job's log (``--no-progress``: none). ``earlier``: what the job's attempts before
    this one did, when it was requeued ({"attempts", "first_task": where the first that wrote a task
    resumed the run}),
    so that the summary describes the job, not its last attempt."""
    from cljax.checkpoint import recorded_split
    from cljax.devices.cpu_split import configure_cpu_devices
    from cljax.experiment import algo_dir_of, run_experiment
    from cljax.registry import load_plugins

    load_plugins(list(plugins))
    config = Config.from_flat(config_dict)
    # A fresh job process: one JAX device per core on a CPU host, or the split a resumed run started on.
    configure_cpu_devices(config.n_repeats, recorded=None if overwrite else recorded_split(algo_dir_of(config)))
    try:
        result = run_experiment(config, progress="log" if progress else False, overwrite=overwrite, allow_nonfinite=allow_nonfinite,
                                repair=repair, on_task_end=on_task_end, measure=False)
    except Exception as exc:  # the line `cljax run` prints (a plugin's code, the disk): the sweep's FAILED line
        from cljax.cli_errors import error_line

        line = None if isinstance(exc, CljaxError) else error_line(exc, "run")[0]
        if line is None:
            raise
        raise CljaxError(line) from exc
    # The run's last task, when this job trained it or found it finished (a repair that ends below
    # the checkpoint trains only earlier tasks again: their accuracies are not the run's last).
    final = next((row for row in result.summary if row.get("task") == config.num_tasks - 1), {})
    return {"algo_dir": str(algo_dir_of(config)), "tasks": config.num_tasks, "first_task": result.first_task,
            "already_finished": result.already_finished,  # (its rows, then, are read back, not trained)
            "trained_tasks": [] if result.already_finished else [row["task"] for row in result.summary],
            "final_acc_current": final.get("acc_current"), "final_acc_earlier": final.get("acc_earlier"),
            "steps_per_second": result.steps_per_second, "attempts": (earlier or {}).get("attempts", 0) + 1,
            "job_first_task": _earliest((earlier or {}).get("first_task"), result.first_task),
            "nonfinite_tasks": sum(1 for row in result.summary if row.get("n_nonfinite"))}  # (--allow-nonfinite)


def _earliest(*tasks) -> int | None:
    known = [t for t in tasks if isinstance(t, int)]
    return min(known) if known else None


def _job_class():
    import submitit

    class SweepJob(submitit.helpers.Checkpointable):
        """A requeueable job: on a SLURM time limit or preemption submitit calls ``checkpoint``,
        which resubmits the same call; the run then resumes from its first unfinished task."""

        def __call__(self, config_dict: dict, overwrite: bool = False, allow_nonfinite: bool = False,
                     repair: bool = False, plugins: tuple = (), progress: bool = True, earlier: dict | None = None) -> dict:
            self.started_at = None  # where this attempt resumed the run, once it wrote a task (for checkpoint)

            def seen(t, info):
                if self.started_at is None:
                    self.started_at = info["first_task"]

            return run_job(config_dict, overwrite, allow_nonfinite, repair, plugins, progress, earlier, seen)

        def checkpoint(self, config_dict: dict, overwrite: bool = False, allow_nonfinite: bool = False,
                       repair: bool = False, plugins: tuple = (), progress: bool = True, earlier: dict | None = None):
            # The requeued job resumes what this one finished, even if this one started afresh; one
            # stopped in a repair repairs again (on a whole run --repair changes nothing). It is told
            # what this attempt and those before it trained, for the sweep's line of the job.
            earlier = earlier or {}
            told = {"attempts": earlier.get("attempts", 0) + 1,
                    "first_task": _earliest(earlier.get("first_task"), getattr(self, "started_at", None))}
            return submitit.helpers.DelayedSubmission(self, config_dict, False, allow_nonfinite, repair, plugins,
                                                        progress, told)

    return SweepJob


def submit(runs: list[SweepRun], executor, overwrite: bool = False, allow_nonfinite: bool = False,
           repair: bool = False, progress: bool = True) -> list:
    """One job per run (a job array on SLURM)."""
    from cljax.registry import loaded_plugins

    from submitit.core.utils import FailedJobError, FailedSubmissionError

    job, n = _job_class()(), len(runs)
    said = io.StringIO()  # submitit prints sbatch's refusal before it raises: it becomes the one line
    try:
        with contextlib.redirect_stderr(said):
            return executor.map_array(job, [r.config.to_dict() for r in runs], [overwrite] * n, [allow_nonfinite] * n,
                                      [repair] * n, [tuple(loaded_plugins())] * n, [progress] * n)
    except (FailedJobError, FailedSubmissionError) as exc:
        cause = exc.__cause__  # sbatch's CalledProcessError: what it wrote on stdout, its exit status
        status = getattr(cause, "returncode", None)
        why = "; ".join(" ".join(str(part).split()) for part in (
            str(exc) or said.getvalue(), getattr(cause, "output", None) or "",
            f"exit status {status}" if isinstance(status, int) and status >= 0 else
            f"killed by signal {-status}" if isinstance(status, int) else "") if part and str(part).strip())
        said, kind = io.StringIO(), getattr(executor, "cluster", "the executor")  # said in the error line
        if isinstance(exc, FailedSubmissionError):  # sbatch answered, but not with a job id
            raise CljaxError(f"{kind} answered the sweep's submission with no job id cljax could read ({why[:400]}): a "
                             f"job may have been queued; check squeue before submitting again.") from None
        raise CljaxError(f"{kind} refused the sweep's jobs ({why[:400] or 'no reason given'}): check "
                         f"--slurm-partition, --slurm-account, --slurm-time, --slurm-gpus (at most one node's), "
                         f"--slurm-cpus and --slurm-mem-gb against the cluster (sinfo) (no job was submitted).") from None
    finally:
        sys.stderr.write(said.getvalue())  # whatever else submitit printed


def write_manifest(path: Path, runs: list[SweepRun], jobs, executor_kind: str, log_dir: Path) -> None:
    from cljax.experiment import algo_dir_of

    path.parent.mkdir(parents=True, exist_ok=True)
    manifest = {
        "executor": executor_kind,
        "logs": str(Path(log_dir).resolve()),  # absolute: read from another working directory (compare)
        "runs": [{"tag": r.tag, "settings": r.settings, "seed": r.config.seed, "job_id": str(j.job_id),
                  "results": str(algo_dir_of(r.config).resolve())} for r, j in zip(runs, jobs)],
    }
    with folder_lock(path.parent):  # two sweeps into one folder at once: each lists the other (one was lost)
        earlier = []
        if path.exists():  # the earlier sweeps into the same folder stay listed, newest last
            try:
                previous = json.loads(path.read_text())
                earlier = ([*previous.pop("earlier"), previous] if isinstance(previous.get("earlier"), list)
                           else [previous])
            except (OSError, ValueError, AttributeError, TypeError):  # the jobs are submitted: keep it, do not fail
                kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, kept)
                print(f"warning: {path} was not readable JSON; it is kept as {kept}, and {path} lists this sweep "
                      f"only.", file=sys.stderr)
        encoded = json.dumps({**manifest, "earlier": earlier}, indent=1).encode()
        atomic_write(path, lambda f: f.write(encoded))


def sweep_main(argv: list[str]) -> int:
    load_plugins_from_argv(argv)
    parser = Parser(prog="cljax sweep", description=(
        "Run a grid of settings x seeds, one `cljax run` per job through submitit (SLURM job array, or local "
        "processes). Takes every flag of `cljax run` as the base settings."))
    add_sweep_flags(parser)
    add_settings_flags(parser, argv)
    add_run_flags(parser, " (every job)", {"--no-progress": " (every job's log; a job never draws a bar)"})
    add_repair_flag(parser, " (every job)")
    args = parser.parse_args(argv)
    check_repair(parser, args)
    check_sweep_flags(args)
    base = config_from_args(args)
    base_flat = {dest: getattr(args, dest) for dest in setting_specs()}
    grid = parse_grid(args.grid)
    seeds = sweep_seeds(args.seeds, base.seed, argv)
    runs = expand(base_flat, grid, seeds)
    check_grid_used(runs, [unused_settings(run_settings(base_flat, run), inert=False) for run in runs])
    whys = [unused_settings(run_settings(base_flat, run)) for run in runs]
    warn_unused(parser, args, whys)
    for name in runs[0].settings if runs else ():  # used, but changing nothing in any run (inert): said, not refused
        if all(name in why for why in whys):
            print(f"warning: --grid {name}=...: its values change nothing in any run of the sweep ({whys[0][name]}); "
                  f"its runs differ at most by float rounding.", file=sys.stderr)
    from cljax.registry import loaded_plugins

    def command_of(run):
        return run_command({**run_settings(base_flat, run), "results_dir": run.config.results_dir}, loaded_plugins(),
                           args.allow_nonfinite)

    check_against_data(runs, args.overwrite, args.repair, command_of)
    check_not_trained_twice(runs)
    root = Path(base.results_dir)
    check_devices(runs, args.executor, args)  # before the log folder is made
    log_dir = sweep_log_folder(Path(args.log_dir) if args.log_dir else root / "sweep_logs")
    unlisted = (f"the jobs were being submitted: some may be queued or running, and no sweep.json lists them; check "
                f"squeue (SLURM) or the *_submitted.pkl files in {log_dir} before submitting again")
    with made_for_the_jobs(log_dir), signals_held(unlisted) as asked:  # (the log folder removed if no job was submitted)
        executor = make_executor(args.executor, log_dir, args)
        check_slurm_submits(executor)
        kind = getattr(executor, "cluster", args.executor)
        with controllers_write_to_log(executor, log_dir):
            jobs = submit(runs, executor, args.overwrite, args.allow_nonfinite, args.repair, not args.no_progress)
        write_manifest(root / "sweep.json", runs, jobs, kind, log_dir)
    print(f"submitted {len(jobs)} job(s) to {kind} (logs: {log_dir}, list: {root / 'sweep.json'}):")
    from cljax.experiment import algo_dir_of

    for run, job in zip(runs, jobs):
        print(f"  job {job.job_id}  {run.tag}  -> {algo_dir_of(run.config)}")
    if asked:  # a stop while the jobs were submitted: they are queued (or running), and listed
        from cljax.stopping import exit_stopped

        exit_stopped(asked[0], jobs_go_on(jobs, kind, root / "sweep.json"))
    if not args.wait:
        return 0
    stop_waiting_says_the_jobs_go_on(jobs, kind, root / "sweep.json")
    return 1 if report_outcomes(runs, jobs, command_of, args.overwrite) else 0


@contextlib.contextmanager
def signals_held(second: str):
    """A stop signal waits while the jobs are submitted and listed in sweep.json (the list of the
    signals that came): a stop there left jobs queued that no sweep.json named, and its line went
    into the output submitit's submission is redirected to. A second one (a submission that
    hangs) ends the command at once, with the line ``second`` on the terminal."""
    import signal

    from cljax.stopping import exit_stopped, install

    asked: list = []
    try:
        terminal = os.dup(2)  # (fd 2 and sys.stderr are redirected during the submission)
    except OSError:  # no fd 2 (a daemon's): no line to show
        terminal = None

    def hold(signum, frame):
        asked.append(signum)
        if len(asked) > 1:
            if terminal is not None:
                sys.stderr = os.fdopen(terminal, "w", closefd=False)
            exit_stopped(signum, second)

    previous = install(hold)
    try:
        yield asked
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if terminal is not None:
            os.close(terminal)


if __name__ == "__main__":
    sys.exit(sweep_main(sys.argv[1:]))
