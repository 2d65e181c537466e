"""The results tree: the writer of one task folder and safe readers of a whole run.

    {results_dir}/{dataset}/{algorithm}/task_{t:03d}/
        representations.npy  (L, R, T, S, H) float32 (or float16; bfloat16 stored as uint16 bits)
        binary_labels.npy    (L, R, T, S) uint8
        weights.npy          (L, R) structured dtype, one field per parameter ("conv1/kernel", ...)
        start_weights.npy    (R,) the same fields: the weights this task's training started from,
                             after the task-start changes (shrink+perturb, a head reset); absent
                             in older runs
        model_state.npy      (L, R) structured: the model's mutable state (BatchNorm), when it has one
        metrics.pkl          dict of numpy arrays (see METRICS_KEYS)
        expert_metrics.pkl   dict of numpy arrays (train_loss, train_acc, test_loss, test_acc), (L, R)
        metadata.json        config, class pairs, shapes, log steps, versions, device, timings,
                             the run id, and the size and sha256 of every other file ("files")

A task folder is written under a temporary name and renamed, so it appears whole or not at all.
Files are written and read through :mod:`cljax.safe_files`: pickles by an unpickler that only
rebuilds numpy arrays and builtin containers, and every reader raises ``CljaxError`` naming the
file when it is missing, truncated, damaged or of another kind.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cljax.errors import CljaxError, DamagedFile, brief
from cljax.faults import crash_point
from cljax.run_search import TASK_DIR as _TASK_DIR
from cljax.run_search import holds_task_dirs, runs_near
from cljax.safe_files import (DAMAGED, fsync_dir, load_dict_pickle, load_npy, read_bytes, remove_tree,
                               save_npy, write_bytes)

TASK_FILES = ("representations.npy", "binary_labels.npy", "weights.npy", "start_weights.npy", "metrics.pkl",
              "expert_metrics.pkl", "metadata.json")
# Files added to the format later: a folder written before them lacks them and is still whole.
LATER_TASK_FILES = ("start_weights.npy",)
EXPERT_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


def is_task_dir_name(name: str) -> bool:
    """Whether ``name`` is a task folder's (task_000, task_001, ..., wider past 999)."""
    return _TASK_DIR.match(name) is not None


def task_dir_name(task: int) -> str:
    return f"task_{task:03d}"


