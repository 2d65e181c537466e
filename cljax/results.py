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
Pickles are read by an unpickler that only rebuilds numpy arrays and builtin containers: a
results tree from elsewhere cannot run code on the reader's machine. Every reader raises
``CljaxError`` naming the file when it is missing, truncated, damaged or of another kind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cljax.errors import CljaxError, DamagedFile, brief
from cljax.faults import crash_point

TASK_FILES = ("representations.npy", "binary_labels.npy", "weights.npy", "start_weights.npy", "metrics.pkl",
              "expert_metrics.pkl", "metadata.json")
# Files added to the format later: a folder written before them lacks them and is still whole.
LATER_TASK_FILES = ("start_weights.npy",)
EXPERT_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")
_TASK_DIR = re.compile(r"^task_(\d{3,})$")


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


def weights_to_structured(params, lead: int = 2) -> np.ndarray:
    """Leaves with leading dims (L, R) -> one (L, R) structured array; field = leaf path.

    ``arr.view(np.float32).reshape(L, R, -1)`` is the standard flattening: fields in sorted path
    order, each leaf in C order.
    """
    flat = flatten_params(params)
    first = next(iter(flat.values()))
    lead_shape = first.shape[:lead]
    dtype = np.dtype([(name, leaf.dtype, leaf.shape[lead:]) for name, leaf in flat.items()])
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
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    files = {f"{k}.npy": _save_npy(tmp / f"{k}.npy", v) for k, v in npys.items() if v is not None}
    crash_point("write", task)
    for k, v in pickles.items():
        files[f"{k}.pkl"] = _write_bytes(tmp / f"{k}.pkl", pickle.dumps(v, protocol=4))
    _write_bytes(tmp / "metadata.json", json.dumps({**metadata, "files": files}, indent=1, default=_json_default).encode())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(algo_dir)
    return final


def representations_on_disk(reps: np.ndarray) -> tuple[np.ndarray, dict]:
    """The array written to representations.npy and how to read it back (saved in metadata.json).

    numpy has no bfloat16 of its own, so ``np.save`` cannot write it portably: bfloat16 is
    stored as its raw 16-bit patterns (uint16), which any numpy reads with ``allow_pickle=False``;
    ``load_representations`` views them as ``ml_dtypes.bfloat16`` again (bit-exact)."""
    if reps.dtype.name == "bfloat16":
        return reps.view(np.uint16), {
            "dtype": "bfloat16", "stored_as": "uint16",
            "how_to_read": "np.load(...).view(ml_dtypes.bfloat16), or cljax.results.load_representations",
        }
    return reps, {"dtype": str(reps.dtype), "stored_as": str(reps.dtype)}


