"""Fashion-MNIST from its real IDX files (Debian package dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
from collections import OrderedDict
from pathlib import Path

import numpy as np

from cljax.data.prepared import ClassData
from cljax.registry import NoParams, register_dataset
from cljax.errors import CljaxError, MissingData

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _fix(folder: Path, damaged: bool = True) -> str:
    """What repairs ``folder``: Debian's package owns the default one (reinstalling restores a
    damaged file there); a --data-dir copy is the user's to replace."""
    if folder.resolve() == Path(DEFAULT_DIR).resolve():
        how = "apt-get install --reinstall dataset-fashion-mnist" if damaged else "apt-get install dataset-fashion-mnist"
        return f"install it{' again' if damaged else ''} with `{how}`, or pass --data-dir with the four IDX files."
    return (f"put good copies of the four IDX files in {folder}, or use Debian's copy in {DEFAULT_DIR} "
            f"(dataset-fashion-mnist), which `cljax run` reads when --data-dir is left out.")


# The files read in this process, by path and the file's identity (inode, size, modification
# time): a second run in the same process (a sweep, a notebook) does not decompress them again;
# a file changed or replaced since is read anew. Their arrays are read-only.
_READ: OrderedDict = OrderedDict()
KEPT_FILES = 8  # two folders of four


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None  # _read says what is wrong
    if key in _READ:
        _READ.move_to_end(key)
        return _READ[key]
    array = _read(path)
    if key is not None:
        _READ[key] = array
        while len(_READ) > KEPT_FILES:
            _READ.popitem(last=False)
    return array


def _read(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise CljaxError(f"cannot read {path} ({exc}): the file is corrupt or truncated; {_fix(path.parent)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CljaxError(f"{path} is not a uint8 IDX file: {_fix(path.parent)}")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise CljaxError(f"{path} is truncated ({len(raw) - offset} bytes of data, {int(np.prod(dims))} expected): "
                         f"{_fix(path.parent)}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise CljaxError(f"Fashion-MNIST file {stem}[.gz] not found in {folder}: {_fix(folder, damaged=False)}")


@register_dataset("fashion_mnist", params=NoParams, data_dir=DEFAULT_DIR)
def load_fashion_mnist(params, config) -> ClassData:
    """Fashion-MNIST, 10 classes of 28x28 gray clothing images (the IDX files)."""
    return read_folder(Path(config.data_dir or DEFAULT_DIR))


def holds_idx_files(folder: Path) -> bool:
    """Whether ``folder`` holds any of Fashion-MNIST's four IDX files (gzipped or not)."""
    return any((folder / name).is_file() for stem in FILES.values() for name in (stem, stem + ".gz"))


def read_folder(folder: Path) -> ClassData:
    """Fashion-MNIST from the four IDX files in ``folder``, each checked (one error line naming
    the file and the fix)."""
    if not folder.is_dir():
        if folder.exists():
            raise CljaxError(f"Fashion-MNIST folder {folder} is a file, not a folder: {_fix(folder, damaged=False)}")
        raise MissingData(f"Fashion-MNIST folder {folder} does not exist: {_fix(folder, damaged=False)}")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_images"].shape[0] != arrays[f"{split}_labels"].shape[0]:
            raise CljaxError(f"Fashion-MNIST {split} images and labels differ in count in {folder}: {_fix(folder)}")
        if arrays[f"{split}_labels"].size and int(arrays[f"{split}_labels"].max()) >= len(CLASS_NAMES):
            # an image whose label is no class would be left out of every task without a word
            raise CljaxError(f"Fashion-MNIST {split} labels in {folder} go up to {int(arrays[f'{split}_labels'].max())}, "
                             f"past its {len(CLASS_NAMES)} classes: the file is damaged; {_fix(folder)}")
    return ClassData(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int32),
        n_classes=10,
        class_names=CLASS_NAMES,
        meta={"name": "fashion_mnist", "source": str(folder)},
    )
