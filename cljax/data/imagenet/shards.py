"""Shards: units of work that can be redone on their own; each knows how to read its rows.

A shard yields ``(encoded image bytes or file path, label, where)`` rows, ``where`` naming the
row in error messages. `ParquetShard` reads row groups of a local parquet file with pyarrow,
`DatasetsShard` one source file of a streaming `datasets` split (hub name or local parquet),
`FilesShard` a list of image files. `Plan` is what `sources.plan_source` makes of a SOURCE.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cljax.errors import CljaxError


@dataclass(frozen=True)
class ParquetShard:
    """A run of row groups [rg_start, rg_stop) of one local parquet file (its size and time of
    change tell a resume whether the shard done from it is still that file's)."""

    name: str
    split: str
    source_split: str
    n_rows: int
    path: str
    file_size: int
    file_mtime_ns: int
    rg_start: int
    rg_stop: int
    image_column: str
    label_column: str

    def rows(self) -> Iterator[tuple[bytes | str, int, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
            batches = pf.iter_batches(
                batch_size=256, row_groups=range(self.rg_start, self.rg_stop), columns=[self.image_column, self.label_column],
                use_threads=False,  # the parallelism is the worker processes; threads would oversubscribe
            )
            row = sum(pf.metadata.row_group(g).num_rows for g in range(self.rg_start))
            for batch in batches:
                column = batch.column(self.image_column)
                paths = None
                if pa.types.is_struct(column.type):
                    blobs = column.field("bytes").to_pylist()
                    if column.type.get_field_index("path") >= 0:
                        paths = column.field("path").to_pylist()
                else:
                    blobs = column.to_pylist()
                labels = batch.column(self.label_column).to_pylist()  # None stays None (no NaN)
                for i, blob in enumerate(blobs):
                    where = f"{self.path} row {row}"
                    if blob is None:
                        path = paths[i] if paths else None
                        if not path or not os.path.isfile(path):
                            raise CljaxError(f"{where} has no image bytes; re-export or re-download this file.")
                        blob = path
                    yield blob, class_id(labels[i], where), where
                    row += 1
        except (OSError, pa.ArrowException) as exc:
            raise CljaxError(f"cannot read {self.path} ({type(exc).__name__}: {exc}); re-download or remove this file.") from None

    def source_files(self) -> tuple[str, ...]:
        return ()  # its identity holds its file's size and time of change, taken when planned


# The largest class id the prepared folder's int32 labels can hold.
MAX_CLASS_ID = int(np.iinfo(np.int32).max)


def class_id(label, where: str) -> int:
    """A source row's label as a class id: an integer (a float, a string or a missing label
    would be truncated, fail, or merge classes) in 0 .. MAX_CLASS_ID, or -1 (the mark of an
    unlabelled row, which the caller refuses with its own fix), else one CljaxError line."""
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        label = int(label)
        if -1 <= label <= MAX_CLASS_ID:
            return label
        # Not a class id, nor Hugging Face's -1 for "unlabelled": a damaged or mis-typed export.
        why = (f"larger than a class id can be (at most {MAX_CLASS_ID}, int32)" if label > 0 else
               "not a class id (0 or more) nor -1, the mark of an unlabelled row")
        raise CljaxError(f"{where} has label {label}, {why}: the source is damaged; re-export or re-download it with "
                         f"class ids 0 .. n - 1.")
    raise CljaxError(f"{where} has label {label!r}, not an integer class id: the label column must hold the classes' "
                     f"integer ids (a ClassLabel, as in the hub's export), one per image; re-export the source so.")


def check_label(label: int, where: str, source_split: str, n_classes: int | None) -> None:
    """Refuse a class id (`class_id`'s) that no class of the source has: -1, the mark of an
    unlabelled row (its split is left out with --splits), or one past the `n_classes` names."""
    if label < 0:
        raise CljaxError(f"{where} has label {label} (unlabelled); leave split {source_split!r} out with --splits.")
    if n_classes is not None and label >= n_classes:
        raise CljaxError(f"{where} has label {label} but only {n_classes} class names; the source is inconsistent: "
                         f"re-export it with each label the id of one of its class names (0 .. {n_classes - 1}), or "
                         f"with the names of all its classes.")


@dataclass(frozen=True)
class DatasetsShard:
    """Source shard `index` of `num_shards` of a streaming `datasets` split (one parquet file)."""

    name: str
    split: str
    source_split: str
    n_rows: int | None
    load_args: str  # JSON of the keyword arguments of datasets.load_dataset, without split/streaming
    index: int
    num_shards: int
    image_column: str
    label_column: str

    def rows(self) -> Iterator[tuple[bytes | str, int, str]]:
        dataset = _open_streaming(self.load_args, self.source_split, self.image_column, self.label_column)
        shard = dataset.shard(num_shards=self.num_shards, index=self.index)
        for row, example in enumerate(shard):
            image = example[self.image_column]
            where = f"{_describe_load_args(self.load_args)} split {self.source_split!r} shard {self.index} row {row}"
            blob = image.get("bytes") if isinstance(image, dict) else image
            if blob is None:
                path = image.get("path") if isinstance(image, dict) else None
                if not path:
                    raise CljaxError(f"{where} has no image bytes; this dataset cannot be read without its files.")
                blob = path
            yield blob, class_id(example[self.label_column], where), where

    def source_files(self) -> tuple[str, ...]:
        """The local parquet file this shard reads (none for a hub dataset, whose files are the
        hub's). `datasets` makes each file of a split one shard, in the order of its data_files;
        were it to split them otherwise, this is all of the split's files."""
        args = json.loads(self.load_args)
        if args.get("path") != "parquet":
            return ()
        files = args["data_files"][self.source_split]
        return (files[self.index],) if len(files) == self.num_shards else tuple(files)


@dataclass(frozen=True)
class FilesShard:
    """A list of image files with their class ids (an image-folder source)."""

    name: str
    split: str
    source_split: str
    n_rows: int
    files: tuple[tuple[str, int], ...]

    def rows(self) -> Iterator[tuple[bytes | str, int, str]]:
        for path, label in self.files:
            yield path, label, path

    def source_files(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self.files)


Shard = ParquetShard | DatasetsShard | FilesShard


def files_stamp(paths: tuple[str, ...]) -> str | None:
    """The sizes and times of change of a shard's `source_files`, hashed (None when it has none,
    or one cannot be read): saved with the shard when its work begins, so that a resume redoes
    a shard one of whose files was replaced in place under the same name since (work.py)."""
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        digest.update(f"{st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Plan:
    """What a preparation will do: its shards in output order and the class names."""

    source: str
    shards: tuple[Shard, ...]
    class_names: tuple[str, ...] | None
    n_classes: int | None
    expected_total: int | None  # images, when the source says so in advance
    notes: tuple[str, ...] = ()
    revision: str | None = None  # a hub dataset's commit, streamed by every shard


_STREAMING_CACHE: dict[tuple[str, str], object] = {}


def _open_streaming(load_args: str, split: str, image_column: str, label_column: str):
    """The streaming dataset of one split, raw image bytes, opened once per process."""
    key = (load_args, split)
    if key not in _STREAMING_CACHE:
        import datasets

        dataset = datasets.load_dataset(**json.loads(load_args), split=split, streaming=True)
        dataset = dataset.select_columns([image_column, label_column])
        if isinstance(dataset.features.get(image_column) if dataset.features else None, datasets.Image):
            # Keep the encoded bytes: the fast decode below beats datasets' full-size PIL decode.
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        _STREAMING_CACHE[key] = dataset
    return _STREAMING_CACHE[key]


def _describe_load_args(load_args: str) -> str:
    args = json.loads(load_args)
    return args["path"] if args["path"] != "parquet" else "local parquet (datasets reader)"
