"""Argument types the benchmark scripts share: a count must be a whole number of at least one
(argparse then refuses 0 or -1 in one line, where a zero once meant "the default" or crashed
after the run), and an output file's folder must exist before any time is spent."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    """A time budget: a finite number of seconds above 0 (0 or less left every stage unrun)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds above 0")
    return value


def output_file(text: str) -> str:
    """A file to write at the end: its folder exists and it is not a folder itself."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder: give a file name")
    if not path.resolve().parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist: create it first")
    return text


def output_folder(text: str) -> str:
    """A folder to write into (made if missing): not an existing file."""
    if Path(text).expanduser().exists() and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file: give a folder")
    return str(Path(text).expanduser().resolve())


def one_line_errors(main):
    """Run ``main()`` as a script's entry point: cljax's refusals (bad input, a missing dataset, a
    damaged or foreign folder) end it with one ``error:`` line and exit 2, as cljax's commands do,
    not a traceback."""
    from cljax.errors import CljaxError

    try:
        return main()
    except CljaxError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None
