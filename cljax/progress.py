"""A run's progress: a bar on a terminal, lines in a log.

A run whose stderr is a file (a SLURM job's log, ``cljax run ... 2> log``) gets no bar, whose
redraws would fill the file; it gets a line after its first task (which includes compiling) and
then at most one a minute, so a log of a run of thousands of tasks shows where it is.
"""

from __future__ import annotations

import sys
import time

LOG_EVERY_SECONDS = 60.0


def progress_for(mode, total: int, done: int, note: str = ""):
    """``mode``: True or "bar" (a tqdm bar), "log" (``LogLines``, whose first line ends with
    ``note``), False or None (nothing)."""
    if mode in (True, "bar"):
        return _bar_class()(total=total, initial=done, unit="task", desc="tasks", file=sys.stderr, dynamic_ncols=True)
    if mode == "log":
        return LogLines(total, done, note=note)
    return None


def _bar_class():
    """tqdm, whose rate and time left are of the tasks after the command's first, as the log's
    are: the first task's time holds the compiles, and in tqdm's moving average it made the time
    left too long for many tasks after it (by a factor, where a compile is long and a task short)."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        first = True

        def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
            """Drawn by the ``update`` that follows it (a redraw here showed the new accuracy beside
            the old count and rate)."""
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

        def update(self, n=1):
            shown = super().update(n)
            if self.first and not self.disable:
                self.first = False
                if hasattr(self, "_ema_dn") and hasattr(self, "_ema_dt"):  # tqdm's averages, from the next task on
                    self._ema_dn, self._ema_dt = type(self._ema_dn)(self.smoothing), type(self._ema_dt)(self.smoothing)
                self.last_print_n, self.last_print_t = self.n, self._time()
            return shown

    return Bar


class LogLines:
    """The bar's calls (``update``, ``set_postfix``, ``write``, ``close``), written as lines."""

    def __init__(self, total: int, done: int, every: float = LOG_EVERY_SECONDS, clock=time.monotonic, note: str = ""):
        self.total, self.done, self.every, self.clock = total, done, every, clock
        self.start, self.first, self.last, self.postfix = clock(), done, None, {}
        self.began = self.start
        print(f"tasks: {done}/{total} done{note}", file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if self.last is not None and now - self.last < self.every and self.done < self.total:
            return
        shown = "".join(f", {k} {v}" for k, v in self.postfix.items())
        if self.last is None:  # the command's first task compiles its programs: its time says nothing of the others'
            self.last, self.start, self.first = now, now, self.done
            print(f"tasks: {self.done}/{self.total} done{shown}, the first in {_duration(now - self.began)} "
                  f"(compiling included)", file=sys.stderr, flush=True)
            return
        self.last = now
        trained, elapsed = self.done - self.first, now - self.start
        rate = f", {elapsed / trained:.2f} s/task" if trained else ""
        left = (self.total - self.done) * elapsed / trained if trained else 0
        eta = f", about {_duration(left)} left" if trained and self.done < self.total else ""
        print(f"tasks: {self.done}/{self.total} done{shown}{rate}{eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
