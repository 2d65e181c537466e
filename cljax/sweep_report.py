"""What `cljax sweep --wait` prints of its jobs: a finished job's tasks and accuracy, a failed
job's error line."""

from __future__ import annotations


def job_error_line(error: BaseException) -> str:
    """The line of a failed job's error that says what went wrong: cljax's own message when the
    job raised one (submitit's text ends with log paths); for a job whose process ended without
    a result (killed: memory, a time limit, a signal), submitit's line with the job's state; for
    a job submitit stopped requeueing (its time limit reached too many times), the reason; else
    its last line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    ours = [line.split("CljaxError:", 1)[1].strip() for line in lines if "CljaxError:" in line]
    no_result = [line for line in lines if line.startswith("has not produced any output")]
    requeue = [line.split("not requeued because:", 1)[1].strip().rstrip(".") for line in lines
               if "not requeued because:" in line]
    if ours:
        return ours[-1]
    if requeue:  # submitit requeues a job at its time limit a few times (3), then gives up
        return (f"the job was stopped at its time limit and not requeued ({requeue[0]}): raise --slurm-time, or run "
                f"the same sweep again to resume the run from its last finished task")
    if no_result:
        return "the job's process ended without a result " + no_result[0].replace("has not produced any output ", "")
    return lines[-1] if lines else repr(error)


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
