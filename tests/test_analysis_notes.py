"""What the summary, the terminal and the plots say where a figure has no value: why, in words
that match the cause (point manifolds, a diverged network, an undefined metric)."""

import numpy as np

from cljax.analysis import plots


def saved_texts(monkeypatch) -> list:
    """Every saved figure's texts, one list per figure: each panel's notes, title and legend
    entries, and the figure's title."""
    shown = []
    real = plots._save

    def save(fig, path):
        texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        for ax in fig.axes:
            texts += [t.get_text() for t in ax.texts] + [ax.get_title()]
            if ax.get_legend() is not None:
                texts += [t.get_text() for t in ax.get_legend().get_texts()]
        shown.append(texts)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return shown


def test_approx_capacity_of_point_manifolds_is_infinite_by_geometry_not_a_divergence(tmp_path, monkeypatch):
    from cljax.analysis.glue_runs import point_manifold_spread
    from cljax.analysis.summary_text import format_summary

    s = point_manifold_spread([np.inf, np.inf])
    assert (s["n"], s["n_nonfinite"], s["n_infinite"]) == (0, 0, 2) and np.isnan(s["mean"])
    assert s["undefined"].startswith("every anchor is its manifold's one point")
    s = point_manifold_spread([np.inf, 2.0, np.nan])  # one diverged repeat, one of point manifolds
    assert (s["mean"], s["n"], s["n_nonfinite"], s["n_infinite"]) == (2.0, 1, 1, 1) and "undefined" not in s

    shown = saved_texts(monkeypatch)
    plots.plot_glue_over_tasks({"approx_capacity": np.full((2, 3), np.inf), "radius": np.zeros((2, 3))},
                               tmp_path / "g.png")
    assert "infinite: each class manifold is one point\n(dimension and radius 0; see the summary)" in shown[-1]
    assert not any("diverged" in t for t in shown[-1])
    plots.plot_glue_over_tasks({"approx_capacity": np.full((2, 3), np.nan)}, tmp_path / "g.png")
    assert any(t.startswith("no finite value: diverged") for t in shown[-1])

    cap = {"mean": 3.0, "std": 0.1, "n": 2, "n_nonfinite": 0}
    glue = {"per_task": {"capacity": {"last_task": cap}, "capacity_mc_error": {"last_task": cap},
                         "approx_capacity": {"last_task": point_manifold_spread([np.inf, np.inf])}},
            "solver": {"n_probes_solved": 8, "converged_fraction": 1.0}, "settings": {"n_probes": 4}}
    line = [x for x in format_summary({"glue": glue}).splitlines() if x.startswith("GLUE")][0]
    assert line.endswith("; approx_capacity undefined: every anchor is its manifold's one point, as with one image "
                         "per class (--n-subsamples 2) or identical images: dimension and radius 0, 1 / N_R infinite")


def test_the_across_task_capacity_line_names_its_floor_and_says_when_it_sits_there():
    from cljax.analysis.summary_text import format_summary

    def lines(fraction, floor=True, capacity=0.2093):
        cap = {"mean": 3.0, "std": 0.1, "n": 2, "n_nonfinite": 0}
        final = {"capacity": {"mean": capacity, "std": 0.0169, "n": 8, "n_nonfinite": 0},
                 "inseparable_fraction": {"mean": fraction, "std": 0.1, "n": 8, "n_nonfinite": 0}}
        if floor:  # a summary of an earlier cljax has none: no line
            final["capacity_floor"] = {"mean": 0.2069, "std": 0.0171, "n": 8, "n_nonfinite": 0}
        glue = {"per_task": {"capacity": {"last_task": cap}, "capacity_mc_error": {"last_task": cap}},
                "across_tasks": {"final": final, "n_manifolds": 10},
                "solver": {"n_probes_solved": 8, "converged_fraction": 1.0}, "settings": {"n_probes": 4}}
        return [x for x in format_summary({"glue": glue}).splitlines() if x.startswith("GLUE across")]

    (at_floor,) = lines(0.8267)
    assert at_floor.startswith("GLUE across 5 tasks (P = 10), last folder: capacity 0.2093 +- 0.0169, its floor "
                               "0.2069 +- 0.0171 (the capacity were every dichotomy inseparable); 83% of the probes separate nothing: "
                               "within 10% of its floor, the capacity measures the rank of the representation")
    (above,) = lines(0.3, capacity=0.2300)  # 1.11 times the floor
    assert above.endswith("30% of the probes separate nothing")
    assert lines(0.8267, floor=False) == []


