"""The spread over repeats, one rule for every analysis, its summaries and its plots.

Every summary of a per-repeat value is the mean and the sample standard deviation
(``ddof = 1``, the unbiased variance's square root) over the repeats whose value is finite.
Non-finite values (NaN: undefined, e.g. BWT of one task; +-inf) are left out and counted:
``n`` is the number of repeats that entered, ``n_nonfinite`` the number left out. With no
finite value the mean is NaN; with fewer than two the std is NaN (one repeat has no spread).
Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

DDOF = 1
RULE = ("mean and sample std (ddof = 1) over the repeats with a finite value; non-finite values are left out "
        "and counted (n, n_nonfinite)")


def mean_std_axis0(values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample std and the count of finite values along axis 0 (the repeats), each of the
    shape of ``values[0]``; non-finite entries are left out."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    v = np.where(finite, v, np.nan)
    n = finite.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns, n <= ddof
        mean = np.nanmean(v, axis=0)
        std = np.nanstd(v, axis=0, ddof=DDOF)
    std = np.where(n > DDOF, std, np.nan)
    return mean, std, n


def spread(per_repeat) -> dict:
    """{"mean", "std", "n", "n_nonfinite"} of one value per repeat (shape (R,) or anything
    flattened to it): see the module docstring."""
    x = np.asarray(per_repeat, dtype=np.float64).reshape(-1)
    mean, std, n = mean_std_axis0(x)
    return {"mean": float(mean), "std": float(std), "n": int(n), "n_nonfinite": int(x.size - n)}


def undefined(reason: str) -> dict:
    """The summary of a value no repeat can have (BWT of one task; a probe with no fold of each
    class): no mean, no repeat left out (``n_nonfinite`` 0: it is not a divergence), and why."""
    return {"mean": float("nan"), "std": float("nan"), "n": 0, "n_nonfinite": 0, "undefined": reason}


def over_tasks(values_nR) -> dict:
    """Summary of one metric tracked per task folder, values (n_tasks, R): the spread at the last
    folder, the mean over repeats of every folder, and how many values were not finite."""
    v = np.asarray(values_nR, dtype=np.float64)
    mean, _, _ = mean_std_axis0(v.T)
    return {"last_task": spread(v[-1]), "per_task_mean": [float(m) for m in mean],
            "n_nonfinite": int((~np.isfinite(v)).sum())}


def figure(x, fmt: str = ".4f", none: str = "n/a") -> str:
    """One printed figure: ``none`` where it is not defined (None, as summary.json holds it, or NaN)."""
    return format(x, fmt) if x is not None and np.isfinite(x) else none


def mean_std_text(mean, std, fmt: str = ".4f", mean_fmt: str | None = None) -> str:
    """'mean +- std' as the commands print a spread: 'undefined' without a mean (no finite
    repeat), 'n/a' for a std that is not defined (one repeat)."""
    if not figure(mean, none=""):
        return "undefined"
    return f"{figure(mean, mean_fmt or fmt)} +- {figure(std, fmt)}"


def jsonable(obj):
    """``obj`` with numpy values as Python ones and every non-finite float as None: what the JSON
    files of an analysis (summary.json, ``cljax compare --json``) hold, NaN written as ``null``
    (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def readable_json(obj, indent: int = 1) -> str:
    """``json.dumps(obj, indent=indent, allow_nan=False)`` with each list of scalars on one line:
    a long run's per-task lists (thousands of numbers each) take a line apiece, not a line per
    number (a 3000-task summary.json had 111,878 lines). The same JSON value either way."""
    def encode(o, level: int) -> str:
        inner, outer = " " * (indent * (level + 1)), " " * (indent * level)
        if isinstance(o, dict) and o:
            items = (f"{inner}{json.dumps(k if isinstance(k, str) else json.dumps(k))}: {encode(v, level + 1)}"
                     for k, v in o.items())
            return "{\n" + ",\n".join(items) + "\n" + outer + "}"
        if isinstance(o, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in o):
            return "[\n" + ",\n".join(inner + encode(v, level + 1) for v in o) + "\n" + outer + "]"
        return json.dumps(o, allow_nan=False)  # a scalar, an empty container, a list of scalars

    return encode(obj, 0)
