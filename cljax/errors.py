"""The one exception type the CLI turns into a single clear error line, and the exit code of a
run stopped by a signal."""

EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT with a resumable state (EX_TEMPFAIL)


class CljaxError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""


class DamagedFile(CljaxError):
    """A results file that is missing, truncated, damaged or of another kind. ``problem`` says
    what is wrong with ``path`` without the fix, for callers that give their own."""

    def __init__(self, path, problem: str, fix: str):
        super().__init__(f"{path} {problem}: {fix}.")
        self.path, self.problem = path, problem


class MissingData(CljaxError):
    """A dataset folder that is not there (where a process on another host may still find it)."""


def brief(exc: BaseException) -> str:
    """An exception's message cut to its first line, to be quoted inside a one-line error."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
