"""Where a user's runs are: the runs a sweep's folder holds, whether a folder holds task folders,
and what to pass instead of a folder that holds none (the end of an error line)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

TASK_DIR = re.compile(r"^task_(\d{3,})$", re.ASCII)  # a complete task folder's name (temporary names never match)


def runs_near(path: str | os.PathLike, most: int = 4) -> str:
    """What to pass instead of ``path``, which holds no task folder, as the end of an error line:
    its run's folder when it is a task folder (or a file in one), the runs below it (two levels:
    results/ and results/{dataset}/), or that it does not exist."""
    path = Path(path)
    for p in (path, path.parent):
        if TASK_DIR.match(p.name) and p.is_dir():
            return f"{p.name} is a task folder: pass its run's folder, {p.parent}"
        if p.name == "initial" and (p / "weights.npy").is_file() and p.parent.is_dir():
            return f"{p.name} is a run's initial-state folder: pass its run's folder, {p.parent}"
    if not path.exists():
        return f"{path} does not exist: pass a run's folder, results/{{dataset}}/{{algorithm}}"

    def folders(d: Path) -> list[Path]:
        try:
            return sorted(q for q in d.iterdir() if q.is_dir() and not q.is_symlink())
        except OSError:  # unreadable: not searched
            return []

    listed = listed_runs(path) if (path / "sweep.json").is_file() else []
    swept = with_task_dirs(listed)  # sweep_runs(path), with its sweep.json read once
    if listed is None:  # damaged, or not one cljax wrote: its runs are still there
        return f"its sweep.json cannot be read as a sweep's record: pass its runs' folders, {path}/*seed-*/*/*"
    if listed and not swept:  # a sweep just submitted: its jobs have not written a task yet
        others = [str(p) for p in _runs_below(path)]
        return (f"it holds a sweep whose {len(listed)} run(s) have no finished task yet (sweep.json lists them): "
                f"wait for its jobs, or pass a run's folder" + (f"; below it, not in sweep.json: {' '.join(others[:most])}"
                                                               if others else ""))
    if swept:  # a sweep's folder: its runs are three levels down, RESULTS_DIR/{tag}/{dataset}/{algorithm}
        return (f"it holds a sweep (sweep.json lists {len(swept)} run(s) with task folders): pass its runs' folders, "
                f"{' '.join(swept[:most])}" + (f" ... ({len(swept)} in all: {path}/*seed-*/*/*)" if len(swept) > most
                                             else ""))
    runs = [str(d) for child in folders(path)
            for d in ([child] if holds_task_dirs(child) else [g for g in folders(child) if holds_task_dirs(g)])]
    if runs:
        return f"it holds runs: pass one of them, e.g. {', '.join(runs[:most])}" + (
            f" ({len(runs)} in all)" if len(runs) > most else "")
    return "pass a run's folder, results/{dataset}/{algorithm}, or run the experiment first (cljax run)"


def sweep_runs(folder: Path) -> list[str]:
    """The run folders the sweep.json in ``folder`` lists (`cljax sweep`; its earlier sweeps into
    the folder too), that hold task folders; [] for a folder that holds no sweep."""
    return with_task_dirs(listed_runs(folder))


def with_task_dirs(runs: list[Path] | None) -> list[str]:
    """Those of ``runs`` (None: none) that hold task folders."""
    return [str(p) for p in runs or () if holds_task_dirs(p)]


def listed_runs(folder: Path) -> list[Path] | None:
    """Every run folder the sweep.json in ``folder`` lists, task folders or not yet; None where
    there is no sweep.json cljax could have written."""
    entries = _listed_entries(folder)
    return None if entries is None else list(dict.fromkeys(p for p, _ in entries))


def _listed_entries(folder: Path) -> list[tuple[Path, dict]] | None:
    """(run folder, its entry) for every run the sweep.json in ``folder`` lists, oldest sweep first;
    None where there is no sweep.json cljax could have written."""
    try:
        record = json.loads((folder / "sweep.json").read_text())
        listed = [r for sweep in (*record.get("earlier", []), record) for r in sweep["runs"]]
        # A run is RESULTS_DIR/{tag}/{dataset}/{algorithm}: read under this folder, also when the sweep
        # was copied or moved here (the recorded absolute path would name the original's runs).
        return [(folder.joinpath(*Path(r["results"]).parts[-3:]), r) for r in listed]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # no sweep here, or not one cljax wrote
        return None


def _text(value):
    """A setting's value as compared with its record (run.json strips text, e.g. ' all')."""
    return value.strip() if isinstance(value, str) else value


