"""Each plot writes a valid, non-trivial PNG."""

import matplotlib.image as mpimg
import numpy as np

from cljax.analysis import (
    plot_accuracy_matrix,
    plot_accuracy_over_time,
    plot_glue_over_tasks,
    plot_learner_vs_expert,
    plot_metrics_over_tasks,
    plot_plasticity_over_tasks,
)
from tests.conftest import distinct_colours

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_nontrivial_png(path):
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert distinct_colours(img) > 20  # more than a blank canvas with a frame
    assert float(img[..., :3].std()) > 0.05


def test_each_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    R, T = 3, 5
    assert_nontrivial_png(plot_accuracy_matrix(rng.uniform(0.4, 1.0, (R, T, T)), tmp_path / "m.png"))
    acc = rng.uniform(0.4, 1.0, (40, R, 3))
    assert_nontrivial_png(plot_accuracy_over_time(acc, tmp_path / "t.png", task_boundaries=[10, 20, 30],
                                                  task_ids=[0, 2, 4], steps=np.arange(40) * 5.0))
    assert_nontrivial_png(plot_learner_vs_expert(rng.uniform(0.5, 1, (R, T)), rng.uniform(0.5, 1, (R, T)),
                                                 tmp_path / "le.png"))
    metrics = {"effective_rank": rng.uniform(5, 10, (R, T)), "dormant_ratio": rng.uniform(0, 0.2, (R, T)),
               "srank": rng.integers(3, 9, (R, T)).astype(float)}
    assert_nontrivial_png(plot_plasticity_over_tasks(metrics, tmp_path / "p.png"))
    glue = {"capacity": rng.uniform(1, 3, (R, T)), "dimension": rng.uniform(2, 8, (R, T)),
            "approx_capacity": np.full((R, T), np.inf), "radius": np.full((R, T), np.nan)}
    assert_nontrivial_png(plot_glue_over_tasks(glue, tmp_path / "g.png"))
    assert_nontrivial_png(plot_metrics_over_tasks({"x": rng.uniform(size=T)}, tmp_path / "sub" / "x.png"))


def test_a_lone_point_is_drawn_with_its_spread_and_task_ticks_stay_whole(tmp_path):
    # T = 1, or a task evaluated at one snapshot only (--eval-tasks current): such a point has no
    # line segment and no band to show; it is a marker with an error bar of the same std.
    from cljax.analysis.plots import _band, _figure, _task_ticks

    fig = _figure()
    ax = fig.subplots()
    values = np.array([[0.6, np.nan, 0.7, 0.8], [0.8, np.nan, 0.9, 1.0]])  # (R, x): x = 0 alone, 2-3 a line
    _band(ax, np.arange(4), values, label="_run_a")
    (bars,) = ax.containers
    xy = bars.lines[0].get_xydata()
    np.testing.assert_allclose(xy, [[0.0, 0.7]])
    low, high = bars.lines[2][0].get_segments()[0][:, 1]
    np.testing.assert_allclose([low, high], [0.7 - np.std([0.6, 0.8], ddof=1), 0.7 + np.std([0.6, 0.8], ddof=1)])
    assert [t.get_text() for t in ax.legend().get_texts()] == ["\u200b_run_a"]  # not hidden by matplotlib
    ax.set_xlim(-0.05, 0.05)  # one task on the axis
    _task_ticks(ax.xaxis)
    ticks = ax.xaxis.get_major_locator()()
    assert len(ticks) >= 1 and all(float(t).is_integer() for t in ticks)


def test_a_long_run_draws_at_most_fifty_task_boundaries(tmp_path, monkeypatch):
    """A thousand dashed task starts grey the whole plot: past 50, one in k is drawn, and the
    axis label says which."""
    from matplotlib.axes import Axes

    drawn, labels = [], []
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **kw: drawn.append(x))
    real_xlabel = Axes.set_xlabel
    monkeypatch.setattr(Axes, "set_xlabel", lambda self, text, **kw: (labels.append(text), real_xlabel(self, text))[1])
    acc = np.random.default_rng(0).uniform(0.4, 1.0, (2000, 2, 2))
    plot_accuracy_over_time(acc, tmp_path / "t.png", task_boundaries=list(range(2, 2000, 2)))
    assert drawn == list(range(2, 2000, 40)) and labels == ["snapshot (dashed: one task start in 20)"]
    drawn.clear()
    plot_accuracy_over_time(acc, tmp_path / "t.png", task_boundaries=list(range(40, 2000, 40)))
    assert len(drawn) == 49 and labels[-1] == "snapshot"


