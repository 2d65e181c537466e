"""Where a preparation's output can go. OUT is written whole as the sibling folder OUT.tmp-write and
renamed into place (`write_prepared`), with the work folder OUT.partial and the lock OUT.lock
beside it; two kinds of --out cannot be replaced so, and each failed only after all the work:

* a symbolic link (``data -> /scratch/imagenet28``): removing it to make room for the rename
  fails (``rmtree`` refuses a link). `output_folder` takes the folder it names instead, so the
  output, its work and its lock go there and the link keeps naming the result;
* a mount point (a volume, a bind mount): it cannot be renamed over, and OUT.partial and
  OUT.tmp-write, beside it, would be on the filesystem above it. `check_not_mount_point`
  refuses it before any work, naming a folder inside it; writing into it file by file would
  lose the whole-or-nothing replacement that a complete OUT relies on.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cljax.errors import CljaxError


def output_folder(out: str | os.PathLike) -> Path:
    """--out as the folder to write: a symbolic link (however many) resolved to what it names."""
    out = Path(out).expanduser()
    return out.resolve() if out.is_symlink() else out


def check_not_mount_point(out: Path) -> None:
    """Raise CljaxError when `out` is a mount point, which the final rename cannot replace."""
    if out.is_dir() and _is_mount_point(out):
        raise CljaxError(f"--out {out} is a mount point, which the finished folder cannot be renamed onto (it is "
                         f"written beside --out, with the work folder, on the filesystem above): pass a folder inside "
                         f"it, e.g. --out {out / 'imagenet28'} (nothing was written).")


def _is_mount_point(path: Path) -> bool:
    """os.path.ismount, and a bind mount of a folder of the same filesystem, which it misses (the
    same device as the parent): listed in /proc/self/mountinfo where there is one."""
    return os.path.ismount(path) or str(path.resolve()) in _mount_points()


def _mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> set[str]:
    """The mount points `mountinfo` lists (its fifth field, with octal escapes such as \\040 for
    a space), or none where it cannot be read (not Linux)."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return set()
    unescape = re.compile(r"\\([0-7]{3})")
    return {unescape.sub(lambda m: chr(int(m[1], 8)), fields[4]) for fields in map(str.split, lines) if len(fields) > 4}
