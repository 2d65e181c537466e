"""Planning an image folder: ``ROOT/{class}/*`` (train only) or ``ROOT/{train,val|validation,test}/{class}/*``
-> the shards of a `Plan` (`plan_image_folder`, called by `sources.plan_source`). Classes are the
sorted class folder names, shared by the splits."""

from __future__ import annotations

import os
from pathlib import Path

from cljax.data.imagenet.shards import FilesShard, Plan, Shard
from cljax.data.imagenet.sources import OUTPUT_SPLITS, PARQUET_NAMES, RENAME_PARQUET, first_parquet_file, select_splits
from cljax.errors import CljaxError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_DIR_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation", "test": "test"}


def plan_image_folder(root: Path, split_map: dict[str, str], strict: bool, shard_rows: int) -> Plan:
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_dirs = {SPLIT_DIR_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_DIR_NAMES}
    names: dict[str, list[str]] = {}  # --splits val:test names the folder as spelt: that split, under the name asked
    spelt = {d.name for d in subdirs}
    for asked in split_map:  # as spelt in --splits or on disk (Val/); only `train` maps to train, so never TRAIN
        known = SPLIT_DIR_NAMES.get(asked if asked not in spelt else asked.lower())
        known = None if known == "train" and asked != "train" else known
        if known is not None and known in split_dirs:
            names.setdefault(known, []).append(asked)
    for known, asked in names.items():
        if len(asked) > 1:
            raise CljaxError(f"--splits names the folder {split_dirs[known]} {len(asked)} times ({', '.join(asked)}): "
                             f"name each split once.")
        if asked[0] != known:
            split_dirs[asked[0]] = split_dirs.pop(known)
    layout = split_dirs or {"train": root}
    per_split: dict[str, dict[str, list[Path]]] = {}
    for split, folder in layout.items():
        classes = {}
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            images = sorted(_images_under(class_dir))
            if images:
                classes[class_dir.name] = images
        if classes:
            per_split[split] = classes
    if not per_split:
        if _saved_to_disk(root):
            raise CljaxError(f"{root} is a folder written by datasets' save_to_disk (arrow files), which is not read: "
                             f"write each split as parquet, e.g. load_from_disk(...)[split].to_parquet("
                             f"'DIR/data/{{split}}-00000-of-00001.parquet') for a DatasetDict (a single Dataset: "
                             f"load_from_disk(...).to_parquet(...)), and pass DIR.")
        other = first_parquet_file(root)
        if other is not None:
            raise CljaxError(f"{root} holds parquet files, but none named {PARQUET_NAMES} (e.g. {other}), and no "
                             f"class subfolders of images: {RENAME_PARQUET}, at the top of {root} or under data/.")
        raise CljaxError(
            f"{root} holds neither {PARQUET_NAMES} files (at the top or under data/) nor class "
            "subfolders of images; point --source at one of those or at a hub dataset name."
        )
    split_map, unlabelled = _without_unlabelled(layout, per_split, split_map, strict)
    chosen, notes = select_splits(list(per_split), split_map, strict, str(root), layout)
    _check_classes_in_both(layout, per_split, chosen)
    # The classes of the splits prepared: a class folder of a split left out would be a class of no images.
    class_names = sorted(set().union(*(per_split[src].keys() for src, _ in chosen)))
    if len(class_names) == 1:  # known from the folders: refused before any image is decoded
        raise CljaxError(f"{root} has one class folder ({class_names[0]}) in the splits prepared; a task is a pair of "
                         f"classes: give a source of two classes or more (check --splits).")
    class_id = {name: i for i, name in enumerate(class_names)}
    notes = [*unlabelled, *notes, *_loose_images(layout, [src for src, _ in chosen])]
    shards: list[Shard] = []
    counters = dict.fromkeys(OUTPUT_SPLITS, 0)
    for src, dst in chosen:
        files = [(str(p), class_id[c]) for c, images in per_split[src].items() for p in images]
        for start in range(0, len(files), shard_rows):
            chunk = tuple(files[start : start + shard_rows])
            shards.append(FilesShard(name=f"{dst}-{counters[dst]:05d}", split=dst, source_split=src, n_rows=len(chunk), files=chunk))
            counters[dst] += 1
    return Plan(str(root), tuple(shards), tuple(class_names), len(class_names), sum(s.n_rows for s in shards), tuple(notes))


