"""cljax compare: the plasticity gap per run, from each task folder's current-task slot."""

from __future__ import annotations

import hashlib
import json
import math
import pickle

import numpy as np

from cljax.analysis.compare import compare_runs
from cljax.cli import main as cli_main
from cljax.eval_tasks import parse_eval_tasks

L, R, T = 2, 3, 4


def write_run(algo_dir, learner_TR, expert_TR, window: bool, expert_first: float = 0.5, seed=None, pairs_TR2=None,
              run_id=None):
    """Task folders with only what the comparison reads. ``window``: 2 slots, the current one last
    (as --eval-tasks window:2 saves them); else one slot per task (all). The expert's first
    snapshot is ``expert_first``, its last ``expert_TR``; ``seed`` and ``pairs_TR2`` (each task's
    class pairs per repeat), when given, are recorded as a run records them; ``run_id`` too, with
    the two pickles' sizes and sha256 (as every folder with a run id lists them)."""
    R = learner_TR.shape[1]
    for t in range(T):
        d = algo_dir / f"task_{t:03d}"
        d.mkdir(parents=True)
        slots = 2 if window else T
        cur = 1 if window else t
        test_acc = np.full((L, R, slots), 0.123)
        test_acc[-1, :, cur] = learner_TR[t]
        expert = {"test_acc": np.stack([np.full(R, expert_first), expert_TR[t]])}
        with open(d / "metrics.pkl", "wb") as f:
            pickle.dump({"test_acc": test_acc}, f, protocol=4)
        with open(d / "expert_metrics.pkl", "wb") as f:
            pickle.dump(expert, f, protocol=4)
        meta = ({"eval_tasks": parse_eval_tasks("window:2").record(t, T), "task_index": t,
                 "config": {"num_tasks": T}} if window else {})
        if pairs_TR2 is not None:
            meta.update(seed=seed, task_pairs=np.asarray(pairs_TR2)[t].tolist())
        if run_id is not None:
            meta.update(run_id=run_id, files={n: {"bytes": (d / n).stat().st_size, "sha256": hashlib.sha256(
                (d / n).read_bytes()).hexdigest()} for n in ("metrics.pkl", "expert_metrics.pkl")})
        (d / "metadata.json").write_text(json.dumps(meta))


def test_the_gap_is_expert_minus_learner_on_the_current_task_in_every_mode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    learner, expert = rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R))
    write_run(tmp_path / "all", learner, expert, window=False)
    write_run(tmp_path / "window", learner - 0.1, expert, window=True)
    summary = compare_runs([tmp_path / "all", tmp_path / "window"], tmp_path / "gap.png", labels=["all", "window"])
    late = (expert - learner)[2:].mean(0)  # tasks 2-3, per repeat
    assert summary["all"]["late_tasks"] == [2, 3]
    np.testing.assert_allclose(summary["all"]["gap_late"]["mean"], late.mean())
    np.testing.assert_allclose(summary["all"]["gap_late"]["std"], late.std(ddof=1))
    np.testing.assert_allclose(summary["window"]["gap_late"]["mean"], late.mean() + 0.1)
    np.testing.assert_allclose(summary["all"]["gap_per_task"], (expert - learner).mean(1))
    assert (tmp_path / "gap.png").stat().st_size > 10_000

    rc = cli_main(["compare", str(tmp_path / "all"), str(tmp_path / "window"), "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert rc == 0 and "all" in out and f"{late.mean():.3f}" in out
    assert json.loads((tmp_path / "c.json").read_text())["window"]["n_tasks"] == T


def test_a_folder_without_task_folders_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli_main(["compare", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no task folders" in err


def test_a_folder_near_a_run_names_the_run_to_pass(tmp_path, capsys):
    # The usual slips: the results or dataset folder, a task folder, a file in one, a typo.
    rng = np.random.default_rng(0)
    for algo in ("SL_T4", "SL_cbp_T4"):
        write_run(tmp_path / "results" / "fashion_mnist" / algo, rng.uniform(0.5, 1, (T, R)),
                  rng.uniform(0.5, 1, (T, R)), window=False)
    (tmp_path / "results" / "fashion_mnist" / "notes").mkdir()
    dataset, task = tmp_path / "results" / "fashion_mnist", tmp_path / "results" / "fashion_mnist" / "SL_T4" / "task_001"
    (task.parent / "initial").mkdir()
    (task.parent / "initial" / "weights.npy").write_bytes(b"")  # said "holds no finished task folder"
    expected = {
        ("compare", tmp_path / "results"): f"is not a run's folder: it holds runs: pass one of them, e.g. "
                                           f"{dataset / 'SL_T4'}, {dataset / 'SL_cbp_T4'}.",
        ("analyze", dataset): f"is not a run's folder: it holds runs: pass one of them, e.g. "
                              f"{dataset / 'SL_T4'}, {dataset / 'SL_cbp_T4'}.",
        ("analyze", task): f"task_001 is a task folder: pass its run's folder, {task.parent}.",
        ("analyze", task.parent / "initial"): f"initial is a run's initial-state folder: pass its run's folder, "
                                              f"{task.parent}.",
        ("compare", task / "metrics.pkl"): f"task_001 is a task folder: pass its run's folder, {task.parent}.",
        ("analyze", dataset / "SL_T5"): f"{dataset / 'SL_T5'} does not exist: pass a run's folder",
        ("analyze", dataset / "notes"): "pass a run's folder, results/{dataset}/{algorithm}, or run the experiment "
                                        "first (cljax run).",
    }
    for (command, path), end in expected.items():
        rc = cli_main([command, str(path)])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and end in err, (command, path, err)


def test_runs_whose_folders_share_a_name_keep_their_own_rows(tmp_path, capsys):
    # A sweep writes {results_dir}/{tag}/{dataset}/SL_T4: every run's folder has the same name,
    # and the runs were merged into one row (the last one).
    rng = np.random.default_rng(1)
    learner, expert = rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R))
    runs = [tmp_path / tag / "synthetic" / "SL_T4" for tag in ("lr-0.01_seed-0", "lr-0.1_seed-0")]
    for i, run in enumerate(runs):
        write_run(run, learner - 0.1 * i, expert, window=False)
    summary = compare_runs(runs)
    assert list(summary) == ["lr-0.01_seed-0/synthetic/SL_T4", "lr-0.1_seed-0/synthetic/SL_T4"]
    np.testing.assert_allclose(summary[list(summary)[1]]["gap_late"]["mean"],
                               summary[list(summary)[0]]["gap_late"]["mean"] + 0.1)
    rc = cli_main(["compare", str(runs[0]), str(runs[0])])
    assert rc == 2 and "the same run is given twice" in capsys.readouterr().err


def test_a_diverged_run_is_written_as_strict_json_with_null(tmp_path):
    # A run diverged in every repeat (kept with --allow-nonfinite) has NaN accuracies; the JSON
    # wrote the bare token NaN, which a strict parser (and jq) refuses. summary.json writes null.
    rng = np.random.default_rng(2)
    learner, expert = rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R))
    write_run(tmp_path / "ok", learner, expert, window=False)
    write_run(tmp_path / "nan", np.full((T, R), np.nan), expert, window=False)
    assert cli_main(["compare", str(tmp_path / "ok"), str(tmp_path / "nan"), "--json", str(tmp_path / "c.json")]) == 0

    def refuse(token):
        raise ValueError(token)

    out = json.loads((tmp_path / "c.json").read_text(), parse_constant=refuse)
    assert out["nan"]["gap_late"]["mean"] is None and out["nan"]["gap_per_task"] == [None] * T
    assert out["nan"]["gap_late"]["n_nonfinite"] == R
    np.testing.assert_allclose(out["ok"]["gap_per_task"], (expert - learner).mean(1))


