"""What `cljax sweep --wait` prints of its jobs: a finished job's tasks and accuracy, a failed
job's error line."""

from __future__ import annotations

import re


RESUMES = "to resume its run from its last finished task"  # how a stopped job's line ends
DIVERGED = "non-finite "  # how the line of a job whose run diverged begins (cljax/experiment.py's error)


def job_error_line(error: BaseException) -> str:
    """The line of a failed job's error that says what went wrong: cljax's own message when the
    job raised one (submitit's text ends with log paths); another exception's type and message,
    from its traceback; for a job whose process ended without a result, that it was interrupted
    (SIGINT) or killed, and that a rerun resumes it; for a job submitit stopped requeueing (its
    time limit reached too many times), the reason; else its last line."""
    text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    ours = [line.split("CljaxError:", 1)[1].strip() for line in lines if "CljaxError:" in line]
    no_result = [line for line in lines if line.startswith("has not produced any output")]
    requeue = [line.split("not requeued because:", 1)[1].strip().rstrip(".") for line in lines
               if "not requeued because:" in line]
    raised = _raised_line(text)
    if ours:
        return ours[-1]
    if requeue:  # submitit requeues a job at its time limit a few times (3), then gives up
        return (f"the job was stopped at its time limit and not requeued ({requeue[0]}): raise --slurm-time, or run "
                f"the same sweep again (without --overwrite) {RESUMES}")
    if no_result:
        # submitit keeps no exit code or signal: a local job's state is its controller's (FINISHED
        # when the job's process was killed under it); SLURM's (OUT_OF_MEMORY, CANCELLED) says more.
        state = no_result[0].split("(state: ", 1)[-1].rstrip(")") if "(state: " in no_result[0] else ""
        state = "" if state in ("FINISHED", "UNKNOWN", "unknown") else f"; state: {state}"
        what = ("was interrupted (SIGINT)" if raised == "KeyboardInterrupt" else
                "ended without a result: killed (a signal such as SIGKILL, or out of memory; submitit records no "
                "signal or exit code)")
        return f"the job's process {what}{state}: run the same sweep again (without --overwrite) {RESUMES}"
    if raised:  # not cljax's own error: a bug, a plugin's, the environment's (XLA out of memory)
        raised = raised if len(raised) <= 300 else raised[:297] + "..."
        return f"the job raised {raised} (its traceback is in the log)"
    return lines[-1] if lines else repr(error)