class _HashingWriter:
    """A write-only file that hashes what passes through it (np.save writes in chunks)."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.f.write(data)


def _save_npy(path: Path, arr: np.ndarray) -> dict:
    """Write one .npy; return its size and sha256, hashed while writing (never read back)."""
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        np.save(out, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": out.size, "sha256": out.digest.hexdigest()}


def _write_bytes(path: Path, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ---- safe readers -----------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than numpy arrays and plain values."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy" and name in _NUMPY_SCALARS):
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}: only numpy arrays and plain values are allowed")


_NUMPY_SCALARS = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16",
                  "uint32", "uint64", "bool_"}
_DAMAGED = ("restore it from a copy, or train the run again (`cljax run` with its flags and --overwrite, which "
            "deletes it first)")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", _DAMAGED) from None
    except IsADirectoryError:
        raise DamagedFile(path, "is a folder, not a file", _DAMAGED) from None
    except MemoryError:
        raise DamagedFile(path, "is too large to read into memory (cljax writes small pickles)", _DAMAGED) from None


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a results file allowing only numpy arrays, dicts, lists and plain values."""
    path = Path(path)
    raw = _read_bytes(path)
    try:
        return _SafeUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise CljaxError(f"{path}: {brief(exc)}; the file is not a cljax results file, do not trust it.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise DamagedFile(path, f"is truncated or damaged ({type(exc).__name__}: {brief(exc)})", _DAMAGED) from None


def _load_dict_pickle(path: Path) -> dict:
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise DamagedFile(path, f"holds a {type(data).__name__}, not the dict of arrays cljax writes", _DAMAGED)
    return data


def npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read without loading it; CljaxError when the
    file is missing, not a .npy, holds Python objects, or is shorter or longer than its header says."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = fmt._read_array_header(f, version)
            offset = f.tell()
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", _DAMAGED) from None
    except IsADirectoryError:
        raise DamagedFile(path, "is a folder, not a file", _DAMAGED) from None
    except (ValueError, EOFError, SyntaxError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise DamagedFile(path, f"is not a readable .npy file ({brief(exc)})", _DAMAGED) from None
    if dtype.hasobject:
        raise DamagedFile(path, "holds Python objects, which cljax never writes (refused, not loaded)", _DAMAGED)
    expected = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise DamagedFile(path, f"is {kind} ({size:,} bytes, {expected:,} expected)", _DAMAGED)
    return tuple(shape), dtype, offset


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """A .npy written by cljax, checked against its header first (see :func:`npy_header`)."""
    path = Path(path)
    npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise DamagedFile(path, f"cannot be read ({brief(exc)})", _DAMAGED) from None


def task_dirs(algo_dir: str | os.PathLike) -> list[Path]:
    """Complete task folders of a run, in task order (temporary folders are never listed)."""
    algo = Path(algo_dir)
    if not algo.is_dir():
        raise CljaxError(f"{algo} is not a results folder: pass results/{{dataset}}/{{algorithm}}.")
    found = [(int(m.group(1)), p) for p in algo.iterdir() if p.is_dir() and (m := _TASK_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_metadata(task_dir) -> dict:
    path = Path(task_dir) / "metadata.json"
    raw = _read_bytes(path)
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DamagedFile(path, f"is not valid JSON ({brief(exc)})", _DAMAGED) from None
    if not isinstance(meta, dict):
        raise DamagedFile(path, f"holds a JSON {type(meta).__name__}, not the object cljax writes", _DAMAGED)
    return meta


def load_metrics(task_dir) -> dict:
    return _load_dict_pickle(Path(task_dir) / "metrics.pkl")


def load_expert_metrics(task_dir) -> dict:
    return _load_dict_pickle(Path(task_dir) / "expert_metrics.pkl")


def load_representations(task_dir, mmap: bool = True, as_float32: bool = False) -> np.ndarray:
    """(L, R, T, S, H) in the dtype the run chose (bfloat16 as ``ml_dtypes.bfloat16``), or as
    float32 with ``as_float32`` (exact for every stored dtype)."""
    reps = load_npy(Path(task_dir) / "representations.npy", mmap=mmap)
    if reps.dtype == np.uint16:  # bfloat16's bit patterns (numpy has no bfloat16): metadata.json says so
        storage = load_metadata(task_dir).get("representations_storage")
        if not (isinstance(storage, dict) and storage.get("dtype") == "bfloat16"):
            raise DamagedFile(Path(task_dir) / "metadata.json", "does not record the bfloat16 storage of "
                              "representations.npy (uint16 bit patterns, which would read as other numbers)", _DAMAGED)
        import ml_dtypes

        reps = reps.view(ml_dtypes.bfloat16)
    return reps.astype(np.float32) if as_float32 else reps


def load_binary_labels(task_dir) -> np.ndarray:
    return load_npy(Path(task_dir) / "binary_labels.npy")


def load_structured(path: Path) -> dict:
    arr = load_npy(path)
    if arr.dtype.names is None:
        raise DamagedFile(path, f"is a plain {arr.dtype} array, not the structured array cljax writes", _DAMAGED)
    return structured_to_weights(arr)


def load_weights(task_dir) -> dict:
    """Nested dict {layer: {param: array (L, R, ...)}} from weights.npy."""
    return load_structured(Path(task_dir) / "weights.npy")


def load_start_weights(task_dir) -> dict | None:
    """{layer: {param: (R, ...)}}: the weights the task's training started from (after the
    task-start options), or None for a folder written before start_weights.npy existed."""
    path = Path(task_dir) / "start_weights.npy"
    return load_structured(path) if path.exists() else None


def load_model_state(task_dir) -> dict:
    """The model's mutable state at each snapshot ({collection/layer/name: (L, R, ...)}), or {}
    for a model without any (no model_state.npy)."""
    path = Path(task_dir) / "model_state.npy"
    return load_structured(path) if path.exists() else {}


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