def test_a_repeat_that_diverged_on_a_late_task_is_left_out_named_and_counted(tmp_path, capsys):
    # A learner diverged at task 3 in repeat 1 (NaN from then on, kept with --allow-nonfinite).
    # Its late mean was taken over its finite late tasks (task 2 alone), beside the other repeats'
    # means over tasks 2-3, and entered every spread and paired difference as if it had not diverged.
    rng = np.random.default_rng(4)
    learner, expert = rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R))
    seed, pairs = 7, rng.integers(0, 10, (T, R, 2))
    write_run(tmp_path / "plain", learner, expert, window=False, seed=seed, pairs_TR2=pairs)
    diverged = learner + 0.2
    diverged[3, 1] = np.nan
    write_run(tmp_path / "method", diverged, expert, window=False, seed=seed, pairs_TR2=pairs)
    summary = compare_runs([tmp_path / "plain", tmp_path / "method"], labels=["plain", "method"])
    late = summary["method"]["learner_late"]
    assert math.isnan(late["per_repeat"][1]) and (late["n"], late["n_nonfinite"]) == (R - 1, 1)
    kept = [0, 2]
    np.testing.assert_allclose(late["mean"], diverged[2:, kept].mean(0).mean())
    np.testing.assert_allclose(summary["method"]["gap_late"]["mean"], (expert - diverged)[2:, kept].mean(0).mean())
    assert summary["method"]["expert_late"]["n_nonfinite"] == 0
    paired = summary["method"]["paired"]
    assert (paired["n"], paired["n_nonfinite"], paired["higher"]) == (R - 1, 1, R - 1)
    np.testing.assert_allclose(paired["mean"], 0.2)
    np.testing.assert_allclose(summary["method"]["gap_per_task"][2], (expert - diverged)[2].mean())  # the curve keeps it

    assert cli_main(["compare", str(tmp_path / "plain"), str(tmp_path / "method")]) == 0
    out = capsys.readouterr().out
    assert "left out: the learner's in repeat 1 (not finite on a late task" in out
    assert f"not finite in 1 of {R} repeats" in out


def test_runs_on_different_protocols_are_compared_with_a_warning(tmp_path, capsys, monkeypatch):
    # Methods differ by design; a dataset or schedule that differs makes the gaps incomparable,
    # and was accepted without a word.
    rng = np.random.default_rng(3)
    learner, expert = rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R))
    for name, dataset in (("a", "fashion_mnist"), ("b", "synthetic"), ("c", "fashion_mnist")):
        write_run(tmp_path / name, learner, expert, window=False)
        (tmp_path / name / "run.json").write_text(json.dumps({"config": {"dataset": dataset, "epochs": 5}}))
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "c")]) == 0
    assert capsys.readouterr().err == ""
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differ in dataset (dataset: fashion_mnist, synthetic)" in err, err
    write_run(tmp_path / "d", learner, expert, window=False)  # a task-incremental head: another protocol too
    (tmp_path / "d" / "run.json").write_text(json.dumps({"config": {"dataset": "fashion_mnist", "head": "multi"}}))
    (tmp_path / "a" / "run.json").write_text(json.dumps({"config": {"dataset": "fashion_mnist", "head": "shared"}}))
    assert cli_main(["compare", str(tmp_path / "a"), str(tmp_path / "d")]) == 0
    assert "differ in head (head: multi, shared)" in capsys.readouterr().err
    # the task count and the test images are the protocol too; numbers in their order (10 was before 2)
    for name, config in (("a", {"num_tasks": 10, "epochs": 10}), ("d", {"num_tasks": 2, "test_source": "train_holdout",
                                                                         "epochs": 2})):
        (tmp_path / name / "run.json").write_text(json.dumps({"config": config}))
    (tmp_path / "c" / "run.json").write_text(json.dumps({"config": {"num_tasks": 3, "test_source": "test",
                                                                    "epochs": 2}}))
    assert cli_main(["compare", *(str(tmp_path / n) for n in "adc")]) == 0
    assert ("differ in num_tasks, test_source, epochs (num_tasks: 2, 3, 10; test_source: test, train_holdout; "
            "epochs: 2, 10)") in capsys.readouterr().err
    # and under the plot, which travels without the terminal's warning
    from cljax.analysis import plots

    texts, real = {}, plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (real(fig, path), texts.__setitem__(len(texts), [
        " ".join(t.get_text().split()) for t in fig.texts]))[0])  # (the caption is drawn as it saves)
    compare_runs([tmp_path / n for n in "adc"], tmp_path / "gap.png", labels=list("adc"))
    compare_runs([tmp_path / n for n in "dc"], tmp_path / "gap.png", labels=list("dc"))
    assert texts == {0: ["the runs differ in num_tasks, test_source, epochs: their gaps are not on one protocol"],
                     1: ["the runs differ in num_tasks, test_source: their gaps are not on one protocol"]}


def test_late_tasks_are_the_later_half_and_every_figure_reads_the_experts_last_snapshot(tmp_path):
    # Three tasks (late: n // 2 = 1 to 2); the expert's first snapshot (0.99) beats its last one,
    # and repeat 2's learner has no finite accuracy on task 1 (left out of that task's mean, and
    # repeat 2 out of the late figures of the learner and the gap).
    import shutil

    rng = np.random.default_rng(4)
    learner, expert = rng.uniform(0.5, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R))
    learner[1, 2] = np.nan
    write_run(tmp_path / "run", learner, expert, window=False, expert_first=0.99)
    shutil.rmtree(tmp_path / "run" / f"task_{T - 1:03d}")
    s = compare_runs([tmp_path / "run"], labels=["run"])["run"]
    assert s["n_tasks"] == 3 and s["late_tasks"] == [1, 2]
    gap = expert[:3] - learner[:3]
    for key, values in (("gap_late", gap), ("learner_late", learner[:3]), ("expert_late", expert[:3])):
        per_repeat = values[1:].mean(0)  # NaN for repeat 2's learner and gap
        finite = per_repeat[np.isfinite(per_repeat)]
        assert len(finite) == (R if key == "expert_late" else R - 1) == s[key]["n"], key
        assert math.isclose(s[key]["mean"], finite.mean(), rel_tol=1e-12), key
        assert math.isclose(s[key]["std"], finite.std(ddof=1), rel_tol=1e-12), key
        np.testing.assert_allclose(s[key]["per_repeat"], per_repeat, rtol=1e-12, err_msg=key)  # each repeat's value
    by_hand = [np.mean([g for g in gap[t] if np.isfinite(g)]) for t in range(3)]
    np.testing.assert_allclose(s["gap_per_task"], by_hand, rtol=1e-12)