def test_the_capacity_panel_draws_its_floor(tmp_path, monkeypatch):
    shown = saved_texts(monkeypatch)
    capacity, floor = np.array([[0.21, 0.22], [0.20, 0.21]]), np.array([[0.20, 0.21], [0.19, np.nan]])
    plots.plot_glue_over_tasks({"capacity": capacity, "capacity_floor": floor, "radius": capacity}, tmp_path / "g.png")
    assert "floor (every dichotomy inseparable)" in shown[-1] and "capacity_floor" not in shown[-1]
    import matplotlib.pyplot as plt

    fig = plt.figure()
    monkeypatch.setattr(plots, "_figure", lambda **kw: fig)  # the figure drawn, to read its lines
    plots.plot_glue_over_tasks({"capacity": capacity, "capacity_floor": floor}, tmp_path / "g.png")
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and np.allclose(dashed[0].get_ydata(), [0.195, 0.21])  # the mean of the finite floors


def test_a_probe_with_one_image_per_class_is_not_measured_in_the_summary_and_the_plot(tmp_path, monkeypatch):
    # --n-subsamples 2: no fold holds both classes, so no probe; it tested no image and no repeat
    # is left out (it read tested_per_task 2 and n_nonfinite R, as if R repeats had diverged).
    from cljax.analysis import analyze_run
    from tests.test_analysis_driver import H, L, RR, T, write_fake_run

    algo = tmp_path / "run"
    write_fake_run(algo)
    for i in range(T):
        d = algo / f"task_{i:03d}"
        np.save(d / "representations.npy", np.random.default_rng(i).normal(size=(L, RR, T, 2, H)).astype(np.float32))
        np.save(d / "binary_labels.npy", np.broadcast_to(np.array([0, 1], np.uint8), (L, RR, T, 2)).copy())
    shown = saved_texts(monkeypatch)
    p = analyze_run(algo, glue=False, analyses=("cl", "probe"))["probe"]
    assert p["images"]["tested_per_task"] == 0 and p["images"]["saved_per_task"] == 2
    why = "not measured: 2 saved images per task; a probe needs 2 of each class, so 4 or more (cljax run --n-subsamples)"
    for got in (p["earlier_tasks"]["probe_acc"], p["current_task"]["probe_acc"], p["forgetting"]["representation"],
                p["forgetting"]["readout"]):
        assert (got["n"], got["n_nonfinite"], got["undefined"]) == (0, 0, why)
    assert p["earlier_tasks"]["head_acc"]["n"] == RR and "undefined" not in p["forgetting"]["head"]
    legend = "linear probe: not measured\n(2 images per task, under 2 of each class)"
    assert legend in shown[-1] and "linear probe" not in shown[-1]


def test_a_probe_panel_of_a_diverged_run_says_so_not_that_nothing_was_evaluated(tmp_path, monkeypatch):
    shown = saved_texts(monkeypatch)
    nan = {"head": np.full((2, 3), np.nan)}
    plots.plot_head_vs_probe(nan, nan, tmp_path / "p.png", evaluated=(True, True))
    assert shown[-1].count("no finite value: the network diverged (see the summary)") == 2
    assert not any("--eval-tasks" in t for t in shown[-1])
    plots.plot_head_vs_probe(nan, nan, tmp_path / "p.png")  # --eval-tasks current: nothing evaluated
    assert shown[-1].count("no task here was evaluated in this run (--eval-tasks)") == 2


