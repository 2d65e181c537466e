"""The one typed parser of settings: dataclass fields (Config and every registry entry's params)
-> command-line flags, sweep grid values, and validation. Field types are read once, with
``typing.get_type_hints``, never by matching substrings of their spelling."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from typing import Any

from cljax.errors import CljaxError


@dataclasses.dataclass(frozen=True)
class FieldType:
    """A field's scalar type (bool, int, float or str) and whether None is allowed."""

    base: type
    optional: bool


def field_types(cls, names=None) -> dict[str, FieldType]:
    """Field name -> FieldType for the fields ``names`` (default: all) of a dataclass; each is
    bool, int, float or str, optionally ``| None``."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if names is not None and name not in names:
            continue
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        bases = [a for a in args if a is not type(None)]
        if len(bases) != 1 or bases[0] not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{name}: a setting is bool, int, float or str (optionally | None), not {hint}")
        out[name] = FieldType(bases[0], len(bases) < len(args))
    return out


# Integer settings are counts, sizes and steps that the compiled task program holds as int32.
INT_MAX = 2**31 - 1
INT_WHY = " (a 32-bit integer in the compiled program)"


def check_value(flag: str, ftype: FieldType, meta: dict, value: Any) -> None:
    """Raise CljaxError naming ``flag`` when ``value`` has the wrong type or is out of range."""
    if value is None:
        if not ftype.optional:
            raise CljaxError(f"{flag} must be set.")
        return
    base = ftype.base
    if base is bool:
        if not isinstance(value, bool):
            raise CljaxError(f"{flag} must be true or false, got {value!r}.")
    elif base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CljaxError(f"{flag} must be an integer, got {value!r}.")
        limit = meta.get("max") if meta.get("max") is not None else INT_MAX
        if value < -INT_MAX - 1:
            raise CljaxError(f"{flag} must be at least {-INT_MAX - 1}{INT_WHY}, got {value!r}: raise it.")
        if value > limit:
            raise CljaxError(f"{flag} must be at most {limit}{INT_WHY if limit == INT_MAX else ''}, got {value!r}: "
                             f"lower it.")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CljaxError(f"{flag} must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise CljaxError(f"{flag} must be finite, got {value!r}.")
    elif not isinstance(value, str):
        raise CljaxError(f"{flag} must be a string, got {value!r}.")
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise CljaxError(f"{flag} must be one of {', '.join(str(c) for c in meta['choices'])}, got {value!r}.")
    if meta.get("min") is not None and value < meta["min"]:
        raise CljaxError(f"{flag} must be at least {meta['min']}, got {value!r}.")
    if meta.get("max") is not None and value > meta["max"] and base is not int:
        raise CljaxError(f"{flag} must be at most {meta['max']}, got {value!r}.")


def check_dataclass(obj, flag_of) -> None:
    """Check every field of a settings dataclass; ``flag_of(field)`` names it in messages."""
    types_ = field_types(type(obj))
    for f in dataclasses.fields(obj):
        check_value(flag_of(f), types_[f.name], f.metadata, getattr(obj, f.name))


def parse_text(ftype: FieldType, text: str, flag: str):
    """A value typed on the command line or in a sweep grid, in the field's type."""
    if ftype.optional and text.lower() == "none":
        return None
    try:
        if ftype.base is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        return ftype.base(text)
    except ValueError:
        raise CljaxError(f"{flag}: {text!r} is not a valid {ftype.base.__name__} value.") from None


def bound_text(value) -> str:
    """A bound as the help shows it: 0.999, 3e-06; a large power of two (a byte count, a 32-bit
    seed) as 2^62 or 2^32-1."""
    if isinstance(value, int) and abs(value) >= 2**20:
        for off, sign in ((0, ""), (1, "-1")):
            if (value + off) & (value + off - 1) == 0:
                return f"2^{(value + off).bit_length() - 1}{sign}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(ftype: FieldType, meta: dict) -> str:
    """A number setting's bounds as ``check_value`` applies them, both inclusive: ">=1", "in [0,1]"
    (without spaces, so that the help's line wrapping keeps each whole); "" without bounds; an
    int's 32-bit limit goes unsaid unless it is the field's own ``max``."""
    low, high = meta.get("min"), meta.get("max")
    if isinstance(high, float) and high >= 3.4e38:  # float32's largest (a rate's overflow bound): no bound to a reader
        high = None
    if ftype.base not in (int, float) or (low is None and high is None):
        return ""
    if low is None:
        return f"<={bound_text(high)}"
    return f">={bound_text(low)}" if high is None else f"in [{bound_text(low)},{bound_text(high)}]"


def add_flag(parser: argparse.ArgumentParser, flag: str, dest: str, ftype: FieldType, meta: dict, default,
             aliases: tuple = (), note: str = "") -> None:
    """One flag with its help text, its range and its default; its choices (``meta["choices"]``)
    stand in the usage as ``{a,b}``; a bool is a --x / --no-x pair."""
    help_text = meta.get("help", "") + note
    bounds = range_text(ftype, meta)
    own = re.search(r" \(default: [^()]*(\([^()]*\)[^()]*)*\)$", help_text)
    if own:  # a help that names its own default (--lr-features's "default: --lr") keeps it, the range beside it
        help_text = f"{help_text[:own.start()]} ({bounds + '; ' if bounds else ''}{own.group()[2:]}"
    elif "default:" in help_text:  # said within the text (--lr's "default: the rule's own"): the range at the end
        help_text += f" ({bounds})" if bounds else ""
    else:
        help_text += f" ({bounds + '; ' if bounds else ''}default: {default})"
    names = [f"--{flag}", *aliases]
    if ftype.base is bool:
        parser.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    else:
        choices = meta.get("choices")
        parser.add_argument(*names, dest=dest, type=lambda text: parse_text(ftype, text, f"--{flag}"), default=default,
                            metavar=None if choices else dest.upper(), choices=choices, help=help_text)


def flag_values(argv: list[str], flag: str) -> list[str]:
    """The values ``argv`` gives ``flag`` (``--flag V`` and ``--flag=V``), in order: read before a
    parser exists (--preset, --plugin) or beside it (a sweep's --grid)."""
    out = []
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith(flag + "="):
            out.append(a.split("=", 1)[1])
    return out