def test_an_output_in_a_folder_it_cannot_write_is_refused_before_the_comparison(tmp_path, capsys):
    # A file is created there to know: os.access says yes to root on a read-only mount or in /proc
    # (`--json /proc/x` failed after the comparison, naming its hidden temporary).
    import errno
    import os

    unwritable = [("/proc", os.strerror(errno.ENOENT))] if os.path.isdir("/proc/self") else []
    if os.geteuid() != 0:  # a user without the permission
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        unwritable.append((str(locked), os.strerror(errno.EACCES)))
    assert unwritable, "no folder here that cannot be written"
    for folder, why in unwritable:
        for flag in ("--json", "--out"):
            rc = cli_main(["compare", str(tmp_path / "no_run"), flag, f"{folder}/c"])
            captured = capsys.readouterr()
            assert rc == 2 and captured.out == ""
            assert captured.err == f"error: {flag} {folder}/c: cannot write to {folder} ({why}): pass a writable path.\n"
    assert not [p for p in os.listdir(tmp_path) if "probe" in p]
    (tmp_path / "afile").write_text("x")  # its folder a file: it said "does not exist: create it"
    for flag, name in (("--json", "c.json"), ("--out", "c.png")):
        assert cli_main(["compare", str(tmp_path / "no_run"), flag, str(tmp_path / "afile" / name)]) == 2
        assert capsys.readouterr().err == (f"error: {flag} {tmp_path / 'afile' / name}: its folder {tmp_path / 'afile'} "
                                           f"is a file, not a folder: pass another path.\n")


