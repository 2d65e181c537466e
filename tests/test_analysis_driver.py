"""The driver on a small fake results tree written in the documented on-disk format."""

import io
import json
import math
import pickle
import sys

import matplotlib.image as mpimg
import numpy as np
import pytest

from cljax.analysis import analyze_run, class_manifolds
from cljax.analysis.registry import Analysis, Result, register, unregister
from cljax.errors import CljaxError
from tests.conftest import distinct_colours


def assert_nontrivial_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert distinct_colours(img) > 20


def test_class_manifolds_split_by_label():
    # (R=1, T=2, S=6, H=1): values encode the sample index; labels interleaved / blocked.
    reps = np.arange(12, dtype=float).reshape(1, 2, 6, 1)
    labels = np.array([[[0, 1, 0, 1, 0, 1], [1, 1, 1, 0, 0, 0]]])
    X = class_manifolds(reps, labels, max_points=2)
    assert X.shape == (1, 2, 2, 2, 1)
    np.testing.assert_array_equal(X[0, 0, :, :, 0], [[0, 2], [1, 3]])
    np.testing.assert_array_equal(X[0, 1, :, :, 0], [[9, 10], [6, 7]])


# ---- a small fake results tree in the documented on-disk format -------------------------------
R_FINAL = np.array([  # repeat 0; repeat 1 is the same minus 0.05
    [0.90, 0.60, 0.50],
    [0.80, 0.95, 0.55],
    [0.70, 0.85, 0.90],
])
B = np.array([0.50, 0.45, 0.52])
E = np.array([0.92, 0.90, 0.95])
L, RR, T, S, H = 2, 2, 3, 8, 6


