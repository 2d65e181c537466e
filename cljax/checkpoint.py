"""The learner's checkpoint and the run record, beside the results of a run.

    {algo_dir}/run.json         the run id, the settings the run was started with (resume only
                                with the same), the identity of its data and the device split
    {algo_dir}/checkpoint.npz   the learner's full state after the last finished task:
                                parameters, optimiser state, rule and option states (replay
                                buffer included), ``next_task`` (the position in the key lineage:
                                every key derives from (seed, task, step)) and the run id

Both are replaced atomically (written to a temporary name, fsynced, renamed), so a crash at any
point leaves either the old or the new file, never a mix. The run id ties the checkpoint and
every task folder to the run.json they belong to.
"""

from __future__ import annotations

import json
import uuid
import zipfile
import zlib
from pathlib import Path

import jax
import numpy as np

from cljax.config import SCHEMA_VERSION
from cljax.errors import CljaxError, brief
from cljax.safe_files import atomic_write

RUN_RECORD = "run.json"
CHECKPOINT = "checkpoint.npz"
_KEY_PREFIX = "key:"  # typed PRNG-key leaves are stored as their raw data
_RECORD_LIMIT = 1 << 24  # a run.json is a few KB; anything this large is not one


def new_run_id() -> str:
    return uuid.uuid4().hex


def write_run_record(algo_dir: Path, config_dict: dict, schema: int, *, run_id: str | None = None,
                     data: str | None = None, split: dict | None = None, sources: dict | None = None,
                     dataset_meta: dict | None = None) -> None:
    """run.json: the flat settings the run was started with, the schema they follow, the run id,
    the identity of the data (a content hash), the device split the run started on, the plugin
    files of its entries (cljax/sources.py) and the dataset's description (``ClassData.meta``:
    where the data came from; not compared on resume, since a folder may move)."""
    record = {"schema": schema, "config": config_dict, "run_id": run_id, "data": data, "split": split,
              "sources": sources, "dataset_meta": dataset_meta}
    encoded = json.dumps(record, indent=1, sort_keys=True).encode()
    atomic_write(algo_dir / RUN_RECORD, lambda f: f.write(encoded))


class NewerRecord(CljaxError):
    """A run record of a later schema than this cljax knows: refused by every reader, also by
    those that read a run whose record is damaged from its task folders (compare)."""


def read_run_record(algo_dir: Path) -> dict | None:
    """The whole record ({"config", "run_id", "data", "split", "schema", "sources",
    "dataset_meta"}; all but the config None in a record written before they existed), or None
    when there is none. CljaxError when damaged."""
    path = algo_dir / RUN_RECORD
    if not path.exists():
        return None
    fix = ("it is this run's record: restore it from a copy, delete it and run the run's `cljax run` command with "
           f"--repair to write it again from the task folders, or pass --overwrite to delete the run in {algo_dir} "
           f"and start again")
    if not path.is_file():
        raise CljaxError(f"{path} is not a file: {fix}.")
    if path.stat().st_size > _RECORD_LIMIT:
        raise CljaxError(f"{path} is {path.stat().st_size:,} bytes, too large for a run record: {fix}.")
    try:
        record = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CljaxError(f"{path} is not valid JSON ({brief(exc)}): {fix}.") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise CljaxError(f"{path} is not a run record (no \"config\" object): {fix}.")
    kinds = {"schema": int, "run_id": str, "data": str, "split": dict, "sources": dict, "dataset_meta": dict}
    out = {key: record.get(key) for key in kinds}
    for key, kind in kinds.items():
        if out[key] is not None and (not isinstance(out[key], kind) or isinstance(out[key], bool)):
            raise CljaxError(f"{path} is damaged (its \"{key}\" is {type(out[key]).__name__}, not "
                             f"{kind.__name__}): {fix}.")
    if (out["schema"] or 0) > SCHEMA_VERSION:  # its files may mean what this cljax does not know
        raise NewerRecord(f"{path} was written by a newer cljax (record schema {out['schema']}; this cljax knows "
                          f"schemas up to {SCHEMA_VERSION}): use that cljax or a newer one, or start the run again "
                          f"with `cljax run ... --overwrite`, which deletes the run in {algo_dir}.")
    for key in ("run_id", "data", "split"):  # every record since schema 3 names its run, data and split
        if out[key] is None and (out["schema"] or 0) >= 3:
            raise CljaxError(f"{path} is damaged (it has no \"{key}\", which every record of schema "
                             f"{out['schema']} has): {fix}.")
    lowering = (out["split"] or {}).get("lowering")
    if lowering is not None and not isinstance(lowering, dict):
        raise CljaxError(f"{path} is damaged (its split's \"lowering\" is not an object): {fix}.")
    return {**out, "config": record["config"]}