def test_the_current_task_curve_is_drawn_when_given(tmp_path, monkeypatch):
    import cljax.analysis.plots as plots_module

    labels = []
    real = plots_module._band
    monkeypatch.setattr(plots_module, "_band", lambda ax, x, v, label=None, **kw: (labels.append(label),
                                                                                   real(ax, x, v, label=label, **kw))[1])
    acc = np.random.default_rng(0).uniform(0.4, 1.0, (20, 2, 2))
    plot_accuracy_over_time(acc, tmp_path / "t.png", task_ids=[0, 9], current_NR=acc[:, :, 0])
    assert labels == ["task 0", "task 9", "the current task"]
    labels.clear()
    plot_accuracy_over_time(acc, tmp_path / "t.png", task_ids=[0, 9])
    assert labels == ["task 0", "task 9"]


def test_a_long_curve_is_drawn_in_bins_of_each_repeats_means_and_says_so():
    from cljax.analysis import plots

    rng = np.random.default_rng(0)
    n = 1001  # 6 points a bin (ceil(1001 / 200)), the last bin holds 5
    values = rng.uniform(size=(3, n))
    values[1, 7] = np.nan  # a repeat's missing point is left out of its bin's mean
    x, means, k = plots._binned(np.arange(n, dtype=float), values)
    assert k == 6 and means.shape == (3, 167) and x.shape == (167,)
    np.testing.assert_allclose(means[0, 0], values[0, :6].mean())
    np.testing.assert_allclose(means[1, 1], np.mean(np.delete(values[1, 6:12], 1)))
    np.testing.assert_allclose(means[2, -1], values[2, 996:].mean())
    np.testing.assert_allclose(x[[0, -1]], [2.5, 998.0])
    fig = plots._figure()
    ax = fig.subplots()
    line = plots._band(ax, np.arange(n), values, marker="o")
    plots._band(ax, np.arange(n), values + 1)
    assert len(line.get_xdata()) == 167 and line.get_marker() in (None, "None", "")
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["each point: the mean of 6 consecutive ones"]  # once per axes
    # curves of other lengths on one axes (compare's runs of 1001 and 8 tasks): the note says which
    mixed = plots._figure().subplots()
    plots._band(mixed, np.arange(8), values[:, :8])
    plots._band(mixed, np.arange(n), values)
    plots._band(mixed, np.arange(401), values[:, :401])
    assert [t.get_text() for t in mixed.texts] == [
        "each point of a curve of over 200 points: the mean of 3 or 6 consecutive ones"]
    short = plots._figure().subplots()
    assert len(plots._band(short, np.arange(200), values[:, :200]).get_xdata()) == 200 and not short.texts
    sparse = np.full((2, n), np.nan)
    sparse[:, 1000] = 0.7  # one task evaluated: its bin sits at its x, not the bin's middle
    x, means, _ = plots._binned(np.arange(n, dtype=float), sparse)
    assert x[-1] == 1000.0 and means[0, -1] == 0.7 and np.isnan(means[:, :-1]).all()


def test_the_band_is_one_sample_std_around_the_mean():
    from cljax.analysis import plots

    ax = plots._figure().subplots()
    values = np.array([[0.2, 0.5, 0.9], [0.4, 0.5, 0.6], [0.9, 0.8, 0.3]])  # (R, x)
    plots._band(ax, np.arange(3), values)
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
    np.testing.assert_allclose([ys.min(), ys.max()], [(mean - std).min(), (mean + std).max()])


def test_an_accuracy_band_stops_at_0_and_1_and_an_unbounded_one_does_not():
    from cljax.analysis import plots

    dense = np.array([[1.0, 0.0, 0.2], [0.8, 0.2, 0.3], [1.0, 0.0, 0.1]])  # (R, x)
    mean, std = dense.mean(axis=0), dense.std(axis=0, ddof=1)
    assert (mean + std)[0] > 1.0 and (mean - std)[1] < 0.0
    for limits, lo, hi in ((None, mean - std, mean + std),
                           (plots.ACCURACY, np.maximum(mean - std, 0.0), np.minimum(mean + std, 1.0))):
        ax = plots._figure().subplots()
        plots._band(ax, np.arange(3), dense, limits=limits)
        ys = ax.collections[0].get_paths()[0].vertices[:, 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [lo.min(), hi.max()])
    assert ys.max() == 1.0 and ys.min() == 0.0
    # a lone point (no finite neighbour) is an error bar, cut the same way
    ax = plots._figure().subplots()
    plots._band(ax, np.arange(3), np.array([[np.nan, 0.95, np.nan], [np.nan, 0.7, np.nan]]), limits=plots.ACCURACY)
    (segment,) = ax.containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose(segment[:, 1], [0.825 - 0.25 / np.sqrt(2), 1.0])  # a full std below, 1 above


