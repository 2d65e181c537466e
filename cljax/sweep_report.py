"""What `cljax sweep --wait` prints of its jobs: a finished job's tasks and accuracy, a failed
job's error line."""

from __future__ import annotations


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
                f"the same sweep again to resume the run from its last finished task")
    if no_result:
        # submitit keeps no exit code or signal: a local job's state is its controller's (FINISHED
        # when the job's process was killed under it); SLURM's (OUT_OF_MEMORY, CANCELLED) says more.
        state = no_result[0].split("(state: ", 1)[-1].rstrip(")") if "(state: " in no_result[0] else ""
        state = "" if state in ("FINISHED", "UNKNOWN", "unknown") else f"; state: {state}"
        what = ("was interrupted (SIGINT)" if raised == "KeyboardInterrupt" else
                "ended without a result: killed (a signal such as SIGKILL, or out of memory; submitit records no "
                "signal or exit code)")
        return (f"the job's process {what}{state}: run the same sweep again (without --overwrite) to resume its run "
                f"from its last finished task")
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


def report_outcomes(runs, jobs) -> int:
    """One line per job (waiting for each), then the count; returns the number that failed."""
    failed = 0
    for run, job in zip(runs, jobs):
        error = job.exception()
        if error is not None:
            failed += 1
            print(f"  FAILED {job.job_id} {run.tag}: {job_error_line(error)} (log: {job.paths.stderr})")
            continue
        out = job.result()
        acc = out.get("final_acc_current")
        acc_text = "n/a" if acc is None else f"{acc:.3f}"
        how = (" (already finished)" if out.get("already_finished") else
               " (repaired; it had trained every task)" if out.get("first_task") == out["tasks"] else
               f" (resumed from task {out['first_task']})" if out.get("first_task") else "")
        print(f"  done   {job.job_id} {run.tag}: {out['tasks']} tasks{how}, last task acc {acc_text} -> {out['algo_dir']}")
    print(f"{len(jobs) - failed} of {len(jobs)} job(s) finished" + (f", {failed} failed" if failed else ""))
    return failed