def _is_image(path: Path) -> bool:
    """An image file by its suffix, not hidden: a hidden file (macOS's ``._x.JPEG`` AppleDouble
    stubs, a copy kept by a tool) is not one of the dataset's images."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_under(class_dir: Path) -> list[Path]:
    """The image files of a class folder at any depth, leaving out hidden files and everything
    under a hidden folder (``.ipynb_checkpoints/``, ``.git/``)."""
    found = []
    for folder, subdirs, files in os.walk(class_dir):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        found.extend(p for p in (Path(folder, name) for name in files) if _is_image(p))
    return found


def _saved_to_disk(root: Path) -> bool:
    """A `Dataset(Dict).save_to_disk` folder: its json records, or arrow files, at the top or one
    split folder down."""
    marks = ("dataset_dict.json", "state.json", "dataset_info.json")
    return any((folder / m).is_file() for folder in (root, *root.iterdir()) if folder.is_dir() for m in marks) or any(
        root.glob("*/*.arrow")) or any(root.glob("*.arrow"))


def _check_classes_in_both(layout: dict[str, Path], per_split: dict, chosen: list[tuple[str, str]]) -> None:
    """When both output splits get images, each class must have some in both: a class with no
    test images has no test accuracy in the tasks that hold it, and one with no train images
    cannot be learnt; refused here, in one line, rather than when a run meets it."""
    folders = {dst: [src for src, d in chosen if d == dst and src in per_split] for dst in OUTPUT_SPLITS}
    if not all(folders.values()):
        return
    has = {dst: set().union(*(per_split[src] for src in srcs)) for dst, srcs in folders.items()}
    for dst, other in (("train", "test"), ("test", "train")):
        missing = sorted(has[dst] - has[other])
        if missing:
            name = missing[0]
            src = next(src for src in folders[dst] if name in per_split[src])
            more = f" (and {len(missing) - 1} more class{'es' if len(missing) > 2 else ''})" if len(missing) > 1 else ""
            raise CljaxError(f"{layout[src] / name} has images but {layout[folders[other][0]] / name} has none{more}: "
                             f"each class needs images in both the train and the test split (one without test images "
                             f"cannot be measured, one without train images cannot be learnt): add them, remove the "
                             f"class from both splits, or prepare one split only (--splits train).")


def _loose_images(layout: dict[str, Path], splits: list[str]) -> list[str]:
    """A note for each chosen split folder that holds images beside its class subfolders: they
    have no class, so they are left out, and a user who put them there should hear so."""
    notes = []
    for split in splits:
        loose = sum(_is_image(p) for p in layout[split].iterdir())
        if loose:
            notes.append(f"{layout[split]} holds {loose} image{'s' if loose > 1 else ''} directly, beside its class "
                         f"subfolders: {'they have' if loose > 1 else 'it has'} no class and {'are' if loose > 1 else 'is'} "
                         f"left out (move {'them' if loose > 1 else 'it'} into a class subfolder to use {'them' if loose > 1 else 'it'}).")
    return notes


def _without_unlabelled(layout: dict[str, Path], per_split: dict, split_map: dict[str, str],
                        strict: bool) -> tuple[dict[str, str], list[str]]:
    """`split_map` less the split folders that hold images directly, with no class subfolders (as
    the official ILSVRC val archive unpacks): their images have no labels. One asked for by
    --splits, or train, is refused; the default validation split is left out with a note."""
    kept, notes = dict(split_map), []
    for src, dst in split_map.items():
        # the layout holds the folder under the name --splits gave it (val:test: "val"), else the known one
        key = src if src in layout else SPLIT_DIR_NAMES.get(src.lower(), src)
        folder = layout.get(key)
        if folder is None or key in per_split or not any(_is_image(p) for p in folder.iterdir()):
            continue
        why = (f"{folder} holds images directly, not in class subfolders, so they have no labels: to use them as the "
               f"{dst} split, sort them into {folder}/<class>/ folders named as the train classes")
        if strict or src == "train":
            raise CljaxError(f"{why}; or leave that split out with --splits.")
        notes.append(f"{why}. The {dst} arrays will be empty (--splits train leaves the split out without this note).")
        del kept[src]
    return kept, notes
