"""A run folder's lock held by another process, as a run writing the folder holds it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

_HOLD = ("import sys, time\nfrom pathlib import Path\nfrom cljax.run_lock import RunLock\n"
         "with RunLock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(300)\n")


@contextlib.contextmanager
def lock_held_elsewhere(algo_dir: Path):
    """Yields the holder process (its pid is the lock's) once it holds the lock; killed at the end."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(algo_dir)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[1])
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
