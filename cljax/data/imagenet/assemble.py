"""Assembly: the finished work shards (OUT.partial/{split}-NNNNN.npz) in plan order -> the
prepared folder (`write_prepared`), after checking that they make whole classes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cljax.data.imagenet.shards import Plan, Shard
from cljax.data.imagenet.sources import OUTPUT_SPLITS
from cljax.data.prepared import write_prepared
from cljax.errors import CljaxError


def assemble(plan: Plan, work: Path, out: Path, size: int, preprocessing: dict, *, name: str) -> None:
    """Concatenate the shards in plan order into the final arrays and write the prepared folder."""
    rows = {shard.name: shard.n_rows if shard.n_rows is not None else npz_rows(work, shard) for shard in plan.shards}
    counts = dict.fromkeys(OUTPUT_SPLITS, 0)
    for shard in plan.shards:
        counts[shard.split] += rows[shard.name]
    arrays = {split: (np.empty((n, size, size), np.uint8), np.empty((n,), np.int32)) for split, n in counts.items()}
    filled = dict.fromkeys(OUTPUT_SPLITS, 0)
    for shard in plan.shards:
        path = work / f"{shard.name}.npz"
        images, labels = _read_shard(path, rows[shard.name], size)
        start = filled[shard.split]
        arrays[shard.split][0][start : start + len(labels)] = images
        arrays[shard.split][1][start : start + len(labels)] = labels
        filled[shard.split] = start + len(labels)
    n_classes = plan.n_classes
    all_labels = np.concatenate([arrays[s][1] for s in OUTPUT_SPLITS])
    top = int(all_labels.max()) + 1 if all_labels.size else 0
    if n_classes is None:  # no class names: the ids are the classes, and an id no image has would be an empty class
        n_classes = top
        missing, first = _missing_ids(all_labels, top)
        if missing:
            raise CljaxError(f"{plan.source} has labels up to {top - 1} but no image of class "
                             f"{', '.join(map(str, first))}{' ...' if missing > len(first) else ''} and no class names: "
                             f"its labels must number the classes 0 .. n - 1 without gaps (or come with a ClassLabel's "
                             f"names); re-export it so.")
    elif top > n_classes:
        raise CljaxError(f"{plan.source} has label {top - 1} but only {n_classes} class names; the source is inconsistent.")
    if n_classes == 0:
        raise CljaxError(f"{plan.source} gave no images for the chosen splits; check --splits.")
    if n_classes == 1:  # the folder's reader refuses it (a task is a pair of classes): refused before it is written
        raise CljaxError(f"{plan.source} gave images of one class only; a task is a pair of classes: give a source of "
                         f"two classes or more (check --splits).")
    write_prepared(
        out,
        arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
        name=name, source=plan.source, preprocessing=preprocessing,
        class_names=list(plan.class_names) if plan.class_names else None, n_classes=n_classes,
    )


def _read_shard(path: Path, n_rows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A work shard's images and labels, checked against its plan: the assembly's arrays are
    np.empty, so a file short of rows would leave garbage in them."""
    redo = "delete it and rerun to redo that shard."
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CljaxError(f"{path} is damaged ({exc}); {redo}") from None
    if labels.shape != (n_rows,) or labels.dtype != np.int32:
        raise CljaxError(f"{path} holds labels of shape {list(labels.shape)} {labels.dtype} where its shard has "
                         f"{n_rows} int32 labels: the work file is damaged or from another run; {redo}")
    if images.shape != (n_rows, size, size) or images.dtype != np.uint8:
        raise CljaxError(f"{path} holds images of shape {list(images.shape)} {images.dtype} where its shard has "
                         f"{[n_rows, size, size]} uint8: the work file is damaged or from another run; {redo}")
    return images, labels


def _missing_ids(labels: np.ndarray, top: int, shown: int = 5) -> tuple[int, list[int]]:
    """How many of the ids 0 .. top - 1 no label has, and the first `shown` of them, from the
    distinct labels (a range of every id would take memory in proportion to the largest label)."""
    present = np.unique(labels)
    gaps = np.diff(present, prepend=-1) - 1  # ids missing just before each present one
    first = []
    for i in np.flatnonzero(gaps)[:shown]:
        start = int(present[i]) - int(gaps[i])
        first.extend(range(start, min(int(present[i]), start + shown - len(first))))
    return top - present.size, first[:shown]


def npz_rows(work: Path, shard: Shard) -> int:
    path = work / f"{shard.name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["labels"].shape[0])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CljaxError(f"{path} is damaged ({exc}); delete it and rerun to redo that shard.") from None
