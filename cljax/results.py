"""The results tree: the writer of one task folder and safe readers of a whole run.

    {results_dir}/{dataset}/{algorithm}/task_{t:03d}/
        representations.npy  (L, R, T, S, H) float32 (or float16; bfloat16 stored as uint16 bits)
        binary_labels.npy    (L, R, T, S) uint8
        weights.npy          (L, R) structured dtype, one field per parameter ("conv1/kernel", ...)
        metrics.pkl          dict of numpy arrays (see METRICS_KEYS)
        expert_metrics.pkl   dict of numpy arrays (train_loss, train_acc, test_loss, test_acc), (L, R)
        metadata.json        config, class pairs, shapes, log steps, versions, device, timings

A task folder is written under a temporary name and renamed, so it appears whole or not at all.
Pickles are read by an unpickler that only rebuilds numpy arrays and builtin containers: a
results tree from elsewhere cannot run code on the reader's machine.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cljax.errors import CljaxError
from cljax.faults import crash_point

TASK_FILES = (
    "representations.npy",
    "binary_labels.npy",
    "weights.npy",
    "metrics.pkl",
    "expert_metrics.pkl",
    "metadata.json",
)
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
    weights (structured), metrics (dict), expert_metrics (dict)."""
    final = algo_dir / task_dir_name(task)
    tmp = algo_dir / f".{task_dir_name(task)}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    reps_on_disk, storage = representations_on_disk(np.asarray(arrays["representations"]))
    metadata = {**metadata, "representations_storage": storage}
    _save_npy(tmp / "representations.npy", reps_on_disk)
    for name in ("binary_labels", "weights"):
        _save_npy(tmp / f"{name}.npy", arrays[name])
    if arrays.get("model_state") is not None:  # a model with mutable state (BatchNorm statistics)
        _save_npy(tmp / "model_state.npy", arrays["model_state"])
    crash_point("write", task)
    for name in ("metrics", "expert_metrics"):
        _write_bytes(tmp / f"{name}.pkl", pickle.dumps(arrays[name], protocol=4))
    _write_bytes(tmp / "metadata.json", json.dumps(metadata, indent=1, default=_json_default).encode())
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


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy" and name in _NUMPY_SCALARS):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and plain values are allowed")


_NUMPY_SCALARS = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16",
                  "uint32", "uint64", "bool_"}


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a results file allowing only numpy arrays, dicts, lists and plain values."""
    try:
        with open(path, "rb") as f:
            return _SafeUnpickler(io.BytesIO(f.read())).load()
    except pickle.UnpicklingError as exc:
        raise CljaxError(f"{path}: {exc}; the file is not a cljax results file, do not trust it.") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CljaxError(f"{path} is corrupt or truncated ({exc}): rerun that task.") from None


def task_dirs(algo_dir: str | os.PathLike) -> list[Path]:
    """Complete task folders of a run, in task order (temporary folders are never listed)."""
    algo = Path(algo_dir)
    if not algo.is_dir():
        raise CljaxError(f"{algo} is not a results folder: pass results/{{dataset}}/{{algorithm}}.")
    found = [(int(m.group(1)), p) for p in algo.iterdir() if p.is_dir() and (m := _TASK_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def load_metadata(task_dir) -> dict:
    return json.loads((Path(task_dir) / "metadata.json").read_text())


def load_metrics(task_dir) -> dict:
    return safe_load_pickle(Path(task_dir) / "metrics.pkl")


def load_expert_metrics(task_dir) -> dict:
    return safe_load_pickle(Path(task_dir) / "expert_metrics.pkl")


def load_representations(task_dir, mmap: bool = True, as_float32: bool = False) -> np.ndarray:
    """(L, R, T, S, H) in the dtype the run chose (bfloat16 as ``ml_dtypes.bfloat16``), or as
    float32 with ``as_float32`` (exact for every stored dtype)."""
    reps = np.load(Path(task_dir) / "representations.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
    meta_path = Path(task_dir) / "metadata.json"
    storage = json.loads(meta_path.read_text()).get("representations_storage", {}) if meta_path.exists() else {}
    if storage.get("dtype") == "bfloat16" and reps.dtype == np.uint16:
        import ml_dtypes

        reps = reps.view(ml_dtypes.bfloat16)
    return reps.astype(np.float32) if as_float32 else reps


def load_binary_labels(task_dir) -> np.ndarray:
    return np.load(Path(task_dir) / "binary_labels.npy", allow_pickle=False)


def load_weights(task_dir) -> dict:
    """Nested dict {layer: {param: array (L, R, ...)}} from weights.npy."""
    return structured_to_weights(np.load(Path(task_dir) / "weights.npy", allow_pickle=False))


def load_model_state(task_dir) -> dict:
    """The model's mutable state at each snapshot ({collection/layer/name: (L, R, ...)}), or {}
    for a model without any (no model_state.npy)."""
    path = Path(task_dir) / "model_state.npy"
    if not path.exists():
        return {}
    return structured_to_weights(np.load(path, allow_pickle=False))


def load_task(task_dir) -> dict:
    """Every file of one task folder, as numpy arrays and dicts."""
    return {
        "representations": load_representations(task_dir),
        "binary_labels": load_binary_labels(task_dir),
        "weights": load_weights(task_dir),
        "metrics": load_metrics(task_dir),
        "expert_metrics": load_expert_metrics(task_dir),
        "metadata": load_metadata(task_dir),
    }
