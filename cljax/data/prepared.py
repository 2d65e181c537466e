"""The prepared-dataset folder: the one on-disk format every source is turned into.

A folder holds::

    train_images.npy  (N_train, 28, 28) uint8
    train_labels.npy  (N_train,) int32, class ids in [0, n_classes)
    test_images.npy   (N_test, 28, 28) uint8
    test_labels.npy   (N_test,) int32
    meta.json         format_version, name, source, preprocessing, n_classes, class_names,
                      counts {"train": [...], "test": [...]} per class, and
                      files {name: {"shape", "dtype", "sha256"}}

Arrays are opened with ``np.load(mmap_mode="r")`` so a folder of any size costs no RAM until
a task gathers its images.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cljax.data.full_disk import full_disk_error
from cljax.errors import CljaxError, MissingData
from cljax.safe_files import remove_tree

FORMAT_VERSION = 1
ARRAY_FILES = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")
SAMPLES = "samples.png"  # what `cljax data-info FOLDER` draws into it


@dataclass(frozen=True)
class ClassData:
    """Images and integer class labels of the two splits, plus the folder's metadata."""

    train_images: np.ndarray  # (N_train, H, W) uint8
    train_labels: np.ndarray  # (N_train,) int
    test_images: np.ndarray  # (N_test, H, W) uint8
    test_labels: np.ndarray  # (N_test,) int
    n_classes: int
    class_names: tuple[str, ...]
    meta: dict


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def data_identity(data: ClassData) -> str:
    """A hash of what a run reads from a dataset (the four arrays, classes and names), whatever
    folder it comes from: resume compares it instead of --data-dir's spelling. A prepared folder
    is identified by the checksums its meta.json lists (no pass over its images; load_prepared
    refuses a folder without them); other data (Fashion-MNIST, synthetic, a plugin's) by its
    contents."""
    digest = hashlib.sha256()
    digest.update(json.dumps([data.n_classes, list(data.class_names)]).encode())
    files = data.meta.get("files") if isinstance(data.meta, dict) else None
    checksums = [files.get(f, {}).get("sha256") if isinstance(files, dict) else None for f in ARRAY_FILES]
    if all(isinstance(c, str) for c in checksums):
        digest.update(json.dumps(checksums).encode())
        return digest.hexdigest()
    for arr in (data.train_images, data.train_labels, data.test_images, data.test_labels):
        arr = np.ascontiguousarray(arr)
        digest.update(json.dumps([list(arr.shape), str(arr.dtype)]).encode())
        digest.update(memoryview(arr).cast("B") if arr.size else b"")  # (no test split: --test-source train_holdout)
    return digest.hexdigest()


def write_prepared(
    out_dir: str | os.PathLike,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    name: str,
    source: str,
    preprocessing: dict,
    class_names: list[str] | None = None,
    n_classes: int | None = None,
    revision: str | None = None,
) -> Path:
    """Write a prepared folder atomically (a temporary sibling renamed into place)."""
    out = Path(out_dir)
    arrays = {
        "train_images.npy": np.asarray(train_images, dtype=np.uint8),
        "train_labels.npy": np.asarray(train_labels, dtype=np.int32),
        "test_images.npy": np.asarray(test_images, dtype=np.uint8),
        "test_labels.npy": np.asarray(test_labels, dtype=np.int32),
    }
    for split in ("train", "test"):
        imgs, labels = arrays[f"{split}_images.npy"], arrays[f"{split}_labels.npy"]
        if imgs.ndim != 3 or imgs.shape[0] != labels.shape[0] or labels.ndim != 1:
            raise ValueError(f"{split}: images {imgs.shape} and labels {labels.shape} do not match")
    if n_classes is None:
        n_classes = int(max(arrays["train_labels.npy"].max(), arrays["test_labels.npy"].max())) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    tmp = out.with_name(out.name + ".tmp-write")
    if tmp.exists():
        remove_tree(tmp)
    tmp.mkdir(parents=True)
    files = {}
    for fname, arr in arrays.items():
        try:
            np.save(tmp / fname, arr, allow_pickle=False)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)  # our own half-written folder: its space back, before it is told
            full = full_disk_error(exc, tmp / fname, sum(a.nbytes for a in arrays.values()),
                                   "run the same command again (the folder is written whole or not at all).")
            if full is None:
                raise
            raise full from None
        files[fname] = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": sha256_of(tmp / fname)}
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": source,
        **({"revision": revision} if revision else {}),  # a hub dataset's commit
        "preprocessing": preprocessing,
        "n_classes": int(n_classes),
        "class_names": names,
        "counts": {
            split: np.bincount(arrays[f"{split}_labels.npy"], minlength=n_classes).tolist()
            for split in ("train", "test")
        },
        "files": files,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        check_replaceable(out)
        remove_tree(out)
    os.replace(tmp, out)
    return out