def test_each_plot_draws_the_numbers_it_names(tmp_path, monkeypatch):
    """What reaches the axes: the matrix's mean over the finite repeats, the gap as expert minus
    learner, the expert's best snapshot as its mean over repeats, the earlier-task panel from i = 1."""
    from matplotlib.axes import Axes

    from cljax.analysis import plot_head_vs_probe, plots

    images, lines, bands = [], {}, []
    real_imshow, real_plot, real_band = Axes.imshow, Axes.plot, plots._band
    monkeypatch.setattr(Axes, "imshow", lambda self, X, **kw: (images.append(np.array(X)), real_imshow(self, X, **kw))[1])
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **kw: (lines.__setitem__(kw.get("label"), a),
                                                               real_plot(self, *a, **kw))[1])
    monkeypatch.setattr(plots, "_band", lambda ax, x, v, label=None, **kw: (bands.append((label, np.asarray(x), v)),
                                                                            real_band(ax, x, v, label=label, **kw))[1])
    A = np.array([[[0.9, 0.5], [0.7, 0.8]], [[0.7, 0.3], [0.5, np.nan]], [[0.8, 0.1], [0.3, 0.6]]])  # (R, T, T)
    plot_accuracy_matrix(A, tmp_path / "m.png")
    np.testing.assert_allclose(images[0], [[0.8, 0.3], [0.5, 0.7]])  # repeat 1's NaN left out

    learner = np.array([[0.9, 0.6], [0.7, 0.8]])  # (R, T)
    expert = np.array([[0.95, 0.9], [0.85, 0.7]])
    best = np.array([[0.97, 0.9], [np.nan, 0.95]])  # repeat 1 diverged on task 0: left out
    gap_best = np.array([[0.05, 0.1], [np.nan, 0.2]])
    plot_learner_vs_expert(learner, expert, tmp_path / "le.png", expert_best_RT=best, gap_best_RT=gap_best)
    drawn = {label: v for label, _, v in bands}
    np.testing.assert_allclose(drawn["learner R[i, i]"], learner)
    np.testing.assert_allclose(drawn["expert E[i]"], expert)
    np.testing.assert_allclose(drawn["G[i] = E[i] - R[i, i]"], expert - learner)
    np.testing.assert_allclose(lines["expert, best snapshot"][1], [0.97, 0.925])
    np.testing.assert_allclose(lines["G from both best snapshots"][1], [0.05, 0.15])  # one-step spikes left out

    bands.clear()
    earlier = np.array([[np.nan, 0.6, 0.7], [np.nan, 0.8, 0.5]])  # (R, n): folder 0 has no earlier task
    last = np.array([[0.6, 0.7, 0.9], [0.5, 0.4, 0.8]])  # (R, T)
    plot_head_vs_probe({"head": earlier}, {"head": last}, tmp_path / "p.png")
    (_, x0, v0), (_, x1, v1) = bands
    np.testing.assert_array_equal(x0, [1, 2])
    np.testing.assert_allclose(v0, earlier[:, 1:])
    np.testing.assert_array_equal(x1, [0, 1, 2])
    np.testing.assert_allclose(v1, last)


def test_a_window_of_a_long_run_is_shown_on_its_own_tasks(tmp_path, monkeypatch):
    # --eval-tasks current at T = 2000: the one evaluated task sat against the right edge of a
    # 2000-task axis, its error bar clipped.
    from cljax.analysis import plot_head_vs_probe, plots

    shown = []  # each figure's panels as saved: x-limits and title
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (shown.append([(ax.get_xlim(), ax.get_title())
                                                                         for ax in fig.axes]), real(fig, path))[1])
    T = 2000
    last = np.full((2, T), np.nan)
    last[:, -1] = [0.8, 0.9]
    for window in (1, 3):
        last[:, -window:] = 0.7 if window > 1 else last[:, -1:]
        plot_head_vs_probe({"head": np.full((2, T), np.nan)}, {"head": last}, tmp_path / "p.png",
                           every_task_evaluated=False)
        (left, left_title), (right, right_title) = shown[-1]
        assert left == (0.5, T - 0.5) and left_title == ""  # nothing evaluated on the left: the whole axis
        assert right == (T - window - 0.5, T - 0.5)
        assert right_title == ("only task 1999 evaluated here (--eval-tasks): the axis shows it" if window == 1 else
                               "only tasks 1997-1999 evaluated here (--eval-tasks): the axis shows those")


