"""Analyse one run folder ``results/{dataset}/{algorithm}``, one task folder at a time.

Reads only through :mod:`cljax.results`; holds per task folder only its metrics, its weights and
memory-mapped slices of its representations, and across folders only small summaries (accuracy
rows as each folder saved them, (R, K) for its K evaluated task slots: :mod:`cljax.analysis.band`;
per-snapshot scalars), so the memory does not grow with the number of task folders beyond those
summaries. Writes into ``{algo_dir}/analysis`` (or ``out_dir``):

- ``summary.json``: CL metrics (both accuracy-matrix variants), the expert's last and best
  snapshot, plasticity, GLUE and linear-probe summaries, settings and conventions; every spread
  over repeats follows :mod:`cljax.analysis.spread`; NaN (undefined) is written as null.
- ``cl.npz``, ``plasticity.npz``, ``glue.npz``, ``curves.npz``, ``probe.npz``: the per-repeat arrays.
- ``accuracy_matrix.png``, ``accuracy_over_time.png``, ``learner_vs_expert.png``,
  ``plasticity.png``, ``glue.png`` (and ``glue_across.png`` when the across-task grouping was
  computed at two or more task folders), ``probe.png``.

Conventions (also written to the summary):
- Plasticity metrics use the current task's S test samples at every snapshot of its folder
  (``current_*``, shape (n_tasks, L, R)) and all evaluated tasks' samples at the folder's last
  snapshot (``all_tasks_*``, (n_tasks, R)).
- Weight change: "task start" is the task folder's start_weights.npy (the weights its training
  started from, after shrink+perturb); "init" is initial/weights.npy (the network before its
  first step). Runs written before these files existed fall back to the previous folder's last
  snapshot and task_000's first snapshot; summary["plasticity"]["weight_change_reference"] says
  which were used.
- GLUE at the last snapshot of each task folder: the current task's two class manifolds with the
  task's own dichotomy (P = 2, ``glue_tasks="current"``, or every evaluated task with ``"all"``);
  and the 2T class manifolds of (at most ``glue_across_max_tasks``, evenly spaced) tasks with
  random dichotomies (P = 2T), at the last folder and every ``glue_across_every`` folders.
  Manifolds are split by ``binary_labels`` and cut to the same number of points per class, at
  most ``glue_max_points``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cljax import results
from cljax.analysis.band import keeps_dense
from cljax.analysis.cl import VARIANTS
from cljax.analysis.glue import N_PROBES
from cljax.analysis.out_folder import output_folder, write_all
from cljax.analysis.plot_parts import captioned
from cljax.analysis.probe import RIDGE
from cljax.analysis.registry import Options, Result, RunContext, TaskFolder, get, registered
from cljax.analysis.spread import RULE, jsonable, readable_json
from cljax.analysis.workers import Workers, worker_count
from cljax.checkpoint import RUN_RECORD, read_run_record
from cljax.registry import is_builtin, source_file
from cljax.sources import entry_file_sha256
from cljax.devices.memory import host_available_bytes
from cljax.errors import CljaxError
from cljax.eval_tasks import folder_mode, other_mode
from cljax.initial_state import INITIAL, wrote_initial
from cljax.record_rebuild import foreign_record
from cljax.run_folder import verify_task_dir
from cljax.run_lock import live_writer, reading

# The listing order of the built-in files in ``summary["files"]`` (that of earlier versions);
# files of other analyses follow in the order the analyses ran.
FILE_ORDER = (
    "cl.npz", "plasticity.npz", "curves.npz", "glue.npz",
    "accuracy_matrix.png", "accuracy_over_time.png", "learner_vs_expert.png", "plasticity.png", "glue.png",
    "glue_across.png",
)


def _file_rank(name: str) -> int:
    return FILE_ORDER.index(name) if name in FILE_ORDER else len(FILE_ORDER)


def plugin_analyses(selected) -> dict:
    """{name: {"file", "sha256"}} of every analysis run here that a plugin registered (its
    finalize's file, else its update's or init's): which code wrote that part of the summary, as
    run.json records a plugin rule's file. Empty when only cljax's own analyses ran."""
    out = {}
    for a in selected:
        own = [f for f in (getattr(f, "func", f) for f in (a.finalize, a.update, a.init))
               if not is_builtin(f)]  # (a functools.partial's function)
        if own:
            path = Path(source_file(own[0]))
            out[a.name] = {"file": str(path), "sha256": entry_file_sha256(path) if path.is_file() else None}
    return out


def analyze_run(algo_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, **options) -> dict:
    """:func:`_analyze_run` (its arguments) with the run's lock held shared while the run is read
    and its analysis written, so that no run starts writing the folder meanwhile (an
    ``--overwrite`` deleted the task folders under the analysis, and the deleted run's analysis
    was then written into the new run's folder); a run writing it now is read as far as it is."""
    with reading(Path(algo_dir)) as writer:
        return _analyze_run(algo_dir, out_dir, writer=writer, **options)


def _analyze_run(
    algo_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    writer: dict | None = None,
    variant: str = "final",
    tau: float = 0.025,
    glue: bool = True,
    glue_n_probes: int = N_PROBES,
    glue_tasks: str = "current",
    glue_across_every: int | None = None,
    glue_across_max_tasks: int = 16,
    glue_max_points: int | None = 32,
    glue_seed: int = 0,
    curve_tasks: int = 10,
    probe_ridge: float = RIDGE,
    make_plots: bool = True,
    analyses: Sequence[str] | None = None,
    progress: bool = False,
    critical: contextlib.AbstractContextManager | None = None,
    workers: int | str = "auto",
) -> dict:
    """Run the registered analyses on a results folder; write summary, arrays and plots.

    Args:
      algo_dir: ``results/{dataset}/{algorithm}`` with ``task_NNN`` folders.
      out_dir: where to write (default ``{algo_dir}/analysis``).
      variant: accuracy-matrix variant of the headline numbers (``final`` or ``auc``; both are
        computed and saved).
      tau: dormant-unit threshold (ReDo).
      glue: run the GLUE analyses; ``glue_n_probes`` probes each; ``glue_tasks`` ``"current"``
        or ``"all"`` for the P = 2 grouping; ``glue_across_every`` (None: only at the last task
        folder), ``glue_across_max_tasks`` for the P = 2T grouping; ``glue_max_points`` points
        per class manifold; ``glue_seed`` for probes and dichotomies (shared by all folders).
      curve_tasks: at most this many tasks (evenly spaced) in the accuracy-over-time plot.
      probe_ridge: the linear probe's ridge, in units of the mean squared norm of the fitted rows
        (:mod:`cljax.analysis.probe`).
      make_plots: write the PNGs.
      analyses: names of the analyses to run (default: every registered one, less ``glue`` when
        ``glue`` is False), see :mod:`cljax.analysis.registry`.
      progress: a progress bar of the task folders on stderr, when it is a terminal.
      critical: held while the files are renamed into place (the command line's stop lock: a SIGTERM then
        waits, so the analysis folder holds the earlier analysis or this one, whole).
      workers: processes that solve GLUE beside this one, on the CPU: a number (1: none), or
        ``"auto"`` (:func:`cljax.analysis.workers.worker_count`); the results are the same bits.

    Returns:
      The summary dict written to ``summary.json`` (with NaN as None).
    """
    if variant not in VARIANTS:
        raise CljaxError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not (np.isfinite(probe_ridge) and probe_ridge > 0):
        raise CljaxError(f"probe_ridge (--probe-ridge) must be a finite number > 0, got {probe_ridge}")
    if glue and glue_n_probes < 2:
        raise CljaxError(f"glue_n_probes must be at least 2 (its Monte-Carlo error needs two), got {glue_n_probes}")
    if glue_tasks not in ("current", "all"):
        raise CljaxError(f"glue_tasks must be 'current' or 'all', got {glue_tasks!r}")
    selected = [get(name) for name in (analyses if analyses is not None else registered())
                if glue or name != "glue"]
    plugins = plugin_analyses(selected)  # before the work: a plugin file edited meanwhile is the code imported
    algo_dir = Path(algo_dir)
    dirs = results.first_task_dirs(algo_dir)
    if not dirs:
        raise CljaxError(f"{algo_dir} holds no complete task folder: "
                         f"{writing_now(algo_dir) or 'run the experiment first'}.")
    # writer: the run writing the folder now (its tasks so far are read, and said to be), or None
    check, run_id = _verifier(algo_dir, dirs[0])
    out = output_folder(algo_dir, out_dir, run_id)
    n = len(dirs)

    folder = TaskFolder(0, dirs[0], check(dirs[0], 0))
    L, R, T = folder.shape  # T: the run's tasks (a folder may have evaluated only some)
    ahead = folder.all_tasks  # --eval-tasks all: a folder evaluates the tasks not trained yet too
    if n > T:
        raise CljaxError(f"{algo_dir} holds {n} task folders but each evaluates only {T} tasks: {dirs[T].name} on are "
                         f"not tasks of this run; move them out of the folder.")
    K = folder.test_acc_slots.shape[-1]  # the task slots each folder saved (--eval-tasks)
    dense = keeps_dense(R, n, K, T)
    need, available = BYTES_PER_CELL * R * n * (T if dense else K), host_available_bytes()
    if need > available:
        what = "tasks" if dense else "evaluated task slots"
        raise CljaxError(f"the analysis keeps accuracy matrices of repeats x task folders x {what} ({R} x {n} x "
                         f"{T if dense else K}), about {need / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB are "
                         f"available: run it on a machine with more memory, or compare the runs' plasticity gap with "
                         f"`cljax compare`, which reads the current task only.")
    options = Options(variant=variant, tau=tau, glue_n_probes=glue_n_probes, glue_tasks=glue_tasks,
                      glue_across_every=glue_across_every, glue_across_max_tasks=glue_across_max_tasks,
                      glue_max_points=glue_max_points, glue_seed=glue_seed, curve_tasks=curve_tasks,
                      probe_ridge=probe_ridge)
    with Workers(worker_count(workers, n, any(a.name == "glue" for a in selected), available - need)) as pool:
        ctx = RunContext(algo_dir=algo_dir, n_folders=n, n_snapshots=L, n_repeats=R, n_eval_tasks=T, options=options,
                         workers=pool if pool.n > 1 else None)
        outputs = _run_analyses(selected, ctx, dirs, folder, check, progress)

    for a, result in zip(selected, outputs):
        parts = [isinstance(getattr(result, k, None), dict) for k in ("summary", "arrays", "plots")]
        if not (isinstance(result, Result) and all(parts)):
            raise CljaxError(f"analysis {a.name!r}: its finalize returns {type(result).__name__}, not a "
                             f"cljax.analysis.registry.Result of three dicts (summary, arrays, plots): return one "
                             f"(nothing was written).")

    summary: dict[str, Any] = {
        "algo_dir": str(algo_dir),
        "run_id": run_id,
        "n_task_folders": n,
        "n_eval_tasks": T,
        "complete": n == T,
        "in_progress": writer if n < T else None,  # the run writing the folder (host, pid, since), or None
        "n_repeats": R,
        "n_snapshots": L,
        "variant": variant,
        "std": RULE,
        "plugin_analyses": plugins,
    }
    owner = dict.fromkeys(summary, "cljax analyze itself")  # summary key -> who wrote it
    for a, result in zip(selected, outputs):
        taken = sorted(summary.keys() & result.summary.keys())
        if taken:  # both named: the one that came first in this order need not be the plugin
            raise CljaxError(f"analysis {a.name!r} and {owner[taken[0]]} both write the summary key(s) "
                             f"{', '.join(taken)}: give the plugin's keys other names (nothing was written).")
        owner.update(dict.fromkeys(result.summary, f"analysis {a.name!r}"))
        try:  # found now, not when summary.json is written after every other file
            json.dumps(jsonable(result.summary), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise CljaxError(f"analysis {a.name!r} returns a summary that JSON cannot hold ({exc}): give it numbers, "
                             f"strings, lists and dicts (nothing was written).") from None
        summary.update(result.summary)
    written_by: dict[str, str] = {}  # a file two analyses write would keep one's and drop the other's
    for a, result in zip(selected, outputs):
        for name, suffix in [*((n, ".npz") for n in result.arrays), *((n, ".png") for n in result.plots)]:
            if not (isinstance(name, str) and Path(name).name == name and name.endswith(suffix)
                    and not name.startswith(".")):  # a path ("../x") or a name savez would extend: written elsewhere
                raise CljaxError(f"analysis {a.name!r} writes a file named {name!r}: give it a plain file name ending "
                                 f"in {suffix} (nothing was written).")
            if name in written_by:
                raise CljaxError(f"analysis {a.name!r} writes {name}, which analysis {written_by[name]!r} writes too: "
                                 f"give the plugin's file another name (nothing was written).")
            written_by[name] = a.name
    arrays = {name: a for result in outputs for name, a in result.arrays.items()}
    figures = {name: draw if a.name in summary["plugin_analyses"] else captioned(draw, _caption(R, n, T, name, ahead))
               for a, result in zip(selected, outputs) for name, draw in result.plots.items()} if make_plots else {}
    summary["files"] = ["summary.json", *sorted(arrays, key=_file_rank), *sorted(figures, key=_file_rank)]
    summary = jsonable(summary)
    writers = {**{name: (lambda path, a=arrays[name]: np.savez_compressed(path, **a)) for name in arrays},  # mostly
               **figures,  # NaN: the (R, n, T) rows of a long run with --eval-tasks current or window:K
               "summary.json": lambda path: path.write_text(readable_json(summary))}
    # Read while a run wrote it, or on a filesystem without file locks (no lock held: see
    # analyze_run), the run may have been replaced.
    record = read_run_record(algo_dir)
    if record is not None and run_id is not None and record.get("run_id") != run_id:
        raise CljaxError(f"{algo_dir} now holds another run (run.json's id changed while it was analysed: a `cljax "
                         f"run --overwrite`): nothing was written; analyze it again when that run has written it.")
    write_all(out, writers, algo_dir, run_id, critical=critical)
    return summary


# analyze_run takes _analyze_run's arguments (but the lock's record): its signature and arguments' text
analyze_run.__signature__ = inspect.signature(_analyze_run).replace(
    parameters=[q for q in inspect.signature(_analyze_run).parameters.values() if q.name != "writer"])
analyze_run.__doc__ += "\n\n" + (_analyze_run.__doc__ or "")


# cljax's plots that draw means without a band, and only the tasks trained so far (the n x n block)
WITHOUT_BAND = ("accuracy_matrix.png",)
LATER_TASKS = ("accuracy_over_time.png",)  # the plot that draws a partial run's untrained tasks too


def _caption(R: int, n: int, T: int, plot: str, ahead: bool = True) -> str:
    """The line under one of cljax's own plots: over how many repeats its means are, what a band
    is, and a run's tasks so far (a plugin's plot says what it draws); ``ahead``: the run's folders
    evaluate the tasks not trained yet (--eval-tasks all), whose values the curves then draw."""
    band = plot not in WITHOUT_BAND
    over = (f"means over the R = {R} repeats, finite values only" + (" (a band: +-1 sample std over them)" if band
                                                                      else "") if R > 1 else
            "one repeat (R = 1)" + (": no band" if band else ""))
    return over + (f"; a partial run: tasks 0-{n - 1} of its {T} trained" + (
        " (a later task's values are of a network not trained on it yet)" if plot in LATER_TASKS and ahead else "")
        if n < T else "")


def _run_analyses(selected, ctx: RunContext, dirs, folder: TaskFolder, check, progress: bool) -> list:
    """Each analysis's init, its update on every task folder in order, and its finalize: the Results."""
    _, R, T = folder.shape
    states = {a.name: _call(a, "init", a.init, ctx) for a in selected}
    bar = _progress_bar(len(dirs)) if progress else None
    try:
        for i, d in enumerate(dirs):
            if i > 0:
                folder = TaskFolder(i, d, check(d, i))
                if folder.shape[1:] != (R, T):
                    raise CljaxError(f"{d}: test_acc has shape {folder.shape}, expected (L, {R}, {T}) like "
                                     "task_000")
            for a in selected:
                states[a.name] = _call(a, f"update ({d.name})", a.update, states[a.name], folder)
            del folder  # only the states' summaries outlive a folder
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [_call(a, "finalize", a.finalize, states.pop(a.name)) for a in selected]


def _call(a, what: str, fn, *args):
    """An analysis's init, update or finalize. A plugin's own exception is one line naming the
    analysis and the step; a built-in analysis's keeps its traceback (a bug of cljax's)."""
    if getattr(fn, "__module__", "").startswith("cljax."):
        return fn(*args)
    try:
        return fn(*args)
    except CljaxError:
        raise
    except Exception as exc:
        from cljax.registry import plugin_frame

        frame = plugin_frame(exc)  # the plugin file's own line, as a plot's error names it
        at = f" at line {frame.lineno} of {frame.filename}" if frame is not None else ""
        raise CljaxError(f"analysis {a.name!r} raised {type(exc).__name__} in {what}{at}: {exc}: fix its plugin, or "
                         f"leave it out of --plugin (nothing was written).") from None


def _progress_bar(total: int):
    """On a terminal only (a log or a pipe gets none), and cleared when done or stopped: the
    summary or an error line follows on a clean line."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="folder", desc="task folders", file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None)


# Host memory of the analysis per cell of its (R, n, T) accuracy matrices (or of the band, (R, n,
# K), when they are not kept dense), at its peak: about 19 float64 arrays of that shape
# (docs/scale.md, "Analysis of long runs").
BYTES_PER_CELL = 160


def writing_now(algo_dir: Path) -> str | None:
    """What to do when a folder does not check while a run writes it (an ``--overwrite`` rebuilding
    it, say): not a repair, but waiting; None when no run writes it."""
    w = live_writer(algo_dir)
    return None if w is None else (f"a run is writing this folder now (pid {w.get('pid', '?')} on "
                                   f"{w.get('host', '?')}, since {w.get('since', '?')}): wait for it to write it, then "
                                   f"run this command again")


def _verifier(algo_dir: Path, first: Path):
    """(check, run id): check(folder, t) -> its metadata; one CljaxError line when a task folder is not this run's
    whole folder (missing or damaged files, contents other than their recorded sha256, another
    run's id), as a resume checks it; the run is run.json's (or, without one, task_000's).
    initial/, which the weight-change metrics read, is checked here at once."""
    record = read_run_record(algo_dir)
    foreign = foreign_record(algo_dir, record) if live_writer(algo_dir) is None else None  # (a writer: wait)
    if foreign:
        raise CljaxError(f"{foreign}.")
    first_meta = results.load_metadata(first) if record is None else {}
    run_id = record["run_id"] if record is not None else first_meta.get("run_id")
    # the --eval-tasks every folder was written under (a resume refuses another): run.json's, else task_000's
    reference = ((algo_dir / RUN_RECORD, record["config"].get("eval_tasks", "all")) if record is not None else
                 (first / "metadata.json", folder_mode(first_meta)))

    def check(folder: Path, t: int, fix: str = "restore it from a copy, or write it again (`cljax run` with the run's "
                                               "flags and --repair)") -> dict:
        read: dict = {}
        problem = verify_task_dir(folder, t, run_id, hashes=True, into=read)
        if problem is not None:
            raise CljaxError(f"{problem}: the analysis reads only its run's own, whole files; "
                             f"{writing_now(algo_dir) or fix}.")
        if t >= 0 and (other := other_mode(read["metadata"], folder / "metadata.json", reference)):
            raise CljaxError(f"{other}; restore the changed one from a copy (nothing was written).")
        return read["metadata"]

    if (algo_dir / INITIAL).exists():
        check(algo_dir / INITIAL, -1, "run the run's `cljax run` command again, which writes it again from the "
                                      f"seed (finished or not), or move {INITIAL}/ out (the change from the initial "
                                      "weights is then measured from task_000's first snapshot)")
    elif wrote_initial(record):  # so it was deleted since
        print(f"warning: {algo_dir / INITIAL} is missing, so the change from the initial weights is measured from "
              f"task_000's first snapshot; run the run's `cljax run` command again to write it from the seed.",
              file=sys.stderr)
    return check, run_id
