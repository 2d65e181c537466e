"""Where a sweep's jobs run (``cljax sweep --executor``): the submitit executor and its SLURM
parameters, SLURM's time format, and what stopping ``--wait`` tells of the jobs that go on."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from cljax.errors import CljaxError


def stop_waiting_says_the_jobs_go_on(jobs, kind: str, manifest: Path) -> None:
    """While ``--wait`` waits, SIGTERM/SIGINT stop the waiting. SLURM's jobs run on, and so do the
    local executor's, unless the signal reached them too: their controllers share the terminal's
    process group, so a Ctrl-C stops them (their runs resume with the same command). The line says
    which, and how to cancel what goes on, where the command's default line ("nothing was left
    half-written; run the same command again") would have a rerun submit every job again beside
    the running ones."""
    from cljax.stopping import exit_stopped, install

    what = jobs_go_on(jobs, kind, manifest)
    install(lambda signum, frame: exit_stopped(signum, what, stopped="stopped waiting"))  # main thread only


def jobs_go_on(jobs, kind: str, manifest: Path) -> str:
    """What the sweep's submitted jobs do when the command stops, and how to cancel them."""
    ids = " ".join(str(job.job_id) for job in jobs)
    if kind == "slurm":
        return (f"the {len(jobs)} job(s) go on ({manifest} lists them); cancel them with `scancel {ids}`, or let them "
                f"end and run the same command to see each run's outcome (a finished run is not trained again).")
    import signal

    from cljax.command import STOP_SIGNALS

    if signal.SIGINT not in STOP_SIGNALS:  # started ignoring it (a script's background job): so were the jobs
        return (f"the {len(jobs)} local job(s) go on ({manifest} lists them): this command was started ignoring "
                f"SIGINT (a background job of a script), and so were they, so neither a Ctrl-C nor `kill -INT` stops "
                f"them, and a job ignores SIGTERM; `pkill -KILL -P {','.join(str(job.job_id) for job in jobs)}` (the "
                f"jobs' processes, children of their ids) cancels them, and the same command resumes their runs from "
                f"their last finished task.")
    return (f"local jobs the signal also reached (a Ctrl-C reaches them all) stop, and the same command resumes "
            f"their runs from their last finished task; any still running go on ({manifest} lists them): `kill "
            f"-INT {ids}` (their process ids) cancels them (a job ignores SIGTERM).")


CONTROLLERS_LOG = "local_controllers.log"


