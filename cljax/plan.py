"""``cljax plan``: what a run will take, before it runs (device memory per task, host memory,
disk per task and for the whole run, how evaluation will run), reported from the same figures
``cljax run`` checks (cljax/budget.py, cljax/budget_disk.py)."""

from __future__ import annotations

import shutil

import jax

from cljax.budget import (HEADROOM, Budget, _per_device, device_budget_for, device_components,
                          evaluation_mode, fit_chunk, fmt_bytes, given_chunk_problem, host_components, host_problem,
                          host_total, scratch_bytes)
from cljax.budget_disk import disk_files_per_task, disk_run_files, existing_parent, task_disk_parts
from cljax.check_record import JOURNAL, RECORD
from cljax.checkpoint import CHECKPOINT
from cljax.initial_state import INITIAL
from cljax.kept_checkpoints import keeps
from cljax.rewrites import cleared_bytes
from cljax.budget_refusal import does_not_fit
from cljax.config import Config
from cljax.eval_tasks import eval_tasks_of
from cljax.program import build_task_program
from cljax.registry import reads_conv_impl


def make_plan(config: Config, device_bytes: int | None = None) -> dict:
    """Everything ``cljax plan`` prints, as a JSON-ready dict."""
    from cljax.data import load_dataset
    from cljax.devices.memory import host_available, rss_bytes
    from cljax.devices.mesh import check_repeats, device_count
    from cljax.tasks import TaskData, make_schedule

    config.validate()
    from cljax.checkpoint import read_run_record
    from cljax.config import algo_dir_of
    from cljax.errors import CljaxError
    from cljax.output_guard import check_writable_target
    from cljax.run_folder import verify_task_dir
    from cljax.run_split import recorded_pairing
    from cljax.data.prepared import data_identity
    from cljax.setting_match import resume_differences

    check_writable_target(algo_dir_of(config))  # as run does: a --results-dir it could not write to
    data = load_dataset(config)
    TaskData(data, config)  # run's own check that every class has the images a task takes
    schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed, config.task_schedule)
    check_repeats(config.n_repeats)
    n_dev = device_count()
    image_shape = data.train_images.shape[1:]
    try:  # a resume builds the pairing its run started with (auto's choice depends on the host)
        record = read_run_record(algo_dir_of(config))
        # the data by content, as run compares it (--data-dir spelt otherwise is the same data)
        other = list(resume_differences(record, config, data_identity(data))) if record is not None else []
        record = None if other else record  # another run's, which run refuses or replaces: planned as a new run
    except (CljaxError, TypeError, KeyError):
        record, other = None, []  # damaged: run's own checks say so
    algo_dir = algo_dir_of(config)
    first, written, replaced, again = (_resumes_at(algo_dir, config, data_identity(data)) if record
                                       else (0, 0, False, False))
    record = None if replaced else record  # a run that finished no task, which run replaces: planned as a new run
    b = Budget.of(config, build_task_program(config, image_shape, paired_models=recorded_pairing(config, record)),
                  image_shape)
    budget, source = device_budget_for(config, device_bytes)
    T, R, L = config.num_tasks, config.n_repeats, config.n_logs
    spec = eval_tasks_of(config)
    slots = spec.slots(T)  # the task slots every snapshot evaluates and every task folder stores
    K = min(config.eval_chunk_tasks, slots) if config.eval_chunk_tasks else fit_chunk(b, budget, n_dev)
    fits = K > 0
    K = K or 1  # the parts are shown for K = 1 when nothing fits
    pb = b.pb

    components = device_components(b, K)
    total = sum(components.values())
    scratch = scratch_bytes(b)
    per_device = _per_device(total, n_dev)

    host = host_components(b, data, K)
    host_bytes = host_total(b, data, K)
    if config.eval_chunk_tasks:
        problem = given_chunk_problem(b, K, budget, n_dev)
    else:
        problem = None if fits else does_not_fit(b, budget, n_dev)
    available = host_available()  # read once: the problem and the figure printed agree
    if problem is None:
        problem = host_problem(b, data, K, available)
    fits = problem is None

    files = disk_files_per_task(b, schedule, data.class_names)
    run_files = disk_run_files(b, data.meta)
    per_task_disk = sum(files.values())
    # The first task's disk (a resumed run's next), checked by run before it writes: as run checks it.
    initial = not first or verify_task_dir(algo_dir / INITIAL, -1, record.get("run_id"), hashes=False) is not None
    parts = task_disk_parts(b, schedule, data.class_names, run_files, algo_dir, run_record=record is None,
                            initial=initial, last=first + 1 == T, resumes=record is not None, again=again) \
        if first < T else {}
    # a run with other settings is deleted first (--overwrite, or the replacement of one that finished no task)
    freed = cleared_bytes(algo_dir) if other or replaced else 0
    free = shutil.disk_usage(existing_parent(algo_dir)).free
    disk_problem = None
    if sum(parts.values()) > free + freed:
        also = f" and the old run's files it deletes take {fmt_bytes(freed)}" if freed else ""
        disk_problem = (f"the {'next' if record else 'first'} task ({', '.join(parts)}) needs "
                        f"{fmt_bytes(sum(parts.values()))} ({sum(parts.values()):,} bytes), {fmt_bytes(free)} "
                        f"({free:,} bytes) are free at {existing_parent(algo_dir)}{also}: `cljax run` refuses it; "
                        f"free space or choose another --results-dir")
    kept = sum(keeps(config.keep_checkpoints, t, T) for t in range(first, T)) if record else 0  # linked, then parted
    # and the checkpoint and initial/ where the run stopped before it wrote them (else written again in place)
    kept += (first < T and not (algo_dir / CHECKPOINT).is_file()) if record else 0
    lost = run_files["initial/"] * (first < T and not (algo_dir / INITIAL).is_dir()) if record else 0
    # and the record of what it verified, folded as it ends, past what it holds now
    held = sum((algo_dir / n).stat().st_size for n in (RECORD, JOURNAL) if (algo_dir / n).is_file()) if record else 0
    return {
        "dataset": config.dataset,
        "algorithm": config.algorithm_name,
        "lowering": b.program.lowering.record(),
        "convolves": reads_conv_impl(config.model),  # the lowering's conv is recorded for every model
        "num_tasks": T, "n_repeats": R, "n_logs": L, "n_params": pb.n_params, "hidden": pb.hidden,
        "steps_per_task": config.steps_per_task,
        "devices": {"count": n_dev, "processes": jax.process_count(), "platform": jax.default_backend(),
                    "repeats_per_device": R // n_dev},
        "device_budget_bytes": budget,
        "device_budget_source": source,
        "device_budget_usable_bytes": int(HEADROOM * budget),
        "fits": fits and disk_problem is None,
        "problem": None if problem is None else str(problem),
        "task_schedule": config.task_schedule,
        "evaluation": {
            "eval_tasks": str(spec),
            "slots": slots,
            **evaluation_mode(K, slots),
            "calls_per_task": -(-slots // K),
            "chosen_by": "--eval-chunk-tasks" if config.eval_chunk_tasks else "budget",
        },
        "device_components": {k: _per_device(v, n_dev) for k, v in components.items()},
        "device_bytes_per_task": per_device,
        "device_bytes_per_task_all_devices": total,
        "device_scratch_bytes_estimate": _per_device(scratch, n_dev),
        "host_components": host,
        "host_bytes_estimate": host_bytes,
        "host_available_bytes_now": available[0],
        "host_available_source": available[1],
        # the runtime alone: this process's RSS holds the dataset it loaded, which host_components counts
        "host_runtime_rss_now": max(0, rss_bytes() - host["dataset_in_ram"]),
        "disk_files_per_task": files,
        "disk_bytes_per_task": per_task_disk,
        "disk_run_files": run_files,
        "disk_bytes_total": T * per_task_disk + sum(run_files.values()),
        # a resumed run's: the task folders it adds (one it writes again replaces itself), the
        # checkpoints it keeps (a kept one parts from checkpoint.npz, which it was linked to, when
        # the next checkpoint replaces it), its record
        "disk_bytes_left": (T - written) * per_task_disk + lost + (
            kept * run_files[CHECKPOINT] + max(0, run_files[RECORD] - held) * (first < T) if record
            else sum(run_files.values())),
        "disk_next_task": parts,  # what run checks is free before it writes (in whole blocks)
        "disk_bytes_next_task": sum(parts.values()),
        "disk_problem": disk_problem,
        "folder_holds_a_run_with_other": other,  # settings: `cljax run` refuses it (or replaces it, with no task)
        "disk_free_at": str(existing_parent(algo_dir)),
        "disk_free_bytes": free,
        "disk_freed_by_deleting_the_old_run": freed,
    }


def _resumes_at(algo_dir, config: Config, data_id: str) -> tuple[int, int, bool, bool]:
    """(the task a resume of the run in ``algo_dir`` trains first, T when it is finished; the task
    folders below T that it keeps; whether run replaces it, a run that finished no task; whether it
    writes its first task's folder again beside the old one, ``budget_disk.written_again``), by the
    run's own finder (``run_folder.inspect_run``, its files' contents not hashed): a run that stopped
    between a task's folder and the checkpoint after it resumes from that task and writes its
    folder again in place. Where run refuses the folder (it says why), from its task folders."""
    from cljax.budget_disk import written_again
    from cljax.check_record import CheckRecord
    from cljax.errors import CljaxError
    from cljax.results import task_dirs
    from cljax.run_folder import inspect_run

    T = config.num_tasks
    below = [d for d in task_dirs(algo_dir, passed=False) if int(d.name[5:]) < T]
    try:
        found = inspect_run(algo_dir, config, data_id, overwrite=False, hashes=False, memo=CheckRecord(algo_dir))
    except CljaxError:
        return len(below), len(below), False, False
    if found.record is None:
        return 0, 0, found.replaces is not None, False
    first = T if found.finished else found.next_task
    return first, len([d for d in below if d not in found.stale]), False, written_again(found, algo_dir, first)


def format_plan(plan: dict) -> str:
    d, ev = plan["devices"], plan["evaluation"]
    lines = [
        f"plan: {plan['dataset']}/{plan['algorithm']}: T={plan['num_tasks']} tasks "
        f"({plan['task_schedule']} schedule, --eval-tasks {ev['eval_tasks']}: {ev['slots']} evaluated per snapshot) "
        f"x R={plan['n_repeats']} repeats, "
        f"{plan['steps_per_task']} steps and L={plan['n_logs']} snapshots per task, {plan['n_params']:,} parameters",
        f"devices: {d['count']} x {d['platform']} ({d['processes']} process(es)), {d['repeats_per_device']} repeat(s) each; "
        f"budget {fmt_bytes(plan['device_budget_bytes'])} per device ({plan['device_budget_source']}), "
        f"planning for {fmt_bytes(plan['device_budget_usable_bytes'])}",
        "program: repeats {repeats}, learner and expert {learner_expert}, {conv}, matmul precision "
        "{matmul_precision}, {compute_dtype} compute, {scan_unroll} step(s) per loop iteration".format(**{
            **plan["lowering"], "conv": f"{plan['lowering']['conv']} convolutions" if plan.get("convolves", True)
            else "no convolution"}),
        "",
        "device memory of a task, per device (arrays at the task's high-water mark):",
    ]
    for name, value in plan["device_components"].items():
        lines.append(f"  {name:<34} {fmt_bytes(value):>12}")
    lines += [
        f"  {'total':<34} {fmt_bytes(plan['device_bytes_per_task']):>12}",
        f"  {'+ XLA scratch (rough estimate)':<34} {fmt_bytes(plan['device_scratch_bytes_estimate']):>12}",
        "",
    ]
    if plan["problem"]:  # the device's budget, or the host's memory (the disk's is said below)
        what = "host memory" if "more host memory" in plan["problem"] else "evaluation"
        lines.append(f"{what}: DOES NOT FIT: {plan['problem']}")
    elif ev["mode"] == "resident" and ev["eval_tasks"] in ("all", "seen"):
        lines.append(f"evaluation: resident: the test sets of all {plan['num_tasks']} tasks stay on the device; "
                     f"one call per task (chosen by {ev['chosen_by']})")
    elif ev["mode"] == "resident":
        lines.append(f"evaluation: {ev['slots']} task slot(s) per snapshot ({ev['eval_tasks']}), their test sets "
                     f"gathered and put on the device per task; one call per task (chosen by {ev['chosen_by']})")
    else:
        lines.append(f"evaluation: chunked: K={ev['chunk_tasks']} tasks per call, {ev['calls_per_task']} calls per task; "
                     f"test sets streamed in, outputs streamed out (chosen by {ev['chosen_by']})")
        if 2 * ev["chunk_tasks"] >= ev["slots"]:  # two chunks in flight: no less than all the slots at once
            below = (ev["slots"] + 1) // 2  # 2K < slots; none at 2 slots, where K = 1 is the least
            saves = f"saves memory only below K = {below} (--eval-chunk-tasks 0 chooses)" if below > 1 else \
                f"saves no memory with {ev['slots']} task slot{'s' * (ev['slots'] != 1)}, whatever K (--eval-chunk-tasks 0 keeps them resident)"
            lines.append(f"  note: two chunks are in flight while streaming, {2 * ev['chunk_tasks']} tasks of the "
                         f"{ev['slots']}, so this needs as much device memory as resident evaluation; streaming {saves}")
    lines += ["", "host memory (estimate, beyond the Python/JAX runtime"
              f" of about {fmt_bytes(plan['host_runtime_rss_now'])}):"]
    for name, value in plan["host_components"].items():
        lines.append(f"  {name:<34} {fmt_bytes(value):>12}")
    cpu_note = (" (on the CPU the device arrays live in host memory: included, twice for XLA's temporaries)"
                if d["platform"] == "cpu" else "")
    lines += [f"  {'total':<34} {fmt_bytes(plan['host_bytes_estimate']):>12}{cpu_note}",
              f"  {'available now':<34} {fmt_bytes(plan['host_available_bytes_now']):>12} "
              f"({plan['host_available_source']})", "", "disk per task:"]
    for name, value in plan["disk_files_per_task"].items():
        lines.append(f"  {name:<34} {fmt_bytes(value):>12}")
    lines.append(f"  {'total':<34} {fmt_bytes(plan['disk_bytes_per_task']):>12}")
    for name, value in plan["disk_run_files"].items():
        lines.append(f"  {'run: ' + name:<34} {fmt_bytes(value):>12}")
    lines.append(f"disk for the whole run: {fmt_bytes(plan['disk_bytes_total'])} ({plan['disk_bytes_total']:,} bytes); "
                 f"{fmt_bytes(plan['disk_free_bytes'])} free at {plan['disk_free_at']}")
    other = plan.get("folder_holds_a_run_with_other")
    if other:
        lines.append(f"  note: the run's folder holds a run with other settings ({', '.join(other)}), which `cljax run` "
                     f"refuses unless it finished no task (--overwrite deletes it): this plan is of a new run")
    if plan.get("disk_problem"):  # not even the first task (a resumed run's next): run refuses it
        lines.append(f"disk: DOES NOT FIT: {plan['disk_problem']}")
    elif plan["disk_bytes_left"] > plan["disk_free_bytes"] + plan.get("disk_freed_by_deleting_the_old_run", 0):
        left = "" if plan["disk_bytes_left"] == plan["disk_bytes_total"] else \
            f" (the {fmt_bytes(plan['disk_bytes_left'])} its tasks left need)"
        lines.append(f"  warning: more than is free there{left}: the run would stop part-way (resumably) unless "
                     f"space is freed")
    return "\n".join(lines)