def check_sweep_labels(run_dirs) -> None:
    """Each run of a sweep is labelled by its folder, named for the settings sweep.json lists for it.
    A run whose run.json records other values of those settings or another seed (run folders
    moved or swapped by hand) would show its numbers under another run's settings: one
    CljaxError line naming the run and the values."""
    from cljax.errors import CljaxError

    entries: dict[Path, list | None] = {}
    for run in map(Path, run_dirs):
        if len(run.parents) < 3:
            continue
        sweep = run.parents[2]
        if sweep not in entries:
            entries[sweep] = _listed_entries(sweep) if (sweep / "sweep.json").is_file() else None
        listed = [entry for path, entry in entries[sweep] or () if path == run]
        try:
            config = json.loads((run / "run.json").read_text())["config"]
            wanted = {**listed[-1]["settings"], "seed": listed[-1]["seed"]} if listed else {}  # the newest sweep's
            differ = [f"{k} {v!r} in sweep.json, {config[k]!r} in its run.json" for k, v in wanted.items()
                      if k in config and _text(config[k]) != _text(v)]  # a setting the run does not use: not recorded
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):  # no record to hold against it
            continue
        if differ:
            raise CljaxError(f"{run} does not hold the run {sweep / 'sweep.json'} lists there ({', '.join(differ)}): "
                             f"its folder was moved or swapped by hand, so its label would name another run's "
                             f"settings; move each run back to the folder its settings name, then compare again.")


def holds_task_dirs(folder: Path) -> bool:
    """Whether ``folder`` holds a task folder (stops at the first: a long run holds thousands)."""
    try:
        return any(TASK_DIR.match(q.name) and q.is_dir() for q in folder.iterdir())
    except OSError:  # not a folder, or unreadable
        return False


def with_sweeps_runs(runs: list[str]) -> list[str]:
    """``runs``, a sweep's folder (RESULTS_DIR of `cljax sweep`) replaced by the runs its sweep.json
    lists, with a note that also names the runs below it that sweep.json does not list (a run
    given twice stays so: compare refuses it)."""
    expanded = []
    for run in runs:
        swept = [] if holds_task_dirs(Path(run)) else sweep_runs(Path(run))
        if swept:
            others = [str(p) for p in _runs_below(Path(run)) if str(p) not in swept]
            print(f"note: {run} holds a sweep: comparing the {len(swept)} run(s) with task folders its sweep.json "
                  f"lists" + (f"; {len(others)} other run(s) below it are not in sweep.json and are left out (pass "
                              f"them too to compare them): {' '.join(others[:4])}{' ...' if len(others) > 4 else ''}"
                              if others else "") + ".", file=sys.stderr)
        expanded.extend(swept or [run])
    return expanded


def _runs_below(folder: Path) -> list[Path]:
    """The runs two levels (``{dataset}/{algorithm}``) or three (a sweep's ``{tag}/{dataset}/{algorithm}``)
    below ``folder``, in path order."""
    found = []
    for pattern in ("*/*", "*/*/*"):
        found.extend(p for p in sorted(folder.glob(pattern)) if p.is_dir() and not p.is_symlink()
                     and not TASK_DIR.match(p.name) and holds_task_dirs(p))
    return found
