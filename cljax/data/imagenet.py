"""Prepare ImageNet-1k (or any labelled image dataset) as 28x28 8-bit gray: `prepare-imagenet`.

Data flow::

    SOURCE --plan--> shards --workers--> OUT.partial/{split}-NNNNN.npz --assemble--> OUT (write_prepared)

SOURCE is one of
  * a Hugging Face hub dataset name (``ILSVRC/imagenet-1k``, or a pre-downsampled variant), read
    with ``datasets.load_dataset(name, split=..., streaming=True)``; one shard per source file;
  * a local folder laid out like the hub's parquet export, ``{split}-NNNNN-of-NNNNN.parquet`` at
    the top or under ``data/``; read with pyarrow, one shard per run of row groups (or through
    ``datasets`` with ``reader="datasets"``, the code path the hub uses);
  * an image folder: ``ROOT/{class}/*.jpg`` (train only) or ``ROOT/{train,val|validation,test}/{class}/*``.

Per image: JPEGs are decoded at a reduced DCT scale and straight to luma (``Image.draft``), the
EXIF orientation is applied as ``datasets`` does when it decodes, the central square (side = the
short side) is area-averaged down to 28x28 (the same as "resize the short side to 28, then
centre-crop 28x28", without rounding the intermediate size), and the result is 8-bit ITU-R 601
luma, L = 0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``.

Each shard is written atomically into ``OUT.partial/``; a rerun skips the shards already there, so
an interrupted preparation resumes, and the output does not depend on where it stopped: rows are
ordered by split, then shard index, then row within the shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cljax.data.prepared import load_prepared, write_prepared
from cljax.errors import CljaxError
from cljax.host import usable_cores

NAME = "imagenet_28_gray"
SIZE = 28
# Source split -> output split. The hub's ImageNet "test" split has no labels (label -1), so it
# is left out; its validation split is the usual test set.
DEFAULT_SPLIT_MAP: Mapping[str, str] = {"train": "train", "validation": "test"}
OUTPUT_SPLITS = ("train", "test")
RESAMPLE_FILTERS = ("area", "bilinear", "bicubic", "lanczos")
# The JPEG decoder may shrink by 1/2, 1/4 or 1/8 as long as the short side stays >= this many
# times the output size. Scaled IDCTs are not exact area averages; at 4 the result stays within
# ~0.3 gray levels (mean) of a full-size decode, at 2 within ~1, for ~7% less time (the entropy
# decoding, the same at every scale, dominates).
DRAFT_FACTOR = 4
DEFAULT_SHARD_ROWS = 1024
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_SPLIT_DIR_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}
_PARQUET_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")
_EXIF_ORIENTATION = 0x0112
_TICK_EVERY = 32  # images between progress updates from a worker


# --------------------------------------------------------------------------------------------
# One image -> 28x28 uint8 luma


def image_to_gray(
    data: bytes | str | os.PathLike,
    size: int = SIZE,
    *,
    resample: str = "area",
    draft_factor: int = DRAFT_FACTOR,
) -> np.ndarray:
    """Decode one encoded image (bytes or a file path) to a (size, size) uint8 luma array.

    The central square of side min(width, height) is resampled to size x size, which equals
    resizing the short side to `size` and centre-cropping. `resample="area"` (the default)
    averages each output pixel's exact footprint, fractional edge pixels included; "bilinear",
    "bicubic" and "lanczos" use PIL's filters. JPEGs are decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps the short side >= draft_factor * size, and RGB JPEGs straight to
    their luma channel. Raises PIL's errors (UnidentifiedImageError, OSError, ValueError) on
    undecodable input.
    """
    from PIL import Image

    filt = _pil_filter(resample)
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else open(data, "rb")
    with stream, Image.open(stream) as im:
        # The content's extent in decoded pixels: a JPEG decoded at 1/s is ceil(W/s) pixels
        # wide but holds W/s pixels of picture; centring on the integer size would shift the
        # crop by up to half a reduced pixel (s/2 original pixels).
        extent_w, extent_h = float(im.width), float(im.height)
        if im.format == "JPEG":
            # Asks for the Y channel of YCbCr JPEGs (skipping chroma) at a reduced scale; CMYK and
            # gray JPEGs keep their mode but still get the reduced scale.
            drafted = im.draft("L", (draft_factor * size, draft_factor * size))
            if drafted is not None:
                extent_w, extent_h = drafted[1][2], drafted[1][3]
        orientation = im.getexif().get(_EXIF_ORIENTATION)
        gray = _to_luma(im)
    side = min(extent_w, extent_h)
    if filt is None:
        pixels_hw = np.asarray(gray, dtype=np.float32)
        rows_i, rows_w = _area_taps(gray.height, (extent_h - side) / 2, side, size)
        cols_i, cols_w = _area_taps(gray.width, (extent_w - side) / 2, side, size)
        # Gathers and weighted sums over the few taps of each cell, not a dense matmul: BLAS
        # would spread a 28 x H x W product over threads, which on busy cores is 30x slower.
        rows_sw = np.einsum("sk,skw->sw", rows_w, pixels_hw[rows_i])
        area_ss = np.einsum("tk,stk->st", cols_w, rows_sw[:, cols_i])
        small_hw = np.clip(np.rint(area_ss), 0, 255).astype(np.uint8)
    else:
        box = ((extent_w - side) / 2, (extent_h - side) / 2, (extent_w + side) / 2, (extent_h + side) / 2)
        # reducing_gap first shrinks by an integer box reduce: faster on big non-JPEG images.
        small_hw = np.asarray(gray.resize((size, size), filt, box=box, reducing_gap=3.0), dtype=np.uint8)
    # The centred square and its resampling are symmetric under flips and quarter turns, so the
    # EXIF orientation can be applied to the small result rather than the decoded image.
    for op in _ORIENTATION_OPS.get(orientation, ()):
        small_hw = op(small_hw)
    return np.ascontiguousarray(small_hw)


@functools.lru_cache(maxsize=4096)
def _area_taps(length: int, offset: float, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices and weights (both (size, K)) of an exact area average along one axis.

    Output cell i averages [offset + i*side/size, offset + (i+1)*side/size); pixel j covers
    [j, j+1) and weighs its overlap with the cell. (PIL's BOX filter instead counts whole
    pixels whose centres fall in a cell, which at the 2-8 pixels per cell left after the JPEG
    draft jitters the cell edges by up to half a pixel.) Unused taps have weight 0.
    """
    edges = offset + np.arange(size + 1) * (side / size)
    first = np.clip(np.floor(edges[:-1]).astype(np.int64), 0, length - 1)
    n_taps = int(np.max(np.ceil(edges[1:]) - np.floor(edges[:-1]))) + 1
    index = np.minimum(first[:, None] + np.arange(n_taps)[None, :], length - 1)
    overlap = np.minimum(edges[1:, None], index + 1.0) - np.maximum(edges[:-1, None], index.astype(np.float64))
    overlap[:, 1:][index[:, 1:] == index[:, :-1]] = 0.0  # taps clamped onto the last pixel count once
    weights = np.clip(overlap, 0.0, None)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    for a in (index, weights):
        a.setflags(write=False)  # shared by the cache
    return index, weights