def test_each_run_is_paired_with_the_first_run_of_its_draw_and_a_method_is_pooled_over_draws(tmp_path, capsys,
                                                                                              monkeypatch):
    # A method against plain backprop on the same draw (seed and class pairs): each repeat saw the
    # same classes from the same start, so the difference is taken per repeat (its spread and
    # standard error). Two seeds: each run against its own seed's plain run, then the method's
    # differences pooled over both seeds. A run that records no draw is named, not subtracted.
    rng = np.random.default_rng(5)
    learner = {seed: rng.uniform(0.5, 0.9, (T, R)) for seed in (0, 1)}
    expert = rng.uniform(0.5, 0.9, (T, R))
    pairs = {seed: rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2) for seed in (0, 1)}
    shift = {0: np.array([0.1, 0.0, -0.05]), 1: np.array([0.2, 0.3, 0.0])}  # per repeat
    # Settings that change no number (--keep-checkpoints, --eval-batch-size) differ between the draws,
    # and one record lacks a setting the other holds at its default (a run of an older version).
    # So do those that change only the saved representations (--n-subsamples, --representation-dtype).
    speed = {0: {}, 1: {"keep_checkpoints": 8, "eval_batch_size": 50, "momentum": 0.0, "n_subsamples": 256,
                        "representation_dtype": "bfloat16"}}
    for seed in (0, 1):
        for name, acc, config in ((f"plain{seed}", learner[seed], {"lr": 0.1}),
                                  (f"method{seed}", learner[seed] + shift[seed], {"lr": 0.1, "use_redo": True,
                                                                                  **speed[seed]})):
            write_run(tmp_path / name, acc, expert, window=False, seed=seed, pairs_TR2=pairs[seed])
            (tmp_path / name / "run.json").write_text(json.dumps({"config": {**config, "seed": seed}}))
    write_run(tmp_path / "unrecorded", learner[0], expert, window=False)
    names = ["plain0", "method0", "plain1", "method1", "unrecorded"]
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert "paired" not in summary["plain0"] and "paired" not in summary["plain1"]  # the baselines
    d = {seed: (learner[seed] + shift[seed])[2:].mean(0) - learner[seed][2:].mean(0) for seed in (0, 1)}  # late: 2-3
    for seed, counts in ((0, (1, 1, 1)), (1, (2, 0, 1))):
        p = summary[f"method{seed}"]["paired"]
        assert p["paired"] and p["baseline"] == f"plain{seed}" and p["n"] == R
        assert (p["higher"], p["lower"], p["equal"]) == counts
        assert math.isclose(p["mean"], d[seed].mean(), rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(p["std"], d[seed].std(ddof=1), rel_tol=1e-9)
        assert math.isclose(p["se"], d[seed].std(ddof=1) / math.sqrt(R), rel_tol=1e-9)
    pooled = summary["method0"]["pooled_over_draws"]
    both = np.concatenate([d[0], d[1]])
    assert pooled["runs"] == ["method0", "method1"] and pooled["n"] == 2 * R
    assert math.isclose(pooled["mean"], both.mean(), rel_tol=1e-9)
    assert math.isclose(pooled["se"], both.std(ddof=1) / math.sqrt(2 * R), rel_tol=1e-9)
    assert "pooled_over_draws" not in summary["method1"]
    assert summary["unrecorded"]["paired"] == {"paired": False, "why": "its task folders record no seed or class pairs"}
    from cljax.analysis.compare import method_of

    assert method_of({"config": {"lr": 0.1, "momentum": 0.9}}) != method_of({"config": {"lr": 0.1}})  # a number changes
    unknown = {"config": {"lr": 0.1, "algorithm": "a plugin's rule"}}  # settings this process cannot read: as recorded
    assert method_of(unknown) == method_of(unknown) != method_of({"config": {"lr": 0.1}})

    assert cli_main(["compare", *(str(tmp_path / n) for n in names), "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    se = d[0].std(ddof=1) / math.sqrt(R)
    assert (f"{'method0':<28} minus plain0: {d[0].mean():+.3f} +- {d[0].std(ddof=1):.3f} (SE {se:.3f}), higher in 1, "
            f"lower in 1, equal in 1 of {R} repeats") in out, out
    assert f"pooled over 2 draws of method0's method: {both.mean():+.3f}" in out and f"of {2 * R} repeats" in out
    assert out.count("not paired") == 2 and "record no seed or class pairs" in out
    assert f"{'plain1':<28} not paired: the baseline of its draw" in out
    assert json.loads((tmp_path / "c.json").read_text())["method1"]["paired"]["baseline"] == "plain1"
    # the method twice on one draw (another --results-dir): its repeats would count twice, so no pool
    import shutil

    shutil.copytree(tmp_path / "method0", tmp_path / "again" / "method0")
    names = ["plain0", "method0", "plain1", "method1"]
    again = compare_runs([tmp_path / n for n in names] + [tmp_path / "again" / "method0"], labels=names + ["again"])
    assert not any("pooled_over_draws" in s for s in again.values())
    assert again["again"]["paired"]["baseline"] == "plain0"

    # the plot: one curve per method over all its draws' repeats, when every method is on the same draws
    from cljax.analysis import compare

    drawn = {}
    monkeypatch.setattr(compare.plots, "plot_plasticity_gap", lambda curves, path, late=None, best=False: drawn.update(curves))
    plotted = compare_runs([tmp_path / n for n in names], tmp_path / "g.png", labels=names)
    assert list(drawn) == ["plain0 (+1 draw)", "method0 (+1 draw)"]
    gaps = [expert - (learner[seed] + shift[seed]) for seed in (0, 1)]  # (T, R) each: the repeats side by side
    np.testing.assert_allclose(drawn["method0 (+1 draw)"], np.concatenate(gaps, axis=1), rtol=0, atol=1e-15)
    assert plotted["method1"]["plotted"] == {"line": "method0 (+1 draw)",  # the JSON holds the curve drawn
                                             "gap_per_task": np.concatenate(gaps, axis=1).mean(axis=1).tolist()}
    # A method on fewer draws than another (here one run of unknown method) puts every run on its own
    # line: the pooled mean beside one draw's drew other data's difference as the methods'.
    drawn.clear()
    plotted = compare_runs([tmp_path / n for n in names + ["unrecorded"]], tmp_path / "g.png",
                           labels=names + ["unrecorded"])
    assert list(drawn) == names + ["unrecorded"]
    np.testing.assert_allclose(drawn["unrecorded"], expert - learner[0], rtol=0, atol=1e-15)
    assert plotted["method1"]["plotted"] == {"line": "method1", "gap_per_task": plotted["method1"]["gap_per_task"]}
    drawn.clear()
    compare_runs([tmp_path / n for n in names[:3]], tmp_path / "g.png", labels=names[:3])  # method0 on one draw
    assert list(drawn) == names[:3]


def test_the_late_tasks_start_where_late_from_says_and_a_fraction_outside_0_1_is_one_line(tmp_path, capsys):
    rng = np.random.default_rng(6)
    learner, expert = rng.uniform(0.5, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R))
    write_run(tmp_path / "run", learner, expert, window=False)
    assert cli_main(["compare", str(tmp_path / "run"), "--late-from", "0.75", "--json", str(tmp_path / "c.json")]) == 0
    s = json.loads((tmp_path / "c.json").read_text())["run"]
    assert s["late_tasks"] == [3, 3]  # int(4 * 0.75) = 3: the last task only
    np.testing.assert_allclose(s["learner_late"]["mean"], learner[3].mean(), rtol=1e-12)
    capsys.readouterr()
    for bad in ("1", "-0.1", "nan"):
        assert cli_main(["compare", str(tmp_path / "run"), "--late-from", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--late-from {float(bad)} is not in [0, 1)" in err, err


def test_a_partial_run_is_named_so_with_its_writer_when_it_is_still_running(tmp_path, capsys, monkeypatch):
    # Its late tasks are the later half of the tasks written so far, not of the run's: the line says
    # so, and whether the run is still going (the lock its `cljax run` holds) or has stopped.
    import os

    from cljax.run_lock import RunLock

    rng = np.random.default_rng(3)
    for name in ("done", "partial"):
        write_run(tmp_path / name, rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R)), window=False)
    first = tmp_path / "partial" / "task_000" / "metadata.json"
    first.write_text(json.dumps({**json.loads(first.read_text()), "config": {"num_tasks": T + 2}}))
    runs = [str(tmp_path / "done"), str(tmp_path / "partial")]
    with RunLock(tmp_path / "partial"):
        assert cli_main(["compare", *runs, "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(out) if line.startswith("partial "))
    assert out[row + 1].split() == ["partial:", "the", "first", str(T), "of", "its", str(T + 2), "tasks,", "a", "run",
                                    "in", "progress", "(pid", str(os.getpid()), "on", *out[row + 1].split()[15:]]
    assert out[row + 1].endswith("); its late tasks are of those")
    summary = json.loads((tmp_path / "c.json").read_text())
    assert summary["partial"]["num_tasks"] == T + 2 and summary["partial"]["in_progress"]["pid"] == os.getpid()
    assert summary["done"]["in_progress"] is None and not any("partial:" in line for line in out[:row])
    assert cli_main(["compare", *runs]) == 0  # the run has stopped
    assert "partial: the first 4 of its 6 tasks, stopped (finish it with the same `cljax run` command)" in \
        capsys.readouterr().out
    # ... and the plot's legend says so too, as the table does
    from cljax.analysis import plots

    drawn = {}
    monkeypatch.setattr(plots, "plot_plasticity_gap", lambda curves, path, late=None, best=False: drawn.update(curves))
    assert cli_main(["compare", *runs, "--out", str(tmp_path / "gap.png")]) == 0
    assert sorted(drawn) == ["done", f"partial (partial: {T} of {T + 2} tasks)"]


def test_a_run_not_finished_is_paired_with_its_draws_baseline_on_the_late_tasks_both_have(tmp_path, capsys):
    # A draw is the seed and every task's class pairs: a run stopped (or still going) at task 3 of 4
    # has its baseline's first 3 pairs. It is compared on the later part of those 3 tasks, the
    # same tasks in both runs, whichever of the two is given first; such a pair is pooled only with
    # pairs on the same tasks.
    import shutil

    rng = np.random.default_rng(4)
    learner = rng.uniform(0.5, 0.9, (T, R))
    pairs = {seed: rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2) for seed in (0, 1)}
    for seed in (0, 1):
        for name, acc, config in ((f"plain{seed}", learner, {"lr": 0.1}),
                                  (f"redo{seed}", learner + 0.05 * np.arange(T)[:, None], {"lr": 0.1, "use_redo": True})):
            write_run(tmp_path / name, acc, rng.uniform(0.5, 1, (T, R)), window=False, seed=seed,
                      pairs_TR2=pairs[seed])
            (tmp_path / name / "run.json").write_text(json.dumps({"config": {**config, "seed": seed}}))
    shutil.rmtree(tmp_path / "redo1" / f"task_{T - 1:03d}")  # redo1 has tasks 0-2 of 4
    names = ["plain0", "redo0", "plain1", "redo1"]
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    p = summary["redo1"]["paired"]
    assert p["baseline"] == "plain1" and p["tasks"] == [1, 2]  # the later half of 3 tasks
    np.testing.assert_allclose(p["per_repeat"], np.full(R, 0.05 * (1 + 2) / 2), rtol=1e-12)  # tasks 1 and 2
    assert "tasks" not in summary["redo0"]["paired"]  # its own late tasks, 2-3
    np.testing.assert_allclose(summary["redo0"]["paired"]["per_repeat"], np.full(R, 0.05 * (2 + 3) / 2), rtol=1e-12)
    assert "pooled_over_draws" not in summary["redo0"]  # the one pair on its own late tasks is not pooled alone

    reverse = compare_runs([tmp_path / n for n in ("redo1", "plain1")], labels=["redo1", "plain1"])
    assert reverse["plain1"]["paired"]["baseline"] == "redo1" and reverse["plain1"]["paired"]["tasks"] == [1, 2]
    np.testing.assert_allclose(reverse["plain1"]["paired"]["per_repeat"], np.full(R, -0.075), rtol=1e-12)

    assert cli_main(["compare", *(str(tmp_path / n) for n in names)]) == 0
    out = capsys.readouterr().out
    assert f"{'redo1':<28} minus plain1 on tasks 1-2 (the later part of the tasks both have): +0.075 +- 0.000" in out
    assert "pooled over" not in out  # redo0 on its own late tasks, redo1 on 1-2: the line says so
    assert ("redo1 not pooled with redo0 (the same rule and options on another draw): it is compared on other tasks "
            "(tasks 1-2 here, tasks 2-3 there)") in out

    # Draw 1's two runs both stopped at 3 tasks: each pair on its own late tasks, 1-2 here and
    # 2-3 in draw 0, were pooled (the pairs had no "tasks"), 8 differences over two windows.
    last = f"task_{T - 1:03d}"
    shutil.move(tmp_path / "plain1" / last, tmp_path / "kept")
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert "tasks" not in summary["redo1"]["paired"] and "pooled_over_draws" not in summary["redo0"]
    assert summary["redo1"]["not_pooled"].endswith("(tasks 1-2 here, tasks 2-3 there)")
    shutil.move(tmp_path / "kept", tmp_path / "plain1" / last)

    # Both redo runs stopped at task 3 of 4: their pairs are on the same tasks, 1-2, so they pool.
    shutil.rmtree(tmp_path / "redo0" / f"task_{T - 1:03d}")
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    pooled = summary["redo0"]["pooled_over_draws"]
    assert pooled["runs"] == ["redo0", "redo1"] and pooled["tasks"] == [1, 2] and pooled["n"] == 2 * R
    assert math.isclose(pooled["mean"], 0.075, rel_tol=1e-9)
    assert cli_main(["compare", *(str(tmp_path / n) for n in names)]) == 0
    assert "pooled over 2 draws of redo0's method on tasks 1-2: +0.075" in capsys.readouterr().out
    for n in names:  # the runs' T, as a real run's run.json and first task folder record it
        record = json.loads((tmp_path / n / "run.json").read_text())
        record["config"]["num_tasks"] = T
        (tmp_path / n / "run.json").write_text(json.dumps(record))
        first = tmp_path / n / "task_000" / "metadata.json"
        first.write_text(json.dumps({**json.loads(first.read_text()), "config": record["config"]}))
    plotted = compare_runs([tmp_path / n for n in names], tmp_path / "gap.png", labels=names)
    # a pooled line of runs not finished says so, as a run's own line does (the tag was looked up by run)
    assert plotted["redo1"]["plotted"]["line"] == "redo0 (+1 draw) (partial: 3 of 4 tasks)"
    assert plotted["plain1"]["plotted"]["line"] == "plain0 (+1 draw)"
    # the same draw twice (a copy of redo1, also on tasks 1-2) is not pooled: its repeats would count twice
    shutil.copytree(tmp_path / "redo1", tmp_path / "copy" / "redo1")
    again = compare_runs([tmp_path / n for n in names] + [tmp_path / "copy" / "redo1"], labels=names + ["copy"])
    assert again["copy"]["paired"]["tasks"] == [1, 2] and not any("pooled_over_draws" in v for v in again.values())


def test_one_repeat_has_no_std_and_the_table_says_so_as_analyze_does(tmp_path, capsys):
    """R = 1: the sample std is not defined; the table printed '+- nan' where `cljax analyze`
    prints '+- n/a'."""
    rng = np.random.default_rng(5)
    write_run(tmp_path / "one", rng.uniform(0.5, 1, (T, 1)), rng.uniform(0.5, 1, (T, 1)), window=False)
    assert cli_main(["compare", str(tmp_path / "one")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("one"))
    assert row.count("+- n/a") == 3 and "nan" not in row, row


def test_two_draws_of_one_rule_and_options_with_a_setting_changed_are_not_pooled_and_the_line_says_why(tmp_path,
                                                                                                      capsys):
    # ReDo on two seeds, one with --redo-tau changed (by mistake or as another method): not one
    # method, so no pooled line, and the comparison names the setting rather than staying silent.
    rng = np.random.default_rng(7)
    expert = rng.uniform(0.5, 0.9, (T, R))
    for seed in (0, 1):
        pairs = rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2)
        learner = rng.uniform(0.5, 0.9, (T, R))
        tau = 0.1 if seed == 0 else 0.2
        for name, config in ((f"plain{seed}", {"use_redo": False}),
                             (f"redo{seed}", {"use_redo": True, "redo_tau": tau})):
            write_run(tmp_path / name, learner + 0.01, expert, window=False, seed=seed, pairs_TR2=pairs)
            (tmp_path / name / "run.json").write_text(json.dumps({"config": {"lr": 0.1, **config, "seed": seed}}))
    names = ["plain0", "redo0", "plain1", "redo1"]
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert summary["redo1"]["paired"]["baseline"] == "plain1"
    assert not any("pooled_over_draws" in s for s in summary.values())
    assert summary["redo1"]["not_pooled"] == ("not pooled with redo0 (the same rule and options on another draw): its "
                                              "settings differ in redo_tau (0.1 there, 0.2 here)")
    assert "not_pooled" not in summary["redo0"]
    assert cli_main(["compare", *(str(tmp_path / n) for n in names)]) == 0
    assert "redo1 not pooled with redo0 (the same rule and options on another draw): its settings differ in redo_tau" \
        in capsys.readouterr().out
    # the baseline's settings differ instead (plain1 at another --lr): named as the baseline's
    for name in ("plain1", "redo1"):
        config = {"lr": 0.2 if name == "plain1" else 0.1, "use_redo": name == "redo1", "redo_tau": 0.1, "seed": 1}
        (tmp_path / name / "run.json").write_text(json.dumps({"config": config}))
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert summary["redo1"]["not_pooled"].endswith("its baseline's settings differ in lr (0.1 there, 0.2 here)")
    # the same settings: pooled, and no such line
    (tmp_path / "plain1" / "run.json").write_text(json.dumps({"config": {"lr": 0.1, "use_redo": False, "seed": 1}}))
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert summary["redo0"]["pooled_over_draws"]["runs"] == ["redo0", "redo1"]
    assert not any("not_pooled" in s for s in summary.values())


def test_a_run_not_pooled_is_set_against_the_earlier_run_of_its_own_method(tmp_path):
    # ReDo at two taus on two seeds, seed 2's first run the baseline there and a plain run seed
    # 1's: tau 0.2 on seed 2 was said not to pool with tau 0.1 on seed 1 "its settings differ in
    # redo_tau", while the run of its own settings on seed 1 is the one to name: their baselines differ.
    rng = np.random.default_rng(9)
    expert = rng.uniform(0.5, 0.9, (T, R))
    pairs = {seed: rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2) for seed in (1, 2)}
    runs = (("plain_1", 1, {"use_redo": False}), ("tau1_1", 1, {"use_redo": True, "redo_tau": 0.1}),
            ("tau1_2", 2, {"use_redo": True, "redo_tau": 0.1}), ("tau2_1", 1, {"use_redo": True, "redo_tau": 0.2}),
            ("tau2_2", 2, {"use_redo": True, "redo_tau": 0.2}))
    for name, seed, config in runs:
        write_run(tmp_path / name, rng.uniform(0.5, 0.9, (T, R)), expert, window=False, seed=seed,
                  pairs_TR2=pairs[seed])
        (tmp_path / name / "run.json").write_text(json.dumps({"config": {"lr": 0.1, **config, "seed": seed}}))
    names = [name for name, _, _ in runs]
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert summary["tau2_2"]["paired"]["baseline"] == "tau1_2" and summary["tau2_1"]["paired"]["baseline"] == "plain_1"
    assert summary["tau2_2"]["not_pooled"].startswith(
        "not pooled with tau2_1 (the same rule and options on another draw): its baseline's settings differ in ")


def test_two_draws_of_a_plugins_rule_not_loaded_here_with_a_setting_changed_say_why_they_are_not_pooled(tmp_path):
    # compare loads no plugin: a plugin rule's recorded settings cannot be read as a Config, so the
    # run had no family and its line went missing. Its folder, which cljax names by the family, tells it.
    rng = np.random.default_rng(8)
    expert = rng.uniform(0.5, 0.9, (T, R))
    runs = []
    for seed in (0, 1):
        pairs = rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2)
        learner = rng.uniform(0.5, 0.9, (T, R))
        for family, config in (("SL", {"algorithm": "SL"}), ("Brier", {"algorithm": "Brier", "brier_scale": 0.5 + seed})):
            run = tmp_path / f"s{seed}" / f"{family}_T{T}"
            write_run(run, learner + 0.01 * (family == "Brier"), expert, window=False, seed=seed, pairs_TR2=pairs)
            (run / "run.json").write_text(json.dumps({"config": {"lr": 0.1, **config, "seed": seed}}))
            runs.append(run)
    labels = ["sl0", "brier0", "sl1", "brier1"]
    summary = compare_runs(runs, labels=labels)
    assert summary["brier1"]["paired"]["baseline"] == "sl1"
    assert summary["brier1"]["not_pooled"] == ("not pooled with brier0 (the same rule and options on another draw): "
                                               "its settings differ in brier_scale (0.5 there, 1.5 here)")


def test_the_late_tasks_start_at_the_fraction_given_not_one_float_rounding_early():
    from cljax.analysis.compare_pairs import late_start

    assert int(90 * 0.7) == 62 and late_start(90, 0.7) == 63  # 90 * 0.7 = 62.99999999999999 as a float
    assert late_start(100, 0.57) == 57 and late_start(50, 0.58) == 29
    assert late_start(5, 0.5) == 2 and late_start(7, 0.25) == 1 and late_start(3, 0.0) == 0
    assert late_start(3, 0.3333333333) == 0  # 0.9999999999: exact, not rounded to 1


def test_a_sweep_of_methods_over_seeds_pools_each_and_says_not_pooled_of_none(tmp_path, capsys):
    # plain, lr 0.05 and lr 0.1 on two seeds each: both rates pool over their two draws; a line
    # saying one rate's run was 'not pooled' with the other rate's (a review found it) is wrong.
    rng = np.random.default_rng(3)
    expert = rng.uniform(0.5, 0.9, (T, R))
    names = []
    for seed in (0, 1):
        pairs = rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2)
        for name, lr in ((f"plain_s{seed}", 0.2), (f"lr05_s{seed}", 0.05), (f"lr1_s{seed}", 0.1)):
            write_run(tmp_path / name, rng.uniform(0.5, 0.9, (T, R)), expert, window=False, seed=seed,
                      pairs_TR2=pairs)
            (tmp_path / name / "run.json").write_text(json.dumps({"config": {"lr": lr, "seed": seed}}))
            names.append(name)
    names = sorted(names, key=lambda n: (not n.startswith("plain"), n))  # the baselines first
    summary = compare_runs([tmp_path / n for n in names], labels=names)
    assert summary["lr05_s0"]["pooled_over_draws"]["runs"] == ["lr05_s0", "lr05_s1"]
    assert summary["lr1_s0"]["pooled_over_draws"]["runs"] == ["lr1_s0", "lr1_s1"]
    assert not any("not_pooled" in s for s in summary.values())


