"""The figures of `cljax analyze` and `cljax compare` under each --eval-tasks mode: what a run of
``seen``, ``current`` or ``window:K`` saves is read as the task each slot holds, and nothing is
drawn or said of a task such a run never evaluated."""

from __future__ import annotations

import json
import pickle

import numpy as np

from cljax.analysis import plot_parts, plots
from cljax.analysis.driver import analyze_run
from cljax.eval_tasks import parse_eval_tasks

L, R, S, H = 2, 2, 8, 4


def write_mode_run(algo_dir, mode: str, T: int, n: int, seed: int = 0, pairs: int | None = None) -> np.ndarray:
    """Task folders 0..n-1 of a T-task run under ``mode``, each slot saved as the runner saves it
    (metadata.json's eval_tasks; NaN in a slot that holds no task); ``pairs``: a cycled schedule of
    that many class pairs. Returns the accuracies the slots were cut from: (n, L, R, T), as
    ``--eval-tasks all`` would have saved them."""
    rng = np.random.default_rng(seed)
    full = rng.uniform(0.5, 1.0, (n, L, R, T))
    labels = np.tile(np.array([0, 1], np.uint8), S // 2)
    evals = parse_eval_tasks(mode)
    for t in range(n):
        d = algo_dir / f"task_{t:03d}"
        d.mkdir(parents=True)
        ids = evals.ids(t, T)

        def slots(values):  # (..., T) -> (..., K), NaN where a slot holds no task
            return np.where(ids >= 0, values[..., np.maximum(ids, 0)], np.nan)

        acc = slots(full[t])
        reps = rng.normal(size=(L, R, len(ids), S, H)) + labels[:, None]
        reps[:, :, ids < 0] = np.nan
        metrics = {"test_acc": acc, "test_loss": 1.0 - acc, "train_acc": np.full((L, R), 0.9),
                   "train_loss": np.full((L, R), 0.3), "start_test_acc": slots(full[t - 1, -1] if t else full[0, 0]),
                   "log_steps": np.array([5, 10])}
        expert = {k: np.full((L, R), 0.5) for k in ("train_loss", "train_acc", "test_loss")}
        expert["test_acc"] = np.full((L, R), 0.9)
        np.save(d / "representations.npy", reps.astype(np.float32))
        np.save(d / "binary_labels.npy", np.broadcast_to(labels, (L, R, len(ids), S)).copy())
        np.save(d / "weights.npy", np.zeros((L, R), np.dtype([("dense/bias", np.float32, (2,))])))
        for name, obj in (("metrics.pkl", metrics), ("expert_metrics.pkl", expert)):
            with open(d / name, "wb") as f:
                pickle.dump(obj, f, protocol=4)
        schedule = {"schedule": {"task_schedule": "cycle", "n_pairs": pairs}} if pairs else {}
        (d / "metadata.json").write_text(json.dumps({"config": {"num_tasks": T, "eval_tasks": mode}, "task_index": t,
                                                     "eval_tasks": evals.record(t, T), "log_steps": [5, 10],
                                                     **schedule}))
    return full


def drawn_texts(monkeypatch) -> dict:
    """{plot file: (its caption, its legend entries, its legend titles)} of every figure the analysis saves."""
    shown = {}
    real = plots._save

    def save(fig, path):
        legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        titles = [ax.get_legend().get_title().get_text() for ax in fig.axes if ax.get_legend()]
        shown[path.name.split("@")[-1]] = (plot_parts._CAPTION.get(), legends, titles)
        return real(fig, path)

    monkeypatch.setattr(plots, "_save", save)
    return shown


def test_a_partial_run_that_evaluates_no_task_ahead_draws_only_tasks_it_trained(tmp_path, monkeypatch):
    # A window:2 run stopped after 3 of its 8 tasks drew the curves of tasks 0, 1, ..., 7: five
    # legend entries without a point, under a caption saying that a later task's values are of a
    # network not trained on it yet, which no folder of this mode ever evaluates.
    shown = drawn_texts(monkeypatch)
    for mode in ("window:2", "seen", "current"):
        algo = tmp_path / mode.replace(":", "")
        full = write_mode_run(algo, mode, T=8, n=3)
        analyze_run(algo, analyses=["curves"])  # the plot at issue alone
        curves = np.load(algo / "analysis" / "curves.npz")
        assert curves["task_ids"].tolist() == [0, 1, 2], mode
        drawn = np.isfinite(curves["test_acc"]).any(axis=(0, 1))
        assert drawn.all(), (mode, drawn)  # every curve chosen has a value
        # each task's curve holds its values from the folders that evaluated it, in order
        for j in range(3):
            want = [full[i, :, :, j] for i in range(3) if j in parse_eval_tasks(mode).ids(i, 8)]
            got = curves["test_acc"][:, :, j]
            np.testing.assert_array_equal(got[np.isfinite(got)], np.concatenate(want).astype(np.float32).ravel())
        caption, legend, _ = shown["accuracy_over_time.png"]
        assert caption == (f"means over the R = {R} repeats, finite values only (a band: +-1 sample std over them); "
                           "a partial run: tasks 0-2 of its 8 trained"), (mode, caption)
        assert [x for x in legend if x.startswith("task ")] == ["task 0", "task 1", "task 2"], (mode, legend)


def test_a_partial_run_of_every_task_still_draws_and_names_the_tasks_not_trained(tmp_path, monkeypatch):
    # --eval-tasks all evaluates every task at every snapshot: the tasks not trained yet have curves
    # (chosen over all T), which the caption names as such.
    shown = drawn_texts(monkeypatch)
    algo = tmp_path / "all"
    write_mode_run(algo, "all", T=8, n=3)
    analyze_run(algo, analyses=["curves"])  # the plot at issue alone
    curves = np.load(algo / "analysis" / "curves.npz")
    assert curves["task_ids"].tolist() == list(range(8)) and np.isfinite(curves["test_acc"]).all()
    assert shown["accuracy_over_time.png"][0].endswith("(a later task's values are of a network not trained on it yet)")


def test_compare_pools_a_method_over_draws_run_under_different_eval_tasks(tmp_path):
    # --eval-tasks changes which other tasks a snapshot also evaluates, not the training nor the
    # current task's accuracy that compare reads (the same bits in every mode). Two draws of one
    # method, one run with `all` and one with `window:2`, were "not pooled: its settings differ
    # in eval_tasks".
    from cljax.analysis.compare import compare_runs
    from tests.test_compare import T as T_COMPARE, write_run

    rng = np.random.default_rng(3)
    runs = []
    for seed, mode in ((0, "all"), (1, "window:2")):
        pairs = rng.permutation(np.arange(2 * T_COMPARE * 3)).reshape(T_COMPARE, 3, 2)
        plain = rng.uniform(0.5, 0.9, (T_COMPARE, 3))
        for name, acc, config in ((f"plain{seed}", plain, {}), (f"method{seed}", plain + 0.05 * seed + 0.01,
                                                                  {"use_redo": True})):
            write_run(tmp_path / name, acc, plain, window=mode != "all", seed=seed, pairs_TR2=pairs)
            record = {"config": {**config, "seed": seed, "eval_tasks": mode, "num_tasks": T_COMPARE}}
            (tmp_path / name / "run.json").write_text(json.dumps(record))
            for folder in (tmp_path / name).glob("task_*"):  # every folder records the run's settings
                meta = json.loads((folder / "metadata.json").read_text())
                (folder / "metadata.json").write_text(json.dumps({**meta, **record}))
            runs.append(name)
    summary = compare_runs([tmp_path / r for r in runs], labels=runs)
    assert "not_pooled" not in summary["method1"], summary["method1"].get("not_pooled")
    pooled = summary["method0"]["pooled_over_draws"]
    assert pooled["runs"] == ["method0", "method1"] and pooled["n"] == 6
    d = np.concatenate([np.full(3, 0.01), np.full(3, 0.06)])  # each draw's late difference, repeat by repeat
    np.testing.assert_allclose(pooled["mean"], d.mean(), rtol=1e-9)
    # a method run that differs in a setting that changes its numbers is still not pooled
    record = {"config": {"use_redo": True, "seed": 1, "lr": 0.2, "num_tasks": T_COMPARE}}
    (tmp_path / "method1" / "run.json").write_text(json.dumps(record))
    for folder in (tmp_path / "method1").glob("task_*"):
        meta = json.loads((folder / "metadata.json").read_text())
        (folder / "metadata.json").write_text(json.dumps({**meta, **record}))
    summary = compare_runs([tmp_path / r for r in runs], labels=runs)
    assert "pooled_over_draws" not in summary["method0"] and "lr (" in summary["method1"]["not_pooled"]


def test_the_summary_says_how_many_tasks_each_folder_pooled_for_the_all_tasks_figures(tmp_path):
    # plasticity.all_tasks_* pools the saved images of the tasks a folder evaluated: T of them under
    # `all` (untrained ones included), the window's under window:K, one under current. The summary
    # gave the figures under one name in every mode, with nothing to say they differ.
    pooled = {}
    for mode in ("all", "seen", "window:2", "current"):
        algo = tmp_path / mode.replace(":", "")
        write_mode_run(algo, mode, T=4, n=4)
        summary = analyze_run(algo, glue=False, make_plots=False)
        pooled[mode] = summary["plasticity"]["all_tasks_pooled"]["tasks_per_folder"]
        if mode == "current":  # one task pooled: the current task's own figures at the last snapshot
            npz = np.load(algo / "analysis" / "plasticity.npz")
            for k in ("effective_rank", "feature_norm", "dormant_ratio"):
                np.testing.assert_array_equal(npz[f"all_tasks_{k}"], npz[f"current_{k}"][:, -1])
    assert pooled == {"all": [4, 4, 4, 4], "seen": [1, 2, 3, 4], "window:2": [1, 2, 2, 2], "current": [1, 1, 1, 1]}


def test_the_probe_forgetting_says_over_how_many_tasks_it_is_taken(tmp_path):
    # probe.forgetting (head, representation, readout) is a mean over BWT's terms: every earlier task
    # under all and seen, the K - 1 before the last under window:K, none under current. The CL
    # metrics give that count (n_terms); the probe's pair gave none.
    for mode, terms in (("all", 3), ("seen", 3), ("window:2", 1), ("current", 0)):
        algo = tmp_path / mode.replace(":", "")
        write_mode_run(algo, mode, T=4, n=4)
        summary = analyze_run(algo, glue=False, make_plots=False)
        forgetting = summary["probe"]["forgetting"]
        assert forgetting["n_terms"] == summary["cl"]["final"].get("n_terms", {"bwt": 3})["bwt"] == terms, mode
        assert (forgetting["representation"]["n"] == 0) == (terms == 0), mode


def test_the_across_task_glue_line_names_the_tasks_a_window_grouped():
    # Under window:K the across-task capacity groups the last K tasks, not the T of an `all` run of the
    # same settings (and P = 2K): the line named only their count.
    from cljax.analysis.summary_text import format_summary

    cap = {"mean": 0.2, "std": 0.01, "n": 3, "n_nonfinite": 0}
    final = {"capacity": cap, "capacity_floor": {**cap, "mean": 0.1}, "inseparable_fraction": {**cap, "mean": 0.1}}

    def line(mode, tasks):
        glue = {"per_task": {"capacity": {"last_task": cap}, "capacity_mc_error": {"last_task": cap}},
                "across_tasks": {"final": final, "n_manifolds": 2 * len(tasks), "tasks": tasks},
                "solver": {"n_probes_solved": 8, "converged_fraction": 1.0}, "settings": {"n_probes": 4}}
        text = format_summary({"glue": glue, "config": {"eval_tasks": mode}})
        return next(x for x in text.splitlines() if x.startswith("GLUE across"))

    assert line("window:2", [3, 4]).startswith("GLUE across 2 tasks (P = 4), last folder (tasks 3-4, of those "
                                               "--eval-tasks window:2 evaluated): capacity 0.2000 +- 0.0100")
    assert line("seen", [0, 2, 5]).startswith("GLUE across 3 tasks (P = 6), last folder (3 tasks from 0 to 5, of "
                                              "those --eval-tasks seen evaluated): capacity")
    assert line("all", [0, 1, 2]).startswith("GLUE across 3 tasks (P = 6), last folder: capacity")


def test_compare_reads_each_folders_own_slot_by_its_task_ids_not_by_current_slot_alone(tmp_path, capsys):
    # metadata.json has no hash of its own. Without its current_slot, compare read slot t: under
    # window:2, task 0's slot 0 (which holds no task) as task 0's accuracy, and task 3's slot 3 of 2
    # (an IndexError traceback). The slot is found among the checked eval_task_ids.
    from cljax.analysis.compare import compare_runs
    from cljax.cli import main as cli_main
    from tests.test_compare import T as T_COMPARE, write_run

    rng = np.random.default_rng(4)
    learner, expert = rng.uniform(0.5, 0.9, (T_COMPARE, 3)), rng.uniform(0.5, 0.9, (T_COMPARE, 3))
    write_run(tmp_path / "run", learner, expert, window=True)
    for t in (0, 3):
        path = tmp_path / "run" / f"task_{t:03d}" / "metadata.json"
        meta = json.loads(path.read_text())
        del meta["eval_tasks"]["current_slot"]
        path.write_text(json.dumps(meta))
    summary = compare_runs([tmp_path / "run"], labels=["run"])
    np.testing.assert_allclose(summary["run"]["gap_per_task"], (expert - learner).mean(axis=1))
    # a record without its task ids says which file, in one line
    meta = json.loads(path.read_text())
    del meta["eval_tasks"]["eval_task_ids"]
    path.write_text(json.dumps(meta))
    assert cli_main(["compare", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: eval_tasks.eval_task_ids None are not the task slots of --eval-tasks "
                          "'window:2' at task 3 of 4") and err.count("\n") == 1, err


def test_analyze_refuses_a_window_folder_whose_task_ids_were_removed(tmp_path):
    # A window:3 folder's metadata.json without eval_task_ids was read as slot k = task k (a folder
    # from before --eval-tasks): task 1's slot 1, which holds task 0, entered the plasticity gap as
    # task 1's accuracy (-0.0517 -> -0.0154 on a real cycled run of 8 tasks). Now one error line.
    import pytest

    from cljax.errors import CljaxError

    algo = tmp_path / "run"
    write_mode_run(algo, "window:3", T=8, n=4)
    path = algo / "task_001" / "metadata.json"
    meta = json.loads(path.read_text())
    del meta["eval_tasks"]["eval_task_ids"]
    path.write_text(json.dumps(meta))
    with pytest.raises(CljaxError, match=r"task_001/metadata.json: eval_tasks.eval_task_ids None are not the task "
                                         r"slots of --eval-tasks 'window:3' at task 1 of 8"):
        analyze_run(algo, glue=False, make_plots=False)


def _relabel(path, mode: str, config_too: bool = False) -> None:
    """Edit a folder's metadata.json as a hand would: its eval_tasks said to be ``mode`` with the
    ids of that mode at its task (and its config's --eval-tasks with them)."""
    meta = json.loads(path.read_text())
    meta["eval_tasks"] = parse_eval_tasks(mode).record(meta["task_index"], meta["config"]["num_tasks"])
    if config_too:
        meta["config"]["eval_tasks"] = mode
    path.write_text(json.dumps(meta))


def test_analyze_refuses_a_folder_relabelled_as_another_mode_with_ids_to_match(tmp_path, capsys):
    # A `seen` folder relabelled `all` with its ids extended passed the ids check (they are all's at
    # its task): its empty slots were read as evaluated tasks, their NaN as diverged repeats (on a real
    # Fashion-MNIST run the probe's gain became "undefined (3 repeats left out: not finite)").
    import pytest

    from cljax.cli import main as cli_main
    from cljax.errors import CljaxError

    algo = tmp_path / "run"
    write_mode_run(algo, "seen", T=4, n=4)
    for folder in algo.glob("task_*"):  # as a run records them: the run's folder check reads the slots then
        meta = json.loads((folder / "metadata.json").read_text())
        meta["shapes"] = {"representations": list(np.load(folder / "representations.npy", mmap_mode="r").shape)}
        (folder / "metadata.json").write_text(json.dumps(meta))
    path = algo / "task_001" / "metadata.json"
    _relabel(path, "all")
    with pytest.raises(CljaxError, match=r"task_001/metadata.json: eval_tasks.mode 'all' is not the --eval-tasks "
                                         r"'seen' its config records"):
        analyze_run(algo, glue=False, make_plots=False)
    assert cli_main(["analyze", str(algo), "--no-glue", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "restore it from a copy, or write it again" in err, err
    assert not (algo / "analysis").exists()  # nothing written
    # its config edited too: the folder is whole by itself, not the run's (task_000's mode, or run.json's)
    _relabel(path, "all", config_too=True)
    with pytest.raises(CljaxError, match=rf"^{path} records --eval-tasks 'all' and {algo / 'task_000'}/metadata.json "
                                         r"'seen', while every folder of a run has the run's .*restore the changed "
                                         r"one from a copy \(nothing was written\)\.$"):
        analyze_run(algo, glue=False, make_plots=False)
    (algo / "run.json").write_text(json.dumps({"config": {"num_tasks": 4, "eval_tasks": "seen"}}))
    with pytest.raises(CljaxError, match=rf"^{path} records --eval-tasks 'all' and {algo}/run.json 'seen'"):
        analyze_run(algo, glue=False, make_plots=False)
    assert not (algo / "analysis").exists()


def test_the_mode_checks_pass_every_folder_a_run_writes_old_records_included(tmp_path):
    # What real runs record: each mode with run.json; config ' all' (recorded with its spaces before
    # 2026-12-05) and 'window:02' (recorded as typed; the folder's eval_tasks says window:2); folders
    # from before --eval-tasks, with neither eval_tasks nor config.eval_tasks, and a run.json without it.
    for mode, typed in (("all", "all"), ("seen", "seen"), ("current", "current"), ("window:2", "window:02"),
                        ("all", " all"), ("all", None)):
        algo = tmp_path / f"{mode.replace(':', '')}_{typed!s:.4}".replace(" ", "_")
        write_mode_run(algo, mode, T=4, n=3)
        for path in algo.glob("task_*/metadata.json"):
            meta = json.loads(path.read_text())
            if typed is None:
                del meta["eval_tasks"], meta["config"]["eval_tasks"]
            else:
                meta["config"]["eval_tasks"] = typed
            path.write_text(json.dumps(meta))
        (algo / "run.json").write_text(json.dumps({"config": {"num_tasks": 4, **({"eval_tasks": typed} if typed
                                                                                  else {})}}))
        summary = analyze_run(algo, analyses=["cl"], glue=False, make_plots=False)
        assert summary["n_task_folders"] == 3, (mode, typed)


def test_the_across_task_glue_line_of_a_partial_all_run_says_which_tasks_were_not_trained(tmp_path):
    # Under `all` a run stopped after 3 of its 6 tasks groups tasks 3-5 too, whose manifolds are of a
    # network not trained on them: summary.json's incomplete_run note said so, the printed line did not.
    from cljax.analysis.summary_text import format_summary

    algo = tmp_path / "all"
    write_mode_run(algo, "all", T=6, n=3)
    summary = analyze_run(algo, analyses=["glue"], glue_n_probes=2, make_plots=False)
    assert summary["glue"]["across_tasks"]["tasks"] == [0, 1, 2, 3, 4, 5]
    line = next(x for x in format_summary(summary).splitlines() if x.startswith("GLUE across"))
    assert line.startswith("GLUE across 6 tasks (P = 12), last folder (tasks 0-5, 3 of them not trained yet: a "
                           "partial run, tasks 0-2 trained so far): capacity "), line
    # the run finished, or a mode that evaluates no task ahead: nothing to say
    for mode, n in (("all", 6), ("seen", 3)):
        algo = tmp_path / f"{mode}{n}"
        write_mode_run(algo, mode, T=6, n=n)
        summary = analyze_run(algo, analyses=["glue"], glue_n_probes=2, make_plots=False)
        line = next(x for x in format_summary(summary).splitlines() if x.startswith("GLUE across"))
        assert "not trained yet" not in line, (mode, line)


def test_the_probe_gain_says_why_it_is_undefined_and_what_would_define_it(tmp_path):
    # It printed "undefined, no task j (1 <= j < n-1) was evaluated before its task, right after and at
    # the end: ...": neither what the figure is nor what run would give it. (Under current no line: it
    # evaluates no earlier task, which its own line says.)
    from cljax.analysis.summary_text import format_summary

    def gain_line(mode, n, T=4):
        algo = tmp_path / f"{mode.replace(':', '')}{n}"
        write_mode_run(algo, mode, T=T, n=n)
        summary = analyze_run(algo, analyses=["probe"], glue=False, make_plots=False)
        return next(x for x in format_summary(summary).splitlines() if "the probe" in x and "before" in x)

    head = ("  the probe's gain from training a task (its probe before the task, right after it and after the last "
            "task): undefined: ")
    for mode in ("seen", "window:2"):
        assert gain_line(mode, 4) == head + (
            "no task folder holds a task's representations from before its task: --eval-tasks seen, current and "
            "window:K evaluate a task only once it is trained (only --eval-tasks all saves a task's representations "
            "before its task); a run with --eval-tasks all measures it"), mode
    assert gain_line("all", 2) == head + (
        "it needs 3 task folders or more, and there are 2: a task's gain is read in the folder before its task, its "
        "own and the last, which only the tasks between the first and the last have (task 0 has no folder before "
        "it: the untrained network's representations are not saved)")
    assert "undefined" not in gain_line("all", 4)


def test_the_accuracy_curves_of_a_cycled_run_say_tasks_j_and_j_plus_p_are_one_pair_in_every_mode(tmp_path,
                                                                                                 monkeypatch):
    # Under `all` the legend said "task j is also task j + P"; under seen, current and window:K, which
    # draw tasks j and j + P as two curves (each while it is evaluated), nothing said they are one pair.
    shown = drawn_texts(monkeypatch)
    for mode, title in (("all", "a cycle of 2 pairs: task j is also task j + 2, j + 4, ..."),
                        *((m, "a cycle of 2 pairs: tasks j and j + 2 are the same class pair, on the same test "
                              "images") for m in ("seen", "current", "window:2"))):
        algo = tmp_path / mode.replace(":", "")
        write_mode_run(algo, mode, T=5, n=5, pairs=2)
        analyze_run(algo, analyses=["curves"])
        _, legend, titles = shown["accuracy_over_time.png"]
        assert titles == [title], (mode, titles)
        drawn = [x for x in legend if x.startswith("task ")]
        assert drawn == (["task 0", "task 1"] if mode == "all" else [f"task {j}" for j in range(5)]), (mode, drawn)
    # no cycle, or a partial run that has not come back to a pair yet: no title
    for name, pairs, n in (("pairs", None, 5), ("short", 3, 3)):
        write_mode_run(tmp_path / name, "window:2", T=5, n=n, pairs=pairs)
        analyze_run(tmp_path / name, analyses=["curves"])
        assert shown["accuracy_over_time.png"][2] == [""], name