def test_the_current_task_curve_breaks_at_task_starts_in_the_bins_of_the_task_curves(tmp_path, monkeypatch):
    # 20 tasks x 10 snapshots: 200 points, no bins. The breaks (NaN between tasks) were inserted
    # before the binning: 219 points took bins of 2, a note claimed it for every curve, and the
    # bins' means joined the line across task starts again.
    from matplotlib.axes import Axes

    drawn, real = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, *a, **k: (drawn.append((np.asarray(x), np.asarray(y), k)),
                                                                   real(self, x, y, *a, **k))[1])
    n, per = 200, 10
    acc = np.random.default_rng(0).uniform(0.4, 1.0, (n, 2, 1))
    boundaries = np.arange(per, n, per) - 0.5
    plot_accuracy_over_time(acc, tmp_path / "t.png", task_ids=[0], current_NR=acc[:, :, 0],
                            task_boundaries=boundaries)
    current = next((x, y) for x, y, k in drawn if k.get("label") == "the current task")
    task = next((x, y) for x, y, k in drawn if k.get("label") == "task 0")
    assert len(task[0]) == n and len(current[0]) == n + len(boundaries)  # the same points, plus one break each
    assert np.isnan(current[1]).sum() == len(boundaries)
    np.testing.assert_array_equal(current[1][~np.isnan(current[1])], task[1])


def test_in_a_long_run_the_current_task_curve_bins_within_each_task_and_stays_a_line(tmp_path, monkeypatch):
    # 300 snapshots, bins of 2. The bins were made across the whole curve and the breaks put in
    # after: a bin averaged one task's last snapshot with the next task's first, and most bins,
    # cut off from their neighbours by a break, were drawn as error bars (the curve has no band).
    # Task t's accuracy is 0.25 or 0.75 by its parity: a bin that mixed two tasks reads 0.5.
    from matplotlib.axes import Axes

    from cljax.analysis import plots

    drawn, real, fig = [], Axes.plot, []
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, *a, **k: (drawn.append((np.asarray(y), k)),
                                                                   real(self, x, y, *a, **k))[1])
    monkeypatch.setattr(plots, "_save", lambda f, path: fig.append(f))
    # 3: two bins a task, a line; 2: one bin a task, a dot each; 1: 300 tasks, more than a point
    # each could show: no breaks, bins of 2 snapshots (of two tasks), a line
    for per_task in (3, 2, 1):
        drawn.clear(), fig.clear()
        n_tasks = 300 // per_task
        task = np.repeat(np.arange(n_tasks), per_task)
        current = np.repeat(np.where(task % 2 == 0, 0.25, 0.75)[:, None], 2, axis=1)
        acc = np.full((300, 2, 1), np.nan)
        acc[:6, :, 0] = 0.5  # task 0's own curve: 3 bins, a line with its band
        plots.plot_accuracy_over_time(acc, tmp_path / "t.png", task_ids=[0], current_NR=current,
                                      steps=np.arange(1.0, 301.0), task_boundaries=per_task * np.arange(1.0, n_tasks))
        ax = fig[0].axes[0]
        assert not ax.containers, per_task  # no error bars
        line = next(y for y, k in drawn if k.get("label") == "the current task")
        if per_task == 1:
            assert len(line) == 150 and set(line.round(6)) == {0.5}
            continue
        assert set(line[np.isfinite(line)].round(6)) == {0.25, 0.75}
        if per_task == 2:
            dots = drawn[-1][0]
            assert len(dots) == n_tasks and set(dots.round(6)) == {0.25, 0.75}


def test_a_metrics_panel_names_the_repeats_its_mean_leaves_out(tmp_path, monkeypatch):
    # The accuracy plots said so; a GLUE or plasticity panel averaged the finite repeats without a word.
    from matplotlib.axes import Axes

    titles = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda self, text, *a, **k: titles.append(text) or real(self, text, *a, **k))
    v = np.ones((3, 4))
    v[1, 2] = np.nan  # repeat 1 diverged at task 2
    plot_metrics_over_tasks({"radius": v, "dimension": np.ones((3, 4)), "capacity": np.full((3, 4), np.nan)},
                            tmp_path / "m.png")
    assert titles[:3] == ["radius\n(1 of 3 repeats left out where not finite)", "dimension", "capacity"]