def test_the_table_keeps_its_columns_under_their_headers_at_thousands_of_tasks():
    # "1000-1999" is 9 characters: the values sat 2-4 columns right of their headers.
    from cljax.analysis.compare_text import format_comparison

    def stat(mean):
        return {"mean": mean, "std": 0.01, "per_repeat": [mean, mean]}

    summary = {label: {"gap_late": stat(-0.25), "learner_late": stat(0.85), "expert_late": stat(0.6),
                       "late_tasks": late, "n_tasks": late[1] + 1, "num_tasks": late[1] + 1}
               for label, late in (("short", (1, 2)), ("long", (1000, 1999)), ("longer", (10000, 19999)))}
    lines = format_comparison(summary).splitlines()
    header = lines[0]
    for row in lines[1:4]:
        for column, value in (("gap (late tasks)", "-0.250"), ("learner", "0.850"), ("expert", "0.600")):
            assert row.index(value) == header.index(column), (row, header)


def test_the_table_says_what_the_learner_column_is_and_flags_a_pair_of_two_rules():
    # "learner" alone read as the learner's accuracy over every task, and a Bio run paired with an
    # SL run read as Bio losing plasticity, where a fresh Bio network learns less to begin with.
    from cljax.analysis.compare_text import format_comparison

    def stat(mean):
        return {"mean": mean, "std": 0.01, "per_repeat": [mean, mean]}

    pair = {"paired": True, "baseline": "sl", "mean": -0.018, "std": 0.007, "se": 0.004, "higher": 0, "lower": 2,
            "equal": 0, "n": 2, "n_nonfinite": 0, "per_repeat": [-0.02, -0.016]}
    summary = {label: {"gap_late": stat(0.01), "learner_late": stat(0.95), "expert_late": stat(0.96),
                       "late_tasks": (2, 4), "n_tasks": 5, "num_tasks": 5, "rule": rule,
                       **({"paired": {**pair}} if label != "sl" else {})}
               for label, rule in (("sl", "SL"), ("bio", "Bio"), ("sl_replay", "SL"))}
    summary["sl_replay"]["paired"]["baseline"] = "sl"
    text = format_comparison(summary)
    assert "learner (current task)" in text.splitlines()[0]
    assert "(learner and expert: the test accuracy on the task just trained, at its end; gap: expert minus learner;" in text
    lines = text.splitlines()
    flagged = [i for i, line in enumerate(lines) if "(rules Bio and SL: a fresh expert of each rule" in line]
    assert len(flagged) == 1 and lines[flagged[0] - 1].startswith("bio "), text  # under Bio's line, not SL+replay's