def _to_luma(im):
    """Any PIL mode -> mode "L" (loads the pixels)."""
    from PIL import Image

    if im.mode == "L":
        im.load()
        return im
    if im.mode.startswith("I;16"):
        # PIL clips 16-bit values to 255 when converting to L; scale the full range instead.
        wide = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "HSV":
        return im.convert("RGB").convert("L")
    if im.mode == "LAB":
        # PIL cannot convert LAB to RGB without a colour profile; L* is the lightness.
        return Image.fromarray(np.asarray(im)[..., 0], mode="L")
    # RGB, RGBA/RGBX (alpha dropped, as convert("RGB") does), P/PA (via the palette), LA, 1,
    # CMYK (Adobe-inverted CMYK JPEGs are un-inverted by PIL's decoder), YCbCr, I, F.
    return im.convert("L")


def _pil_filter(resample: str):
    """None for "area" (done in numpy), else the PIL filter; CljaxError on an unknown name."""
    from PIL import Image

    filters = {
        "area": None,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    if resample not in filters:
        raise CljaxError(f"unknown resample filter {resample!r}: use one of {', '.join(RESAMPLE_FILTERS)}.")
    return filters[resample]


# EXIF orientation tag -> the array ops that turn the stored image upright (the table of
# PIL's ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
# clockwise, 7 transverse, 8 rotate 90 counter-clockwise), on (H, W) arrays.
_ORIENTATION_OPS = {
    2: (np.fliplr,),
    3: (lambda a: np.rot90(a, 2),),
    4: (np.flipud,),
    5: (np.transpose,),
    6: (lambda a: np.rot90(a, -1),),
    7: (lambda a: np.rot90(a, 2).T,),
    8: (np.rot90,),
}


# --------------------------------------------------------------------------------------------
# Shards: a unit of work that can be redone on its own; each knows how to iterate its rows.


@dataclass(frozen=True)
class ParquetShard:
    """A run of row groups [rg_start, rg_stop) of one local parquet file."""

    name: str
    split: str
    source_split: str
    n_rows: int
    path: str
    file_size: int
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
                labels = batch.column(self.label_column).to_numpy(zero_copy_only=False)
                for i, blob in enumerate(blobs):
                    where = f"{self.path} row {row}"
                    if blob is None:
                        path = paths[i] if paths else None
                        if not path or not os.path.isfile(path):
                            raise CljaxError(f"{where} has no image bytes; re-export or re-download this file.")
                        blob = path
                    yield blob, int(labels[i]), where
                    row += 1
        except (OSError, pa.ArrowException) as exc:
            raise CljaxError(f"cannot read {self.path} ({type(exc).__name__}: {exc}); re-download or remove this file.") from None


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
            yield blob, int(example[self.label_column]), where


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


Shard = ParquetShard | DatasetsShard | FilesShard


@dataclass(frozen=True)
class Plan:
    """What a preparation will do: its shards in output order and the class names."""

    source: str
    shards: tuple[Shard, ...]
    class_names: tuple[str, ...] | None
    n_classes: int | None
    expected_total: int | None  # images, when the source says so in advance
    notes: tuple[str, ...] = ()


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


# --------------------------------------------------------------------------------------------
# Planning: SOURCE -> shards


def plan_source(
    source: str,
    split_map: Mapping[str, str] | None = None,
    *,
    reader: str = "auto",
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> Plan:
    """Resolve SOURCE (hub name, parquet folder or image folder) into an ordered list of shards.

    `split_map` maps source splits to output splits ("train" or "test"); None means the default
    {"train": "train", "validation": "test"} where a missing validation split is tolerated (the
    test arrays are then empty). `reader` is "auto" or "datasets" (read a local parquet folder
    through `datasets.load_dataset("parquet", ..., streaming=True)`, as the hub path does).
    """
    strict = split_map is not None
    split_map = dict(DEFAULT_SPLIT_MAP if split_map is None else split_map)
    bad = sorted({v for v in split_map.values() if v not in OUTPUT_SPLITS})
    if bad or not split_map:
        raise CljaxError(f"split map {split_map} is invalid: each source split must map to 'train' or 'test'.")
    if reader not in ("auto", "datasets"):
        raise CljaxError(f"unknown reader {reader!r}: use 'auto' or 'datasets'.")
    if shard_rows < 1:
        raise CljaxError(f"shard_rows must be >= 1, got {shard_rows}.")
    path = Path(source).expanduser().resolve()
    if path.exists():
        if not path.is_dir():
            raise CljaxError(
                f"source {source} is a file; pass the folder that holds the "
                "{split}-NNNNN-of-NNNNN.parquet files (or data/ with them), an image folder, or a hub dataset name."
            )
        parquet = _find_parquet_files(path)
        if parquet:
            if reader == "datasets":
                return _plan_datasets(str(path), split_map, strict, parquet_files=parquet)
            return _plan_parquet(path, parquet, split_map, strict, shard_rows)
        if reader == "datasets":
            raise CljaxError(f"reader 'datasets' needs parquet files, and {source} has none; drop --reader datasets.")
        return _plan_image_folder(path, split_map, strict, shard_rows)
    if _looks_like_path(source):
        raise CljaxError(
            f"source folder {source} does not exist; check the path, or give a hub dataset name such as ILSVRC/imagenet-1k."
        )
    return _plan_datasets(source, split_map, strict)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped path.
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or os.sep != "/" and os.sep in source
        or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", source)
    )


def _find_parquet_files(root: Path) -> dict[str, list[Path]]:
    """{split: files in index order} for the first of root/ and root/data/ that holds any."""
    for folder in (root, root / "data"):
        if not folder.is_dir():
            continue
        found: dict[str, dict[int, Path]] = {}
        totals: dict[str, set[int]] = {}
        for p in sorted(folder.glob("*.parquet")):
            m = _PARQUET_SHARD.match(p.name)
            if m:
                found.setdefault(m["split"], {})[int(m["index"])] = p
                totals.setdefault(m["split"], set()).add(int(m["total"]))
        if not found:
            continue
        for split, files in found.items():
            (total, *others) = sorted(totals[split])
            missing = [i for i in range(total) if i not in files]
            if others or missing:
                example = f"{split}-{missing[0]:05d}-of-{total:05d}.parquet" if missing else f"{split}-*-of-{others[0]:05d}.parquet"
                raise CljaxError(
                    f"{folder} holds an incomplete set of {split} parquet files (e.g. {example} is missing or "
                    "from another export); finish the download or remove the stray files."
                )
        return {split: [files[i] for i in sorted(files)] for split, files in found.items()}
    return {}


def _select_splits(available: Sequence[str], split_map: dict[str, str], strict: bool, source: str) -> tuple[list[tuple[str, str]], list[str]]:
    """[(source split, output split)] in map order, plus notes about tolerated missing splits."""
    chosen, notes = [], []
    for src, dst in split_map.items():
        if src in available:
            chosen.append((src, dst))
        elif strict or src == "train":
            raise CljaxError(
                f"{source} has no split {src!r} (it has {', '.join(sorted(available)) or 'none'}); "
                "choose splits with --splits, e.g. --splits train validation:test."
            )
        else:
            notes.append(f"{source} has no {src!r} split: the {dst} arrays will be empty.")
    return chosen, notes


def _columns_from_features(features: dict) -> tuple[str | None, str | None, list[str] | None]:
    """(image column, label column, class names) from a datasets features dict (as JSON)."""
    image_col = next((k for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "Image"), None)
    label_col, names = None, None
    for k, v in features.items():
        if isinstance(v, dict) and v.get("_type") == "ClassLabel":
            label_col, names = k, v.get("names")
            break
    return image_col, label_col, names


def _plan_parquet(root: Path, files: dict[str, list[Path]], split_map: dict[str, str], strict: bool, shard_rows: int) -> Plan:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(root)
    chosen, notes = _select_splits(list(files), split_map, strict, source)
    shards: list[Shard] = []
    counters = dict.fromkeys(OUTPUT_SPLITS, 0)
    class_names: list[str] | None = None
    for src, dst in chosen:
        for path in files[src]:
            try:
                pf = pq.ParquetFile(path)
                schema = pf.schema_arrow
                meta = pf.metadata
            except (OSError, pa.ArrowException) as exc:
                raise CljaxError(f"cannot read parquet file {path} ({type(exc).__name__}: {exc}); re-download or remove it.") from None
            hf = json.loads((schema.metadata or {}).get(b"huggingface", b"{}") or b"{}")
            image_col, label_col, names = _columns_from_features(hf.get("info", {}).get("features", {}))
            image_col = image_col or _guess_image_column(schema)
            label_col = label_col or next((c for c in ("label", "labels") if c in schema.names), None)
            if image_col is None or label_col is None:
                raise CljaxError(
                    f"{path} has columns {schema.names}; expected an image column (struct of bytes, path) and an "
                    "integer 'label' column, as in the hub's parquet export."
                )
            if names is not None:
                if class_names is not None and list(names) != class_names:
                    raise CljaxError(f"{path} lists other class names than the files before it; the export is mixed up.")
                class_names = list(names)
            # Consecutive row groups are grouped until a shard holds >= shard_rows images, so
            # the work folder does not fill with tiny files when row groups are small.
            group_start, rows = 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= shard_rows or g == meta.num_row_groups - 1:
                    shards.append(
                        ParquetShard(
                            name=f"{dst}-{counters[dst]:05d}", split=dst, source_split=src, n_rows=rows,
                            path=str(path), file_size=path.stat().st_size, rg_start=group_start, rg_stop=g + 1,
                            image_column=image_col, label_column=label_col,
                        )
                    )
                    counters[dst] += 1
                    group_start, rows = g + 1, 0
    if class_names is None:
        class_names = _class_names_from_card(root)
    total = sum(s.n_rows for s in shards)
    return Plan(source, tuple(shards), _names(class_names), len(class_names) if class_names else None, total, tuple(notes))


def _class_names_from_card(root: Path) -> list[str] | None:
    """Class names from the ClassLabel in a hub dataset card (README.md front matter), if any.

    A repository downloaded from the hub keeps its card, whose `dataset_info.features` lists
    the names even when the parquet files carry no `huggingface` schema metadata.
    """
    card = root / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    end = text.find("\n---", 3)
    if not text.startswith("---") or end < 0:
        return None
    import yaml

    try:
        front = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return None
    infos = front.get("dataset_info") if isinstance(front, dict) else None
    for info in infos if isinstance(infos, list) else [infos]:
        for feature in (info or {}).get("features") or []:
            dtype = feature.get("dtype") if isinstance(feature, dict) else None
            names = dtype.get("class_label", {}).get("names") if isinstance(dtype, dict) else None
            if isinstance(names, dict) and names:
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list) and names:
                return [str(n) for n in names]
    return None