def test_a_window_of_a_long_run_is_drawn_task_by_task_in_the_probe_plot(tmp_path, monkeypatch):
    # A 5000-task row was binned by 25 before the axis zoomed to the window's 4 tasks: one point for 4.
    import numpy as np

    from cljax.analysis import plots

    figs = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    T = 5000
    last = np.full((3, T), np.nan)
    last[:, -4:] = [[0.6, 0.7, 0.8, 0.9]] * 3
    earlier = np.full((3, T), 0.5)
    plots.plot_head_vs_probe({"head": earlier}, {"head": last}, tmp_path / "p.png")
    right = figs[-1].axes[1]
    np.testing.assert_array_equal(right.lines[0].get_xdata(), [4996, 4997, 4998, 4999])
    np.testing.assert_allclose(right.lines[0].get_ydata(), [0.6, 0.7, 0.8, 0.9])
    assert not [t for t in right.texts if "consecutive" in t.get_text()]


def test_the_capacity_floor_is_drawn_as_its_band_is_and_named_only_where_it_has_a_value(tmp_path, monkeypatch):
    # One task: a dashed line through one point drew nothing, while the legend named it; with no
    # finite floor (every repeat diverged) the legend named a line that is not there; a long run's
    # floor was drawn point by point beside a band drawn in bins.
    from cljax.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda f, path: figs.append(f))

    def floor_line(T, floor):
        figs.clear()
        capacity = np.linspace(1.0, 2.0, 2 * T).reshape(2, T)
        plot_glue_over_tasks({"capacity": capacity, "capacity_floor": floor}, tmp_path / "g.png")
        ax = figs[0].axes[0]
        lines = [ln for ln in ax.lines if ln.get_label().startswith("floor")]
        return ax, (lines[0] if lines else None)

    ax, line = floor_line(1, np.full((2, 1), 2.04))
    assert line.get_marker() == "x" and line.get_ydata().tolist() == [2.04]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["floor (every dichotomy inseparable)"]
    ax, line = floor_line(3, np.full((2, 3), np.nan))
    assert line is None and ax.get_legend() is None
    ax, line = floor_line(300, np.tile(np.arange(300.0), (2, 1)))
    assert len(line.get_xdata()) == 150 and line.get_marker() == "None"
    np.testing.assert_allclose(line.get_ydata(), np.arange(150) * 2 + 0.5)  # bins of 2, as the band's


def test_the_gap_panel_of_a_run_with_a_diverged_repeat_says_over_which_repeats_it_is(tmp_path, monkeypatch):
    # Learner finite in repeats 1, 2 and the expert in repeat 0 at task 1: the left panel has a mean
    # of each there, the gap none; the panel said nothing of why.
    from cljax.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda f, path: figs.append(f))
    learner = np.array([[0.6, np.nan], [0.7, 0.5], [0.8, 0.5]])
    expert = np.array([[0.9, 0.5], [0.9, np.nan], [0.9, np.nan]])
    plot_learner_vs_expert(learner, expert, tmp_path / "l.png")
    gap = figs[0].axes[1]
    assert gap.get_title() == "each G[i]: over the repeats whose learner and expert are both finite at task i"
    assert np.isnan(gap.lines[0].get_ydata()[1])
    figs.clear()
    plot_learner_vs_expert(learner[1:, :1], expert[1:, :1], tmp_path / "l.png")
    assert figs[0].axes[1].get_title() == ""  # every repeat finite: nothing to say


def test_a_panel_whose_values_span_many_orders_is_drawn_on_a_symlog_axis(tmp_path, monkeypatch):
    # A repeat whose weights blew up but stayed finite (1e20) put every other value on 0 of a
    # linear axis.
    from cljax.analysis import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda f, path: figs.append(f))
    calm = np.array([[1.0, 1.2, 1.5], [0.9, 1.1, 1.3]])
    blown = calm.copy()
    blown[1, 2] = 1e20
    plot_metrics_over_tasks({"weight_norm": blown, "dormant_ratio": calm / 2}, tmp_path / "m.png")
    wide, fraction = figs[0].axes[:2]
    assert wide.get_yscale() == "symlog" and wide.get_title().endswith("(symlog: values span over 4 orders)")
    assert fraction.get_yscale() == "linear" and fraction.get_title() == "dormant_ratio"
