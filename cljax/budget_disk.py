"""The disk a run takes: each task folder's files and the files beside them (run.json, the
checkpoint, initial/), from the run's own task program (``cljax.budget.Budget``). Exact for the
.npy files (header and data sizes follow from the shapes) and the pickles (pickled at the real
shapes), estimated for metadata.json. ``cljax run`` checks the free disk with these figures (``check_disk``)
before it writes; ``cljax plan`` prints them."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from cljax.budget import Budget, _host_shape_dtype, fmt_bytes
from cljax.config import SCHEMA_VERSION
from cljax.errors import CljaxError
from cljax.eval_tasks import eval_slots, eval_tasks_of
from cljax.records import ROW_FLOATS
from cljax.results import structured_dtype
from cljax.run_split import split_of
from cljax.sources import entry_sources


def npy_bytes(shape, dtype) -> int:
    """Exact size of ``np.save`` of an array of this shape and dtype (header + data)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(int(s) for s in shape)}
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # too long for format 1.0 (very many fields): np.save uses 2.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.tell() + math.prod(header["shape"]) * dtype.itemsize


def _weights_dtype(b: Budget, which: int = 0) -> np.dtype:
    """The structured dtype of weights.npy (``which`` 0) or model_state.npy (1, the model's
    mutable state): one field per path, sorted (as the writer)."""
    shapes = jax.eval_shape(b.program.parts.net.init, jax.eval_shape(lambda: jax.random.key(0)))[which]
    fields = []

    def walk(prefix, node):
        if isinstance(node, dict):
            for key in sorted(node):
                walk(f"{prefix}/{key}" if prefix else str(key), node[key])
        else:
            fields.append((prefix, np.dtype(node.dtype), tuple(node.shape)))

    walk("", shapes)
    return structured_dtype(fields)