def _guess_image_column(schema) -> str | None:
    import pyarrow as pa

    for name in ("image", "img", *schema.names):
        if name in schema.names:
            typ = schema.field(name).type
            if (pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0) or pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
                return name
    return None


def _names(names) -> tuple[str, ...] | None:
    return tuple(str(n) for n in names) if names is not None else None


def _plan_datasets(source: str, split_map: dict[str, str], strict: bool, parquet_files: dict[str, list[Path]] | None = None) -> Plan:
    try:
        import datasets
    except ImportError:
        raise CljaxError("reading a hub dataset needs the `datasets` package: pip install 'cljax[imagenet]'.") from None
    if parquet_files is not None:
        load_args = {"path": "parquet", "data_files": {s: [str(p) for p in fs] for s, fs in parquet_files.items()}}
        label = source
    else:
        load_args = {"path": source}
        label = f"hub dataset {source}"
    try:
        splits = datasets.load_dataset(**load_args, streaming=True)
    except Exception as exc:  # the hub raises many types (gated, offline, missing, HTTP); one line for all
        if parquet_files is not None:
            hint = "check the parquet files"
        elif "Connection" in type(exc).__name__ or "Offline" in str(exc):
            hint = "the hub is unreachable: check the network and HF_HUB_OFFLINE, or download the parquet files and pass their folder"
        else:
            hint = f"check the name, run `huggingface-cli login`, and accept the licence at https://huggingface.co/datasets/{source}"
        raise CljaxError(f"cannot open {label} ({type(exc).__name__}: {_first_line(exc)}); {hint}.") from None
    chosen, notes = _select_splits(list(splits), split_map, strict, label)
    shards: list[Shard] = []
    counters = dict.fromkeys(OUTPUT_SPLITS, 0)
    class_names, total = None, 0
    load_json = json.dumps(load_args, sort_keys=True)
    for src, dst in chosen:
        dataset = splits[src]
        features = dataset.features.to_dict() if dataset.features is not None else {}
        image_col, label_col, names = _columns_from_features(features)
        image_col = image_col or ("image" if "image" in features else None)
        label_col = label_col or next((c for c in ("label", "labels") if c in features), None)
        if image_col is None or label_col is None:
            raise CljaxError(f"{label} split {src!r} has features {sorted(features)}; expected an Image column and a 'label' column.")
        if names is not None:
            class_names = list(names)
        counts = _known_split_sizes(dataset, src)
        total = None if total is None or counts is None else total + counts
        for index in range(dataset.num_shards):
            shards.append(
                DatasetsShard(
                    name=f"{dst}-{counters[dst]:05d}", split=dst, source_split=src, n_rows=None, load_args=load_json,
                    index=index, num_shards=dataset.num_shards, image_column=image_col, label_column=label_col,
                )
            )
            counters[dst] += 1
    return Plan(source, tuple(shards), _names(class_names), len(class_names) if class_names else None, total, tuple(notes))