def test_a_tie_of_late_means_in_float32_accuracies_counts_as_equal_not_lower():
    # Late tasks of two runs on 80 test images: 0.5875 + 0.65 and 0.625 + 0.6125, both 1.2375 / 2
    # exactly, but float32 rounds them apart and the float64 means differ by 2**-25.
    from cljax.analysis.cl import mean_over_every_task
    from cljax.analysis.compare_pairs import TIE_TOLERANCE, paired_difference

    this = mean_over_every_task(np.array([[0.5875, 0.65], [0.65, 0.7]], np.float32))
    base = mean_over_every_task(np.array([[0.625, 0.6125], [0.6625, 0.6625]], np.float32))
    assert this[0] - base[0] == -(2.0**-25)  # the tie as the runs' float32 accuracies give it
    p = paired_difference(this, base)
    assert (p["higher"], p["lower"], p["equal"]) == (1, 0, 1)
    assert 1 / (80 * 2) > 16 * TIE_TOLERANCE  # a true difference of the least size is still counted
    p = paired_difference(np.array([0.5, 0.5]), np.array([0.5 + 1 / 160, 0.5 - 1 / 160]))
    assert (p["higher"], p["lower"], p["equal"]) == (1, 1, 0)


def test_runs_of_one_seed_and_class_pairs_on_other_data_settings_are_not_one_draw(tmp_path):
    # A method of 100 images per class was paired with a plain run of 1000 on its seed (given
    # first), though its own plain run, on its images, was given too.
    rng = np.random.default_rng(8)
    pairs = rng.integers(0, 10, (T, R, 2))
    names = {"plain_1000": 1000, "plain_100": 100, "redo_100": 100}
    for name, n in names.items():
        write_run(tmp_path / name, rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R)), window=False, seed=0,
                  pairs_TR2=pairs)
        for d in (tmp_path / name).iterdir():
            meta = json.loads((d / "metadata.json").read_text())
            (d / "metadata.json").write_text(json.dumps({**meta, "config": {"n_train_per_class": n}, "data": "a" * 64}))
    summary = compare_runs([tmp_path / n for n in names], labels=list(names))
    assert "paired" not in summary["plain_100"]  # the baseline of its own draw
    assert summary["redo_100"]["paired"]["baseline"] == "plain_100"
    # the dataset's content too (another --synthetic-size, another prepared folder): its identity, as run records it
    for d in (tmp_path / "redo_100").iterdir():
        meta = json.loads((d / "metadata.json").read_text())
        (d / "metadata.json").write_text(json.dumps({**meta, "data": "f" * 64}))
    assert "paired" not in compare_runs([tmp_path / n for n in names], labels=list(names))["redo_100"]
    # ... where both record one: a folder from before they did (no "data", no run.json) is paired as before
    for d in (tmp_path / "redo_100").iterdir():
        meta = json.loads((d / "metadata.json").read_text())
        del meta["data"]
        (d / "metadata.json").write_text(json.dumps(meta))
    assert compare_runs([tmp_path / n for n in names], labels=list(names))["redo_100"]["paired"]["baseline"] == \
        "plain_100"


