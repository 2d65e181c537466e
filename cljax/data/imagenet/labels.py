"""A source's labels against its classes: every label a class id, and every class with images in
each output split that has any, as `run` needs (one without train images cannot be learnt, one
without test images cannot be measured; run refuses such a folder).

A local parquet source is checked when it is planned, before any image is decoded: the label
column alone is read (`scan_parquet_labels`), and a bad label is named by file and row. A hub or
`--reader datasets` source is checked row by row as its images are decoded (`check_label`, in
the workers) and as a whole at the assembly; an image folder's classes are its folders, checked
when it is planned (image_folder.py). `check_classes_have_images` is the one rule for all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cljax.data.imagenet.shards import MAX_CLASS_ID, ParquetShard, Plan, check_label, class_id
from cljax.data.imagenet.sources import OUTPUT_SPLITS
from cljax.errors import CljaxError

_SHOWN = 5  # classes a refusal names


def scan_parquet_labels(shards: Sequence[ParquetShard], n_classes: int | None) -> dict[str, np.ndarray]:
    """{output split: its distinct class ids, sorted} from the label column of each file of
    `shards`; CljaxError naming the file and row of the first label that is missing, not a
    class id, -1 (unlabelled) or, with `n_classes`, past the class names."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    present: dict[str, np.ndarray] = {}
    for shard in {s.path: s for s in shards}.values():  # one file's shards share its split
        try:
            column = pq.ParquetFile(shard.path).read(columns=[shard.label_column], use_threads=False).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise CljaxError(f"cannot read {shard.path} ({type(exc).__name__}: {exc}); re-download or remove this "
                             f"file.") from None
        if column.null_count:
            row = int(np.argmax(pc.is_null(column).to_numpy(zero_copy_only=False)))
            class_id(None, f"{shard.path} row {row}")  # raises its refusal
        labels = column.to_numpy()
        bad = (labels < 0) | (labels > MAX_CLASS_ID if n_classes is None else labels >= n_classes)
        if bad.any():
            row = int(np.argmax(bad))
            where = f"{shard.path} row {row}"
            check_label(class_id(labels[row].item(), where), where, shard.source_split, n_classes)  # raises
        present[shard.split] = np.union1d(present.get(shard.split, np.zeros(0, np.int64)),
                                           np.unique(labels).astype(np.int64))  # (uint64 and int64 would make floats)
    return present


def check_classes_have_images(plan: Plan, present: Mapping[str, np.ndarray]) -> int:
    """The number of classes of `plan`'s source, whose output splits hold the class ids `present`
    ({split: distinct ids, sorted}, every id in 0 .. n_classes - 1 where the plan knows its
    classes); CljaxError when an output split with images lacks a class. Without class names the
    ids are the classes, and an id below the largest that no image has is refused as a gap."""
    n_classes = plan.n_classes
    if n_classes is None:
        every = np.unique(np.concatenate([np.asarray(ids, np.int64) for ids in present.values()] or [np.zeros(0, np.int64)]))
        n_classes = int(every[-1]) + 1 if every.size else 0
        missing, first = _missing_ids(every, n_classes)
        if missing:
            raise CljaxError(f"{plan.source} has labels up to {n_classes - 1} but no image of class "
                             f"{', '.join(map(str, first))}{' ...' if missing > len(first) else ''} and no class names: "
                             f"its labels must number the classes 0 .. n - 1 without gaps (or come with a ClassLabel's "
                             f"names); re-export it so.")
    sources = {dst: list(dict.fromkeys(s.source_split for s in plan.shards if s.split == dst)) for dst in OUTPUT_SPLITS}
    for dst in OUTPUT_SPLITS:  # train first: its fix is the source's, which also mends the test split
        ids = present.get(dst)
        if ids is None or not len(ids):
            continue  # a split with no images (left out, or absent from the source): no run reads it
        missing, first = _missing_ids(ids, n_classes)
        if not missing:
            continue
        names = plan.class_names or [str(i) for i in range(n_classes)]
        shown = ", ".join(f"{i} ({names[i]})" for i in first) + (f" and {missing - len(first)} more" if missing > len(first) else "")
        fix = ("add their images, re-export the source without those classes, or prepare the train split only "
               "(--splits train; a run then takes its test images from the train split, --test-source train_holdout)"
               if dst == "test" and len(present.get("train", ())) else
               "re-export the source with only the classes it has images of (their names, and labels renumbered "
               "0 .. n - 1), or add their images")
        raise CljaxError(f"{plan.source}: {missing} of its {n_classes} classes have no image in the {dst} split (source "
                         f"split {', '.join(map(repr, sources[dst]))}): class {shown}. A run needs images of every class "
                         f"in each split it reads (one without train images cannot be learnt, one without test images "
                         f"cannot be measured): {fix}.")
    return n_classes


def _missing_ids(labels: np.ndarray, top: int, shown: int = _SHOWN) -> tuple[int, list[int]]:
    """How many of the ids 0 .. top - 1 no label (all below top) has, and the first `shown` of
    them, from the distinct labels (a range of every id would take memory in proportion to the
    largest label: gigabytes for a label of 2e9 without class names)."""
    present = np.unique(labels)
    gaps = np.diff(present, append=top) - 1  # ids missing just after each present one (up to top)
    gaps = np.concatenate([[present[0] if present.size else top], gaps])  # and before the first
    starts = np.concatenate([[0], present + 1])
    first: list[int] = []
    for i in np.flatnonzero(gaps)[:shown]:
        start = int(starts[i])
        first.extend(range(start, min(start + int(gaps[i]), start + shown - len(first))))
    return top - present.size, first[:shown]
