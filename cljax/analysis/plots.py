"""PNG plots of the analyses (matplotlib's Agg canvas; no display, no pyplot global state).

Every function takes numpy arrays and an output path, writes one PNG and returns its path.
Arrays with a leading repeat axis R are drawn as the mean across repeats with a band of one
sample standard deviation (ddof = 1); non-finite values are left out
(:mod:`cljax.analysis.spread`, the rule of the summaries). A curve of a long run (more than
:data:`~cljax.analysis.plot_parts.MAX_POINTS` tasks or snapshots) is drawn in bins of consecutive points, each repeat's mean
over a bin first, and the axes say so.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

from cljax.analysis.plot_parts import (ACCURACY, GAP, _band, _binned, _figure, _mean_std, _save, _task_ticks,
                                       left_out_text, note_no_value)


def plot_accuracy_matrix(accuracy_matrix, path: str | os.PathLike, title: str = "Accuracy matrix",
                         block: int = 1, left_out: str = "", evaluated: bool = True, blank: str = "") -> Path:
    """Heatmap of R[i, j] (rows: after training task i; columns: evaluated task j).

    ``accuracy_matrix``: (T, T) or (R, T, T) (averaged over repeats). Values annotated for T <= 12.
    ``block``: each entry is the mean over a block of ``block`` x ``block`` tasks (a long run's
    image, :meth:`cljax.analysis.band.Band.mean_matrix`); the axes count tasks either way.
    ``left_out``: the title's note on repeats left out of the mean (:func:`left_out_text`; found
    here for an (R, T, T) matrix); ``evaluated``: some entry was evaluated, so an image with no
    finite value is a diverged network's, and says so; ``blank``: the title's note on what a
    blank cell is (the entries an --eval-tasks mode does not evaluate).
    """
    A = np.asarray(accuracy_matrix, dtype=np.float64)
    if A.ndim == 3:
        left_out = left_out or left_out_text(A)
        A = _mean_std(A.reshape(A.shape[0], -1))[0].reshape(A.shape[1:])
    T = A.shape[0]
    side = max(T, 4)  # a small matrix still gets room for its labels and title
    width = 1.2 + 0.45 * min(side, 30)  # inches
    fig = _figure(figsize=(width, 1.0 + 0.4 * min(side, 30)))
    ax = fig.subplots()
    if block > 1:
        title = f"{title}\n(each cell: mean over {block} x {block} tasks)"
    if blank:
        title = f"{title}\n" + textwrap.fill(blank, max(30, int(11 * width)))
    if left_out:  # wrapped to the figure's width (about 11 title characters an inch): it ran under the colorbar
        title = f"{title}\n" + textwrap.fill(left_out, max(30, int(11 * width)))
    if evaluated and not np.isfinite(A).any():
        note_no_value(ax, "no finite value:\nthe network diverged\n(see the summary)")
    extent = (-0.5, A.shape[1] * block - 0.5, A.shape[0] * block - 0.5, -0.5)
    im = ax.imshow(A, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper", interpolation="nearest", extent=extent)
    fig.colorbar(im, ax=ax, label="test accuracy")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title)
    _task_ticks(ax.xaxis)
    _task_ticks(ax.yaxis)
    if T <= 12 and block == 1:
        for i in range(T):
            for j in range(T):
                if np.isfinite(A[i, j]):  # not evaluated: left blank
                    ax.text(j, i, f"{A[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if A[i, j] < 0.6 else "black")
    return _save(fig, path)


MAX_BOUNDARIES = 50


def plot_accuracy_over_time(
    accuracy_NRJ,
    path: str | os.PathLike,
    task_boundaries: Sequence[float] = (),
    task_ids: Sequence[int] | None = None,
    steps: Sequence[float] | None = None,
    title: str = "Test accuracy over training",
    current_NR=None,
    legend_title: str | None = None,
    left_out: str = "",
) -> Path:
    """Accuracy on each of J tasks along the whole run, mean +- std across repeats.

    ``accuracy_NRJ``: (n_snapshots, R, J), the snapshots of all task folders concatenated;
    ``task_boundaries``: x positions where a new task starts (dashed lines); ``steps``: x values
    (default snapshot index); ``task_ids``: the label of each of the J curves; ``current_NR``
    (n_snapshots, R), if given: the accuracy on the task being trained, drawn in black;
    ``left_out``: the title's note on repeats left out of the means (:func:`left_out_text`). With
    no finite value at all (every task is evaluated at some snapshot), the network diverged: a
    note says so.
    """
    acc = np.asarray(accuracy_NRJ, dtype=np.float64)
    n, _, J = acc.shape
    x = np.arange(n) if steps is None else np.asarray(steps, dtype=np.float64)
    ids = list(range(J)) if task_ids is None else list(task_ids)
    fig = _figure(figsize=(9, 4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].resampled(max(J, 2))
    for j in range(J):
        _band(ax, x, acc[:, :, j].T, label=f"task {ids[j]}", color=cmap(j), limits=ACCURACY)
    if current_NR is not None:  # one segment per task: a new task's first snapshot is another task's accuracy
        line = _band(ax, x, np.asarray(current_NR, dtype=np.float64).T, label="the current task", color="black",
                     limits=ACCURACY, breaks=task_boundaries, band=False,  # the task's own curve has the band
                     zorder=3)  # over the tasks' own curves: under them it was hidden where a task is evaluated only while trained
        line.set(linewidth=1.0, linestyle=(0, (1, 2)))  # dotted
    every = -(-len(task_boundaries) // MAX_BOUNDARIES)  # more lines than this grey the whole plot
    for b in list(task_boundaries)[::max(every, 1)]:
        ax.axvline(b, color="gray", linestyle="--", linewidth=0.7)
    ax.axhline(0.5, color="black", linestyle=":", linewidth=0.7)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(("training step" if steps is not None else "snapshot")
                  + (f" (dashed: one task start in {every})" if every > 1 else ""))
    ax.set_ylabel("test accuracy")
    _task_ticks(ax.xaxis)  # steps and snapshots are whole numbers (one short task had ticks at 2.5)
    ax.set_title(f"{title}\n{left_out}" if left_out else title)
    if not np.isfinite(acc).any() and (current_NR is None or not np.isfinite(current_NR).any()):
        note_no_value(ax)
        if n > 1:  # the run's steps on the axis, not those of its task starts only
            ax.set_xlim(float(np.min(x)), float(np.max(x)))
    # below the axes, not over the curves
    ax.legend(fontsize=7, ncol=min(J, 8), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False,
              title=legend_title, title_fontsize=7)
    return _save(fig, path)


def plot_learner_vs_expert(
    learner_RT, expert_RT, path: str | os.PathLike, title: str = "Learner vs expert on each new task",
    expert_best_RT=None, variant: str = "final", gap_best_RT=None, note: str | None = None,
) -> Path:
    """Left: R[i, i] of the continual learner and E[i] of the fresh expert per task (and the
    expert's best snapshot, ``expert_best_RT``, dashed); right: the plasticity gap
    G[i] = E[i] - R[i, i] (and, dashed, ``gap_best_RT``: the gap of both best snapshots, which a
    one-step spike of either does not move). All (R, T), mean +- std across repeats. ``variant``
    "auc": R[i, i] is the learner's area under its accuracy curve, which the legend and title say.
    ``note``: a line over the left panel (how many cells and repeats ended near chance, which the
    mean +- std hides when the repeats split in two)."""
    learner = np.asarray(learner_RT, dtype=np.float64)
    expert = np.asarray(expert_RT, dtype=np.float64)
    x = np.arange(learner.shape[-1])
    fig = _figure(figsize=(10, 3.9), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2, sharex=True)  # the gap's tasks are the learner's, also where it is not finite
    if variant == "auc":
        title += " (auc: the learner's area under its curve, the expert's last snapshot)"
    _band(ax0, x, learner, label="learner R[i, i]" + (" (auc)" if variant == "auc" else ""), marker="o",
          limits=ACCURACY)
    _band(ax0, x, expert, label="expert E[i]", marker="s", limits=ACCURACY)
    if expert_best_RT is not None:
        best = np.asarray(expert_best_RT, dtype=np.float64)
        xb, best, _ = _binned(x.astype(np.float64), best[None] if best.ndim == 1 else best)  # as the bands
        mean, _ = _mean_std(best)
        ax0.plot(xb, mean, linestyle="--", color="gray", label="expert, best snapshot",
                 marker="x" if np.isfinite(mean).sum() < 2 else None)  # one task: a marker, not a line
    ax0.axhline(0.5, color="black", linestyle=":", linewidth=0.7)
    if note:
        ax0.set_title(note, fontsize=8)
    ax0.set_xlabel("task i")
    _task_ticks(ax0.xaxis)
    ax0.set_ylabel("test accuracy")
    below = dict(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)  # not over the bands
    ax0.legend(ncol=3, **below)
    _band(ax1, x, expert - learner, label="G[i] = E[i] - R[i, i]", color="tab:red", marker="o", limits=GAP)
    if gap_best_RT is not None:
        gap_best = np.asarray(gap_best_RT, dtype=np.float64)
        xb, gap_best, _ = _binned(x.astype(np.float64), gap_best[None] if gap_best.ndim == 1 else gap_best)
        mean, _ = _mean_std(gap_best)
        ax1.plot(xb, mean, linestyle="--", color="gray", label="G from both best snapshots",
                 marker="x" if np.isfinite(mean).sum() < 2 else None)
    ax1.axhline(0.0, color="black", linewidth=0.7)
    ax1.set_xlabel("task i")
    _task_ticks(ax1.xaxis)
    ax1.set_ylabel("plasticity gap")
    ax1.legend(**below)
    for ax, values, limits in ((ax0, (learner, expert), ACCURACY), (ax1, (expert - learner,), GAP)):
        if not any(np.isfinite(v).any() for v in values):  # the current task is always evaluated
            note_no_value(ax)
            ax.set_xlim(-0.5, len(x) - 0.5)  # the run's tasks and the values' range, not matplotlib's default
            ax.set_ylim(*limits)
    left_out = "; ".join(t for t in (left_out_text(learner, "learner", int((~np.isfinite(learner)).any(-1).sum())),
                                     left_out_text(expert, "expert", int((~np.isfinite(expert)).any(-1).sum())))
                         if t)
    if left_out:  # the left panel's two means may be over other repeats than each other and the gap
        ax1.set_title("each G[i]: over the repeats whose learner and expert are both finite at task i", fontsize=8)
    fig.suptitle(f"{title}\n{left_out}" if left_out else title)
    return _save(fig, path)


def plot_metrics_over_tasks(
    metrics: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    title: str = "Metrics over tasks",
    x=None,
    xlabel: str = "task",
    lines: Mapping[str, tuple[str, np.ndarray]] | None = None,
    notes: Mapping[str, str] | None = None,
) -> Path:
    """One panel per metric, each an (R, T) array (or (T,)), mean +- std across repeats;
    ``lines``: panel name -> (label, (R, T) array) drawn in it as a dashed mean, with a legend;
    ``notes``: panel name -> a line under its title (what the value depends on)."""
    names = list(metrics)
    if not names:
        raise ValueError("no metrics to plot")
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = _figure(figsize=(4.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        v = np.asarray(metrics[name], dtype=np.float64)
        v = v[None] if v.ndim == 1 else v
        xs = np.arange(v.shape[-1]) if x is None else np.asarray(x)
        _band(ax, xs, v, marker="o" if v.shape[-1] <= 30 else None, limits=RANGES.get(name))
        if name in (lines or {}):
            label, w = lines[name]
            w = np.asarray(w, dtype=np.float64)
            xw, w, _ = _binned(np.asarray(xs, dtype=np.float64), w[None] if w.ndim == 1 else w)  # as the band
            mean, _ = _mean_std(w)
            if np.isfinite(mean).any():  # (no value: no line, and no legend entry for one)
                ax.plot(xw, mean, "--", color="0.4", label=label,
                        marker="x" if np.isfinite(mean).sum() < 2 else None)  # one task: a marker, not a line
                ax.legend(fontsize=7)
        if not np.isfinite(v).any():
            if len(xs):  # the run's tasks on the axis, as in the other panels
                ax.set_xlim(float(np.min(xs)) - 0.5, float(np.max(xs)) + 0.5)
            ax.set_yticks([])  # no values: no scale
            why = (INFINITE_NOTES[name] if name in INFINITE_NOTES and np.isposinf(v).any() and
                   not np.isnan(v).any() else "no finite value: diverged or constant\nrepresentations (see the summary)")
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=8)
        held = np.isfinite(v).any(axis=0)  # a repeat not finite where another is: left out of the mean there
        k = int((~np.isfinite(v) & held).any(axis=-1).sum())
        size, median = span_cells(v)
        wide = size.size > 0 and size.max() > SYMLOG_SPAN * median  # (weights that blew up but stayed finite)
        if wide:  # on a linear axis every other value lay on 0
            ax.set_yscale("symlog", linthresh=median)
        ax.set_title(name + (f"\n{notes[name]}" if name in (notes or {}) else "")
                     + (f"\n({k} of {v.shape[0]} repeats left out where not finite)" if k else "")
                     + ("\n(symlog: values span over 4 orders)" if wide else ""), fontsize=9)
        ax.set_xlabel(xlabel)
        _task_ticks(ax.xaxis)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


SYMLOG_SPAN = 1e4  # a panel whose largest value passes its median this many times is drawn on a symlog axis


def span_cells(values) -> tuple[np.ndarray, float]:
    """The finite non-zero ``|values|`` and their median (NaN: none), the measure of
    :data:`SYMLOG_SPAN`: a panel's axis here, GLUE's radius note in its summary."""
    v = np.asarray(values, dtype=np.float64)
    size = np.abs(v[np.isfinite(v) & (v != 0)])
    return size, float(np.median(size)) if size.size else float("nan")

# What a metric can be: a band of one std stops there (a norm's mean - std can fall below 0).
_FRACTION, _NON_NEGATIVE = (0.0, 1.0), (0.0, np.inf)
RANGES = {**dict.fromkeys(("dormant_ratio", "dead_ratio", "active_fraction", "center_alignment", "axis_alignment",
                           "center_axis_alignment"), _FRACTION),
          **dict.fromkeys(("effective_rank", "stable_rank", "srank", "feature_norm", "feature_variance",
                           "weight_magnitude", "weight_change_task_start", "weight_change_init", "capacity",
                           "approx_capacity", "dimension", "radius"), _NON_NEGATIVE)}

# What a panel whose every value is +inf says instead (1 / N_R of point manifolds, N_R = 0).
INFINITE_NOTES = {"approx_capacity": "infinite: each class manifold is one point\n(dimension and radius 0; "
                                     "see the summary)"}

PLASTICITY_PANELS = (
    "dormant_ratio", "dead_ratio", "active_fraction", "effective_rank", "stable_rank", "srank",
    "feature_norm", "feature_variance", "weight_magnitude", "weight_change_task_start", "weight_change_init",
)
GLUE_PANELS = (
    "capacity", "approx_capacity", "dimension", "radius", "center_alignment", "axis_alignment",
    "center_axis_alignment",
)


def plot_plasticity_over_tasks(metrics: Mapping[str, np.ndarray], path, x=None,
                               title: str = "Plasticity metrics at the end of each task",
                               notes: Mapping[str, str] | None = None) -> Path:
    """:func:`plot_metrics_over_tasks` on the plasticity metrics present in ``metrics``."""
    chosen = {k: metrics[k] for k in PLASTICITY_PANELS if k in metrics}
    return plot_metrics_over_tasks(chosen or dict(metrics), path, title=title, x=x, notes=notes)


def plot_glue_over_tasks(metrics: Mapping[str, np.ndarray], path, x=None,
                         title: str = "Manifold capacity and geometry over tasks") -> Path:
    """:func:`plot_metrics_over_tasks` on the GLUE metrics present in ``metrics``."""
    chosen = {k: metrics[k] for k in GLUE_PANELS if k in metrics}
    floor = {"capacity": ("floor (every dichotomy inseparable)", metrics["capacity_floor"])} \
        if "capacity" in chosen and "capacity_floor" in metrics else None
    return plot_metrics_over_tasks(chosen or dict(metrics), path, title=title, x=x, lines=floor)


def plot_head_vs_probe(earlier_RN: Mapping[str, np.ndarray], last_RT: Mapping[str, np.ndarray], path,
                       title: str = "The head vs a linear probe of the representation",
                       every_task_evaluated: bool = True, evaluated: tuple[bool, bool] = (False, False)) -> Path:
    """Left: accuracy on the tasks trained before folder i, after folder i (x = i >= 1), one band
    per entry of ``earlier_RN`` ((R, n) each); right: accuracy on every task j after the last
    folder, one band per entry of ``last_RT`` ((R, T) each). Mean +- std across repeats. A panel
    with no finite value says why: ``evaluated`` (left, right) says whether some task there was
    evaluated, and so whether its values are not finite (a diverged network) or there are none
    (--eval-tasks current evaluates no earlier task)."""
    fig = _figure(figsize=(10, 3.6), layout="constrained")
    ax0, ax1 = fig.subplots(1, 2)
    over = "tasks j < i" if every_task_evaluated else "the evaluated tasks j < i"
    for ax, curves, xlabel in ((ax0, earlier_RN, f"after task i (mean over {over})"),
                               (ax1, last_RT, "task j (after the last task)")):
        first = 1 if ax is ax0 else 0
        shown = {k: np.asarray(v, dtype=np.float64)[:, first:] for k, v in curves.items()}
        width = max((v.shape[-1] for v in shown.values()), default=0)
        held = np.flatnonzero(np.any([np.isfinite(v).any(axis=0) for v in shown.values()], axis=0)) if width else []
        window = len(held) and held[-1] - held[0] + 1 < width / 4  # a window of a long run: the tasks it evaluated
        drawn = slice(held[0], held[-1] + 1) if window else slice(None)  # (binned whole, K tasks made one point)
        for label, v in shown.items():
            x = np.arange(first, first + v.shape[-1])
            _band(ax, x[drawn], v[:, drawn], label=label, marker="o", limits=ACCURACY)
        if window:
            ax.set_xlim(first + held[0] - 0.5, first + held[-1] + 0.5)
            ax.set_title(f"only task{'s' if len(held) > 1 else ''} {first + held[0]}"  # above the points, never on them
                         f"{f'-{first + held[-1]}' if len(held) > 1 else ''} evaluated here (--eval-tasks): the axis "
                         f"shows {'those' if len(held) > 1 else 'it'}", fontsize=8)
        elif width:  # every task on the axis, also where only some were evaluated (--eval-tasks)
            ax.set_xlim(first - 0.5, first + width - 0.5)
            if 0 < len(held) < width:  # tasks without a point: say why rather than leave them unexplained
                ax.set_title("no point: a task not evaluated here (--eval-tasks), or not finite", fontsize=8)
        if not any(np.isfinite(v).any() for v in shown.values()):
            why = ("no earlier task: one task folder" if ax is ax0 and width == 0 else
                   "no finite value: the network diverged (see the summary)" if evaluated[ax is ax1] else
                   "no task here was evaluated in this run (--eval-tasks)")
            ax.text(0.5, 0.75, why, transform=ax.transAxes, ha="center", va="center", fontsize=8)
        ax.axhline(0.5, color="black", linestyle=":", linewidth=0.7)
        _task_ticks(ax.xaxis)
        if not width:  # nothing to draw (one task: no earlier one): no task ticks
            ax.set_xticks([])
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8, loc="lower left")
    left_out = left_out_text(np.concatenate([np.asarray(v, dtype=np.float64).reshape(len(v), -1)
                                             for v in (*earlier_RN.values(), *last_RT.values())], axis=1))
    fig.suptitle(f"{title}\n{left_out}" if left_out else title)
    return _save(fig, path)


def plot_plasticity_gap(gaps: Mapping[str, np.ndarray], path: str | os.PathLike,
                        late: tuple[int, int] | None = None, best: bool = False) -> Path:
    """One line per run: the plasticity gap (expert - learner) over tasks, ``gaps[label]`` (n, R),
    mean +- std over repeats (cljax compare); ``late``: (first, last) task of the table's late
    figures, shaded, when every run has the same; ``best``: the gap is of both best snapshots."""
    fig = _figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if late is not None:
        ax.axvspan(late[0] - 0.5, late[1] + 0.5, color="0.5", alpha=0.12, linewidth=0,
                   label=f"late tasks {late[0]}-{late[1]} (the table's figures)")
    for label, gap_nR in gaps.items():
        gap = np.atleast_2d(np.asarray(gap_nR, dtype=np.float64).T)  # (R, n); a curve of (n,) is one repeat
        every = int((~np.isfinite(gap)).any(axis=1).sum())  # the current task is always evaluated
        note = ("no finite gap: diverged" if not np.isfinite(gap).any() else
                f"{every} of {gap.shape[0]} repeats not finite at some task, left out there" if every else "")
        _band(ax, np.arange(len(gap_nR)), gap, label=f"{label} ({note})" if note else label, limits=GAP)
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel("task")
    _task_ticks(ax.xaxis)
    ax.set_ylabel("expert - learner, current-task accuracy" + (",\nboth at their best snapshot" if best else ""))
    ax.set_title("Plasticity gap over tasks (mean +- std over repeats)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)  # below: not over the curves
    return _save(fig, path)