def test_two_folders_of_one_run_id_are_one_run_and_refused_in_one_line(tmp_path, capsys):
    # `cp -a pristine d; cljax compare pristine/... d/...` compared a run with its copy as two runs:
    # "+0.000 +- 0.000 ..., equal in 3 of 3 repeats", a tie of two methods, without a word.
    import shutil

    rng = np.random.default_rng(6)
    pairs = rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2)
    for name in ("plain", "redo"):  # two runs of one draw, each with its own run id
        write_run(tmp_path / "pristine" / name, rng.uniform(0.5, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R)),
                  window=False, seed=0, pairs_TR2=pairs, run_id=f"id-{name}")
        record = {"config": {"seed": 0}, "run_id": f"id-{name}"}
        (tmp_path / "pristine" / name / "run.json").write_text(json.dumps(record))
    shutil.copytree(tmp_path / "pristine", tmp_path / "d")
    runs = [str(tmp_path / "pristine" / "plain"), str(tmp_path / "pristine" / "redo")]
    assert cli_main(["compare", *runs]) == 0 and f"{'redo':<28} minus plain: " in capsys.readouterr().out
    copy = str(tmp_path / "d" / "plain")
    for given in ([runs[0], copy], [runs[0], runs[1], copy]):
        assert cli_main(["compare", *given]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == (f"error: {runs[0]} and {copy} are the same run (run id "
                                                       f"id-plain; one is a copy of the other): pass one of them.\n")
    for folder in (runs[0], copy):  # no run.json: the task folders' run id
        (tmp_path / folder / "run.json").unlink()
    assert cli_main(["compare", runs[0], copy]) == 2
    assert "are the same run (run id id-plain; one is a copy of the other)" in capsys.readouterr().err


def test_a_sweep_given_whole_names_the_runs_its_sweep_json_lists_without_task_folders(tmp_path, capsys):
    # A listed run moved away (or not run yet) was left out without a word, and the runs after it
    # were paired with another baseline.
    import shutil

    rng = np.random.default_rng(7)
    runs = [tmp_path / f"lr-0.{i}_seed-0" / "synthetic" / "SL_T2" for i in range(4)]
    for run in runs:
        write_run(run, rng.uniform(0.5, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R)), window=False)
    listed = [{"tag": run.parents[1].name, "results": str(run)} for run in runs]
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed, "earlier": []}))
    assert cli_main(["compare", str(tmp_path)]) == 0
    assert capsys.readouterr().err == (f"note: {tmp_path} holds a sweep: comparing the 4 run(s) with task folders its "
                                       f"sweep.json lists.\n")
    shutil.move(str(runs[0].parents[1]), str(tmp_path.parent / "moved"))  # moved away
    for t in range(T):  # a run not started yet: its folder, no task folder
        shutil.rmtree(runs[2] / f"task_{t:03d}")
    note = (f"note: {tmp_path}'s sweep.json also lists 2 run(s) without task folders (moved away, or not run yet), "
            f"left out of the comparison: {runs[0]} (no such folder), {runs[2]} (no task folder); each run is paired "
            f"with the first run of its draw among those compared.\n")
    assert cli_main(["compare", str(tmp_path)]) == 0
    assert capsys.readouterr().err == (f"note: {tmp_path} holds a sweep: comparing the 2 run(s) with task folders its "
                                       f"sweep.json lists.\n{note}")
    assert cli_main(["compare", str(runs[1]), str(runs[3])]) == 0  # all its runs with task folders, one by one
    captured = capsys.readouterr()
    assert captured.err == note and "lr-0.1_seed-0" in captured.out and "lr-0.3_seed-0" in captured.out
    assert cli_main(["compare", str(runs[1])]) == 0  # one of its runs: what the sweep lists besides is not named
    assert capsys.readouterr().err == ""