# ---- weights: pytree <-> structured array ----------------------------------------------------
def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"layer/param": array}, in sorted (jax.tree) order."""
    out: dict[str, np.ndarray] = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for key in sorted(node):
                walk(f"{prefix}/{key}" if prefix else str(key), node[key])
        else:
            out[prefix] = np.asarray(node)

    walk("", params)
    return out


def structured_dtype(fields) -> np.dtype:
    """The record of one repeat's parameters (weights.npy, model_state.npy): one field per leaf.
    numpy holds a record of under 2 GiB; a larger network is one CljaxError line."""
    size = sum(np.dtype(dt).itemsize * math.prod(shape) for _, dt, shape in fields)
    if size >= 2**31:
        raise CljaxError(f"the network has {size:,} bytes of parameters per repeat, and a repeat's saved weights must "
                         f"stay under 2 GiB (one numpy record each): choose a smaller model (--mlp-hidden, "
                         f"--mlp-depth, --resnet-width, ...).")
    return np.dtype(fields)


def weights_to_structured(params, lead: int = 2) -> np.ndarray:
    """Leaves with leading dims (L, R) -> one (L, R) structured array; field = leaf path.

    ``arr.view(np.float32).reshape(L, R, -1)`` is the standard flattening: fields in sorted path
    order, each leaf in C order.
    """
    flat = flatten_params(params)
    first = next(iter(flat.values()))
    lead_shape = first.shape[:lead]
    dtype = structured_dtype([(name, leaf.dtype, leaf.shape[lead:]) for name, leaf in flat.items()])
    arr = np.empty(lead_shape, dtype)
    for name, leaf in flat.items():
        arr[name] = leaf
    return arr


def structured_to_weights(arr: np.ndarray) -> dict:
    """(L, R) structured array -> nested dict {layer: {param: (L, R, ...)}}."""
    nested: dict = {}
    for name in arr.dtype.names:
        node = nested
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr[name]
    return nested


def weights_layout(arr: np.ndarray) -> list[dict]:
    return [
        {"name": name, "shape": list(arr.dtype.fields[name][0].shape), "dtype": str(arr.dtype.fields[name][0].base),
         "offset_bytes": int(arr.dtype.fields[name][1])}
        for name in arr.dtype.names
    ]


# ---- writer -----------------------------------------------------------------------------------
def write_task(algo_dir: Path, task: int, arrays: dict[str, Any], metadata: dict) -> Path:
    """Write one task folder atomically. ``arrays`` holds representations, binary_labels,
    weights and start_weights (structured), model_state (structured or None), metrics (dict),
    expert_metrics (dict)."""
    reps_on_disk, storage = representations_on_disk(np.asarray(arrays["representations"]))
    # model_state: only a model with mutable state (BatchNorm statistics) has one
    npys = {"representations": reps_on_disk,
            **{k: arrays.get(k) for k in ("binary_labels", "weights", "start_weights", "model_state")}}
    pickles = {k: arrays[k] for k in ("metrics", "expert_metrics")}
    return write_folder(algo_dir, task_dir_name(task), npys, pickles,
                        {**metadata, "representations_storage": storage}, task=task)


def write_folder(algo_dir: Path, name: str, npys: dict, pickles: dict, metadata: dict, task: int = -1) -> Path:
    """Write folder ``algo_dir/name`` atomically: each array of ``npys`` (None: skipped) as .npy,
    each dict of ``pickles`` as .pkl, and metadata.json with the size and sha256 of every file
    ("files", what a resume checks before it builds on the folder, cljax/run_folder.py)."""
    final, tmp = algo_dir / name, algo_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of this pid's earlier attempt
    tmp.mkdir(parents=True)
    try:
        # The arrays are hashed and written side by side: hashlib and file writes release the GIL.
        arrays = {f"{k}.npy": v for k, v in npys.items() if v is not None}
        with ThreadPoolExecutor(max_workers=max(len(arrays), 1)) as pool:
            written = {name: pool.submit(save_npy, tmp / name, v) for name, v in arrays.items()}
        files = {name: job.result() for name, job in written.items()}  # the first error, once all are done
        crash_point("write", task)
        for k, v in pickles.items():
            files[f"{k}.pkl"] = write_bytes(tmp / f"{k}.pkl", pickle.dumps(v, protocol=4))
        write_bytes(tmp / "metadata.json", json.dumps({**metadata, "files": files}, indent=1, default=_json_default).encode())
        fsync_dir(tmp)
    except OSError:  # a full disk: a half-written folder would hold the space the error asks to free
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        remove_tree(final)
    os.rename(tmp, final)
    fsync_dir(algo_dir)
    return final


def representations_on_disk(reps: np.ndarray) -> tuple[np.ndarray, dict]:
    """The array written to representations.npy and how to read it back (saved in metadata.json).

    numpy has no bfloat16 of its own, so ``np.save`` cannot write it portably: bfloat16 is
    stored as its raw 16-bit patterns (uint16), which any numpy reads with ``allow_pickle=False``;
    ``load_representations`` views them as ``ml_dtypes.bfloat16`` again (bit-exact)."""
    if reps.dtype.name == "bfloat16":
        return reps.view(np.uint16), {
            "dtype": "bfloat16", "stored_as": "uint16",
            "how_to_read": ("np.load(...).view(ml_dtypes.bfloat16); with numpy alone "
                            "(a.astype(np.uint32) << 16).view(np.float32); or cljax.results.load_representations"),
        }
    return reps, {"dtype": str(reps.dtype), "stored_as": str(reps.dtype)}


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def task_dirs(algo_dir: str | os.PathLike, passed: bool = True) -> list[Path]:
    """Complete task folders of a run, in task order (temporary folders are never listed). A
    folder a user ``passed`` as a run's that is a task folder, or holds runs below it, is refused
    in one line naming what to pass (an empty list read as a run of no tasks); ``cljax run``
    lists the folder it makes from --results-dir with ``passed=False``."""
    algo = Path(algo_dir)
    if not algo.is_dir():
        raise CljaxError(f"{runs_near(algo)}." if not algo.exists() else
                         f"{algo} is not a results folder: {runs_near(algo)}.")
    found = [(int(m.group(1)), p) for p in algo.iterdir() if p.is_dir() and (m := _TASK_DIR.match(p.name))]
    if passed and not found and (_TASK_DIR.match(algo.name) or not (algo / "run.json").exists()):
        near = runs_near(algo)
        if near.startswith(("it holds runs", f"{algo.name} is a task folder")):
            raise CljaxError(f"{algo} is not a run's folder: {near}.")
    return [p for _, p in sorted(found)]


def first_task_dirs(algo_dir: str | os.PathLike) -> list[Path]:
    """``task_dirs``, which must be tasks 0 .. n-1: a reader of a run's first n tasks refuses a
    gap (task t would be read as another task) in one line naming the missing folder."""
    dirs = task_dirs(algo_dir)
    for i, d in enumerate(dirs):
        if d.name != task_dir_name(i) and int(d.name[len("task_"):]) <= i:  # task_0003: not a name cljax gives
            raise CljaxError(f"{d} is not a name cljax gives a task folder ({task_dir_name(int(d.name[5:]))} would "
                             f"be): it is no folder of this run; move it out of {algo_dir}.")
        if d.name != task_dir_name(i):
            raise CljaxError(f"the task folders of {algo_dir} are not contiguous: {task_dir_name(i)} is missing "
                             f"before {d.name}. Use a whole run (finish it with the same cljax run command), or "
                             f"restore the missing folder.")
    return dirs


def _explained(read):
    """A reader of a task folder whose error says what is likely wrong where the file's own fix
    (restore it, or --repair) would mislead: the folder is not a task folder, or a run writes
    the run now (an --overwrite deletes its folders before it trains them again)."""

    @functools.wraps(read)
    def reader(task_dir, *args, **kwargs):
        try:
            return read(task_dir, *args, **kwargs)
        except DamagedFile as exc:
            cause = _likely_cause(Path(task_dir))
            if cause is None:
                raise
            raise DamagedFile(exc.path, exc.problem, cause) from None

    return reader


def _likely_cause(task_dir: Path) -> str | None:
    if task_dir.is_dir() and not (_TASK_DIR.match(task_dir.name) or task_dir.name == "initial"):
        if holds_task_dirs(task_dir):
            return (f"{task_dir} is a run's folder, not a task folder: pass one of its task folders, e.g. "
                    f"{task_dir / task_dir_name(0)} (cljax.results.task_dirs lists them)")
        return f"{task_dir} is not a task folder: {runs_near(task_dir)}"
    from cljax.run_lock import live_writer

    writer = live_writer(task_dir.parent)
    if writer is not None and writer.get("pid") != os.getpid():
        return (f"a cljax run is writing {task_dir.parent} now (process {writer.get('pid')} on {writer.get('host')}) "
                f"and may be replacing its task folders (--overwrite, --repair): read the run when that run ends")
    return None


@_explained
def load_metadata(task_dir) -> dict:
    path = Path(task_dir) / "metadata.json"
    raw = read_bytes(path)
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DamagedFile(path, f"is not valid JSON ({brief(exc)})", DAMAGED) from None
    if not isinstance(meta, dict):
        raise DamagedFile(path, f"holds a JSON {type(meta).__name__}, not the object cljax writes", DAMAGED)
    return meta


@_explained
def load_metrics(task_dir) -> dict:
    return load_dict_pickle(Path(task_dir) / "metrics.pkl")


@_explained
def load_expert_metrics(task_dir) -> dict:
    return load_dict_pickle(Path(task_dir) / "expert_metrics.pkl")


@_explained
def load_representations(task_dir, mmap: bool = True, as_float32: bool = False) -> np.ndarray:
    """(L, R, T, S, H) in the dtype the run chose (bfloat16 as ``ml_dtypes.bfloat16``), or as
    float32 with ``as_float32`` (exact for every stored dtype)."""
    reps = load_npy(Path(task_dir) / "representations.npy", mmap=mmap)
    if reps.dtype == np.uint16:  # bfloat16's bit patterns (numpy has no bfloat16): metadata.json says so
        storage = load_metadata(task_dir).get("representations_storage")
        if not (isinstance(storage, dict) and storage.get("dtype") == "bfloat16"):
            raise DamagedFile(Path(task_dir) / "metadata.json", "does not record the bfloat16 storage of "
                              "representations.npy (uint16 bit patterns, which would read as other numbers)", DAMAGED)
        import ml_dtypes

        reps = reps.view(ml_dtypes.bfloat16)
    return reps.astype(np.float32) if as_float32 else reps


@_explained
def load_binary_labels(task_dir) -> np.ndarray:
    return load_npy(Path(task_dir) / "binary_labels.npy")


def load_structured(path: Path) -> dict:
    arr = load_npy(path)
    if arr.dtype.names is None:
        raise DamagedFile(path, f"is a plain {arr.dtype} array, not the structured array cljax writes", DAMAGED)
    return structured_to_weights(arr)


@_explained
def load_weights(task_dir) -> dict:
    """Nested dict {layer: {param: array (L, R, ...)}} from weights.npy."""
    return load_structured(Path(task_dir) / "weights.npy")


@_explained
def load_start_weights(task_dir) -> dict | None:
    """{layer: {param: (R, ...)}}: the weights the task's training started from (after the
    task-start options), or None for a folder written before start_weights.npy existed (its
    metadata.json does not list it; one that lists it and lost it is refused)."""
    path = Path(task_dir) / "start_weights.npy"
    return load_structured(path) if path.exists() or _listed(task_dir, path.name) else None


@_explained
def load_model_state(task_dir) -> dict:
    """The model's mutable state at each snapshot ({collection/layer/name: (L, R, ...)}), or {}
    for a model without any (no model_state.npy, and none listed in metadata.json)."""
    path = Path(task_dir) / "model_state.npy"
    return load_structured(path) if path.exists() or _listed(task_dir, path.name) else {}


def _listed(task_dir, name: str) -> bool:
    """Whether metadata.json's ``files`` lists ``name``: a file that a folder was written with."""
    files = load_metadata(task_dir).get("files")
    return isinstance(files, dict) and name in files


def load_task(task_dir) -> dict:
    """Every file of one task folder, as numpy arrays and dicts (``start_weights`` None in a
    folder from before it was written; ``model_state`` {} for a model without one)."""
    return {
        "representations": load_representations(task_dir),
        "binary_labels": load_binary_labels(task_dir),
        "weights": load_weights(task_dir),
        "start_weights": load_start_weights(task_dir),
        "model_state": load_model_state(task_dir),
        "metrics": load_metrics(task_dir),
        "expert_metrics": load_expert_metrics(task_dir),
        "metadata": load_metadata(task_dir),
    }
