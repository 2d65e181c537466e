"""Planning: SOURCE -> an ordered list of shards (`plan_source`).

SOURCE is one of
  * a Hugging Face hub dataset name (``ILSVRC/imagenet-1k``, or a pre-downsampled variant), read
    with ``datasets.load_dataset(name, split=..., streaming=True)``; one shard per source file;
  * a local folder laid out like the hub's parquet export, ``{split}-NNNNN-of-NNNNN.parquet`` at
    the top or under ``data/`` (a suffix after the count, as older ``datasets`` exports add,
    ``train-00000-of-00003-5b2b0e1ed5f1b7f6.parquet``, is accepted as ``datasets`` does); read with pyarrow, one shard per run of row groups (or through
    ``datasets`` with ``reader="datasets"``, the code path the hub uses);
  * an image folder: ``ROOT/{class}/*.jpg`` (train only) or ``ROOT/{train,val|validation,test}/{class}/*``,
    planned in image_folder.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from cljax.data.imagenet.hub import cache_folder_refusal, cached_hint, resolve_revision, unreachable
from cljax.data.imagenet.shards import DatasetsShard, ParquetShard, Plan, Shard
from cljax.errors import CljaxError

# Source split -> output split. The hub's ImageNet "test" split has no labels (label -1), so it
# is left out; its validation split is the usual test set.
DEFAULT_SPLIT_MAP: Mapping[str, str] = {"train": "train", "validation": "test"}
OUTPUT_SPLITS = ("train", "test")
DEFAULT_SHARD_ROWS = 1024
# datasets' own pattern is "{split}-NNNNN-of-NNNNN*.parquet": a suffix may follow the count (the
# fingerprint `push_to_hub` appended before datasets 2.15); it must not go on with a digit.
_PARQUET_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_.]+?)-(?P<index>\d{5})-of-(?P<total>\d{5})(?P<suffix>(?:\D.*)?)\.parquet$", re.ASCII)
PARQUET_NAMES = "{split}-NNNNN-of-NNNNN.parquet"
RENAME_PARQUET = ("rename them as the hub's export names them (the split, the file's index and the number of files), "
                  "e.g. data/train-00000-of-00001.parquet for a split in one file")


def plan_source(
    source: str,
    split_map: Mapping[str, str] | None = None,
    *,
    reader: str = "auto",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    revision: str | None = None,
) -> Plan:
    """Resolve SOURCE (hub name, parquet folder or image folder) into an ordered list of shards.

    `split_map` maps source splits to output splits ("train" or "test"); None means the default
    {"train": "train", "validation": "test"} where a missing validation split is tolerated (the
    test arrays are then empty). `reader` is "auto" or "datasets" (read a local parquet folder
    through `datasets.load_dataset("parquet", ..., streaming=True)`, as the hub path does).
    `revision`: a hub dataset's branch, tag or commit (default: its main branch), for a hub name only.
    """
    strict = split_map is not None
    split_map = dict(DEFAULT_SPLIT_MAP if split_map is None else split_map)
    bad = sorted({v for v in split_map.values() if v not in OUTPUT_SPLITS})
    if bad or not split_map:
        raise CljaxError(f"split map {split_map} is invalid: each source split must map to 'train' or 'test'.")
    if reader not in ("auto", "datasets"):
        raise CljaxError(f"unknown reader {reader!r}: use 'auto' or 'datasets'.")
    if shard_rows < 1:
        raise CljaxError(f"--shard-rows must be at least 1, not {shard_rows}.")
    path = Path(source).expanduser().resolve()
    if path.exists() and revision is not None:
        raise CljaxError(f"--revision names a commit of a hub dataset, and {source} is a folder: drop --revision "
                         f"(a folder is read as it is).")
    if path.exists():
        if not path.is_dir():
            raise CljaxError(
                f"source {source} is a file; pass the folder that holds the "
                "{split}-NNNNN-of-NNNNN.parquet files (or data/ with them), an image folder, or a hub dataset name."
            )
        parquet = find_parquet_files(path)
        if parquet:
            if reader == "datasets":
                return _plan_datasets(str(path), split_map, strict, parquet_files=parquet)
            return _plan_parquet(path, parquet, split_map, strict, shard_rows)
        cache = cache_folder_refusal(path)
        if cache is not None:
            raise CljaxError(cache)
        if reader == "datasets":
            other = first_parquet_file(path)
            if other is not None:
                raise CljaxError(f"reader 'datasets' needs parquet files named {PARQUET_NAMES} (at the top of {source} "
                                 f"or under data/), and its parquet files are named otherwise ({other}): "
                                 f"{RENAME_PARQUET}.")
            raise CljaxError(f"reader 'datasets' needs parquet files, and {source} has none; drop --reader datasets.")
        from cljax.data.imagenet.image_folder import plan_image_folder

        return plan_image_folder(path, split_map, strict, shard_rows)
    if _looks_like_path(source):
        raise CljaxError(
            f"source folder {source} does not exist; check the path, or give a hub dataset name such as ILSVRC/imagenet-1k."
        )
    return _plan_datasets(source, split_map, strict, revision=revision)


def _looks_like_path(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else that does not exist is a mistyped path.
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or os.sep != "/" and os.sep in source
        or not re.fullmatch(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?", source)
    )


def find_parquet_files(root: Path) -> dict[str, list[Path]]:
    """{split: files in index order} for the first of root/ and root/data/ that holds any."""
    for folder in (root, root / "data"):
        if not folder.is_dir():
            continue
        found: dict[str, dict[int, Path]] = {}
        totals: dict[str, set[int]] = {}
        for p in sorted(folder.glob("*.parquet")):
            m = _PARQUET_SHARD.match(p.name)
            if m:
                twin = found.setdefault(m["split"], {}).setdefault(int(m["index"]), p)
                # With a suffix two files of one count can carry one index: two exports, or a second
                # download. (Other counts: the check of the counts below names them.)
                if twin != p and _PARQUET_SHARD.match(twin.name)["total"] == m["total"]:
                    raise CljaxError(f"{folder} holds two {m['split']} parquet files numbered {m['index']}, {twin.name} "
                                     f"and {p.name} (two exports, or a file downloaded twice): keep one of them.")
                totals.setdefault(m["split"], set()).add(int(m["total"]))
        if not found:
            continue
        for split, files in found.items():
            (total, *others) = sorted(totals[split])
            missing = [i for i in range(total) if i not in files]
            if others or missing:
                tail = "*" if any(_PARQUET_SHARD.match(p.name)["suffix"] for p in files.values()) else ""
                example = (f"{split}-{missing[0]:05d}-of-{total:05d}{tail}.parquet" if missing else
                           f"{split}-*-of-{others[0]:05d}{tail}.parquet")
                raise CljaxError(
                    f"{folder} holds an incomplete set of {split} parquet files (e.g. {example} is missing or "
                    "from another export); finish the download or remove the stray files."
                )
        return {split: [files[i] for i in sorted(files)] for split, files in found.items()}
    return {}


def first_parquet_file(root: Path) -> Path | None:
    """A parquet file at the top of root, under data/ or two folders down (another layout, such
    as the hub's parquet conversion `default/train/0000.parquet`), relative to root; None if none.
    Asked only once no file is named as the hub's export names them."""
    for pattern in ("*.parquet", "data/*.parquet", "*/*/*.parquet"):
        found = next(iter(sorted(root.glob(pattern))), None)
        if found is not None:
            return found.relative_to(root)
    return None


def select_splits(available: Sequence[str], split_map: dict[str, str], strict: bool, source: str,
                  folders: Mapping[str, Path] | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """[(source split, output split)] in map order, plus notes about tolerated missing splits
    (naming a 'test' split left out: `folders`, an image folder's split folders)."""
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
            unused = "test" in available and "test" not in split_map
            left_out = (f"; {folders['test'] if folders else 'its test split'} is left out (`--splits train test` "
                        f"makes it the test arrays{'' if folders else ', if it is labelled'})" if unused else "")
            notes.append(f"{source} has no {src!r} split: the {dst} arrays will be empty{left_out}.")
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
    chosen, notes = select_splits(list(files), split_map, strict, source)
    shards: list[Shard] = []
    counters = dict.fromkeys(OUTPUT_SPLITS, 0)
    class_names: list[str] | None = None
    for src, dst in chosen:
        for path in files[src]:
            try:
                pf = pq.ParquetFile(path)
                schema = pf.schema_arrow
                meta = pf.metadata
                pf_stat = path.stat()
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
            label_type = schema.field(label_col).type
            if not pa.types.is_integer(label_type):  # read as ints, floats would be truncated and strings fail
                raise CljaxError(f"{path}'s label column {label_col!r} holds {label_type}, not integers: it must hold "
                                 f"the classes' integer ids (a ClassLabel, as in the hub's parquet export); re-export it so.")
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
                            path=str(path), file_size=pf_stat.st_size, file_mtime_ns=pf_stat.st_mtime_ns,
                            rg_start=group_start, rg_stop=g + 1,
                            image_column=image_col, label_column=label_col,
                        )
                    )
                    counters[dst] += 1
                    group_start, rows = g + 1, 0
    if class_names is None:
        class_names = _class_names_from_card(root)
    total = sum(s.n_rows for s in shards)
    plan = Plan(source, tuple(shards), _names(class_names), len(class_names) if class_names else None, total, tuple(notes))
    from cljax.data.imagenet.labels import check_classes_have_images, scan_parquet_labels  # (labels imports this module)

    # Before any image is decoded: the label column alone is read (labels.py).
    check_classes_have_images(plan, scan_parquet_labels(shards, plan.n_classes))
    return plan


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
            if isinstance(names, dict) and names:  # {class id: name}: the ids must be 0 .. N-1
                ids = {str(k).strip(): v for k, v in names.items()}
                want = [str(i) for i in range(len(ids))]
                if sorted(ids) != sorted(want):
                    odd = sorted(set(ids) - set(want), key=str)[:3]
                    raise CljaxError(f"{card}: the class_label names of its dataset_info are keyed {odd}, not by "
                                     f"the class ids 0 .. {len(ids) - 1}: fix the card, or remove it if the "
                                     f"parquet files carry their features.")
                return [str(ids[k]) for k in want]
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