def test_runs_of_a_sweep_swapped_by_hand_are_refused_not_labelled_with_each_others_settings(tmp_path, capsys):
    # Two run folders of a sweep swapped by hand: the table showed lr 0.1's numbers as lr-0.2's.
    rng = np.random.default_rng(9)
    runs = {lr: tmp_path / f"lr-{lr}_seed-0" / "synthetic" / "SL_T2" for lr in (0.1, 0.2)}
    for lr, run in runs.items():
        write_run(run, rng.uniform(0.5, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R)), window=False)
        (run / "run.json").write_text(json.dumps({"config": {"lr": lr, "seed": 0, "momentum": 0.0}}))
    listed = [{"tag": run.parents[1].name, "settings": {"lr": lr, "cbp_rate": 0.5}, "seed": 0, "results": str(run)}
              for lr, run in runs.items()]  # cbp_rate: a grid setting these runs do not use (not in their config)
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": listed, "earlier": []}))
    assert cli_main(["compare", str(tmp_path)]) == 0
    capsys.readouterr()
    (runs[0.1] / "run.json").rename(tmp_path / "a.json")  # the two records change folders, as the runs would
    (runs[0.2] / "run.json").rename(runs[0.1] / "run.json")
    (tmp_path / "a.json").rename(runs[0.2] / "run.json")
    for given in ([str(tmp_path)], [str(runs[0.1]), str(runs[0.2])]):
        assert cli_main(["compare", *given]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.splitlines()[-1] == (
            f"error: {runs[0.1]} does not hold the run {tmp_path / 'sweep.json'} lists there (lr 0.1 in sweep.json, "
            f"0.2 in its run.json): its folder was moved or swapped by hand, so its label would name another run's "
            f"settings; move each run back to the folder its settings name, then compare again.")
    record = json.loads((runs[0.1] / "run.json").read_text())
    (runs[0.1] / "run.json").write_text(json.dumps({"config": {**record["config"], "lr": 0.1, "seed": 3}}))
    assert cli_main(["compare", str(runs[0.1])]) == 2  # another seed, the same way
    assert "(seed 0 in sweep.json, 3 in its run.json)" in capsys.readouterr().err
    (runs[0.1] / "run.json").unlink()  # no record: nothing to hold against the sweep (compare reads the task folders)
    (runs[0.2] / "run.json").write_text(json.dumps({"config": {"lr": 0.2, "seed": 0}}))
    assert cli_main(["compare", str(tmp_path)]) == 0


def test_a_run_whose_run_json_is_damaged_is_pooled_by_the_settings_its_task_folders_record(tmp_path):
    # Its pooled line disappeared without a word: no run.json, no method, no pooling (and no "not pooled").
    rng = np.random.default_rng(11)
    expert = rng.uniform(0.5, 0.9, (T, R))
    names = []
    for seed in (0, 1):
        pairs = rng.permutation(np.arange(2 * T * R)).reshape(T, R, 2)
        for name, lr in ((f"plain_s{seed}", 0.2), (f"lr05_s{seed}", 0.05)):
            run = tmp_path / name
            write_run(run, rng.uniform(0.5, 0.9, (T, R)), expert, window=False, seed=seed, pairs_TR2=pairs)
            config = {"lr": lr, "seed": seed}
            (run / "run.json").write_text(json.dumps({"config": config}))
            for d in run.glob("task_*"):
                meta = json.loads((d / "metadata.json").read_text())
                (d / "metadata.json").write_text(json.dumps({**meta, "config": {**meta.get("config", {}), **config}}))
            names.append(name)
    names = sorted(names, key=lambda n: (not n.startswith("plain"), n))
    whole = compare_runs([tmp_path / n for n in names], labels=names)
    assert whole["lr05_s0"]["pooled_over_draws"]["runs"] == ["lr05_s0", "lr05_s1"]
    (tmp_path / "lr05_s1" / "run.json").write_text('{"config": ')  # cut short
    damaged = compare_runs([tmp_path / n for n in names], labels=names)
    assert damaged["lr05_s0"]["pooled_over_draws"] == whole["lr05_s0"]["pooled_over_draws"]


def test_the_plot_shades_the_late_tasks_when_every_run_has_the_same(tmp_path, monkeypatch):
    from cljax.analysis import plots

    rng = np.random.default_rng(11)
    for name in ("a", "b"):
        write_run(tmp_path / name, rng.uniform(0.5, 1, (T, R)), rng.uniform(0.5, 1, (T, R)), window=False)
    figs, real = [], plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "gap.png", labels=["a", "b"])
    spans = [p for p in figs[0].axes[0].patches if p.get_label().startswith("late tasks")]
    assert [p.get_label() for p in spans] == [f"late tasks {T // 2}-{T - 1} (the table's figures)"]
    import shutil

    shutil.rmtree(tmp_path / "b" / f"task_{T - 1:03d}")  # b's late tasks are others: nothing shaded
    compare_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "gap.png", labels=["a", "b"])
    assert not [p for p in figs[1].axes[0].patches if p.get_label().startswith("late tasks")]


def test_the_table_counts_the_repeats_whose_learner_sits_at_chance(tmp_path):
    # 4 repeats, 4 tasks (late: 2-3): repeat 0 at chance on both late tasks, repeat 1 on one
    # (half: not more than half), repeats 2-3 learning. The learner's late mean, 0.77, hides the split.
    from cljax.analysis.compare_text import format_comparison

    learner = np.array([[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9], [0.5, 0.55, 0.95, 0.9], [0.52, 0.9, 0.9, 0.95]])
    write_run(tmp_path / "run", learner, np.full((T, 4), 0.9), window=False)
    summary = compare_runs([tmp_path / "run"], labels=["run"])
    entry = summary["run"]["near_chance_late"]["learner"]
    assert entry["per_repeat"] == [2, 1, 0, 0] and entry["tasks_per_repeat"] == [2, 2, 2, 2]
    lines = format_comparison(summary).splitlines()
    assert lines[1].endswith("0.900 +- 0.000  1 of 4") and lines[0].index("at chance") == lines[1].index("1 of 4")
    assert "at chance: in how many repeats the learner ended at most 0.55" in lines[2]


def test_snapshot_best_compares_each_at_its_best_snapshot(tmp_path, capsys):
    # Each task has two snapshots: the learner's first at 0.123 (write_run), the expert's first at
    # 0.99 and its last lower. At the last snapshots the gap is expert - learner; at the best, 0.99
    # - learner. The at-chance count stays of the tasks' ends (the learner's last, 0.5 on tasks 2-3).
    from cljax.cli import main

    rng = np.random.default_rng(3)
    learner, expert = rng.uniform(0.6, 0.9, (T, R)), rng.uniform(0.5, 0.9, (T, R))
    learner[2:, 0] = 0.5
    write_run(tmp_path / "run", learner, expert, window=False, expert_first=0.99)
    last = compare_runs([tmp_path / "run"], labels=["run"])["run"]
    best = compare_runs([tmp_path / "run"], labels=["run"], snapshot="best")["run"]
    np.testing.assert_allclose(last["gap_late"]["per_repeat"], (expert - learner)[2:].mean(0))
    np.testing.assert_allclose(best["gap_late"]["per_repeat"], (0.99 - learner)[2:].mean(0))
    np.testing.assert_allclose(best["expert_late"]["per_repeat"], [0.99] * R)
    assert (last["snapshot"], best["snapshot"]) == ("last", "best")
    assert best["near_chance_late"] == last["near_chance_late"]
    assert best["near_chance_late"]["learner"]["per_repeat"] == [2, 0, 0]
    assert main(["compare", str(tmp_path / "run"), "--snapshot", "best", "--out", str(tmp_path / "gap.png")]) == 0
    out = capsys.readouterr().out
    assert "at its best snapshot of that task (--snapshot best)" in out and (tmp_path / "gap.png").stat().st_size