def _known_split_sizes(dataset, split: str) -> int | None:
    info = getattr(dataset, "info", None)
    split_info = info.splits.get(split) if info is not None and info.splits else None
    return int(split_info.num_examples) if split_info is not None and split_info.num_examples else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _plan_image_folder(root: Path, split_map: dict[str, str], strict: bool, shard_rows: int) -> Plan:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = {_SPLIT_DIR_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in _SPLIT_DIR_NAMES}
    layout = split_dirs or {"train": root}
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, folder in layout.items():
        classes = {}
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if images:
                classes[class_dir.name] = images
        if classes:
            per_split[split] = classes
    if not per_split:
        raise CljaxError(
            f"{root} holds neither {{split}}-NNNNN-of-NNNNN.parquet files (at the top or under data/) nor class "
            "subfolders of images; point --source at one of those or at a hub dataset name."
        )
    class_names = sorted(set().union(*(classes.keys() for classes in per_split.values())))
    class_id = {name: i for i, name in enumerate(class_names)}
    chosen, notes = _select_splits(list(per_split), split_map, strict, str(root))
    shards: list[Shard] = []
    counters = dict.fromkeys(OUTPUT_SPLITS, 0)
    for src, dst in chosen:
        files = [(str(p), class_id[c]) for c, images in per_split[src].items() for p in images]
        for start in range(0, len(files), shard_rows):
            chunk = tuple(files[start : start + shard_rows])
            shards.append(FilesShard(name=f"{dst}-{counters[dst]:05d}", split=dst, source_split=src, n_rows=len(chunk), files=chunk))
            counters[dst] += 1
    return Plan(str(root), tuple(shards), tuple(class_names), len(class_names), sum(s.n_rows for s in shards), tuple(notes))