def _plan_datasets(source: str, split_map: dict[str, str], strict: bool, parquet_files: dict[str, list[Path]] | None = None,
                   revision: str | None = None) -> Plan:
    why = unreachable() if parquet_files is None else None  # before datasets' 25 s of retries
    if why is not None:
        raise CljaxError(f"cannot open {source}: no folder of that name exists, and as a hub dataset the hub is "
                         f"unreachable ({why}); check the folder's path, or the network (a proxy goes in HTTPS_PROXY), "
                         f"or download the parquet files and pass their folder{cached_hint(source)}.")
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
        if parquet_files is None:  # the commit the name (and --revision) names now: every shard reads that one
            commit = resolve_revision(source, revision)
            load_args.update({"revision": commit} if commit else {})
        splits = datasets.load_dataset(**load_args, streaming=True)
    except Exception as exc:  # the hub raises many types (gated, offline, missing, HTTP); one line for all
        if parquet_files is not None:
            hint = "check the parquet files"
        elif revision is not None and "Revision" in type(exc).__name__:
            hint = f"check --revision {revision} (a branch, tag or commit of {source})"
        elif any(w in type(exc).__name__ for w in ("Connection", "Offline")) or "Offline" in str(exc):
            hint = ("the hub is unreachable: check the network and HF_HUB_OFFLINE, or download the parquet files and pass "
                    f"their folder{cached_hint(source)}")
        else:
            hint = f"check the name, run `huggingface-cli login`, and accept the licence at https://huggingface.co/datasets/{source}"
        raise CljaxError(f"cannot open {label} ({type(exc).__name__}: {_first_line(exc)}); {hint}.") from None
    chosen, notes = select_splits(list(splits), split_map, strict, label)
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
    if class_names is None and parquet_files is not None:  # as the default reader: the folder's card names them
        class_names = _class_names_from_card(Path(source))
    return Plan(source, tuple(shards), _names(class_names), len(class_names) if class_names else None, total, tuple(notes),
                load_args.get("revision"))


def _known_split_sizes(dataset, split: str) -> int | None:
    info = getattr(dataset, "info", None)
    split_info = info.splits.get(split) if info is not None and info.splits else None
    return int(split_info.num_examples) if split_info is not None and split_info.num_examples else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""
