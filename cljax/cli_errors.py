"""What a command that failed prints: one line for every failure that is not cljax's own bug.

``error_line(exc, command, argv)`` gives the line (without ``error: ``) for the input, the data, a
plugin's code or the environment, and says whether the process must end at once; None for a bug
of cljax's, which keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno

from cljax.errors import CljaxError


def error_line(exc: BaseException, command: str, argv=()) -> tuple[str | None, bool]:
    """(the line, end the process at once) for ``exc`` raised by ``cljax command`` given ``argv``
    (its arguments after the command's name)."""
    if isinstance(exc, CljaxError):
        return " ".join(str(exc).split()), False  # one line, whatever it quotes
    if isinstance(exc, argparse.ArgumentError):  # only from building a parser: a plugin's flag taken twice
        from cljax.settings import flag_clash

        return flag_clash(exc, command), False
    if isinstance(exc, MemoryError):
        shrink = ("shrink the run (fewer --n-repeats, --num-tasks or images per class)" if command == "plan" else
                  "shrink the run (`cljax plan` shows what it takes)")
        return f"out of memory in `cljax {command}`: {shrink} or use a machine with more memory.", False
    if command == "analyze" and type(exc).__name__ == "JaxRuntimeError" and (
            "RESOURCE_EXHAUSTED" in str(exc) or "out of memory" in str(exc).lower()):
        # GLUE's probes are solved at once, and --glue-probes has no bound but the device's memory
        what = next((part.strip().rsplit(": ", 1)[-1].rstrip(".") for part in str(exc).splitlines()
                     if "memory" in part.lower()), "")[:160]
        # Without GLUE, what is left on the device is one task's representations at a time
        fix = ("analyse on the CPU (JAX_PLATFORMS=cpu cljax analyze ...) or on a device with more memory"
               if "--no-glue" in argv else "lower --glue-probes, or pass --no-glue")
        return f"out of device memory in `cljax analyze`{f' ({what})' if what else ''}: {fix} (nothing was written).", False
    from cljax.devices.distributed import lost_process_line
    from cljax.registry import plugin_error

    lost = lost_process_line(exc)
    if lost is not None:  # at once: JAX's shutdown would wait for the lost process, then abort
        return lost, True
    line = plugin_error(exc)  # a plugin's code that raised or exited: its file and line
    if line is not None:
        return line, False
    if isinstance(exc, OSError):
        return environment_error(exc, command), False
    return None, False


def environment_error(exc: OSError, command: str = "run") -> str:
    """The environment, not the input: a full disk, permissions, a vanished file."""
    where = f" ({exc.filename})" if exc.filename else ""
    resumes = (" (a run resumes from its last finished task)" if command in ("run", "sweep") else
               " (or write elsewhere: --out, --json)" if command in ("analyze", "compare") else "")
    fix = (f"free space, then run the same command{resumes}"
           if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
           "a file or a broken link is where a folder is needed: move it, or pass another path"
           if exc.errno == errno.EEXIST else "shorten the path (a name of at most 255 bytes, as most filesystems "
           "allow)" if exc.errno == errno.ENAMETOOLONG else "check the path and its permissions")
    return f"{exc.strerror or exc}{where}: {fix}."