def write_fake_run(algo_dir):
    rng = np.random.default_rng(0)
    dtype = np.dtype([("dense1/bias", np.float32, (4,)), ("dense1/kernel", np.float32, (H, 4))])
    for i in range(T):
        d = algo_dir / f"task_{i:03d}"
        d.mkdir(parents=True)
        final = np.stack([R_FINAL[i], R_FINAL[i] - 0.05])  # (R, T)
        test_acc = np.stack([final - 0.2, final])  # (L, R, T)
        metrics = {
            "test_acc": test_acc,
            "test_loss": 1.0 - test_acc,
            "train_acc": np.full((L, RR), 0.9),
            "train_loss": np.full((L, RR), 0.3),
            "start_test_acc": np.stack([B, B]) if i == 0 else np.stack([R_FINAL[i - 1]] * RR),
        }
        expert = {k: np.full((L, RR), 0.5) for k in ("train_loss", "train_acc", "test_loss")}
        expert["test_acc"] = np.stack([np.full(RR, 0.6), np.full(RR, E[i])])
        # Two well separated classes per task, positive features except one dead unit.
        labels = np.tile(np.array([0, 1], np.uint8), S // 2)
        centres = rng.normal(size=(T, 2, H)) * 3
        reps = np.abs(centres[:, labels] + rng.normal(size=(L, RR, T, S, H))) + 0.1
        reps[..., -1] = 0.0
        weights = np.zeros((L, RR), dtype)
        weights["dense1/bias"] = i + 1.0  # every parameter equals i + 1 in the bias ...
        weights["dense1/kernel"] = 0.0  # ... and 0 in the kernel
        np.save(d / "representations.npy", reps.astype(np.float32))
        np.save(d / "binary_labels.npy", np.broadcast_to(labels, (L, RR, T, S)).copy())
        np.save(d / "weights.npy", weights)
        for name, obj in (("metrics.pkl", metrics), ("expert_metrics.pkl", expert)):
            with open(d / name, "wb") as f:
                pickle.dump(obj, f, protocol=4)
        (d / "metadata.json").write_text(json.dumps({"config": {"num_tasks": T}, "log_steps": [5, 10]}))


def test_analyze_run_on_a_fake_tree(tmp_path):
    algo = tmp_path / "results" / "synthetic" / "SL_T3"
    write_fake_run(algo)
    summary = analyze_run(algo, glue_n_probes=16, glue_max_points=4, glue_across_every=1)
    out = algo / "analysis"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["n_task_folders"] == 3 and on_disk["complete"]
    # Hand values, repeat 0 / repeat 1 (= repeat 0 minus 0.05 everywhere):
    acc0 = (0.70 + 0.85 + 0.90) / 3
    assert math.isclose(on_disk["average_accuracy"]["mean"], acc0 - 0.025)
    assert math.isclose(on_disk["average_accuracy"]["std"], 0.05 / math.sqrt(2))  # sample std (ddof = 1)
    assert math.isclose(on_disk["bwt"]["mean"], ((0.70 - 0.90) + (0.85 - 0.95)) / 2)
    # FWT: repeat 0 ((0.60 - 0.45) + (0.55 - 0.52)) / 2 = 0.09, repeat 1 0.04.
    assert math.isclose(on_disk["fwt"]["mean"], 0.065)
    # f_0 = max(R[0,0], R[1,0]) - R[2,0] = 0.90 - 0.70, f_1 = 0.95 - 0.85 (same for both repeats).
    assert math.isclose(on_disk["forgetting"]["mean"], ((0.90 - 0.70) + (0.95 - 0.85)) / 2)
    # auc rows: trapezoid over steps 0 (task start), 5, 10: (start + 3 final - 0.4) / 4; the last
    # folder starts from R_FINAL[1] in both repeats.
    start2 = R_FINAL[1].mean()
    assert math.isclose(on_disk["cl"]["auc"]["average_accuracy"]["mean"], (start2 + 3 * (acc0 - 0.025) - 0.4) / 4)
    # Plasticity gap E[i] - R[i, i]: repeat 0 (0.02 - 0.05 + 0.05) / 3, repeat 1 0.05 more each.
    assert math.isclose(summary["mean_plasticity_gap"]["mean"], 0.02 / 3 + 0.025)
    assert math.isclose(summary["mean_plasticity_gap"]["std"], 0.05 / math.sqrt(2))

    cl = np.load(out / "cl.npz")
    assert cl["final_accuracy_matrix"].shape == (2, 3, 3)
    np.testing.assert_allclose(cl["final_accuracy_matrix"][0], R_FINAL)
    np.testing.assert_allclose(cl["final_plasticity_gap"][0], E - np.diag(R_FINAL), atol=1e-12)

    pl = np.load(out / "plasticity.npz")
    assert pl["current_effective_rank"].shape == (3, L, RR)
    assert pl["all_tasks_srank"].shape == (3, RR)
    # One of the six units is exactly zero everywhere: dead ratio 1/6.
    np.testing.assert_allclose(pl["current_dead_ratio"], 1 / 6)
    # Bias = i + 1 on 4 of the 4 + 24 parameters: magnitude sqrt(4 (i+1)^2 / 28).
    np.testing.assert_allclose(pl["weight_magnitude"][:, -1, 0], [math.sqrt(4 * (i + 1) ** 2 / 28) for i in range(3)],
                               rtol=1e-6)
    # Change vs the previous task's last snapshot: one unit of bias -> sqrt(4 / 28); task 0: 0.
    np.testing.assert_allclose(pl["weight_change_task_start"][:, -1, 0], [0.0, math.sqrt(4 / 28), math.sqrt(4 / 28)],
                               rtol=1e-6)
    np.testing.assert_allclose(pl["weight_change_init"][:, -1, 0], [0.0, math.sqrt(4 / 28), math.sqrt(16 / 28)],
                               rtol=1e-6)

    glue = np.load(out / "glue.npz")
    assert glue["per_task_capacity"].shape == (3, RR)
    assert glue["across_capacity"].shape == (3, RR)
    assert np.isfinite(glue["per_task_capacity"]).all() and (glue["per_task_capacity"] > 0).all()
    assert on_disk["glue"]["across_tasks"]["n_manifolds"] == 6

    for name in ("accuracy_matrix.png", "accuracy_over_time.png", "learner_vs_expert.png", "plasticity.png",
                 "glue.png", "glue_across.png"):
        assert_nontrivial_png(out / name)
        assert name in on_disk["files"]


def test_a_registered_analysis_runs_once_per_folder(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)

    def update(state, folder):
        return state + [float(folder.test_acc[-1, 0, folder.index])]  # R[i, i] of repeat 0

    def finalize(state):
        return Result(summary={"diagonal": state}, arrays={"diagonal.npz": {"d": np.asarray(state)}})

    register(Analysis("diagonal", lambda ctx: [], update, finalize))
    try:
        summary = analyze_run(algo, make_plots=False, analyses=("cl", "diagonal"))
    finally:
        unregister("diagonal")
    assert summary["diagonal"] == [0.90, 0.95, 0.90]
    assert "plasticity" not in summary and "glue" not in summary
    # which code wrote the plugin's part: its file and that file's sha256; cljax's own analyses not
    import hashlib

    assert summary["plugin_analyses"] == {"diagonal": {"file": __file__,
                                                       "sha256": hashlib.sha256(open(__file__, "rb").read()).hexdigest()}}
    assert summary["files"] == ["summary.json", "cl.npz", "diagonal.npz"]
    np.testing.assert_array_equal(np.load(algo / "analysis" / "diagonal.npz")["d"], [0.90, 0.95, 0.90])
    assert analyze_run(algo, make_plots=False, analyses=("cl",))["plugin_analyses"] == {}


def test_an_analysis_plugin_edited_while_it_runs_is_recorded_as_the_code_that_ran(tmp_path):
    # The summary recorded the file's sha256 at the end, so an edit during a long analysis named
    # code that never ran; hashing the file then against the import would refuse the whole analysis.
    import hashlib

    from cljax.registry import load_plugins

    plugin = tmp_path / "edits_itself.py"
    plugin.write_text(
        "from pathlib import Path\n"
        "from cljax.analysis.registry import Analysis, Result, register\n"
        "def update(state, folder):\n"
        "    with open(__file__, 'a') as f:\n"
        "        f.write('# edited while the analysis ran\\n')\n"
        "    return state + 1\n"
        "register(Analysis('edits_itself', lambda ctx: 0, update, lambda n: Result(summary={'edits_itself': n})))\n")
    imported = hashlib.sha256(plugin.read_bytes()).hexdigest()
    algo = tmp_path / "run"
    write_fake_run(algo)
    load_plugins([str(plugin)])
    try:
        summary = analyze_run(algo, make_plots=False, analyses=("cl", "edits_itself"))
    finally:
        unregister("edits_itself")
    assert summary["edits_itself"] == 3 and plugin.read_text().count("\n# edited") == 3
    assert summary["plugin_analyses"] == {"edits_itself": {"file": str(plugin.resolve()), "sha256": imported}}


def test_a_file_two_analyses_write_is_refused_and_a_new_analysis_leaves_no_file_of_the_last(tmp_path):
    """A plugin's cl.npz beside the built-in one: one line, nothing written (one of the two was
    dropped without a word). An analysis without GLUE after one with it: the earlier glue.npz,
    which the new summary does not list, goes (it stayed, of fewer tasks, beside the new files)."""
    algo = tmp_path / "run"
    write_fake_run(algo)
    # the GLUE settings of test_analyze_run_on_a_fake_tree: its compiled programs, not two more
    analyze_run(algo, glue_n_probes=16, glue_max_points=4, glue_across_every=1, make_plots=False,
                analyses=("cl", "glue"))
    assert (algo / "analysis" / "glue.npz").is_file()
    register(Analysis("clash", lambda ctx: 0, lambda s, folder: s,
                      lambda s: Result(summary={"clash": s}, arrays={"cl.npz": {"x": np.zeros(3)}})))
    before = {p.name: p.read_bytes() for p in (algo / "analysis").iterdir()}
    try:
        with pytest.raises(CljaxError, match="analysis 'clash' writes cl.npz, which analysis 'cl' writes too"):
            analyze_run(algo, make_plots=False, analyses=("cl", "clash"))
    finally:
        unregister("clash")
    assert {p.name: p.read_bytes() for p in (algo / "analysis").iterdir()} == before
    (algo / "analysis" / "notes.txt").write_text("mine")  # not an analysis's: left alone
    summary = analyze_run(algo, make_plots=False, analyses=("cl",))
    assert sorted(p.name for p in (algo / "analysis").iterdir()) == ["cl.npz", "notes.txt", "summary.json"]
    assert summary["files"] == ["summary.json", "cl.npz"]


def test_a_plugin_analysis_that_raises_or_returns_no_json_is_one_line(tmp_path):
    """A plugin's exception in update, and a summary JSON cannot hold (a set: found only when
    summary.json was written, after every folder): one line each, and no file written."""
    algo = tmp_path / "run"
    write_fake_run(algo)

    def update(s, folder):
        if folder.index == 1:
            raise ValueError("boom at folder 1")
        return s

    for name, analysis, expected in [
            ("boom", Analysis("boom", lambda ctx: 0, update, lambda s: Result(summary={"boom": s})),
             r"analysis 'boom' raised ValueError in update \(task_001\): boom at folder 1: fix its plugin"),
            ("aset", Analysis("aset", lambda ctx: 0, lambda s, f: s, lambda s: Result(summary={"aset": {1, 2}})),
             "analysis 'aset' returns a summary that JSON cannot hold")]:
        register(analysis)
        try:
            with pytest.raises(CljaxError, match=expected):
                analyze_run(algo, make_plots=False, analyses=("cl", name))
        finally:
            unregister(name)
        assert not (algo / "analysis").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_analyze_shows_progress_on_a_terminal_only_and_clears_it(tmp_path, monkeypatch):
    algo = tmp_path / "run"
    write_fake_run(algo)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    analyze_run(algo, glue=False, make_plots=False, progress=True)
    shown = terminal.getvalue()
    assert f"task folders:   0%|          | 0/{T}" in shown
    assert shown.endswith("\r") and not shown.split("\r")[-2].strip()  # cleared: the next line starts clean
    log = io.StringIO()  # not a terminal: nothing
    monkeypatch.setattr(sys, "stderr", log)
    analyze_run(algo, glue=False, make_plots=False, progress=True)
    assert log.getvalue() == ""


def test_a_task_folder_named_with_another_padding_is_named_as_not_this_runs(tmp_path):
    # An empty task_0003 in a finished 3-task run: "task_003 is missing before task_0003. Use a whole run (finish
    # it with the same cljax run command), or restore the missing folder": neither fix applies.
    algo = tmp_path / "run"
    write_fake_run(algo)
    (algo / f"task_{T:04d}").mkdir()
    with pytest.raises(CljaxError, match=rf"task_{T:04d} is not a name cljax gives a task folder \(task_{T:03d} would "
                                         rf"be\): it is no folder of this run; move it out of "):
        analyze_run(algo, glue=False, make_plots=False)


def test_analyze_run_rejects_a_gap(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)
    (algo / "task_001").rename(algo / "task_007")
    with pytest.raises(Exception, match="not contiguous: task_001 is missing before task_002"):
        analyze_run(algo, glue=False, make_plots=False)
    from cljax.analysis.compare import compare_runs  # compare read task_002 as task 1

    with pytest.raises(Exception, match="not contiguous: task_001 is missing before task_002"):
        compare_runs([algo])
    (algo / "task_007").rename(algo / f"task_{T:03d}")  # past the run's last task
    (algo / "task_001").mkdir()
    for f in (algo / "task_000").iterdir():
        (algo / "task_001" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(Exception, match=f"task_{T:03d} on are not tasks of this run; move them out"):
        analyze_run(algo, glue=False, make_plots=False)


def test_analyze_run_refuses_matrices_larger_than_the_host_memory_before_writing(tmp_path, monkeypatch):
    from cljax.analysis import driver
    from cljax.errors import CljaxError

    algo = tmp_path / "run"
    write_fake_run(algo)
    need = driver.BYTES_PER_CELL * RR * T * T  # (R, n, T)
    monkeypatch.setattr(driver, "host_available_bytes", lambda: need - 1)
    with pytest.raises(CljaxError, match=rf"matrices of repeats x task folders x tasks \({RR} x {T} x {T}\).*"
                                         r"`cljax compare`"):
        analyze_run(algo, glue=False, make_plots=False)
    assert not (algo / "analysis" / "summary.json").exists()
    monkeypatch.setattr(driver, "host_available_bytes", lambda: need)
    analyze_run(algo, glue=False, make_plots=False)
    with np.load(algo / "analysis" / "cl.npz") as z:  # compressed, read as any npz
        assert z["accuracy_rows_final"].shape == (RR, T, T)


def test_an_analysis_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    from cljax.errors import CljaxError

    algo = tmp_path / "run"
    write_fake_run(algo)
    analyze_run(algo, glue=False, make_plots=False)
    before = {p.name: p.read_bytes() for p in (algo / "analysis").iterdir()}
    real = np.savez_compressed

    def full_after_one(path, **arrays):
        if "probe" in str(path):
            raise OSError(28, "No space left on device")
        real(path, **arrays)

    monkeypatch.setattr(np, "savez_compressed", full_after_one)
    with pytest.raises(CljaxError, match=r"cannot write the analysis to .*analysis \(No space left on device\): free "
                                         r"space .* the previous analysis there is left as it was"):
        analyze_run(algo, glue=False, make_plots=False)
    assert {p.name: p.read_bytes() for p in (algo / "analysis").iterdir()} == before


def test_the_terminal_summary_says_over_how_many_terms_a_metric_was_taken():
    """--eval-tasks window:5 of a 30-task run: the averages are over the window's terms, and FWT
    (each task evaluated before it trains) has none: "not measured", not "left out: not finite"."""
    from cljax.analysis.summary_text import format_summary

    entry = {"mean": 0.5, "std": 0.25, "n": 3, "n_nonfinite": 0}
    summary = {"n_task_folders": 30, "config": {"eval_tasks": "window:5"}, "average_accuracy": entry, "bwt": entry,
               "fwt": {"mean": None, "std": None, "n": 0, "n_nonfinite": 3}, "forgetting": entry,
               "n_terms": {"average_accuracy": 5, "bwt": 4, "fwt": 0, "forgetting": 29}}
    lines = format_summary(summary).splitlines()
    assert lines[:4] == [
        "  average_accuracy: 0.5000 +- 0.2500 (over 5 of its 30 terms: --eval-tasks window:5)",
        "               bwt: 0.5000 +- 0.2500 (over 4 of its 29 terms: --eval-tasks window:5)",
        "               fwt: not measured (--eval-tasks window:5 evaluates none of its 29 terms)",
        "        forgetting: 0.5000 +- 0.2500"]


def test_the_terminal_summary_names_collapse_no_probe_and_left_out_expert_cells():
    """Constant representations (collapsed units, nothing diverged) leave GLUE undefined: said so,
    not as repeats 'left out: not finite', which reads as divergence; no probe solved is not
    '0.00% of 0'; the expert's cells left out as not finite are counted on its line."""
    from cljax.analysis.summary_text import format_summary

    undefined = {"mean": None, "std": None, "n": 0, "n_nonfinite": 4}
    glue = {"per_task": {"capacity": {"last_task": undefined}, "capacity_mc_error": {"last_task": undefined}},
            "settings": {"n_probes": 256},
            "solver": {"converged_fraction": None, "n_probes_solved": 0, "n_groupings_constant": 3470,
                       "n_groupings_not_finite": 0}}
    entry = {"mean": 0.9, "std": 0.01, "n": 3, "n_nonfinite": 1}
    expert = {"final": entry, "best": entry, "n_collapsed": 0, "n_cells": 160, "n_nonfinite": 46}
    lines = format_summary({"glue": glue, "expert": expert, "mean_plasticity_gap": entry,
                            "mean_plasticity_gap_best": entry}).splitlines()
    assert ("GLUE capacity, last task: undefined (the representations are constant over the images: collapsed, not "
            "diverged) over repeats, Monte-Carlo error n/a (256 probes); no probe was solved") in lines
    assert any(line.startswith("expert accuracy:") and line.endswith("0 of 114 finite (repeat, task) cells ended more "
                                                                     "than 0.1 below their best (46 not finite, left out)")
               for line in lines)  # "0 of 160 cells" read as 160 checked

    # two repeats collapsed, one alive: the repeats left out are named as collapsed ("not finite" reads as diverged)
    glue["per_task"]["capacity"]["last_task"] = {"mean": 0.7946, "std": None, "n": 1, "n_nonfinite": 2}
    text = format_summary({"glue": glue})
    assert ("GLUE capacity, last task: 0.7946 +- n/a (2 repeats left out: constant representations, collapsed, not "
            "diverged) over repeats") in text, text
    # one repeat diverged and two collapsed: 'left out: not finite' counts both; the line tells them apart
    glue["per_task"]["capacity"]["last_task"] = {"mean": None, "std": None, "n": 0, "n_nonfinite": 3}
    glue["solver"].update(n_groupings_constant=8, n_groupings_not_finite=4)
    text = format_summary({"glue": glue})
    assert ("[groupings left out over the run: 4 not finite (diverged), 8 with constant representations (collapsed, "
            "not diverged)]") in text and "undefined (the representations are constant" not in text
    # a grouping whose probes mostly stalled (nearly degenerate points) is named, with its fraction
    glue["solver"].update(converged_fraction=0.9254, n_probes_solved=2560, min_converged_fraction=0.254,
                          min_converged_at="task 0 after task 0, repeat 0")
    text = format_summary({"glue": glue})
    assert ("solver within tolerance on 92.54% of 2560 QPs (probes x repeats x groupings); over the run, the grouping "
            "of task 0 after task 0, repeat 0 reached it on only 25.4%: its points are nearly degenerate (as a network "
            "near collapse gives) and its capacity is not reliable") in text
    glue["solver"]["min_converged_fraction"] = 0.95
    assert "in one grouping only" not in format_summary({"glue": glue})


def test_a_first_analysis_that_cannot_be_written_leaves_no_empty_folder(tmp_path, monkeypatch):
    from cljax.errors import CljaxError

    algo = tmp_path / "run"
    write_fake_run(algo)

    def full(path, **arrays):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(CljaxError, match=r"cannot write the analysis to"):
        analyze_run(algo, glue=False, make_plots=False)
    assert not (algo / "analysis").exists()


def test_every_plot_of_cljax_says_what_its_band_is_and_that_a_run_is_partial(tmp_path, monkeypatch):
    # No plot said that its band is one sample std over R repeats, nor that a partial run's later
    # tasks were never trained (accuracy_over_time.png drew their curves without a word).
    import shutil

    from cljax.analysis import plot_parts, plots

    algo = tmp_path / "run"
    write_fake_run(algo)
    shutil.rmtree(algo / "task_002")  # the run's metadata says 3 tasks: a partial run of 2
    captions = {}
    real = plots._save

    def save(fig, path):
        caption = plot_parts._CAPTION.get()
        captions[path.name.split("@")[-1]] = caption  # (written under a temporary name)
        saved = real(fig, path)
        drawn = [" ".join(t.get_text().split()) for t in fig.texts]  # wrapped to the figure's width
        assert (caption in drawn) if caption else not drawn, (caption, drawn)
        return saved

    monkeypatch.setattr(plots, "_save", save)
    plugin = Analysis("mine", lambda ctx: 0, lambda state, folder: state,
                      lambda state: Result({}, {}, {"mine.png": lambda p: plots.plot_plasticity_gap({"a": np.ones(2)}, p)}))
    register(plugin)
    try:
        analyze_run(algo, glue_n_probes=16, glue_max_points=4, glue_across_every=1)
    finally:
        unregister("mine")
    own = {name: text for name, text in captions.items() if name not in ("mine.png", "accuracy_matrix.png")}
    assert {"accuracy_over_time.png", "learner_vs_expert.png", "plasticity.png", "probe.png", "glue.png"} <= set(own)
    banded = (f"means over the R = {RR} repeats, finite values only (a band: +-1 sample std over them); a partial "
              f"run: tasks 0-1 of its 3 trained")
    # only the curves over time draw the untrained tasks (the others stop at the last task trained)
    assert own.pop("accuracy_over_time.png") == banded + " (a later task's values are of a network not trained on it yet)"
    assert set(own.values()) == {banded}
    # the matrix draws no band, and only the tasks trained
    assert captions["accuracy_matrix.png"] == (f"means over the R = {RR} repeats, finite values only; a partial run: "
                                               f"tasks 0-1 of its 3 trained")
    assert captions["mine.png"] == ""  # a plugin's plot says what it draws


def test_the_terminal_summary_names_the_auc_variant_on_its_metrics():
    from cljax.analysis.summary_text import format_summary

    entry = {"mean": 0.5, "std": 0.25, "n": 3, "n_nonfinite": 0}
    summary = {"n_task_folders": 3, "variant": "auc", "average_accuracy": entry, "bwt": entry}
    assert format_summary(summary).splitlines()[:2] == ["  average_accuracy (auc): 0.5000 +- 0.2500",
                                                        "               bwt (auc): 0.5000 +- 0.2500"]