def recorded_split(algo_dir: Path) -> dict | None:
    """The device split run.json records, or None (no record, an older one, or damaged: the run
    reports a damaged record itself). Without run.json, the split the task folders record the
    run started on (what ``--repair`` writes run.json again with). Reads no JAX state: the CLI
    calls it before JAX starts."""
    if not (algo_dir / RUN_RECORD).exists():
        from cljax.record_rebuild import rebuilt_record

        try:
            return rebuilt_record(algo_dir)["split"]
        except (CljaxError, OSError):
            return None
    try:
        split = json.loads((algo_dir / RUN_RECORD).read_bytes()).get("split")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return split if isinstance(split, dict) else None


def save_learner(algo_dir: Path, learner, next_task: int, run_id: str | None = None, path: Path | None = None) -> None:
    """Checkpoint the learner state (any pytree of arrays), the next task to run and the run id
    (to the run's checkpoint, or to the checkpoint file ``path``)."""
    leaves = jax.tree.leaves(jax.device_get(learner))
    arrays = {"next_task": np.asarray(next_task, np.int64)}
    if run_id is not None:
        arrays["run_id"] = np.asarray(run_id)  # a fixed-width unicode array: no pickle
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            arrays[f"{_KEY_PREFIX}{i}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf:{i}"] = np.asarray(leaf)
    atomic_write(algo_dir / CHECKPOINT if path is None else path, lambda f: np.savez(f, **arrays))


_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error, MemoryError)


def _damaged(path: Path, exc: BaseException) -> CljaxError:
    return CljaxError(f"{path} is damaged ({type(exc).__name__}: {brief(exc)}): the learner state it held is lost: pass "
                      f"--repair to train the tasks up to the last whole task folder again (from the nearest kept "
                      f"checkpoint, or from task 0), --overwrite to delete the run in {path.parent} and train it again "
                      f"from task 0, or choose another --results-dir.")


def read_checkpoint_header(algo_dir: Path, path: Path | None = None) -> tuple[int, str | None] | None:
    """(next_task, run_id) of the checkpoint (or of the checkpoint file ``path``), after checking
    every member's CRC; None when there is no checkpoint; CljaxError when it is truncated or damaged."""
    path = algo_dir / CHECKPOINT if path is None else path
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"bad CRC in member {bad}")
        with np.load(path, allow_pickle=False) as z:
            next_task = int(z["next_task"])
            run_id = str(z["run_id"]) if "run_id" in z.files else None
    except _READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    return next_task, run_id


def load_learner(algo_dir: Path, template, path: Path | None = None, mismatch_fix: str | None = None):
    """Restore (learner, next_task) into the structure of ``template`` (a freshly initialised
    learner of the same config), from the checkpoint or the checkpoint file ``path``. Returns
    None when there is none. ``mismatch_fix``: the advice of the error when the checkpoint is not
    of ``template``'s structure (default: a run's, to start it again)."""
    path = algo_dir / CHECKPOINT if path is None else path
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except _READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    count = sum(k.startswith((_KEY_PREFIX, "leaf:")) for k in stored)
    restored, problem = [], None if count == len(paths) else f"it holds {count} arrays, this config's learner {len(paths)}"
    for i, (where, leaf) in enumerate(paths):
        if problem is not None:
            break
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        got = _restored_leaf(stored, i, dtype)
        if got is None or got.dtype != dtype or got.shape != np.shape(leaf):
            stored_as = "nothing" if got is None else f"{got.dtype} {tuple(got.shape)}"
            problem = (f"its array {i} ({jax.tree_util.keystr(where)}) is {stored_as}, this config's "
                       f"{dtype} {tuple(np.shape(leaf))}")
        restored.append(got)
    if problem is not None:  # a state of another shape or dtype would train another computation, or fail in it
        fix = mismatch_fix or f"pass --overwrite to delete the run in {algo_dir} and start again"
        raise CljaxError(f"{path} does not match this config's learner state: {fix} ({problem}).")
    return jax.tree.unflatten(treedef, restored), int(stored["next_task"])


def _restored_leaf(stored: dict, i: int, dtype):
    """Array ``i`` of a checkpoint's arrays (a PRNG key wrapped again), or None when it has none.
    ``dtype``: the learner's; .npy stores a dtype numpy does not know (bfloat16, the float8s) as
    raw bytes of its size, read back as that dtype."""
    if f"{_KEY_PREFIX}{i}" in stored:
        try:
            return jax.random.wrap_key_data(stored[f"{_KEY_PREFIX}{i}"])
        except (TypeError, ValueError):  # raw data of no key shape
            return None
    raw = stored.get(f"leaf:{i}")
    if raw is not None and raw.dtype.kind == "V" and raw.dtype.names is None and not jax.dtypes.issubdtype(
            dtype, jax.dtypes.prng_key) and raw.dtype.itemsize == np.dtype(dtype).itemsize:
        return raw.view(dtype)
    return raw