# --------------------------------------------------------------------------------------------
# Workers


def process_shard(shard: Shard, work_dir: str, size: int, resample: str, tick=None) -> int:
    """Decode every image of one shard and write `work_dir/{shard.name}.npz` atomically.

    `tick(n)` is called every few images with the number done since the last call (progress).
    Returns the number of images written.
    """
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    pending = 0
    for blob, label, where in shard.rows():
        if label < 0:
            raise CljaxError(
                f"{where} has label {label} (unlabelled); leave split {shard.source_split!r} out with --splits."
            )
        try:
            images.append(image_to_gray(blob, size, resample=resample))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # UnidentifiedImageError's own text names a BytesIO object, which says nothing.
            why = "not a known image format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
            raise CljaxError(f"cannot decode the image at {where} ({why}); remove or replace it.") from None
        labels.append(label)
        pending += 1
        if tick is not None and pending >= _TICK_EVERY:
            tick(pending)
            pending = 0
    if shard.n_rows is not None and len(labels) != shard.n_rows:
        raise CljaxError(f"shard {shard.name} gave {len(labels)} images, its source said {shard.n_rows}; the source changed while reading.")
    images_nhw = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    labels_n = np.asarray(labels, dtype=np.int32)
    final = Path(work_dir) / f"{shard.name}.npz"
    tmp = Path(work_dir) / f".{shard.name}.npz.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, images=images_nhw, labels=labels_n)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)  # a shard file exists whole or not at all
    if tick is not None and pending:
        tick(pending)
    return len(labels)


