"""A full disk (or quota) while a data file is written, as one line naming the file."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from cljax.errors import CljaxError
from cljax.units import fmt_bytes


def full_disk_error(exc: OSError, path: Path, needed: int | None, fix: str) -> CljaxError | None:
    """The line for `exc`, raised while writing `path` (`needed` bytes, when known), if it says
    the disk is full: ENOSPC, EDQUOT, or numpy's short write (a bare "N requested and M written",
    with no errno); None for any other OSError. `fix`: what to do once space is freed."""
    text = str(exc)
    short = exc.errno is None and "requested and" in text and "written" in text
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT) and not short:
        return None
    why = "quota exceeded" if exc.errno == errno.EDQUOT else exc.strerror or f"a short write: {text}"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{fmt_bytes(shutil.disk_usage(folder).free)} free there"
    except OSError:
        free = "free space unknown"
    need = f"about {fmt_bytes(needed)} needed, " if needed else ""
    return CljaxError(f"the disk is full ({why}) while writing {path} ({need}{free}): free space or choose a folder "
                      f"on another disk, then {fix}")