def check_replaceable(out: Path) -> None:
    """Raise CljaxError unless ``out`` holds only a prepared folder's own files (whole or not): a
    folder with anything else in it was not written here and is never deleted."""
    if not out.is_dir():
        raise CljaxError(f"output {out} exists and is not a folder: choose another --out (nothing was deleted).")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in (*ARRAY_FILES, "meta.json", SAMPLES))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CljaxError(f"output {out} holds files that are not a prepared dataset's ({shown}): choose another --out "
                         f"(nothing was deleted).")


def check_unchanged(data: ClassData, resume: bool = True) -> None:
    """Raise CljaxError when a file of a prepared folder no longer matches the checksum its
    meta.json recorded. The data's identity (``data_identity``) is taken from those checksums
    without reading the images; a run calls this before it trains, so that a folder changed in
    place is not taken for the data it was prepared as (``resume``: the data its run started on)."""
    files = data.meta.get("files") if isinstance(data.meta, dict) else None
    if not isinstance(files, dict):
        return
    arrays = (data.train_images, data.train_labels, data.test_images, data.test_labels)
    for fname, arr in zip(ARRAY_FILES, arrays):
        expected = files.get(fname).get("sha256") if isinstance(files.get(fname), dict) else None
        path = getattr(arr, "filename", None)  # a memory-mapped file
        if isinstance(expected, str) and path and sha256_of(Path(path)) != expected:
            again = "`cljax prepare-imagenet --source SOURCE --out FOLDER --overwrite`"
            raise CljaxError(f"{path} does not match its checksum in meta.json: the dataset changed after it was "
                             f"prepared" + (f", and the run's remaining tasks would train on other data than its first. "
                                            f"Restore the folder, or prepare it again ({again}) and start a new run "
                                            f"(--overwrite, or another --results-dir)." if resume else
                                            f". Restore the folder, or prepare it again ({again})."))