_WORKER_COUNTER = None


def _init_worker(counter) -> None:
    global _WORKER_COUNTER
    _WORKER_COUNTER = counter


def _worker_tick(n: int) -> None:
    with _WORKER_COUNTER.get_lock():
        _WORKER_COUNTER.value += n


def _process_shard_in_worker(shard: Shard, work_dir: str, size: int, resample: str) -> int:
    return process_shard(shard, work_dir, size, resample, _worker_tick)


def _run_shards(todo: Sequence[Shard], work_dir: Path, size: int, resample: str, workers: int, bar) -> None:
    if workers <= 1 or len(todo) <= 1:
        for shard in todo:
            process_shard(shard, str(work_dir), size, resample, bar.update)
        return
    # "spawn": the caller may have started threads (JAX, the hub's HTTP pool) that fork would copy
    # in a locked state.
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    seen = 0
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(counter,)) as pool:
        pending = [pool.apply_async(_process_shard_in_worker, (s, str(work_dir), size, resample)) for s in todo]
        while pending:
            pending[0].wait(0.2)
            now = counter.value
            bar.update(now - seen)
            seen = now
            still = []
            for result in pending:
                if result.ready():
                    result.get()  # re-raises a worker's error here; leaving `with` terminates the rest
                else:
                    still.append(result)
            pending = still
    bar.update(counter.value - seen)


# --------------------------------------------------------------------------------------------
# The whole preparation


