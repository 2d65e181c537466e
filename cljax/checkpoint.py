"""The learner's checkpoint and the run record, beside the results of a run.

    {algo_dir}/run.json         the config the run was started with (resume only with the same)
    {algo_dir}/checkpoint.npz   the learner's full state after the last finished task:
                                parameters, optimiser state, rule and option states (replay
                                buffer included), and ``next_task``, the position in the key
                                lineage (every key derives from (seed, task, step))

Both are replaced atomically (written to a temporary name, fsynced, renamed), so a crash at any
point leaves either the old or the new file, never a mix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from cljax.errors import CljaxError

RUN_RECORD = "run.json"
CHECKPOINT = "checkpoint.npz"
_KEY_PREFIX = "key:"  # typed PRNG-key leaves are stored as their raw data


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_run_record(algo_dir: Path, config_dict: dict, schema: int) -> None:
    """run.json: the flat settings the run was started with, and the schema they follow."""
    data = json.dumps({"schema": schema, "config": config_dict}, indent=1, sort_keys=True).encode()
    _atomic_write(algo_dir / RUN_RECORD, lambda f: f.write(data))


def read_run_record(algo_dir: Path) -> dict | None:
    path = algo_dir / RUN_RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
        raise CljaxError(f"{path} is corrupt: pass --overwrite to start the run again.") from None


def save_learner(algo_dir: Path, learner, next_task: int) -> None:
    """Checkpoint the learner state (any pytree of arrays) and the next task to run."""
    leaves = jax.tree.leaves(jax.device_get(learner))
    arrays = {"next_task": np.asarray(next_task, np.int64)}
    for i, leaf in enumerate(leaves):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            arrays[f"{_KEY_PREFIX}{i}"] = np.asarray(jax.random.key_data(leaf))
        else:
            arrays[f"leaf:{i}"] = np.asarray(leaf)
    _atomic_write(algo_dir / CHECKPOINT, lambda f: np.savez(f, **arrays))


def load_learner(algo_dir: Path, template):
    """Restore (learner, next_task) into the structure of ``template`` (a freshly initialised
    learner of the same config). Returns None when there is no checkpoint."""
    path = algo_dir / CHECKPOINT
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CljaxError(f"{path} is corrupt ({exc}): pass --overwrite to start the run again.") from None
    leaves, treedef = jax.tree.flatten(template)
    restored = []
    for i, leaf in enumerate(leaves):
        if f"{_KEY_PREFIX}{i}" in stored:
            restored.append(jax.random.wrap_key_data(stored[f"{_KEY_PREFIX}{i}"]))
        elif f"leaf:{i}" in stored and stored[f"leaf:{i}"].shape == np.shape(leaf):
            restored.append(stored[f"leaf:{i}"])
        else:
            raise CljaxError(f"{path} does not match this config's learner state: pass --overwrite to start again.")
    return jax.tree.unflatten(treedef, restored), int(stored["next_task"])
