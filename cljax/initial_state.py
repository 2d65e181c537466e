"""The learner's network as initialised, saved once per run: ``{algo_dir}/initial/`` (before any
task-start change: under ``--head reset`` task 0 trains from the reset head).

    initial/weights.npy      (R,) structured dtype, the fields of a task's weights.npy
    initial/model_state.npy  (R,) the model's mutable state, for a model that has one
    initial/metadata.json    the run id, the shapes, and the size and sha256 of each file

"Weight change since init" is measured from it (cljax/analysis/analyses.py). The initialisation
is a function of the seed alone, so a run that started before this folder existed writes it
when it resumes, and one that is damaged, deleted or another run's is written again (by a rerun
of a finished run too) rather than refused.
"""

from __future__ import annotations

from pathlib import Path

import jax

from cljax.results import load_structured, weights_to_structured, write_folder

INITIAL = "initial"


def wrote_initial(record: dict | None) -> bool:
    """Whether the run of this run.json record wrote initial/ as it began: every run recorded at
    schema 3 or later did (the folder came with schema 2, so a schema-2 run may predate it)."""
    return record is not None and (record.get("schema") or 1) > 2


def initial_arrays(params, model_state) -> dict:
    """A freshly initialised learner's params and model state (host copies, repeats leading) ->
    the arrays to save."""
    return {"weights": weights_to_structured(params, lead=1),
            "model_state": weights_to_structured(model_state, lead=1) if jax.tree.leaves(model_state) else None}


def write_initial(algo_dir: Path, arrays: dict, run_id: str) -> Path:
    shapes = {k: list(v.shape) for k, v in arrays.items() if v is not None}
    return write_folder(algo_dir, INITIAL, arrays, {}, {
        "what": "the learner's network as initialised, before any task-start change such as a head reset "
                "(one row per repeat)",
        "run_id": run_id, "shapes": shapes})


def load_initial_weights(algo_dir) -> dict | None:
    """{layer: {param: (R, ...)}}: the learner's initial weights, or None for a run that has no
    ``initial/`` folder (finished before it existed)."""
    path = Path(algo_dir) / INITIAL / "weights.npy"
    return load_structured(path) if path.exists() else None