def work_dir_for(out: str | os.PathLike) -> Path:
    """The resumable work folder of an output folder: OUT.partial next to it."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def is_prepared(out: str | os.PathLike) -> bool:
    """True when `out` is a complete prepared folder."""
    try:
        load_prepared(out)
    except CljaxError:
        return False
    return True


def prepare_imagenet(
    source: str,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    split_map: Mapping[str, str] | None = None,
    reader: str = "auto",
    size: int = SIZE,
    resample: str = "area",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    progress: bool = True,
    log=None,
) -> Path:
    """Prepare SOURCE as a 28x28 gray prepared folder at `out`; resumable; returns `out`.

    SOURCE: a hub dataset name, a local parquet export folder or an image folder (module doc).
    `split_map`: source split -> "train" | "test" (default train -> train, validation -> test).
    `workers`: processes (default: every core this process may use). `reader="datasets"` reads a
    local parquet folder through `datasets` streaming, as the hub path does. If `out` is already
    complete it is returned untouched unless `overwrite`. Work goes to OUT.partial/ shard by
    shard; rerunning after an interruption continues there and gives byte-identical output.
    Raises CljaxError on any problem with the source or the output location.
    """
    out = Path(out).expanduser()
    log = log or (lambda msg: print(msg, file=sys.stderr))
    work = work_dir_for(out)
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            pass  # an empty folder made beforehand is fine
        elif not (out / "meta.json").is_file():
            # Never delete a folder this code did not write, even with overwrite.
            raise CljaxError(f"output {out} exists and is not a prepared dataset; choose another --out (nothing was deleted).")
        elif not overwrite and is_prepared(out):
            return out
    if overwrite:
        shutil.rmtree(work, ignore_errors=True)
    _pil_filter(resample)  # fail on a bad filter name before any work
    plan = plan_source(source, split_map, reader=reader, shard_rows=shard_rows)
    for note in plan.notes:
        log(f"note: {note}")
    # Recorded in meta.json and part of the work folder's fingerprint: a resume with other
    # settings is refused instead of mixing shards.
    preprocessing = {
        "size": size,
        "geometry": "central square (side = short side) resampled to size x size = short side resized, centre crop",
        "resample": resample,
        "luma": "ITU-R 601: L = 0.299 R + 0.587 G + 0.114 B (PIL convert('L')), 8-bit",
        "jpeg_draft": f"DCT-scaled decode keeping the short side >= {DRAFT_FACTOR * size}",
        "exif_orientation": "applied",
        "alpha": "dropped",
        "splits": {dst: list(dict.fromkeys(s.source_split for s in plan.shards if s.split == dst)) for dst in OUTPUT_SPLITS},
    }
    fingerprint = _fingerprint(plan, preprocessing)
    _open_work_dir(work, fingerprint, plan, out)

    done = {p.stem for p in work.glob("*.npz")}
    todo = [s for s in plan.shards if s.name not in done]
    already = sum(s.n_rows if s.n_rows is not None else _npz_rows(work, s) for s in plan.shards if s.name in done)
    n_workers = max(1, workers if workers is not None else usable_cores())
    if done:
        log(f"resuming: {len(plan.shards) - len(todo)} of {len(plan.shards)} shards already in {work}")
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    with tqdm(
        total=plan.expected_total, initial=already, unit="img", desc=f"{NAME} ({n_workers} workers)",
        disable=not progress, mininterval=0.5 if interactive else 30.0, smoothing=0.05,
    ) as bar:
        _run_shards(todo, work, size, resample, n_workers, bar)
    _assemble(plan, work, out, size, preprocessing)
    shutil.rmtree(work)
    return out


def _fingerprint(plan: Plan, preprocessing: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"source": plan.source, "preprocessing": preprocessing}, sort_keys=True).encode())
    for shard in plan.shards:
        digest.update(json.dumps([type(shard).__name__, dataclasses.asdict(shard)], sort_keys=True).encode())
    return digest.hexdigest()


def _open_work_dir(work: Path, fingerprint: str, plan: Plan, out: Path) -> None:
    """Create OUT.partial or check that the one there belongs to this very preparation."""
    plan_file = work / "plan.json"
    if work.exists():
        try:
            recorded = json.loads(plan_file.read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            recorded = None
        if recorded != fingerprint:
            raise CljaxError(
                f"{work} holds work from a different preparation (other source, splits or settings); "
                "rerun with the same arguments, or pass --overwrite to start again."
            )
        for stray in work.glob(".*.tmp-*"):  # half-written shards of an interrupted run
            stray.unlink()
        return
    work.mkdir(parents=True)
    tmp = work / ".plan.json.tmp"
    tmp.write_text(json.dumps({"source": plan.source, "out": str(out), "shards": len(plan.shards), "fingerprint": fingerprint}, indent=1))
    os.replace(tmp, plan_file)


def _assemble(plan: Plan, work: Path, out: Path, size: int, preprocessing: dict) -> None:
    """Concatenate the shards in plan order into the final arrays and write the prepared folder."""
    counts = dict.fromkeys(OUTPUT_SPLITS, 0)
    for shard in plan.shards:
        counts[shard.split] += shard.n_rows if shard.n_rows is not None else _npz_rows(work, shard)
    arrays = {split: (np.empty((n, size, size), np.uint8), np.empty((n,), np.int32)) for split, n in counts.items()}
    filled = dict.fromkeys(OUTPUT_SPLITS, 0)
    for shard in plan.shards:
        path = work / f"{shard.name}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
        except (OSError, ValueError, KeyError) as exc:
            raise CljaxError(f"{path} is damaged ({exc}); delete it and rerun to redo that shard.") from None
        start = filled[shard.split]
        arrays[shard.split][0][start : start + len(labels)] = images
        arrays[shard.split][1][start : start + len(labels)] = labels
        filled[shard.split] = start + len(labels)
    n_classes = plan.n_classes
    all_labels = np.concatenate([arrays[s][1] for s in OUTPUT_SPLITS])
    top = int(all_labels.max()) + 1 if all_labels.size else 0
    if n_classes is None:
        n_classes = top
    elif top > n_classes:
        raise CljaxError(f"{plan.source} has label {top - 1} but only {n_classes} class names; the source is inconsistent.")
    if n_classes == 0:
        raise CljaxError(f"{plan.source} gave no images for the chosen splits; check --splits.")
    write_prepared(
        out,
        arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1],
        name=NAME, source=plan.source, preprocessing=preprocessing,
        class_names=list(plan.class_names) if plan.class_names else None, n_classes=n_classes,
    )


def _npz_rows(work: Path, shard: Shard) -> int:
    path = work / f"{shard.name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return int(z["labels"].shape[0])
    except (OSError, ValueError, KeyError) as exc:
        raise CljaxError(f"{path} is damaged ({exc}); delete it and rerun to redo that shard.") from None


# --------------------------------------------------------------------------------------------
# Command line


def _parse_splits(items: Sequence[str]) -> dict[str, str]:
    """["train", "validation:test"] -> {"train": "train", "validation": "test"}."""
    mapping = {}
    for item in items:
        src, _, dst = item.partition(":")
        dst = dst or ("train" if src == "train" else "test")
        if not src or dst not in OUTPUT_SPLITS:
            raise CljaxError(f"--splits entry {item!r} is invalid: write SOURCE_SPLIT or SOURCE_SPLIT:train|test.")
        mapping[src] = dst
    return mapping


def prepare_main(argv: list[str]) -> int:
    """`prepare-imagenet --source SOURCE --out DIR [--workers N] [--splits ...] [--overwrite]`; exit code."""
    parser = argparse.ArgumentParser(
        prog="prepare-imagenet",
        description="Prepare ImageNet-1k (hub name, local parquet export or image folder) as 28x28 8-bit gray, resumably.",
    )
    parser.add_argument("--source", required=True, help="hub dataset (ILSVRC/imagenet-1k), parquet export folder, or image folder")
    parser.add_argument("--out", required=True, help="output folder; work in progress goes to OUT.partial/")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all usable cores)")
    parser.add_argument(
        "--splits", nargs="+", default=None, metavar="SPLIT[:train|test]",
        help="source splits to keep (default: train validation:test; 'train' maps to train, others to test)",
    )
    parser.add_argument("--reader", choices=("auto", "datasets"), default="auto", help="'datasets': read local parquet through HF datasets")
    parser.add_argument("--resample", choices=RESAMPLE_FILTERS, default="area", help="filter of the final resize (default: exact area average)")
    parser.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="images per resumable shard (local parquet / image folders)")
    parser.add_argument("--overwrite", action="store_true", help="prepare again even if OUT is complete; discards OUT.partial")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    previous_sigterm = _sigterm_as_interrupt()
    try:
        if args.workers is not None and args.workers < 1:
            raise CljaxError(f"--workers must be >= 1, got {args.workers}.")
        split_map = _parse_splits(args.splits) if args.splits else None
        if not args.overwrite and is_prepared(out):
            data = load_prepared(out)
            print(
                f"{out} is already prepared ({len(data.train_labels)} train, {len(data.test_labels)} test images, "
                f"{data.n_classes} classes); nothing to do. Pass --overwrite to prepare it again."
            )
            return 0
        started = time.perf_counter()
        prepare_imagenet(
            args.source, out, workers=args.workers, split_map=split_map, reader=args.reader, resample=args.resample,
            shard_rows=args.shard_rows, overwrite=args.overwrite, progress=not args.no_progress,
        )
        data = load_prepared(out)
        seconds = time.perf_counter() - started
        print(
            f"wrote {out}: {len(data.train_labels)} train and {len(data.test_labels)} test images, "
            f"{data.n_classes} classes, in {seconds:.1f} s"
        )
        return 0
    except CljaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: the message names the path
        print(f"error: {exc.strerror or exc} ({exc.filename or out}); free space or fix permissions, then rerun to resume.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished shards are kept in {work_dir_for(out)}; rerun the same command to resume.", file=sys.stderr)
        return 130
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _sigterm_as_interrupt():
    """Treat SIGTERM (a SLURM time limit, `kill`) like Ctrl-C: stop the workers, say how to resume."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        return None