def _raised_line(text: str) -> str | None:
    """The first line of the exception a Python traceback in ``text`` ends with (``ValueError:
    bad value``): the first unindented line after the last ``Traceback`` header's frames."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    return next((line.strip() for line in lines[starts[-1] + 1:] if line.strip() and not line[0].isspace()), None)


def advises_overwrite(line: str) -> bool:
    """Whether an error line advises --overwrite (not "without --overwrite")."""
    return re.search(r"(?<!without )--overwrite", line) is not None


def report_outcomes(runs, jobs, command_of=None, overwrite: bool = False) -> int:
    """One line per job (waiting for each), then the count; returns the number that failed.
    ``command_of(run)``: the `cljax run` command of one run, offered where a failed job's own
    line advises --overwrite, which in a sweep would apply to every job, and, after a sweep's
    --overwrite, for each failed run a rerun without it would not resume (its job was not
    stopped: it was refused). A run that diverged diverges again with the same settings and seed,
    under its own command or the sweep's: its own command with --allow-nonfinite, which finishes it
    as it is, is offered instead."""
    failed, advised, stopped, diverged = 0, [], 0, []
    for run, job in zip(runs, jobs):
        error = job.exception()
        if error is not None:
            failed += 1
            line = job_error_line(error)
            print(f"  FAILED {job.job_id} {run.tag}: {line} (log: {job.paths.stderr})")
            resumes = line.endswith(RESUMES)
            stopped += resumes
            if line.startswith(DIVERGED):  # its advice, "a lower --lr and --overwrite", is another run in a sweep
                diverged.append(run)
            elif (overwrite and not resumes) or (advises_overwrite(line) and not overwrite):  # advised, not ruled out
                advised.append(run)
            continue
        print(f"  done   {job.job_id} {run.tag}: {done_line(job.result())}")
    print(f"{len(jobs) - failed} of {len(jobs)} job(s) finished" + (f", {failed} failed" if failed else ""))
    if stopped and overwrite:
        print(f"note: this sweep ran with --overwrite: run it again without --overwrite to resume the {stopped} "
              f"stopped run(s) (with it, every run is deleted and trained again, the finished ones too).")
    if advised:
        print("note: --overwrite in `cljax sweep` applies to every job and would delete the finished runs too; to "
              "train one run again alone, run its own command (or remove its folder and rerun the sweep):")
        for run in advised:
            print(f"    {command_of(run)} --overwrite" if command_of else f"    {run.tag}: cljax run with its flags")
    if diverged:
        print("note: a run that diverged diverges again with the same settings and seed: its own command with "
              "--overwrite, or the sweep again, trains it the same way. Another --lr is another run (a value of --grid, "
              "with a folder of its own); to keep the run as it is, a diverged result, finish it with:")
        for run in diverged:
            print(f"    {command_of(run)} --allow-nonfinite" if command_of else
                  f"    {run.tag}: cljax run with its flags and --allow-nonfinite")
    return failed


def done_line(out: dict) -> str:
    """What a finished job did: its tasks, the tasks a repair trained again, whether it resumed or
    found the run finished, the last task's accuracy when it has it, and the run's folder. A job
    requeued in a time limit is described from its first attempt on, with their number: its last
    attempt alone resumed what the earlier ones trained."""
    first, tasks = out.get("first_task") or 0, out["tasks"]
    trained = out.get("trained_tasks", [])
    again = [t for t in trained if t < first]  # --repair: trained again below the checkpoint
    what = [f"repaired tasks {_span(again)}"] if again else []
    attempts, start = out.get("attempts", 1), out.get("job_first_task")
    if attempts > 1 and isinstance(start, int) and start < first:  # the earlier attempts trained from `start`
        what += [f"resumed from task {start}"] if start else []
    elif out.get("already_finished") or (first == tasks and not again):
        what.append("already finished")
    elif first == tasks:
        what.append("it had trained every task")
    elif first:
        what.append(f"resumed from task {first}")
    if attempts > 1:
        what.append(f"{attempts} attempts: requeued {attempts - 1} time{'s' * (attempts > 2)}")
    acc = out.get("final_acc_current")
    acc_text = "" if acc is None else f", last task acc {acc:.3f}"
    if out.get("nonfinite_tasks"):  # a run that diverged under --allow-nonfinite finished, but is not a result
        acc_text += (f"; non-finite values in {out['nonfinite_tasks']} task(s) (a diverged network: the means leave "
                     f"its repeats out)")
    how = f" ({'; '.join(what)})" if what else ""
    return f"{tasks} tasks{how}{acc_text} -> {out['algo_dir']}"


def _span(tasks: list[int]) -> str:
    return f"{tasks[0]}" if len(tasks) == 1 else f"{tasks[0]}-{tasks[-1]}"


def run_command(flat: dict, plugins=(), allow_nonfinite: bool = False) -> str:
    """The `cljax run` command of one run of the sweep: its settings that differ from the
    defaults (its grid values, seed and folder among them), and the sweep's plugin files."""
    import shlex

    from cljax.settings import flat_defaults, setting_specs

    specs, defaults = setting_specs(), flat_defaults()
    words = ["cljax", "run", *(w for path in plugins for w in ("--plugin", str(path)))]
    for dest, value in flat.items():
        if dest not in specs or (dest in defaults and value == defaults[dest] and dest != "results_dir"):
            continue
        flag = specs[dest][0]
        if isinstance(value, bool):
            words.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            words += [f"--{flag}", "none" if value is None else repr(value) if isinstance(value, float) else str(value)]
    if allow_nonfinite:
        words.append("--allow-nonfinite")
    return shlex.join(words)
