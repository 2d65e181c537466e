"""Assembly: the finished work shards (OUT.partial/{split}-NNNNN.npz) in plan order -> the
prepared folder (`write_prepared`), after checking that they make whole classes (labels.py)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cljax.data.imagenet.labels import check_classes_have_images
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
    if not any(len(labels) for _, labels in arrays.values()):
        raise CljaxError(f"{plan.source} gave no images for the chosen splits; check --splits.")
    n_classes = plan.n_classes
    top = max((int(labels.max()) + 1 for _, labels in arrays.values() if labels.size), default=0)
    if n_classes is not None and top > n_classes:  # the workers refuse such a row; work of another source
        raise CljaxError(f"{plan.source} has label {top - 1} but only {n_classes} class names; the source is inconsistent.")
    n_classes = check_classes_have_images(plan, {split: np.unique(labels) for split, (_, labels) in arrays.items()})
    if n_classes == 1:  # the folder's reader refuses it (a task is a pair of classes): refused before it is written
        raise CljaxError(f"{plan.source} gave images of one class only; a task is a pair of classes: give a source of "
                         f"two classes or more (check --splits).")
    write_prepared(
        out,
        arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
        name=name, source=plan.source, preprocessing=preprocessing, revision=plan.revision,
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


def npz_rows(work: Path, shard: Shard) -> int:
    path = work / f"{shard.name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["labels"].shape[0])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CljaxError(f"{path} is damaged ({exc}); delete it and rerun to redo that shard.") from None
