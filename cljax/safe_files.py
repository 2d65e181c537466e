"""Files of the results tree, written and read safely: a .npy or a file written with its size
and sha256 taken while writing (never read back), .npy headers checked against the file before
anything is loaded, and pickles unpickled by a reader that only rebuilds numpy arrays and builtin
containers (a results tree from elsewhere cannot run code on the reader's machine). Every reader
raises ``DamagedFile`` / ``CljaxError`` naming the file when it is missing, truncated, damaged or
of another kind."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from cljax.errors import CljaxError, DamagedFile, brief


class _HashingWriter:
    """A write-only file that hashes what passes through it (np.save writes in chunks)."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.f.write(data)


def save_npy(path: Path, arr: np.ndarray) -> dict:
    """Write one .npy; return its size and sha256, hashed while writing (never read back)."""
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        np.save(out, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": out.size, "sha256": out.digest.hexdigest()}


def write_bytes(path: Path, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in the existing folder ``folder`` (the OS's reason), or None:
    a file is created there and removed. ``os.access`` says yes to root on a read-only mount or in
    /proc, where the write would then fail after the work, naming a temporary."""
    probe = Path(folder) / f".cljax-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        probe.open("xb").close()
    except OSError as exc:
        return exc.strerror or str(exc)
    probe.unlink(missing_ok=True)
    return None


def atomic_write(path: Path, write) -> None:
    """Replace ``path`` with what ``write(f)`` writes to an open binary file: written to a
    temporary name beside it, fsynced, renamed, so that a crash or a full disk leaves the old
    file or the new one, never a part of it (and no temporary)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """shutil.rmtree, whose error names the whole path of what could not be removed (rmtree's own
    names a file by its bare name: an immutable weights.npy, but in which of thousands of folders?)."""
    def named(_func, where, exc):
        exc = exc[1] if isinstance(exc, tuple) else exc  # onerror's exc_info (3.11), onexc's exception (3.12+)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, os.fspath(where)) from exc
        raise exc

    shutil.rmtree(path, **({"onexc": named} if sys.version_info >= (3, 12) else {"onerror": named}))


# ---- safe readers -----------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
}


class _Refused(pickle.UnpicklingError):
    """A pickle that names something other than numpy arrays and plain values."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (module == "numpy" and name in _NUMPY_SCALARS):
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}: only numpy arrays and plain values are allowed")


_NUMPY_SCALARS = {"float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16",
                  "uint32", "uint64", "bool_"}
DAMAGED = ("restore it from a copy, or write it again (`cljax run` with the run's flags and --repair, which trains "
           "the tasks up to it again)")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", DAMAGED) from None
    except IsADirectoryError:
        raise DamagedFile(path, "is a folder, not a file", DAMAGED) from None
    except MemoryError:
        raise DamagedFile(path, "is too large to read into memory (cljax writes small pickles)", DAMAGED) from None


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle a results file allowing only numpy arrays, dicts, lists and plain values."""
    path = Path(path)
    raw = read_bytes(path)
    try:
        return _SafeUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise CljaxError(f"{path}: {brief(exc)}; the file is not a cljax results file, do not trust it.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise DamagedFile(path, f"is truncated or damaged ({type(exc).__name__}: {brief(exc)})", DAMAGED) from None


def load_dict_pickle(path: Path) -> dict:
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise DamagedFile(path, f"holds a {type(data).__name__}, not the dict of arrays cljax writes", DAMAGED)
    return data


# numpy parses a header with ast.literal_eval, which CPython 3.11 does not make thread-safe (a
# resume checks task folders from a thread pool: "SystemError: AST constructor recursion depth
# mismatch" at random): one header at a time.
_HEADER_LOCK = threading.Lock()


def npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, read without loading it; CljaxError when the
    file is missing, not a .npy, holds Python objects, or is shorter or longer than its header says."""
    fmt = np.lib.format
    try:
        with _HEADER_LOCK, open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = fmt._read_array_header(f, version)
            offset = f.tell()
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", DAMAGED) from None
    except IsADirectoryError:
        raise DamagedFile(path, "is a folder, not a file", DAMAGED) from None
    except (ValueError, EOFError, SyntaxError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise DamagedFile(path, f"is not a readable .npy file ({brief(exc)})", DAMAGED) from None
    if dtype.hasobject:
        raise DamagedFile(path, "holds Python objects, which cljax never writes (refused, not loaded)", DAMAGED)
    expected = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        kind = "truncated" if size < expected else "longer than its header says"
        raise DamagedFile(path, f"is {kind} ({size:,} bytes, {expected:,} expected)", DAMAGED)
    return tuple(shape), dtype, offset


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """A .npy written by cljax, checked against its header first (see :func:`npy_header`)."""
    path = Path(path)
    npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise DamagedFile(path, f"cannot be read ({brief(exc)})", DAMAGED) from None
