"""The task loop: schedule -> per task (gather, put on device, run the compiled program, fetch
once, write the task folder, the next task already training) -> summary. Everything here is
orchestration; the maths is in ``train.py``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from cljax.budget import Budget, choose_eval_chunk, evaluation_mode, host_problem
from cljax.budget_disk import (RESUMES, block_size, check_disk, disk_errors, disk_run_files, record_fold_disk,
                                task_disk_parts, warn_if_the_run_outgrows_the_disk, written_again)
from cljax.check_record import RECORD, CheckRecord
from cljax.checkpoint import RUN_RECORD, load_learner, new_run_id, save_learner, write_run_record
from cljax.config import SCHEMA_VERSION, Config, algo_dir_of
from cljax.data import load_dataset
from cljax.data.prepared import check_unchanged, data_identity
from cljax.devices.distributed import (check_same_run, failures_shared, is_writer, maybe_initialize_distributed,
                                      smallest_over_processes)
from cljax.devices.memory import host_available, live_device_bytes, rss_bytes
from cljax.devices.mesh import check_repeats, fetch, fetch_owned, put_repeats, shard_repeats
from cljax.errors import CljaxError
from cljax.eval_tasks import eval_tasks_of
from cljax.evaluate import TestSets, WindowTestSets
from cljax.faults import crash_point
from cljax.initial_state import INITIAL, initial_arrays, write_initial, wrote_initial
from cljax.kept_checkpoints import (again_note, describe_replay, keep_checkpoint, keeps, kept_is_whole, kept_path, replay_note, rewrite_kept,
                                     same_as_recorded, unread_by_a_finished_run)
from cljax.program import build_task_program
from cljax.progress import progress_for
from cljax.records import (divergence_warning, nonfinite_before, nonfinite_report, stored_row, summary_row,
                            task_arrays, task_metadata)
from cljax.results import task_dir_name, write_task
from cljax.rewrites import check_rewrites, cleared_bytes
from cljax.run_folder import clear_run, inspect_run, remove_stale_temporaries, verify_task_dir
from cljax.run_split import (recorded_pairing, recorded_split, same_split, split_of, warn_if_other_eval_chunk,
                              warn_if_other_split)
from cljax.run_lock import RunLock
from cljax.safe_files import remove_tree
from cljax.run_result import RunResult, finished
from cljax.sources import check_sources, entry_sources
from cljax.step import KEY_TASKS
from cljax.tasks import TaskData, make_schedule


def run_experiment(
    config: Config,
    *,
    overwrite: bool = False,
    progress: bool | str = True,
    allow_nonfinite: bool = False,
    critical=contextlib.nullcontext(),
    on_task_end=None,
    measure: bool = True,
    repair: bool = False,
) -> RunResult:
    """Run (or resume) a whole experiment and write its results tree. ``progress``: a bar
    (True, "bar"), lines for a log ("log", cljax/progress.py) or nothing (False).

    Every check that can refuse the run (settings, data, the folder's state, device memory,
    disk) passes before anything is written or deleted; a refusal raises CljaxError. The run
    folder is locked while the run writes it (cljax/run_folder.py). An existing run with the
    same settings and data resumes from its first unfinished task after its earlier task folders
    and checkpoint are verified as its own and whole (a finished, verified one is reported, not
    re-run); one with other settings is refused unless ``overwrite``, which deletes it. Damage
    below the checkpoint is refused unless ``repair``, which trains the tasks up to it again
    (cljax/kept_checkpoints.py).
    ``critical`` (a lock) is held while a task's folder and the checkpoint are written: a caller
    that takes it may stop the process at once and leave a resumable state.
    ``on_task_end(t, info)``, if given, is called after task t is written, with measurements:
    ``rss_bytes``, ``device_bytes_live`` (now), ``device_bytes_peak`` (largest live device bytes
    seen during the task), ``seconds``; with ``measure`` False the device figures are 0 (reading
    them waits for the device, which a caller that only follows the tasks need not); and
    ``first_task``, where this call resumed the run (a repair trains earlier tasks first).
    """
    maybe_initialize_distributed()  # multi-host, when the environment asks for it
    with failures_shared("in its checks before training"):  # one process's refusal stops all at once
        config.validate()
        data = load_dataset(config)
        data_id = data_identity(data)
        schedule = make_schedule(data.n_classes, config.num_tasks, config.n_repeats, config.seed, config.task_schedule)
        task_data = TaskData(data, config)  # checks that every class has the images a task takes
        algo_dir = algo_dir_of(config)
        memo = CheckRecord(algo_dir)  # the checks below parse each metadata.json once; what a resume verified before
        found = inspect_run(algo_dir, config, data_id, overwrite, hashes=False, memo=memo, repair=repair)
        check_rewrites(algo_dir, found, _writes_initial(found, algo_dir, hashes=False), config.num_tasks)
        sources = entry_sources(config)
    run_flags = {"--allow-nonfinite": allow_nonfinite, "--overwrite": overwrite, "--repair": repair}
    check_same_run(config, data_id, found, plugins=sources, **run_flags)  # multi-process: every process, the same run
    with failures_shared("in its checks before training"):
        if not found.finished:  # the identity of a prepared folder is its recorded checksums
            check_unchanged(data, resume=found.record is not None)
        if found.record is not None and not found.finished:  # a finished run trains nothing more
            _source_warnings(found, config, algo_dir)
        if found.finished:  # verify every file's content before saying so; a lost record needs no training checks
            # shared while hashing; exclusive on the writer that writes a rebuilt run.json (the others take none)
            hold = RunLock(algo_dir, exclusive=found.rebuilt) if is_writer() or not found.rebuilt else contextlib.nullcontext()
            with hold:
                found = inspect_run(algo_dir, config, data_id, overwrite, hashes=True, memo=memo, repair=repair)
                if found.finished and _damaged_initial(algo_dir, found) is None:
                    if found.rebuilt:
                        need = len(json.dumps([found.record, data.meta], default=str)) + 2 * block_size(algo_dir)
                        check_disk(algo_dir, need, "run.json")
                        _write_rebuilt(algo_dir, found, data, critical)
                    if is_writer():  # what it hashed anew (a lost record) is not hashed again next time
                        memo.save_if_changed(found.record["run_id"])
                    unread = unread_by_a_finished_run(algo_dir, config.num_tasks, config.keep_checkpoints,
                                                      found.record["run_id"]) if repair and is_writer() else []
                    if unread:
                        print(f"note: the run is finished, and --repair leaves {', '.join(unread)} (missing or "
                              f"damaged) as found: nothing is left to train from them; a repair that needs a kept "
                              f"checkpoint writes it again.", file=sys.stderr)
                    return finished(algo_dir, schedule, found, config, memo)
            if found.finished and not found.rebuilt:  # all but initial/, which is written again below
                _source_warnings(found, config, algo_dir)

        check_repeats(config.n_repeats)  # before the program is traced over the devices
        image_shape = data.train_images.shape[1:]
        program = build_task_program(config, image_shape, paired_models=recorded_pairing(config, found.record))
        budget = Budget.of(config, program, image_shape)
        chunk_tasks = choose_eval_chunk(budget)  # refuses a run whose tasks do not fit the device memory
        too_large = host_problem(budget, data, chunk_tasks, host_available())  # nor the host's
        if too_large is not None:
            raise too_large
        first, run_files = found.next_task if found.record is not None else 0, disk_run_files(budget, data.meta)
        parts = task_disk_parts(budget, schedule, data.class_names, run_files, algo_dir,
                                run_record=found.record is None or found.rebuilt, last=first + 1 == config.num_tasks,
                                initial=_writes_initial(found, algo_dir, hashes=True),  # as _train decides
                                resumes=found.record is not None and not found.finished,  # its verified.json
                                again=written_again(found, algo_dir, first))  # beside the old folder
        clears = found.record is None and (overwrite or found.replaces is not None)  # deleted first: free
        freed, then = cleared_bytes(algo_dir) if clears else 0, f"nothing was {'deleted' if clears else 'written'}"
        check_disk(algo_dir, sum(parts.values()), f"the {'first' if found.record is None else 'next'} task ("
                   f"{', '.join(parts)})", freed, then if found.record is None else RESUMES)
        disk_per_task = parts["its folder"] + parts["the checkpoint's new copy"]
        if is_writer():
            warn_if_the_run_outgrows_the_disk(algo_dir, config.num_tasks - first, disk_per_task, freed)

    if not config.eval_chunk_tasks:  # multi-process: each chose from its own free memory
        chunk_tasks = smallest_over_processes(chunk_tasks)
    # The learner's first state, before anything is deleted: a failure to build it leaves the folder as it was.
    start = _initial_learner(program, config)
    # Every check has passed: from here on the folder is locked and written. A lock another run
    # holds, or a folder changed since the checks, refuses the run on one process: all stop at once.
    lock = contextlib.ExitStack()
    try:
        with failures_shared("in its checks before training"):
            if is_writer():
                lock.enter_context(RunLock(algo_dir))
            found = inspect_run(algo_dir, config, data_id, overwrite, hashes=True, memo=memo, repair=repair)  # now
            check_rewrites(algo_dir, found, _writes_initial(found, algo_dir, hashes=True), config.num_tasks)
    except BaseException:
        lock.close()
        raise
    with lock:
        check_same_run(config, data_id, found, plugins=sources, evaluation=chunk_tasks, **run_flags)
        if found.rebuilt:  # --repair of a lost run.json, from the task folders now verified
            _write_rebuilt(algo_dir, found, data, critical)
        if found.finished:  # a finished run whose initial/ is damaged: written again, as a resume would
            problem = _damaged_initial(algo_dir, found)
            if problem is not None and is_writer():
                with critical, disk_errors(algo_dir, config.num_tasks):
                    write_initial(algo_dir, start[1], found.record["run_id"])
                print(f"warning: {problem}; the run is finished and its initial/ was written again from its seed, "
                      f"as the run began.", file=sys.stderr)
            return finished(algo_dir, schedule, found, config)
        split = split_of(program)
        run_id = found.record.get("run_id") if found.record is not None else new_run_id()
        if found.record is not None:  # the first task trained now: a repair's replay starts before the checkpoint
            first_trained = found.replay[0] if found.replay else found.next_task
            warn_if_other_split(recorded_split(found.record), split, first_trained, config.model)
            warn_if_other_eval_chunk(found.record["config"], config, first_trained)
        with critical, disk_errors(algo_dir, found.next_task):
            if is_writer():  # multi-host: every process computes, process 0 writes
                if found.record is None:
                    if overwrite or found.replaces:
                        clear_run(algo_dir)
                    if found.replaces:
                        print(f"note: {algo_dir} held {found.replaces}; it was replaced by this one.", file=sys.stderr)
                    write_run_record(algo_dir, config.to_dict(), SCHEMA_VERSION, run_id=run_id, data=data_id,
                                     split=split, sources=sources, dataset_meta=data.meta)
                for stale in found.stale:  # redone by this run: not this run's, or not whole
                    remove_tree(stale)
                remove_stale_temporaries(algo_dir)
                if found.record is not None:  # what this resume verified: the next one does not read it again
                    memo.save(run_id)
        return _train(config, data, task_data, schedule, program, start, chunk_tasks, found, algo_dir, run_id, split,
                      (disk_per_task, run_files[RECORD]), data_id=data_id, sources=sources, progress=progress,
                      allow_nonfinite=allow_nonfinite, critical=critical, on_task_end=on_task_end,
                      measure=on_task_end is not None and measure, memo=memo)


def _writes_initial(found, algo_dir: Path, hashes: bool) -> bool:
    """Whether the run writes initial/: when it is missing or damaged (``hashes``: its content
    checked too), and whenever training starts from the seed at task 0, the start of the run as
    this command trains it (a run.json edited before task 0 was written kept another's)."""
    if (found.next_task if found.record is not None else 0) == 0 and not found.replay:
        return True
    return verify_task_dir(algo_dir / INITIAL, -1, found.record.get("run_id"), hashes=hashes) is not None


def _write_rebuilt(algo_dir: Path, found, data, critical) -> None:
    """--repair of a lost run.json: the record rebuilt from the verified task folders, written
    on the writing process, and a note saying from which folder."""
    if not is_writer():
        return
    r = found.record
    with critical, disk_errors(algo_dir, found.next_task):
        write_run_record(algo_dir, r["config"], r["schema"], run_id=r["run_id"], data=r["data"], split=r["split"],
                         sources=r["sources"], dataset_meta=data.meta)
    later = r.get("rebuilt_from") or 0
    print(f"note: {algo_dir / RUN_RECORD} was missing; --repair wrote it again from the task folders (run "
          f"{r['run_id']})" + (f", from {task_dir_name(later)}'s metadata.json, the first readable: its settings "
          f"that change no number are those of the command that wrote that folder, which may differ from the "
          f"run's first" if later else "") + ".", file=sys.stderr)


def _train(config, data, task_data, schedule, program, start, chunk_tasks, found, algo_dir, run_id, split,
           disk_per_task, *, data_id, sources, progress, allow_nonfinite, critical, on_task_end, measure,
           memo) -> RunResult:
    """The task loop, from the first unfinished task; the run folder is locked and prepared.
    ``start``: the initialised learner and its host copy (``_initial_learner``); ``memo``: the check
    record (verified.json: ``disk_per_task`` holds the planner's figure of it), saved after the last task."""
    (learner, initial), (disk_per_task, record_estimate) = start, disk_per_task
    memo.for_run(run_id)
    first_task = found.next_task if found.record is not None else 0
    if is_writer() and _writes_initial(found, algo_dir, hashes=True):
        problem = _damaged_initial(algo_dir, found) if first_task > 0 or found.replay else None
        with critical, disk_errors(algo_dir, found.next_task):
            memo.note_written(write_initial(algo_dir, initial, run_id))
        if problem is not None:  # said, as the finished run's repair of it is
            print(f"warning: {problem}; it was written again from the run's seed, as the run began.", file=sys.stderr)
    replay = list(range(*found.replay)) if found.replay else []  # --repair: trained again first
    if found.replay and found.replay[0] > 0:
        learner = shard_repeats(load_learner(algo_dir, learner, kept_path(algo_dir, found.replay[0]))[0])
        if not replay and is_writer():  # the kept start is the lost checkpoint: nothing to train again
            print(replay_note(found, [], []), file=sys.stderr)
    elif not found.replay and first_task > 0:
        learner = shard_repeats(load_learner(algo_dir, learner)[0])
        if is_writer() and keeps(config.keep_checkpoints, first_task, config.num_tasks) and not kept_is_whole(
                algo_dir, first_task, run_id):  # a --keep-checkpoints new to this call: the checkpoint is that start
            with critical:
                keep_checkpoint(algo_dir, first_task)
    order = replay + list(range(first_task, config.num_tasks))
    on_recorded_split = found.record is not None and same_split(recorded_split(found.record), split, config.model)
    result = RunResult(algo_dir=algo_dir, task_class_pairs=schedule, first_task=first_task, run_id=run_id)

    spec = eval_tasks_of(config)
    evaluation = evaluation_mode(chunk_tasks, spec.slots(config.num_tasks))  # recorded in each task's metadata.json
    if spec.full:
        tests = TestSets(*task_data.all_tests(schedule), chunk_tasks=chunk_tasks, measure=measure)
    else:  # only the window's test sets, gathered per task: host memory does not grow with T
        tests = WindowTestSets(task_data, schedule, spec.window, chunk_tasks=chunk_tasks, measure=measure)
    train_xy = task_data.train(schedule[order[0]])
    again = f" (--repair trains {describe_replay(replay[0], replay[-1] + 1)} again first)" if replay else ""
    bar = progress_for(progress, config.num_tasks, first_task - len(replay), f"{again}, compiling") if is_writer() else None
    t0 = time.perf_counter()
    run_task = program.run_task.lower(learner, *task_inputs(config.seed, order[0], train_xy, tests.current(order[0])))
    run_task = run_task.compile()
    result.compile_seconds = time.perf_counter() - t0

    def dispatch(i, learner):
        """Dispatch the training of task ``order[i]`` (asynchronous: it returns at once)."""
        t = order[i]
        if i == len(replay) and replay and found.from_checkpoint:  # the replay is over: the run goes on
            learner = shard_repeats(load_learner(algo_dir, learner)[0])
        t_start = time.perf_counter()
        learner, trace = run_task(learner, *task_inputs(config.seed, t, train_xy, tests.current(t)))
        return learner, trace, t_start, live_device_bytes() if measure else 0

    run_seconds, differing, rewritten = 0.0, [], []
    diverged_before = nonfinite_before(algo_dir, order[0], spec.ids(order[0] - 1, config.num_tasks))
    pending = dispatch(0, learner)
    for i, t in enumerate(order):
        (learner, trace, t_start, train_peak), pending = pending, None  # no reference kept to the device trace
        replaying = i < len(replay)
        crash_point("train", t)
        eval_ids = spec.ids(t, config.num_tasks)
        acc, loss, reps = tests.evaluate(program.evaluate, (trace["weights"], trace["model_state"]), eval_ids)
        if i + 1 < len(order):  # the host gathers the next task while the device trains this one
            train_xy = task_data.train(schedule[order[i + 1]])
        trace, acc, loss, reps = fetch((trace, acc, loss, reps))  # the one host transfer of the task
        seconds = time.perf_counter() - t_start
        # A kept checkpoint the replay passes (one there, or one --keep-checkpoints asks for) that is
        # not whole is written again from it.
        rekeep = replaying and (keeps(config.keep_checkpoints, t + 1, config.num_tasks) or kept_path(
            algo_dir, t + 1).exists()) and not kept_is_whole(algo_dir, t + 1, run_id)
        # A replay in place of a lost checkpoint writes it at its end, also when no task follows.
        lost = replaying and not found.from_checkpoint and t + 1 == first_task
        # (its own copy: a view of the device buffer would keep the learner from being donated below)
        learner_host = fetch_owned(learner) if rekeep or lost or not replaying else None  # multi-host: a collective
        device_live = live_device_bytes() if measure else 0
        peak = max(train_peak, tests.peak_live_bytes)
        if i + 1 < len(order):  # the next task trains while this one is written (its learner is donated)
            pending = dispatch(i + 1, learner)
        arrays, shapes = task_arrays(config, trace, acc, loss, reps)
        nonfinite = nonfinite_report(config, arrays, eval_ids)
        row = summary_row(t, arrays, eval_ids)
        metadata = task_metadata(config, schedule, t, shapes, arrays["weights"], data.class_names, program.lowering, {
            "task_seconds": seconds,
            "compile_seconds": result.compile_seconds,
            "steps_per_second": config.steps_per_task / seconds,
        })
        metadata.update({"nonfinite": nonfinite, "run_id": run_id, "data": data_id, "split": split, "plugins": sources,
                         "evaluation": evaluation, "summary": stored_row(row)})
        if found.record is not None and not on_recorded_split:
            metadata["split_at_run_start"] = recorded_split(found.record)
        if replaying:
            metadata["repaired"] = {"trained_again_from_task": replay[0]}
        there = (algo_dir / task_dir_name(t)).exists()  # the old folder stays until replaced
        again = there and not replaying  # whole (the stale ones are gone): first compared, in a scratch folder
        rewrite = disk_per_task if there else 0  # (the scratch folder is deleted before the new one is written)
        fold = record_fold_disk(algo_dir, record_estimate) if i + 1 == len(order) else 0  # as the run ends
        check_disk(algo_dir, disk_per_task + rewrite + fold, f"task {t} (its folder and the checkpoint's new copy"
                   f"{', verified.json' * bool(fold)})")
        with critical, disk_errors(algo_dir, t):  # the task folder, then the checkpoint that points past it
            if is_writer() and (not replaying or t in found.repair):
                if again:  # the run stopped between this folder and the checkpoint after it
                    print(again_note(t, same_as_recorded(algo_dir, t, arrays, metadata), on_recorded_split),
                          file=sys.stderr)
                memo.note_written(write_task(algo_dir, t, arrays, metadata))
            elif is_writer() and not same_as_recorded(algo_dir, t, arrays, metadata):  # a whole folder, recomputed
                differing.append(t)
            if nonfinite and not allow_nonfinite:
                first = nonfinite[0]
                raise CljaxError(
                    f"non-finite {first['metric']} in task {t} at step {first['step']} (recorded in "
                    f"{algo_dir / task_dir_name(t) / 'metadata.json'}): train it again with a lower --lr and "
                    f"--overwrite (which deletes this run), or pass --allow-nonfinite to go on."
                )
            if is_writer() and (lost or not replaying):
                save_learner(algo_dir, learner_host, t + 1, run_id)
                if keeps(config.keep_checkpoints, t + 1, config.num_tasks):
                    keep_checkpoint(algo_dir, t + 1)
            if is_writer() and rekeep:
                rewrite_kept(algo_dir, learner_host, t + 1, run_id)
                rewritten.append(t + 1)
            if is_writer() and i + 1 == len(order):  # the journal's notes folded into the record
                with disk_errors(algo_dir, t, record=True):
                    memo.save(run_id)
        if replaying and t == replay[-1] and is_writer():
            print(replay_note(found, differing, rewritten), file=sys.stderr)
        run_seconds += seconds
        # The host copies of this task go now, not when the next task's replace them: held over,
        # they were the peak of a run's memory (the next task's fetch and results beside them).
        del arrays, learner_host, trace, acc, loss, reps
        result.summary.append(row)
        warning = divergence_warning(row, diverged_before)
        diverged_before = row["nonfinite_repeats"]
        if warning is not None:
            (bar.write if bar is not None else print)(warning, file=sys.stderr)
        if bar is not None:
            bar.set_postfix(acc=f"{row['acc_current']:.3f}", expert=f"{row['expert_acc']:.3f}")
            bar.update(1)
        if on_task_end is not None:
            on_task_end(t, {"rss_bytes": rss_bytes(), "device_bytes_live": device_live, "device_bytes_peak": peak,
                            "seconds": seconds, "first_task": first_task})
            tests.peak_live_bytes = 0
    if bar is not None:
        bar.close()
    result.steps_per_second = len(order) * config.steps_per_task / max(run_seconds, 1e-9)
    return result


def _source_warnings(found, config, algo_dir: Path) -> None:
    """The resume's check of the files its entries come from (cljax/sources.py): a refusal, or
    the warnings it prints (process 0's)."""
    for line in check_sources(found.record.get("sources"), config, algo_dir):
        if is_writer():
            print(line, file=sys.stderr)


def task_inputs(seed: int, t: int, train_xy, test_xy) -> tuple:
    """The task program's arguments after the learner, for task ``t``: its training images and
    labels put on the device, its test set (already there), its index and its key (from the seed)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), KEY_TASKS), t)
    return put_repeats(train_xy[0], 1), put_repeats(train_xy[1], 1), *test_xy, jnp.int32(t), key


def _initial_learner(program, config):
    """The learner as initialised, R split over the devices, and its host copy for initial/: a
    function of the seed alone, so a resume (also of a run from before initial/ existed) writes
    it again as the run began."""
    learner = shard_repeats(program.init_learner(jax.random.key(config.seed)))
    return learner, initial_arrays(*fetch((learner.params, learner.model_state)))


def _damaged_initial(algo_dir: Path, found) -> str | None:
    """What is wrong with a run's initial/ (None: whole, or a run from before it existed)."""
    if found.record is None:
        return None
    if not (algo_dir / INITIAL).exists():
        return f"{algo_dir / INITIAL} is missing" if wrote_initial(found.record) else None
    return verify_task_dir(algo_dir / INITIAL, -1, found.record.get("run_id"), hashes=True)
