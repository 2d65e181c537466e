"""The pieces every plot of :mod:`cljax.analysis.plots` is drawn with: a figure on the Agg canvas,
the band of the mean +- one sample std over repeats (finite values only, cut at an accuracy's
range, in bins for a long curve), whole task ticks, and the atomic save.
"""

from __future__ import annotations

import contextvars
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cljax.analysis.spread import mean_std_axis0
from cljax.safe_files import atomic_write


def _figure(**kwargs) -> Figure:
    """A figure drawn by the Agg canvas: importing this module never changes the user's backend."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _mean_std(values_RX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over axis 0 of the finite values (no band where fewer than two)."""
    v = np.asarray(values_RX, dtype=np.float64)
    mean, std, _ = mean_std_axis0(v[None] if v.ndim == 1 else v)
    return mean, std


# A curve of more points than this (a long run's tasks or snapshots) is drawn as the means of
# consecutive bins of its points: each repeat's mean over a bin, then the mean and std of those
# over repeats; a note on the axes says how many points a bin holds.
MAX_POINTS = 200


def _binned(x: np.ndarray, values_RX: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """x and (R, X) values in bins of k consecutive points (k = 1: as given; default: the fewest
    that keep MAX_POINTS points): the bins' mean x and each repeat's mean over its finite values
    in the bin (NaN where none)."""
    n = x.shape[0]
    k = max(1, -(-n // MAX_POINTS)) if k is None else k
    if k == 1:
        return x, values_RX, 1
    pad = -n % k
    xs = np.concatenate([x, np.full(pad, np.nan)]).reshape(-1, k)
    v = np.concatenate([values_RX, np.full((values_RX.shape[0], pad), np.nan)], axis=1)
    v = v.reshape(values_RX.shape[0], -1, k)
    finite = np.isfinite(v)
    count = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(count > 0, np.where(finite, v, 0.0).sum(axis=-1) / np.maximum(count, 1), np.nan)
    # x of a bin: the mean of its points with a value in some repeat (all its points where none has)
    held = finite.any(axis=0) & np.isfinite(xs)
    x_held = np.where(held, xs, 0.0).sum(axis=1) / np.maximum(held.sum(axis=1), 1)
    return np.where(held.any(axis=1), x_held, np.nanmean(xs, axis=1)), means, k


def _binned_apart(x: np.ndarray, values_RX: np.ndarray, breaks) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`_binned` in each stretch of x between two ``breaks`` (a point at a break ends its
    stretch), with a NaN point between the stretches: no bin averages two sides of a break. The
    bin size is the whole curve's, so every stretch's points are binned alike."""
    k = max(1, -(-x.shape[0] // MAX_POINTS))
    stretch = np.searchsorted(np.sort(np.asarray(breaks, dtype=np.float64)), x, side="left")
    xs, vs = [], []
    for s in np.unique(stretch):
        bx, bv, _ = _binned(x[stretch == s], values_RX[:, stretch == s], k)
        xs += [bx, [np.nan]]
        vs += [bv, np.full((values_RX.shape[0], 1), np.nan)]
    return np.concatenate(xs[:-1]), np.concatenate(vs[:-1], axis=1), k


def _bin_note(ks) -> str:
    """What a point is, for the bin sizes of an axes' curves (1: a curve drawn point by point)."""
    binned = sorted(set(ks) - {1})
    sizes = " or ".join(map(str, binned))
    if len(set(ks)) == 1:
        return f"each point: the mean of {sizes} consecutive ones"
    return f"each point of a curve of over {MAX_POINTS} points: the mean of {sizes} consecutive ones"


ACCURACY, GAP = (0.0, 1.0), (-1.0, 1.0)  # the ranges of an accuracy and of a difference of two


def _band(ax, x, values_RX, label=None, color=None, marker=None, limits=None, breaks=(), band=True, zorder=None):
    """The mean as a line with a band of one std, cut at ``limits`` (lo, hi) where the values
    cannot pass them (an accuracy's mean + std can exceed 1; the band stops at 1). A finite point
    with no finite neighbour (T = 1; a task evaluated at one snapshot only) draws no line segment
    and no band: it is a marker with an error bar (cut the same way; ``band`` False: the marker
    alone). A label that starts with "_" is kept in the legend (matplotlib hides those).
    More than :data:`MAX_POINTS` points are drawn in bins (:func:`_binned`), without markers. The
    line and band break at each x of ``breaks``, and no bin holds points of both sides of one
    (:func:`_binned_apart`); with :data:`MAX_POINTS` breaks or more (a stretch between two is
    less than a point wide) they are not drawn, and the curve is binned whole. ``band`` False: the
    mean's line only. ``zorder``: of the line and its lone points."""
    v = np.asarray(values_RX, dtype=np.float64)
    v = v[None] if v.ndim == 1 else v
    apart = 0 < len(breaks) < MAX_POINTS
    binned = _binned_apart if apart else lambda x_, v_, _: _binned(x_, v_)
    x, v, k = binned(np.asarray(x, dtype=np.float64), v, breaks)
    note = getattr(ax, "_cljax_bin_note", None)  # (the annotation, the bin sizes of its curves: 1 unbinned)
    if note is not None:
        note[1].append(k)
        note[0].set_text(_bin_note(note[1]))
    elif k > 1:
        text = ax.annotate(_bin_note([k]), xy=(1.0, 0.0), xycoords="axes fraction",
                           xytext=(-3, 3), textcoords="offset points", ha="right", va="bottom", fontsize=6,
                           color="0.35", zorder=1.9,  # on a ground that keeps it legible, under the curves (not hiding them)
                           bbox={"boxstyle": "square,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
        ax._cljax_bin_note = (text, [*getattr(ax, "_cljax_bins_before", []), k])
    else:
        ax._cljax_bins_before = [*getattr(ax, "_cljax_bins_before", []), 1]
    if k > 1:
        marker = None
    mean, std = _mean_std(v)
    if label is not None and str(label).startswith("_"):
        label = "\u200b" + str(label)  # a zero-width space in front
    (line,) = ax.plot(x, mean, label=label, color=color, marker=marker, markersize=3, zorder=zorder)
    lo, hi = mean - std, mean + std
    if limits is not None:
        lo, hi = np.maximum(lo, limits[0]), np.minimum(hi, limits[1])
    if band:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    ok = np.isfinite(mean)
    alone = ok & ~np.r_[False, ok[:-1]] & ~np.r_[ok[1:], False]
    if alone.any() and not band:
        ax.plot(x[alone], mean[alone], linestyle="none", marker=marker or "o", markersize=2, color=line.get_color(),
                zorder=zorder)
    elif alone.any():
        err = np.stack([np.where(np.isfinite(lo), mean - lo, 0.0), np.where(np.isfinite(hi), hi - mean, 0.0)])
        ax.errorbar(x[alone], mean[alone], yerr=err[:, alone], fmt=marker or "o",
                    markersize=4, capsize=3, color=line.get_color())
    return line


def _task_ticks(axis) -> None:
    """Whole task numbers only, also when a single task is on the axis."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


# A line under every figure drawn inside :func:`captioned` (the analysis's repeats, a partial run),
# wrapped at about as many characters of its 7-point font as fit in an inch.
CAPTION_CHARS_PER_INCH = 17
_CAPTION: contextvars.ContextVar[str] = contextvars.ContextVar("caption", default="")


def captioned(draw, text: str):
    """``draw(path)`` with ``text`` written under the figure it saves."""
    def run(path):
        token = _CAPTION.set(text)
        try:
            return draw(path)
        finally:
            _CAPTION.reset(token)
    return run


def _save(fig, path) -> Path:
    if _CAPTION.get():  # under everything drawn (a legend below the axes too), wrapped to its width
        fig.draw_without_rendering()  # lays the figure out, as the save will
        box = fig.get_tightbbox()  # inches
        fig.text(box.x0 / fig.get_figwidth(), (box.y0 - 0.04) / fig.get_figheight(),
                 textwrap.fill(_CAPTION.get(), max(40, int(CAPTION_CHARS_PER_INCH * box.width))), ha="left", va="top",
                 fontsize=7, color="0.3")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: fig.savefig(f, dpi=110, bbox_inches="tight", format="png"))
    return path


# What a panel with no finite value to draw says, where something was evaluated there.
NO_FINITE = "no finite value: the network diverged (see the summary)"


def note_no_value(ax, text: str = NO_FINITE) -> None:
    """Write ``text`` across an empty panel, above the chance line an accuracy panel draws."""
    ax.text(0.5, 0.75, text, transform=ax.transAxes, ha="center", va="center", fontsize=8)


def left_out_text(values_RX, what: str = "", n_left_out: int | None = None) -> str:
    """'' or 'k of R repeats ... not finite ...': the repeats a mean over repeats leaves out
    somewhere. ``n_left_out`` when the caller knows it (which entries were evaluated); else the
    repeats with a non-finite value where another repeat has a finite one (an entry no repeat
    has is read as not evaluated)."""
    v = np.asarray(values_RX, dtype=np.float64)
    v = v.reshape(v.shape[0], -1)
    if n_left_out is None:
        held = np.isfinite(v).any(axis=0)
        n_left_out = int((~np.isfinite(v) & held).any(axis=1).sum())
    if not n_left_out:
        return ""
    return f"{what + ': ' if what else ''}{n_left_out} of {v.shape[0]} repeats not finite somewhere (diverged), left out there"