def pickle_bytes(arrays: dict, most: int = 1 << 20) -> int:
    """len(pickle.dumps(...)) of a dict of zero arrays, each given as (shape, dtype), as a task's
    metrics pickles are written (protocol 4), without making an array of more than ``most`` bytes
    (a mistyped --n-repeats 10**8 made this estimate take the host's memory, which `cljax plan`
    exists to spare): a larger one is pickled with its axes cut short, to no less than 64 KiB of
    data (which pickle writes outside its frames, as the whole array's), and the data bytes and
    the bytes of the shape's ints it lacks are added back. Exact while each array's data is under
    4 GiB (past that, its length takes 4 bytes more, which is added too)."""
    def int_bytes(n: int) -> int:  # pickle's opcode and bytes of a non-negative int below 2**31
        return 2 if n < 256 else 3 if n < 65536 else 5

    small, lacking = {}, 0
    for name, (shape, dtype) in arrays.items():
        shape, item = list(shape), np.dtype(dtype).itemsize
        full = int(np.prod(shape, dtype=np.int64)) * item
        if full > max(most, 1 << 16):
            for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
                rest = int(np.prod(shape[:axis] + shape[axis + 1:], dtype=np.int64)) * item
                cut = max(1, -(-(1 << 16) // rest))  # the least length that keeps 64 KiB of data
                lacking += int_bytes(shape[axis]) - int_bytes(cut) if cut < shape[axis] else 0
                shape[axis] = min(shape[axis], cut)
        small[name] = np.zeros(shape, dtype)
        lacking += full - small[name].nbytes + (4 if full >= 1 << 32 else 0)
    return len(pickle.dumps(small, protocol=4)) + lacking


def disk_files_per_task(b: Budget, schedule: np.ndarray | None = None, class_names=None) -> dict:
    """Bytes of each file of one task folder: .npy and .pkl exact, metadata.json estimated."""
    config = b.config
    from cljax.results import EXPERT_KEYS

    L, R, S = config.n_logs, config.n_repeats, config.n_subsamples
    T = eval_slots(config)  # the saved task axis
    pb = b.pb
    rep_dtype = np.uint16 if config.representation_dtype == "bfloat16" else np.dtype(config.representation_dtype)
    f32 = np.float32
    metrics = {"test_acc": ((L, R, T), f32), "test_loss": ((L, R, T), f32), "train_acc": ((L, R), f32),
               "train_loss": ((L, R), f32), "start_test_acc": ((R, T), f32), "start_test_loss": ((R, T), f32),
               "log_steps": ((L,), np.int64)}
    expert = {k: ((L, R), f32) for k in EXPERT_KEYS}
    files = {
        "representations.npy": npy_bytes((L, R, T, S, pb.hidden), rep_dtype),
        "binary_labels.npy": npy_bytes((L, R, T, S), np.uint8),
        "weights.npy": npy_bytes((L, R), _weights_dtype(b)),
        "start_weights.npy": npy_bytes((R,), _weights_dtype(b)),
        # model_state.npy only for a model with mutable state (BatchNorm statistics)
        **({"model_state.npy": npy_bytes((L, R), _weights_dtype(b, 1))} if b.program.parts.net.state_collections else {}),
        "metrics.pkl": pickle_bytes(metrics),
        "expert_metrics.pkl": pickle_bytes(expert),
    }
    return {**files, "metadata.json": _metadata_estimate(b, schedule, class_names, list(files))}


def _metadata_estimate(b: Budget, schedule, class_names, file_names) -> int:
    """metadata.json: the config, the schedule, the shapes, the evaluated tasks and the layout as
    JSON (indent 1); each file's size and sha256 (``file_names``: the folder's other files),
    this process's command line (a plan's is a run's but for the command word), the device
    split, as they are, and the task's row of the run table at its widest; plus a part this
    does not model (shapes, axes, versions, devices, lowering, timings, run id, evaluation),
    taken as 2.5 KB: 2.1 KB measured with a ResNet's model_state. The schedule's part grows
    with R: above 64 repeats it is measured at 32 and 64 and extended linearly (encoding a
    million repeats' took minutes)."""
    T, R = b.config.num_tasks, b.config.n_repeats
    names = class_names or [f"class_{i}" for i in range(2 * T)]
    pairs = schedule if schedule is not None else np.tile(np.array([0, 1]), (T, min(R, 64), 1))
    files = {name: {"bytes": 10**12, "sha256": "0" * 64} for name in file_names}
    known = len(json.dumps({"files": files, "argv": sys.argv + ["x"], "split": split_of(b.program),
                            "summary": _widest_row(T, R)}, indent=1)) + 2500
    if R <= 64:
        return _metadata_json_bytes(b, pairs, names) + known
    at_32, at_64 = (_metadata_json_bytes(b, pairs[:, :r], names) for r in (32, 64))
    return at_32 + (at_64 - at_32) * (R - 32) // 32 + known


def _widest_row(T: int, R: int) -> dict:
    """The largest row of the run table a task keeps (records.stored_row): every repeat named
    non-finite, every float at its longest."""
    return {"task": T - 1, **dict.fromkeys(ROW_FLOATS, 0.12345678901234568), "n_earlier": T, "n_nonfinite": R,
            "nonfinite_repeats": {"learner": list(range(R)), "expert": list(range(R))}}


def _metadata_json_bytes(b: Budget, pairs, names) -> int:
    from cljax.tasks import schedule_record

    config, T = b.config, b.config.num_tasks
    variable = {
        "config": config.to_dict(),
        "task_pairs": pairs[0].tolist(),
        "task_pair_names": [[names[a], names[b]] for a, b in pairs[0]],
        "schedule": schedule_record(pairs, T - 1, config.task_schedule, len(names)),  # the last task's is the largest
        "eval_tasks": eval_tasks_of(config).record(T - 1, T),
        "log_steps": config.log_steps,
        "plugins": entry_sources(config),
        "weights_layout": [{"name": n, "shape": list(d[0].shape), "dtype": "float32", "offset_bytes": int(d[1])}
                           for n, d in _weights_dtype(b).fields.items()],
    }
    return len(json.dumps(variable, indent=1))


def disk_run_files(b: Budget, dataset_meta: dict | None = None) -> dict:
    """Files beside the task folders: the run record (with the dataset's ``meta``), the learner
    checkpoint (npz), the initial network (initial/: weights.npy exact, its metadata.json estimated at 1 KiB), the
    kept checkpoints (checkpoints/, with --keep-checkpoints) and what the run verified
    (verified.json, estimated: cljax/check_record.py; written as every run ends, and when a run
    resumes), with its journal of the folders written since (verified.jsonl, as large at most:
    both are there while the last task's save folds one into the other)."""
    from cljax.check_record import JOURNAL, RECORD
    from cljax.checkpoint import CHECKPOINT, RUN_RECORD
    from cljax.kept_checkpoints import KEPT
    from cljax.results import TASK_FILES

    record = len(json.dumps({"schema": SCHEMA_VERSION, "config": b.config.to_dict(), "run_id": "0" * 32,
                             "data": "0" * 64, "split": split_of(b.program), "sources": entry_sources(b.config),
                             "dataset_meta": dataset_meta},
                            indent=1, sort_keys=True))
    learner = jax.eval_shape(b.program.init_learner, jax.eval_shape(lambda: jax.random.key(0)))
    # npz = a zip of .npy members (stored, zip64): about 200 bytes of zip headers per member.
    members = [npy_bytes(*_host_shape_dtype(leaf)) + 200 for leaf in jax.tree.leaves(learner)]
    members.append(npy_bytes((), np.int64) + 200)  # next_task
    members.append(npy_bytes((), np.dtype("<U32")) + 200)  # run_id: a uuid's 32 hex digits
    files = {RUN_RECORD: record, CHECKPOINT: sum(members) + 22,
             "initial/": npy_bytes((b.config.n_repeats,), _weights_dtype(b)) + 1024
             # and a model with mutable state (BatchNorm statistics) keeps its initial state too
             + (npy_bytes((b.config.n_repeats,), _weights_dtype(b, 1)) if b.program.parts.net.state_collections else 0)}
    n_kept = (b.config.num_tasks - 1) // b.config.keep_checkpoints if b.config.keep_checkpoints else 0
    if n_kept:  # --keep-checkpoints: a checkpoint's copy as every N-th task begins
        files[f"{KEPT}/"] = n_kept * files[CHECKPOINT]
    # Per task: the fields of metadata.json a check reads (the config, the evaluated tasks, the
    # shapes and the files' sizes and sha256) and each file's identity with its sha256; measured
    # at 3.9 KB for 4.4 KB of this estimate (T = 200, --eval-tasks all).
    T, n_files = b.config.num_tasks, len(TASK_FILES) + bool(b.program.parts.net.state_collections)  # model_state.npy
    fields = len(json.dumps(b.config.to_dict())) + len(json.dumps(eval_tasks_of(b.config).record(T - 1, T))) + len(
        json.dumps(_widest_row(T, b.config.n_repeats)))  # and the task's row of the run table
    files[RECORD] = files[JOURNAL] = T * (fields + 300 * n_files + 600)
    return files


def task_disk_parts(b: Budget, schedule, class_names, files: dict, algo_dir: Path, *, run_record: bool,
                    initial: bool, last: bool, resumes: bool = False, again: bool = False) -> dict:
    """The free disk a run's first task (a resumed run's next) needs before it starts, by part, in
    whole blocks of ``algo_dir``'s filesystem: its folder (and a block for the folder itself), the
    checkpoint's new copy (written beside the old one before it replaces it), run.json and
    initial/ when the run writes them, and verified.json when the run writes it: as a run that
    ``resumes`` saves what it verified before it trains (the record of the task folders there),
    and when the task is the run's last, into which the run's end folds its journal
    (``record_fold_disk``; the larger of the two, which are not on disk at once). ``again``: the
    task's folder is there whole (:func:`written_again`), and the new one is written beside it,
    as the run's check of each task counts it. ``cljax run`` checks it before anything is
    written; ``cljax plan`` says from it whether the first task fits. ``files``: the run's
    ``disk_run_files``."""
    from cljax.check_record import RECORD
    from cljax.checkpoint import CHECKPOINT, RUN_RECORD
    from cljax.results import task_dirs

    block = block_size(algo_dir)
    parts = {"its folder": on_disk(disk_files_per_task(b, schedule, class_names).values(), block) + block,
             "the checkpoint's new copy": on_disk([files[CHECKPOINT]], block)}
    if run_record:
        parts[RUN_RECORD] = on_disk([files[RUN_RECORD] + 512, 256], block)
    if initial:  # (its metadata.json apart)
        parts["initial/"] = on_disk([files["initial/"] - 1024, 1024], block) + block
    if again:  # (the old folder stays until the new one replaces it)
        parts["a second copy of both beside the old folder"] = parts["its folder"] + parts["the checkpoint's new copy"]
    if last or resumes:  # the estimate is of T task folders (and initial/): a resume's, of those there
        T = b.config.num_tasks
        there = len(task_dirs(algo_dir, passed=False)) if algo_dir.is_dir() else 0
        parts[RECORD] = record_fold_disk(algo_dir, files[RECORD] if last else files[RECORD] * min(T, there + 1) // T)
    return parts


def written_again(found, algo_dir: Path, task: int) -> bool:
    """Whether the first task a resumed run trains (``found``: run_folder's finding) has its
    folder there whole, not one of the stale folders the resume deletes first: the run stopped
    between that folder and the checkpoint after it, and writes it again beside the old one."""
    from cljax.results import task_dir_name

    folder = algo_dir / task_dir_name(task)
    return found.record is not None and not found.finished and folder.is_dir() and folder not in found.stale


def record_fold_disk(algo_dir: Path, estimate: int) -> int:
    """The disk the fold of verified.jsonl into verified.json takes as the run's last task ends:
    the new record, written beside the old one and the journal before they go (the planner's
    ``estimate``, or the two as they are now where they are larger), and a block for the last
    task's journal line."""
    from cljax.check_record import JOURNAL, RECORD

    now = sum((algo_dir / name).stat().st_size for name in (RECORD, JOURNAL) if (algo_dir / name).is_file())
    block = block_size(algo_dir)
    return on_disk([max(estimate, now)], block) + block


# ---- the free disk, checked before each write ----------------------------------------------
@contextlib.contextmanager
def disk_errors(algo_dir: Path, t: int, record: bool = False):
    """A full disk or quota while a run writes: one line; the files on disk are still whole.
    ``record``: while the run's end folds verified.jsonl into verified.json, when the tasks are
    saved (the run is finished) and only the record is not."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        what = (f"verified.json, the record of what the run verified: task {t} was saved and the run is finished, "
                f"only that record was not written (verified.jsonl holds its notes); free space, then run the same "
                f"command, which writes it." if record else
                f"task {t}: free space, then run the same command (the run resumes from its last finished task).")
        raise CljaxError(f"no space left at {algo_dir} ({exc.strerror}) while writing {what}") from None


def block_size(algo_dir: Path) -> int:
    probe = existing_parent(algo_dir)
    try:
        return max(os.statvfs(probe).f_frsize, 512)
    except (OSError, AttributeError):
        return 4096


def on_disk(sizes, block: int) -> int:
    """Bytes that files of these sizes take: each rounded up to whole blocks."""
    return sum(-(-int(s) // block) * block for s in sizes)


def warn_if_the_run_outgrows_the_disk(algo_dir: Path, tasks_left: int, per_task: int, freed: int = 0) -> None:
    """One warning line when the tasks the run has left need more disk than is free now (and
    ``freed``, what --overwrite deletes first): it would stop (resumably) part-way, hours or days
    in. Only a warning: space may be freed meanwhile."""
    free = shutil.disk_usage(existing_parent(algo_dir)).free + freed
    need = tasks_left * per_task
    if tasks_left > 1 and need > free:
        print(f"warning: the run's {tasks_left} tasks left need about {fmt_bytes(need)} of disk and {fmt_bytes(free)} "
              f"are free at {existing_parent(algo_dir)}: it would stop after about {free // per_task} of them "
              f"(resumably) unless space is freed; `cljax plan` shows the parts.", file=sys.stderr)


RESUMES = "the run resumes from its last finished task"


def check_disk(algo_dir: Path, need: int, what: str, freed: int = 0, then: str = RESUMES) -> None:
    """Refuse, in one line, when ``need`` bytes are more than the free disk at ``algo_dir`` and
    ``freed`` (what --overwrite deletes before it writes); ``then``: what a rerun does, in words."""
    usage = shutil.disk_usage(existing_parent(algo_dir))
    if usage.total == 0:  # no storage at all: a kernel's pseudo filesystem (/proc, /sys), not a full disk
        raise CljaxError(f"{algo_dir} is on a filesystem that stores no files ({existing_parent(algo_dir)} reports a "
                         f"size of 0 bytes, as /proc and /sys do): choose another --results-dir.")
    free = usage.free
    if free + freed < need:
        deleted = f" and the old run's files it would delete take {fmt_bytes(freed)} ({freed:,} bytes)" if freed else ""
        raise CljaxError(
            f"not enough disk at {algo_dir}: {what} needs {fmt_bytes(need)} ({need:,} bytes), {fmt_bytes(free)} "
            f"({free:,} bytes) are free{deleted}; free space or choose another --results-dir ({then}).")


def existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