def load_prepared(folder: str | os.PathLike, *, verify_checksums: bool = False, how_to_fix: str = "") -> ClassData:
    """Open a prepared folder (memory-mapped), checking it is whole; raise CljaxError if not."""
    path = Path(folder)
    fix = f" {how_to_fix[:1].upper()}{how_to_fix[1:]}" if how_to_fix else ""  # a sentence after the problem's
    if not path.is_dir():
        if path.exists():
            raise CljaxError(f"dataset folder {path} is a file, not a folder.{fix}")
        raise MissingData(f"dataset folder {path} does not exist.{fix}")
    missing = [f for f in (*ARRAY_FILES, "meta.json") if not (path / f).is_file()]
    if missing:
        raise CljaxError(f"dataset folder {path} is incomplete (missing {', '.join(missing)}).{fix}")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CljaxError(f"{path / 'meta.json'} is not valid JSON ({exc}).{fix}") from None
    if not isinstance(meta, dict):
        raise CljaxError(f"{path / 'meta.json'} is not a prepared folder's description (a JSON object).{fix}")
    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # not true, nor 1.0: a description another tool wrote
        raise CljaxError(f"{path / 'meta.json'} has format_version {version!r}, expected {FORMAT_VERSION}.{fix}")
    recorded = _recorded_files(meta, path / "meta.json", fix)
    arrays = {}
    for fname in ARRAY_FILES:
        expected = recorded[fname]
        try:
            arr = np.load(path / fname, mmap_mode="r", allow_pickle=False)
        except PermissionError as exc:  # not damage: the data is there
            raise CljaxError(f"cannot read {path / fname} ({exc.strerror}): check its permissions.") from None
        except (ValueError, OSError, EOFError, MemoryError) as exc:
            raise CljaxError(f"{path / fname} is corrupt or truncated ({exc}).{fix}") from None
        if arr.dtype.hasobject or arr.ndim < 1:
            raise CljaxError(f"{path / fname} is not an array of images or labels ({arr.dtype}, shape {arr.shape}).{fix}")
        if list(arr.shape) != expected["shape"] or str(arr.dtype) != expected["dtype"]:
            raise CljaxError(
                f"{path / fname} has shape {list(arr.shape)} {arr.dtype}, meta.json says "
                f"{expected['shape']} {expected['dtype']}: the folder is damaged.{fix}"
            )
        if verify_checksums and sha256_of(path / fname) != expected["sha256"]:
            raise CljaxError(f"{path / fname} does not match its checksum in meta.json.{fix}")
        arrays[fname] = arr
    n_classes, class_names = _classes(meta, path / "meta.json", len(arrays["train_labels.npy"]) +
                                      len(arrays["test_labels.npy"]), fix)
    if arrays["train_images.npy"].shape[1:] != arrays["test_images.npy"].shape[1:]:
        raise CljaxError(f"{path}: its train images are {list(arrays['train_images.npy'].shape[1:])} and its test images "
                         f"{list(arrays['test_images.npy'].shape[1:])}: the folder is damaged.{fix}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images.npy"], arrays[f"{split}_labels.npy"]
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise CljaxError(f"{path / f'{split}_images.npy'} holds {images.dtype} of shape {list(images.shape)}, not "
                             f"uint8 images (N, H, W) or (N, H, W, C): the folder is damaged.{fix}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
            raise CljaxError(f"{path / f'{split}_labels.npy'} holds {labels.dtype} of shape {list(labels.shape)}, not "
                             f"one integer label per image ({len(images)}): the folder is damaged.{fix}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise CljaxError(f"{path / f'{split}_labels.npy'} holds labels from {int(labels.min())} to "
                             f"{int(labels.max())}, outside 0 ... {n_classes - 1} (n_classes in meta.json): the folder "
                             f"is damaged.{fix}")
    return ClassData(
        train_images=arrays["train_images.npy"],
        train_labels=arrays["train_labels.npy"],
        test_images=arrays["test_images.npy"],
        test_labels=arrays["test_labels.npy"],
        n_classes=n_classes,
        class_names=class_names,
        meta=meta,
    )


def _recorded_files(meta: dict, where: Path, fix: str) -> dict[str, dict]:
    """meta.json's "files" entry of each array: its shape, dtype and sha256, as `write_prepared`
    has always written them. They are the data's identity (`data_identity`) and the check that
    the arrays are those prepared (`check_unchanged`), so a folder that lost them is refused: an
    identity taken from the contents instead would differ from the one its runs recorded."""
    files = meta.get("files")
    lost = None
    if not isinstance(files, dict):
        lost = 'no "files"' if files is None else f'"files" as a {type(files).__name__}'
    else:
        for fname in ARRAY_FILES:
            entry = files.get(fname)
            if entry is None:
                lost = f"no entry for {fname}"
            elif not _is_file_entry(entry):
                lost = f"a malformed entry for {fname}: {json.dumps(entry)[:80]}"
            if lost:
                break
    if lost:
        raise CljaxError(f"{where} lost its checksums ({lost}): restore it, or prepare the folder again.{fix}")
    return {fname: files[fname] for fname in ARRAY_FILES}


def _is_file_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            and all(type(d) is int and d >= 0 for d in entry["shape"]) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None)


def _classes(meta: dict, where: Path, n_images: int, fix: str) -> tuple[int, tuple[str, ...]]:
    """meta.json's n_classes and class names, checked as `write_prepared` writes them: a float or
    a string count would be truncated, a string of names split into characters, a dict give its
    keys, and a count without names would build that many names however large it is."""
    n_classes, names = meta.get("n_classes"), meta.get("class_names")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise CljaxError(f"{where} has n_classes {n_classes!r}, not a count of classes: the folder is damaged.{fix}")
    if n_classes == 1:  # whole, as an older prepare-imagenet wrote a one-class source: of no use to a run
        raise CljaxError(f"{where} has one class, and a task is a pair of classes: prepare the folder from a source "
                         f"of two classes or more.")
    if "class_names" not in meta:
        if n_classes > n_images:  # every class id has an image in a prepared folder
            raise CljaxError(f"{where} has n_classes {n_classes} and no class_names, more classes than the folder's "
                             f"{n_images} images: the folder is damaged.{fix}")
        return n_classes, tuple(str(c) for c in range(n_classes))
    odd = next((c for c in names if not isinstance(c, str)), None) if isinstance(names, list) else names
    if not isinstance(names, list) or odd is not None:
        what = f"a list holding {odd!r}" if isinstance(names, list) else f"a {type(names).__name__}"
        raise CljaxError(f"{where} has class_names as {what}, not a list of strings: the folder is damaged.{fix}")
    if len(names) != n_classes:
        raise CljaxError(f"{where} has n_classes {n_classes} and {len(names)} class names: the folder is damaged.{fix}")
    return n_classes, tuple(names)