def test_plots_of_a_diverged_run_say_so_and_count_the_repeats_left_out(tmp_path, monkeypatch):
    from cljax.analysis.band import Band

    shown = saved_texts(monkeypatch)
    one = "1 of 2 repeats not finite somewhere (diverged), left out there"
    A = np.full((2, 3, 3), 0.7)
    A[1, 2, 0] = np.nan  # repeat 1 diverged on the last task
    plots.plot_accuracy_matrix(A, tmp_path / "m.png")  # the note wrapped to the small figure's width
    title = next(t for t in shown[-1] if t.startswith("Accuracy matrix\n"))
    assert " ".join(title.split()) == f"Accuracy matrix {one}" and max(map(len, title.splitlines())) <= 33
    plots.plot_accuracy_matrix(np.full((3, 3), np.nan), tmp_path / "m.png")
    assert "no finite value:\nthe network diverged\n(see the summary)" in shown[-1]
    # the analysis counts from the entries evaluated: an entry no repeat has is not evaluated
    band = Band(np.array([[[0.7, 0.7]], [[np.nan, 0.7]]]), np.array([[0, -1]]), 2)
    assert band.n_repeats_not_finite(2) == 1 and Band(band.values[:, :, 1:], np.array([[-1]]), 2).n_repeats_not_finite(2) == 0

    learner, expert = np.full((2, 3), 0.8), np.full((2, 3), 0.9)
    learner[0, 1] = np.nan
    plots.plot_learner_vs_expert(learner, expert, tmp_path / "le.png")
    assert f"Learner vs expert on each new task\nlearner: {one}" in shown[-1]
    plots.plot_learner_vs_expert(learner * np.nan, expert * np.nan, tmp_path / "le.png")
    assert shown[-1].count("no finite value: the network diverged (see the summary)") == 2

    steps = np.array([2.0, 4.0, 6.0])
    plots.plot_accuracy_over_time(np.full((3, 2, 1), np.nan), tmp_path / "t.png", steps=steps, left_out="2 of 2 ...")
    assert "no finite value: the network diverged (see the summary)" in shown[-1]
    assert "Test accuracy over training\n2 of 2 ..." in shown[-1]
    # the probe's plot too (it said nothing while the others did); a NaN of every repeat is an entry not evaluated
    earlier, last = np.full((2, 3), 0.8), np.full((2, 3), 0.8)
    last[:, 0], earlier[1, 2] = np.nan, np.nan
    plots.plot_head_vs_probe({"head": earlier}, {"head": last}, tmp_path / "p.png")
    assert f"The head vs a linear probe of the representation\n{one}" in shown[-1]
    plots.plot_head_vs_probe({"head": earlier[:1]}, {"head": last[:1]}, tmp_path / "p.png")
    assert "The head vs a linear probe of the representation" in shown[-1]


def test_a_one_task_curve_has_whole_step_ticks(tmp_path, monkeypatch):
    ticks = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (ticks.append(fig.axes[0].get_xticks()), real(fig, path))[1])
    plots.plot_accuracy_over_time(np.full((3, 1, 1), 0.6), tmp_path / "t.png", steps=np.array([2.0, 4.0, 6.0]))
    assert len(ticks[-1]) >= 2 and all(float(t).is_integer() for t in ticks[-1]), ticks[-1]


def test_the_compare_plot_names_a_run_with_no_finite_gap_and_counts_repeats_left_out(tmp_path, monkeypatch):
    shown = saved_texts(monkeypatch)
    gaps = {"plain": np.zeros((4, 2)), "diverged": np.full((4, 2), np.nan), "part": np.zeros((4, 2))}
    gaps["part"][3, 1] = np.nan
    plots.plot_plasticity_gap(gaps, tmp_path / "gap.png")
    assert {"plain", "diverged (no finite gap: diverged)", "part (1 of 2 repeats not finite at some task, left out there)"} <= set(
        shown[-1])


def test_the_probe_line_says_what_the_heads_figure_reads_per_head_and_out_dim():
    from cljax.analysis.summary_text import format_summary

    figure = {"mean": 0.6, "std": 0.1, "n": 2, "n_nonfinite": 0}
    probe = {"earlier_tasks": {"n_tasks": 2, "head_acc": figure, "probe_acc": figure},
             "images": {"fold_sizes": [32, 32], "tested_per_task": 64, "saved_per_task": 64}}

    def line(**config):
        return format_summary({"probe": probe, "config": config}).splitlines()[1]

    assert line(head="shared", out_dim=1).endswith(", see docs/metrics.md)")
    assert "With one output shared by every task, the head's figure mostly measures the read-out" in line(
        head="shared", out_dim=1)
    assert "With 2 outputs shared by every task, the head's figure" in line(head="shared", out_dim=2)
    assert ("With the head reset at every task start (2 outputs shared by every task), an earlier task is read "
            "through the head the latest task trained, so the head's figure mostly measures the read-out") in line(
        head="reset", out_dim=2)
    assert "read-out" not in line(head="multi", out_dim=2) and line(head="multi", out_dim=2).endswith("raises it)")


def test_the_std_line_names_the_runs_repeats():
    # Every "+-" of the printed summary is over the repeats: the line that says so gave no count.
    from cljax.analysis.spread import RULE
    from cljax.analysis.summary_text import format_summary

    assert format_summary({"std": RULE, "n_repeats": 8}).splitlines()[-1] == f"std: {RULE} (this run: R = 8 repeats)"
    assert format_summary({"std": RULE}).splitlines()[-1] == f"std: {RULE}"  # a summary without the count