@contextlib.contextmanager
def controllers_write_to_log(executor, log_dir: Path):
    """While the local executor submits, file descriptors 1 and 2 are the log folder's
    ``local_controllers.log``, so that the job controllers it starts (submitit's, which inherit
    them and outlive the command) write there: `cljax sweep | tail` returned only when the jobs
    ended (they held the pipe), and a Ctrl-C printed each controller's KeyboardInterrupt
    traceback on the terminal. This process's own sys.stdout and sys.stderr write to the
    terminal meanwhile (a warning, a signal's line). SLURM's jobs write to their own logs."""
    if getattr(executor, "cluster", None) != "local":
        yield
        return
    path = log_dir / CONTROLLERS_LOG
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise CljaxError(f"cannot write {path} ({exc.strerror}): pass --log-dir with a writable folder (no job was "
                         f"submitted).") from None
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (os.fdopen(fd, "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                                        errors="backslashreplace", closefd=False) for fd, old in zip(saved, streams))
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def parse_minutes(text: str) -> int:
    """A time in SLURM's --time formats -> whole minutes, seconds rounded up as SLURM does:
    minutes (600), minutes:seconds (30:00), hours:minutes:seconds (10:00:00), and days-hours
    (1-02), days-hours:minutes (1-02:30), days-hours:minutes:seconds (1-02:30:00). ValueError
    for anything else, and for a limit of zero or above a year."""
    days, dash, clock = text.strip().rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash and not days or days and int(days) < 0 or len(parts) > 3:  # the clock holds no "-" (rpartition)
        raise ValueError(text)
    if dash:  # after a day count the clock starts at hours: D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:  # MM, MM:SS, HH:MM:SS
        hours, minutes, seconds = {1: [0, *parts, 0], 2: [0, *parts], 3: parts}[len(parts)]
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    if not 1 <= total <= MAX_MINUTES:
        raise ValueError(text)
    return total


# A year: more is a typo (99999999999 was submitted as it was; SLURM stores minutes in 32 bits, so
# such a value wraps, and clusters cap a job far below a year).
MAX_MINUTES = 365 * 24 * 60


def make_executor(kind: str, log_dir: Path, args) -> "object":
    try:
        import submitit
    except ImportError:
        raise CljaxError("cljax sweep needs submitit: pip install 'cljax[sweep]' (or pip install submitit).") from None

    cluster = None if kind == "auto" else kind
    try:
        executor = submitit.AutoExecutor(folder=str(log_dir), cluster=cluster)
    except RuntimeError as exc:
        raise CljaxError(f"no submitit executor available ({exc}): pass --executor local.") from None
    params = {"name": args.job_name, "timeout_min": parse_minutes(args.slurm_time)}
    optional = {"slurm_gpus": "gpus_per_node", "slurm_cpus": "cpus_per_task", "slurm_mem_gb": "mem_gb",
                "slurm_partition": "slurm_partition", "slurm_account": "slurm_account",
                "slurm_array_parallelism": "slurm_array_parallelism"}
    params.update({param: getattr(args, flag) for flag, param in optional.items() if getattr(args, flag)})
    executor.update_parameters(**params)
    unused = [flag for flag in optional if getattr(args, flag)]
    if executor.cluster != "slurm" and unused:  # submitit takes them and the local executor drops them
        import sys

        print(f"warning: {', '.join('--' + f.replace('_', '-') for f in unused)} {'has' if len(unused) == 1 else 'have'}"
              f" no effect with the {executor.cluster} executor: every job starts at once, on this machine.",
              file=sys.stderr)
    return executor


def check_slurm_submits(executor) -> None:
    """submitit picks SLURM (``--executor auto``) where ``srun`` is on PATH, and submits with
    ``sbatch``: a host with srun and no sbatch failed at the submission, with a line that read
    like a wrong path of the user's."""
    import shutil

    if getattr(executor, "cluster", None) == "slurm" and shutil.which("sbatch") is None:
        raise CljaxError("sbatch, SLURM's submit command, was not found on PATH (the SLURM executor needs it; "
                         "--executor auto chooses SLURM where srun is): load SLURM (e.g. `module load slurm`), or "
                         "pass --executor local (no job was submitted).")


def sweep_log_folder(log_dir: Path) -> Path:
    """The folder of this sweep's own under ``log_dir`` (not made yet), named by the time it is
    submitted and this process's id: a local job's id is its controller's process id, which a
    later sweep's job can get again and would then write its files (``ID_submitted.pkl``,
    ``ID_0_result.pkl``) over an earlier job's that sweep.json lists."""
    import time

    import socket

    # the host too: two login nodes that share the filesystem can each start a sweep in the same second
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname().split('.')[0]}-{os.getpid()}"
    return next(log_dir / f"{name}{f'-{n}' if n else ''}" for n in range(1000)
                if not (log_dir / f"{name}{f'-{n}' if n else ''}").exists())  # a second sweep of this process


@contextlib.contextmanager
def made_for_the_jobs(folder: Path):
    """Makes the sweep's log folder; a refusal or a submission that fails before any job was
    submitted (no ``*_submitted.pkl`` there) leaves neither it nor the folders made above it."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CljaxError(f"cannot make {folder} ({exc.strerror}): pass --log-dir with a writable folder (no job "
                         f"was submitted).") from None
    try:
        yield
    except BaseException:
        if not any(folder.glob("*_submitted.pkl")):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)
            for parent in made[1:]:
                with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
                    parent.rmdir()
        raise


def check_devices(runs, kind: str, args) -> None:
    """What each job would refuse about its repeats and devices, checked before any is queued:
    a local job splits this host as ``cljax run`` does (``$CLJAX_CPU_DEVICES``, or XLA_FLAGS'
    device count), a SLURM job with ``--slurm-gpus G`` sees G GPUs; R must split over them. A
    SLURM job without GPUs runs on its node's CPU with this environment (sbatch passes it on):
    an XLA_FLAGS device count or a ``$CLJAX_CPU_DEVICES`` number must split R there too (``auto``
    follows the node's cores, and refuses nothing)."""
    import glob
    import os
    import shutil

    from cljax.devices.cpu_split import cpu_devices_wanted, forced_cpu_devices

    if kind == "auto":  # as submitit's AutoExecutor decides: SLURM where srun is (its SlurmExecutor.affinity)
        kind = "slurm" if shutil.which("srun") else "local"
    # A local job on a host with an accelerator runs there, not on the CPU devices (JAX is not
    # started here to ask: it would hold the GPU's memory while the jobs run).
    if kind != "slurm" and not os.environ.get("JAX_PLATFORMS", "").startswith("cpu") and \
            glob.glob("/dev/nvidia[0-9]*") + glob.glob("/dev/kfd"):
        return
    forced = forced_cpu_devices()
    for run in runs:
        R = run.config.n_repeats
        try:
            if kind != "slurm":  # CLJAX_CPU_DEVICES=N that does not divide R: cpu_devices_wanted refuses
                n = forced or cpu_devices_wanted(R) or 1
                where = f"the {n} CPU devices XLA_FLAGS makes here"
            elif not args.slurm_gpus:  # a CPU job: cpu_devices_wanted refuses N, auto's count is the node's
                cpu_devices_wanted(R, cores=R)
                n = forced or 1
                where = f"the {n} CPU devices XLA_FLAGS makes in each job (its environment is this one's)"
            else:
                n = args.slurm_gpus or 1
                where = f"a job's {n} GPUs (--slurm-gpus)"
            if R % n:
                raise CljaxError(f"--n-repeats {R} does not split over {where}: use a multiple of {n}")
        except CljaxError as exc:
            raise CljaxError(f"run {run.tag}: {str(exc).rstrip('.')} (no job was submitted).") from None
