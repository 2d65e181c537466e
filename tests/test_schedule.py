"""Long runs: the cycled schedule (--task-schedule cycle) and the evaluated tasks (--eval-tasks):
schedules, slot ids, what a run saves per mode, one compilation, a byte-identical resume, the
planner and the analyses on runs that evaluate a subset of the tasks."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cljax import results
from cljax.analysis.band import Band
from cljax.analysis.cl import cl_metrics_band, cl_metrics_from_matrix
from cljax.analysis.driver import analyze_run
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.eval_tasks import parse_eval_tasks
from cljax.experiment import run_experiment
from cljax.plan import make_plan
from cljax.setting_match import differing_settings
from cljax.tasks import make_schedule
from tests.backend import SEPARATELY_COMPILED, assert_same, assert_same_accuracy
from tests.conftest import is_program_obtained

# 4 classes: 2 pairs per cycle; 5 tasks visit them 3, 2 times.
TINY = dict(dataset="synthetic", synthetic_classes=4, num_tasks=5, n_repeats=2, n_train_per_class=16,
            n_test_per_class=4, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1, lr=0.1,
            task_schedule="cycle", model="mlp", mlp_hidden=32)  # the MLP: the schedule's, not the model's
N_TEST = Config.from_flat(TINY).n_test  # test images per task: what an accuracy is a mean over
SAVED = ("representations.npy", "binary_labels.npy", "weights.npy", "start_weights.npy", "metrics.pkl",
         "expert_metrics.pkl")


def tiny(tmp_path, **overrides) -> Config:
    return Config.from_flat({**TINY, "results_dir": str(tmp_path), **overrides})


def test_cycle_repeats_the_permutation_and_pairs_refuses_past_it():
    pairs = make_schedule(10, 5, 3, seed=4)
    cycle = make_schedule(10, 12, 3, seed=4, kind="cycle")
    assert cycle.shape == (12, 3, 2)
    np.testing.assert_array_equal(cycle[:5], pairs)  # the first cycle is today's schedule
    np.testing.assert_array_equal(cycle[5:10], pairs)
    np.testing.assert_array_equal(cycle[10:], pairs[:2])
    for r in range(3):  # each repeat's cycle uses every class once
        assert sorted(cycle[:5, r].ravel().tolist()) == list(range(10))
    with pytest.raises(CljaxError, match="--task-schedule cycle"):
        make_schedule(10, 6, 2, 0)


def test_the_schedule_is_each_repeats_permutation_drawn_in_turn():
    # The draws every recorded run was made with: repeat r's pairs are the r-th rng.permutation of
    # the classes, from one generator seeded (seed, 0). Drawn in one pass now, for large R.
    # Two and three classes make one pair; an odd class count leaves its last drawn class out.
    for C, T, R, seed, kind in ((10, 5, 3, 4, "pairs"), (20, 30, 7, 0, "cycle"), (1000, 17, 30, 9, "cycle"),
                                (2, 1, 3, 1, "pairs"), (3, 1, 2, 5, "pairs"), (5, 6, 3, 2, "cycle")):
        rng = np.random.default_rng([seed, 0])
        perms = np.stack([rng.permutation(C) for _ in range(R)])
        expected = perms[:, :C // 2 * 2].reshape(R, C // 2, 2)[:, np.arange(T) % (C // 2)].transpose(1, 0, 2)
        np.testing.assert_array_equal(make_schedule(C, T, R, seed, kind), expected)
    np.testing.assert_array_equal(make_schedule(10, 2, 2, 0)[:, 0], [[4, 6], [2, 7]])  # fixed: the numpy stream
    with pytest.raises(CljaxError, match="the dataset has 1 class\\(es\\): a binary task needs at least 2"):
        make_schedule(1, 1, 1, 0, "cycle")


def test_train_holdout_needs_the_training_and_held_out_images_of_every_class(tmp_path):
    """With --test-source train_holdout a class gives n_train + n_test distinct training images:
    100 a class is enough for 90 + 10 and refused for 90 + 11 (the sets would overlap)."""
    from cljax.data.prepared import ClassData
    from cljax.errors import CljaxError
    from cljax.tasks import TaskData
    from tests.conftest import small_config

    labels = np.repeat(np.arange(4), 100)
    data = ClassData(np.zeros((400, 1, 1), np.uint8), labels, np.zeros((400, 1, 1), np.uint8), labels, 4, tuple("abcd"), {})

    def config(n_test, source="train_holdout"):
        return small_config(tmp_path, n_train_per_class=90, n_test_per_class=n_test, test_source=source,
                            n_subsamples=8, batch_size=10)

    TaskData(data, config(10))
    TaskData(data, config(11, "test"))  # a separate test split: 90 of 100 is enough
    TaskData(data, config(100, "test"))  # every test image of a class, no more
    with pytest.raises(CljaxError, match=r"class 0 has 100 test images, the fewest of any class, but --n-test-per-class "
                                         r"is 101: lower it to at most 100, or use --test-source train_holdout \(test "
                                         r"images held out of the training split\) with --n-train-per-class \+ "
                                         r"--n-test-per-class at most 100\.$"):  # too few to spare beside 90
        TaskData(data, config(101, "test"))
    no_test = ClassData(data.train_images, labels, data.test_images[:0], labels[:0], 4, tuple("abcd"), {})
    with pytest.raises(CljaxError, match=r"^class 0 has no test images \(the dataset has no test split for it\): use "
                                         r"--test-source train_holdout .* at most 100\.$"):  # it said "at most 0"
        TaskData(no_test, config(11, "test"))
    with pytest.raises(CljaxError, match=r"class 0 has 100 training images, the fewest of any class, but 101 are needed "
                                         r"\(--n-train-per-class \+ --n-test-per-class\): lower their sum to at most 100"):
        TaskData(data, config(11))
    fewer = np.concatenate([labels[:-5], np.full(5, 4)])  # class 3 has 95 images, 5 go to a class 4 of its own
    five = ClassData(data.train_images, fewer, data.test_images, fewer, 5, tuple("abcde"), {})
    with pytest.raises(CljaxError, match=r"^class 4 has 5 training images, the fewest of any class, but 90 are needed "
                                         r"\(--n-train-per-class\): lower it to at most 5\.$"):  # the first too few
        TaskData(five, config(10, "test"))
    with pytest.raises(CljaxError, match=r"class 0 has 50 test images, .* to at most 50, or use --test-source "
                                         r"train_holdout \(test images held out of the training split\)\.$"):
        TaskData(ClassData(data.train_images, labels, data.test_images[:200], labels[::2], 4, tuple("abcd"), {}),
                 small_config(tmp_path, n_train_per_class=10, n_test_per_class=60, n_subsamples=8, batch_size=10))
    gap = np.where(labels == 2, 3, labels)  # no image of class 2 ("c"): no --n-train-per-class can help
    with pytest.raises(CljaxError, match=r"class 2 \(c\) has no training images: every class of the dataset needs"):
        TaskData(ClassData(data.train_images, gap, data.test_images, gap, 4, tuple("abcd"), {}), config(10))


@pytest.mark.parametrize("schedule", ["pairs", "cycle"])
def test_the_stacked_test_sets_are_each_task_s_and_held_once(tmp_path, schedule):
    # Gathered apart and then stacked, they were held twice at the peak: 2.00 times what the plan counts.
    import tracemalloc

    from cljax.data.prepared import ClassData
    from cljax.tasks import TaskData
    from tests.conftest import small_config

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(100), 40)
    images = rng.integers(0, 256, (4000, 28, 28), np.uint8)
    config = small_config(tmp_path, n_train_per_class=8, n_test_per_class=32, n_subsamples=8, batch_size=8,
                          num_tasks=120 if schedule == "cycle" else 50, n_repeats=3, task_schedule=schedule)
    task_data = TaskData(ClassData(images, labels, images, labels, 100, tuple(map(str, range(100))), {}), config)
    pairs = make_schedule(100, config.num_tasks, 3, config.seed, schedule)
    tracemalloc.start()
    x, y = task_data.all_tests(pairs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    for t in range(config.num_tasks):
        np.testing.assert_array_equal(x[t], task_data.test(pairs[t])[0])
        np.testing.assert_array_equal(y[t], task_data.test(pairs[t])[1])
    assert peak < 1.25 * (x.nbytes + y.nbytes), peak / (x.nbytes + y.nbytes)


@pytest.mark.parametrize("test_source", ["test", "train_holdout"])
def test_the_images_of_a_task_follow_the_readme_recipe(tmp_path, test_source):
    """README, "Which classes and images a task uses": a reader rebuilds every task's images
    from the seed with numpy alone. Each image here is its own index, so the gathered tensors
    give the indices back."""
    from cljax.data.prepared import ClassData
    from cljax.tasks import TaskData
    from tests.conftest import small_config

    rng = np.random.default_rng(0)
    train_labels, test_labels = rng.integers(0, 6, 600), rng.integers(0, 6, 300)
    index_images = lambda n: np.arange(n, dtype=np.uint16).reshape(n, 1, 1)  # noqa: E731
    data = ClassData(index_images(600), train_labels, index_images(300), test_labels, 6, tuple("abcdef"), {})
    s, n_train, n_test = 7, 20, 10
    config = small_config(tmp_path, seed=s, n_repeats=3, n_train_per_class=n_train, n_test_per_class=n_test,
                          test_source=test_source, n_subsamples=8, batch_size=10)
    task_data = TaskData(data, config)
    pairs_R2 = make_schedule(6, 3, 3, s)[1]

    def pick(stream, c, r, pool, n, from_end=False):  # the README's recipe, verbatim
        order = np.random.default_rng([s, stream, c, r]).permutation(len(pool))
        return np.sort(pool[order[len(order) - n:] if from_end else order[:n]])

    train_pool = lambda c: np.flatnonzero(train_labels == c)  # noqa: E731  ascending
    test_pool = lambda c: np.flatnonzero(test_labels == c)  # noqa: E731
    train_x, train_y = task_data.train(pairs_R2)
    test_x, test_y = task_data.test(pairs_R2)
    for r, (a, b) in enumerate(pairs_R2):
        expected_train = np.concatenate([pick(1, a, r, train_pool(a), n_train), pick(1, b, r, train_pool(b), n_train)])
        np.testing.assert_array_equal(train_x[:, r, 0, 0], expected_train)
        if test_source == "test":
            ta, tb = pick(2, a, r, test_pool(a), n_test), pick(2, b, r, test_pool(b), n_test)
        else:
            ta, tb = (pick(1, c, r, train_pool(c), n_test, from_end=True) for c in (a, b))
            assert not set(np.concatenate([ta, tb])) & set(expected_train)  # never an image it trained on
        np.testing.assert_array_equal(test_x[:, r, 0, 0], np.stack([ta, tb], axis=1).reshape(-1))  # interleaved
    np.testing.assert_array_equal(train_y[:, 0], np.repeat([0, 1], n_train))
    np.testing.assert_array_equal(test_y[:8, 0], [0, 1] * 4)  # the S saved images: the first S, alternating


def test_eval_task_slots_per_mode():
    assert parse_eval_tasks("all").ids(2, 4).tolist() == [0, 1, 2, 3]
    assert parse_eval_tasks("seen").ids(1, 4).tolist() == [0, 1, -1, -1]
    assert parse_eval_tasks("current").ids(3, 4).tolist() == [3]
    window = parse_eval_tasks("window:3")
    assert window.slots(1000) == 3
    assert window.ids(0, 1000).tolist() == [-1, -1, 0]
    assert window.ids(7, 1000).tolist() == [5, 6, 7]
    assert window.current_slot(7) == 2
    for bad in ("window:0", "window", "last", "window:-2", "window:\u00b2", "window:\u0663"):  # '²', Arabic-Indic 3
        with pytest.raises(CljaxError, match="--eval-tasks"):
            parse_eval_tasks(bad)
    with pytest.raises(CljaxError, match="--eval-tasks"):
        Config.from_flat(eval_tasks="window:x").validate()
    # a window wider than the run: its extra slots would only ever hold NaN
    with pytest.raises(CljaxError, match=r"--eval-tasks window:6 is wider than the run.s 5 tasks: use window:5 \(every "
                                         r"task seen so far, as seen\), all, or a smaller K"):
        Config.from_flat(eval_tasks="window:6", num_tasks=5).validate()
    Config.from_flat(eval_tasks="window:5", num_tasks=5).validate()
    # spaces around it parse as without them, and are recorded without them (a resume compares the text)
    assert Config.from_flat(eval_tasks=" all ").eval_tasks == "all"
    assert Config.from_flat(eval_tasks=" window:3").validate().eval_tasks == "window:3"


def test_the_current_task_is_slot_t_under_all_and_seen_and_the_last_slot_of_a_window():
    """metadata.json's current_slot tells the analyses where the task being trained sits."""
    for mode in ("all", "seen"):
        record = parse_eval_tasks(mode).record(2, 4)
        assert (record["slots"], record["current_slot"]) == (4, 2), mode
    assert parse_eval_tasks("current").record(2, 4)["current_slot"] == 0
    assert parse_eval_tasks("window:3").record(1, 4)["eval_task_ids"] == [-1, 0, 1]


def test_recorded_slot_ids_that_match_their_mode_but_not_the_saved_arrays_are_refused():
    """window:2 at task 1 of 4 is [0, 1]: right for the mode, but arrays of 3 slots are not it."""
    from cljax.eval_tasks import eval_ids_of

    meta = {"eval_tasks": {"mode": "window:2", "eval_task_ids": [0, 1]}, "task_index": 1, "config": {"num_tasks": 4}}
    assert eval_ids_of(meta, 2).tolist() == [0, 1]
    with pytest.raises(CljaxError, match=r"the saved arrays hold 3"):
        eval_ids_of(meta, 3)


def test_runs_recorded_before_the_settings_resume_as_pairs_and_all(tmp_path):
    recorded = {k: v for k, v in Config.from_flat(results_dir=str(tmp_path)).to_dict().items()
                if k not in ("task_schedule", "eval_tasks")}
    assert differing_settings(recorded, Config.from_flat(results_dir=str(tmp_path))) == []
    assert differing_settings(recorded, Config.from_flat(results_dir=str(tmp_path), eval_tasks="current")) == [
        "eval_tasks"]


@pytest.fixture(scope="module")
def window_and_all(tmp_path_factory):
    """The same cycled run evaluated with window:2 and with all, and window:2 interrupted after
    task 1 then resumed; compilations counted per task."""
    import jax

    from cljax.program import clear_built_programs

    root = tmp_path_factory.mktemp("sched")
    compiles, per_task = [0], {}
    clear_built_programs()  # the window run's programs are its own, compiled (or loaded) in its first task

    def on_compile(event, duration, **kwargs):
        if is_program_obtained(event):
            compiles[0] += 1

    jax.monitoring.register_event_duration_secs_listener(on_compile)
    try:
        window = run_experiment(tiny(root / "window", eval_tasks="window:2"), progress=False,
                                on_task_end=lambda t, info: per_task.__setitem__(t, compiles[0]))
    finally:
        jax.monitoring.unregister_event_duration_listener(on_compile)
    full = run_experiment(tiny(root / "all"), progress=False)

    class Stop(Exception):
        pass

    def stop_after_1(t, info):
        if t == 1:
            raise Stop

    resumed_config = tiny(root / "resumed", eval_tasks="window:2")
    with pytest.raises(Stop):
        run_experiment(resumed_config, progress=False, on_task_end=stop_after_1)
    resumed = run_experiment(resumed_config, progress=False)
    return window, full, resumed, per_task


def test_window_run_saves_its_slots_and_compiles_once(window_and_all):
    window, full, resumed, per_task = window_and_all
    assert resumed.first_task == 2
    assert per_task[0] > 0 and per_task[0] == per_task[4]  # every program compiled during task 0 only
    for t in range(5):
        w, a = window.algo_dir / results.task_dir_name(t), full.algo_dir / results.task_dir_name(t)
        meta = results.load_metadata(w)
        ids = [t - 1 if t else -1, t]
        assert meta["eval_tasks"]["eval_task_ids"] == ids and meta["eval_tasks"]["mode"] == "window:2"
        assert meta["schedule"]["pairs_seen"] == np.bincount(np.arange(t + 1) % 2, minlength=2).tolist()
        assert meta["schedule"]["pair_visit"] == t // 2 + 1 and "task_class_pairs" not in meta
        assert np.array(meta["schedule"]["cycle_class_pairs"]).shape == (2, 2, 2)
        m, m_all = results.load_metrics(w), results.load_metrics(a)
        assert m["test_acc"].shape == (2, 2, 2) and results.load_representations(w).shape == (2, 2, 2, 4, 32)
        # The window's slots hold the same numbers as the matching columns of the run that evaluates all.
        valid = [k for k, j in enumerate(ids) if j >= 0]
        columns = [ids[k] for k in valid]
        why = "evaluations of 2 and of 5 task slots are two programs"
        for key in ("test_acc", "start_test_acc"):
            assert_same_accuracy(m[key][..., valid], m_all[key][..., columns], N_TEST, why=why, err_msg=key)
        assert_same(m["test_loss"][..., valid], m_all["test_loss"][..., columns], why=why, **SEPARATELY_COMPILED)
        assert_same(results.load_representations(w)[:, :, valid], results.load_representations(a)[:, :, columns],
                    why=why, **SEPARATELY_COMPILED)
        if t == 0:  # the empty slot is NaN
            assert np.isnan(m["test_acc"][..., 0]).all() and np.isnan(results.load_representations(w)[:, :, 0]).all()
        # A resume writes the same bytes.
        r = resumed.algo_dir / results.task_dir_name(t)
        for name in SAVED:
            assert (w / name).read_bytes() == (r / name).read_bytes(), (t, name)


def test_analyses_of_a_window_run_use_the_evaluated_entries(window_and_all, tmp_path):
    window, full, _, _ = window_and_all
    summary = analyze_run(window.algo_dir, tmp_path / "w", glue_n_probes=4, glue_tasks="all", make_plots=False)
    assert summary["evaluated_entries"]["eval_tasks"] == ["window:2"]
    # Window 2 over 5 tasks: the last row holds tasks 3, 4; BWT and forgetting have task 3's term only.
    assert summary["cl"]["final"]["n_terms"] == {"average_accuracy": 2, "bwt": 1, "fwt": 0, "forgetting": 1}
    assert summary["fwt"]["mean"] is None
    assert summary["probe"]["earlier_tasks"]["n_tasks"] == 1  # the last folder evaluated task 3 before its own
    for key, glue in summary["glue"]["per_task"].items():  # over the evaluated tasks: the empty slots are not counted
        assert glue["n_nonfinite"] == 0 and glue["last_task"]["n"] == 2, key
    cl = np.load(tmp_path / "w" / "cl.npz")
    A = cl["final_accuracy_matrix"]
    assert A.shape == (2, 5, 5)
    evaluated = np.zeros((5, 5), bool)
    for i in range(5):
        evaluated[i, max(i - 1, 0): i + 1] = True
    assert (np.isfinite(A[0]) == evaluated).all()
    # The entries it has equal those of the run that evaluates all; its BWT uses task 3 alone.
    analyze_run(full.algo_dir, tmp_path / "a", analyses=["cl"], make_plots=False)
    A_all = np.load(tmp_path / "a" / "cl.npz")["final_accuracy_matrix"]
    assert_same_accuracy(A[:, evaluated], A_all[:, evaluated], N_TEST,
                         why="evaluations of 2 and of 5 task slots are two programs")
    np.testing.assert_allclose(cl["final_bwt"], A[:, 4, 3] - A[:, 3, 3])
    np.testing.assert_allclose(cl["final_average_accuracy"], A[:, 4, 3:].mean(axis=-1))
    probe = np.load(tmp_path / "w" / "probe.npz")["probe_acc"]  # (R, n, T): NaN off the window
    assert (np.isfinite(probe[0]) == evaluated).all()
    # the current task's accuracy at every snapshot: each folder's own diagonal entry at its end
    curves = np.load(tmp_path / "w" / "curves.npz")
    L = curves["current_task_acc"].shape[0] // 5
    np.testing.assert_array_equal(curves["current_task_acc"][L - 1 :: L].T, np.diagonal(A, axis1=1, axis2=2))


def test_a_run_too_large_for_dense_matrices_is_analysed_from_its_band_with_the_same_numbers(window_and_all, tmp_path,
                                                                                           monkeypatch):
    from cljax.analysis import band, driver

    window = window_and_all[0]
    dense = analyze_run(window.algo_dir, tmp_path / "d", glue=False, make_plots=False)
    monkeypatch.setattr(band, "DENSE_CELLS", 0)  # the driver and the analyses both decide by band.keeps_dense
    band_bytes = driver.BYTES_PER_CELL * 2 * 5 * 2  # R x n x K: the memory guard counts the band's slots
    monkeypatch.setattr(driver, "host_available_bytes", lambda: band_bytes - 1)
    with pytest.raises(CljaxError, match=r"repeats x task folders x evaluated task slots \(2 x 5 x 2\)"):
        analyze_run(window.algo_dir, tmp_path / "b", glue=False, make_plots=False)
    monkeypatch.setattr(driver, "host_available_bytes", lambda: band_bytes)
    banded = analyze_run(window.algo_dir, tmp_path / "b", glue=False, make_plots=True)
    assert banded["matrices"].startswith("band:") and "not dense" in banded["matrices"]
    assert "and dense" in dense["matrices"]
    drop = ("matrices", "files", "algo_dir")
    assert {k: v for k, v in banded.items() if k not in drop} == {k: v for k, v in dense.items() if k not in drop}
    for name in ("cl.npz", "probe.npz"):
        with np.load(tmp_path / "d" / name) as d, np.load(tmp_path / "b" / name) as b:
            assert "band_task_ids" in b and not any(k.startswith("accuracy_rows") or k.endswith("accuracy_matrix")
                                                    or k in ("probe_acc", "head_acc") for k in b)
            for key in b:  # everything the band output has equals the dense output's
                np.testing.assert_array_equal(b[key], d[key], err_msg=f"{name}:{key}")
            for key in ("accuracy_rows_final", "accuracy_rows_auc", "probe_acc", "head_acc", "head_acc_probe_images"):
                if key in d:  # the band rebuilds the dense rows
                    stem = key.replace("accuracy_rows_", "accuracy_band_") if key.startswith("acc") else key + "_band"
                    rebuilt = Band(b[stem], b["band_task_ids"], 5).dense()
                    np.testing.assert_array_equal(rebuilt, d[key], err_msg=key)
    assert (tmp_path / "b" / "accuracy_matrix.png").stat().st_size > 0


def test_the_plots_of_a_window_run_say_what_a_blank_is(window_and_all, tmp_path, monkeypatch):
    # The matrix's cells and the probe's tasks a window does not evaluate were blank without a word.
    from cljax.analysis import plots

    titles = {}
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (titles.__setitem__(path.name.split("@")[-1], [
        " ".join(ax.get_title().split()) for ax in fig.axes]), real(fig, path))[1])  # (wrapped to the width)
    analyze_run(window_and_all[0].algo_dir, tmp_path / "a", analyses=["cl", "probe"], glue=False, make_plots=True)
    assert "blank: not evaluated (--eval-tasks window:2)" in titles["accuracy_matrix.png"][0]
    assert titles["probe.png"][1] == "no point: a task not evaluated here (--eval-tasks), or not finite"
    analyze_run(window_and_all[1].algo_dir, tmp_path / "b", analyses=["cl"], glue=False, make_plots=True)
    assert "blank" not in titles["accuracy_matrix.png"][0]  # --eval-tasks all: no blank cell


def _copy_run(src, dst, folders):
    import shutil

    dst.mkdir(parents=True)
    for name in ("run.json", "initial", *folders):
        (shutil.copytree if (src / name).is_dir() else shutil.copy)(src / name, dst / name)
    return dst


def test_a_finished_window_runs_table_read_from_disk_is_the_table_it_trained(window_and_all):
    window = window_and_all[0]
    again = run_experiment(tiny(window.algo_dir.parents[1], eval_tasks="window:2"), progress=False)
    assert again.already_finished and len(again.summary) == len(window.summary) == 5
    for trained, read in zip(window.summary, again.summary):
        assert trained.keys() == read.keys()
        numbers = [k for k in trained if k != "nonfinite_repeats"]  # NaN equals NaN in a float array only
        np.testing.assert_array_equal([trained[k] for k in numbers], [read[k] for k in numbers])
        assert trained["nonfinite_repeats"] == read["nonfinite_repeats"]


def test_a_run_of_one_task_folder_is_analysed_with_its_plots(window_and_all, tmp_path):
    one = _copy_run(window_and_all[0].algo_dir, tmp_path / "one", ["task_000"])
    summary = analyze_run(one, tmp_path / "a", glue=False, make_plots=True)
    assert summary["n_task_folders"] == 1 and summary["bwt"]["mean"] is None
    assert summary["probe"]["earlier_tasks"]["n_tasks"] == 0
    assert all((tmp_path / "a" / name).stat().st_size > 0 for name in summary["files"])


def test_glue_across_tasks_needs_two_tasks_and_says_so(window_and_all, tmp_path):
    # With one task evaluated the across-task grouping was the task's own two manifolds under
    # random dichotomies, printed as "GLUE across 1 tasks (P = 2)".
    from cljax.analysis.summary_text import format_summary

    one = _copy_run(window_and_all[0].algo_dir, tmp_path / "one", ["task_000"])
    summary = analyze_run(one, tmp_path / "a", analyses=["glue"], glue_n_probes=8, glue_max_points=4, make_plots=False)
    across = summary["glue"]["across_tasks"]
    assert across["final"] == {} and across["folders"] == [] and across["n_manifolds"] == 0
    assert across["undefined"].startswith("fewer than two distinct tasks evaluated")
    with np.load(tmp_path / "a" / "glue.npz") as z:
        assert z["across_folders"].size == 0 and not [k for k in z if k.startswith("across_") and k not in (
            "across_folders", "across_tasks")]
        assert z["per_task_capacity"].shape[:2] == (1, 2)  # the task's own figure is there
    lines = [x for x in format_summary(summary).splitlines() if x.startswith("GLUE across")]
    assert lines == ["GLUE across tasks: not measured, fewer than two distinct tasks evaluated (one task folder, or "
                     "--eval-tasks current): no grouping across tasks"]


@pytest.mark.parametrize("ids", [[1], [0, 1, 2], "ab", [999, 1], [1, 1], [0.5, 1], [-5, 1]])
def test_changed_eval_task_ids_are_refused_in_one_line(window_and_all, tmp_path, ids):
    """metadata.json has no hash of its own: the slots' tasks must be those of the recorded mode."""
    import json

    run = _copy_run(window_and_all[0].algo_dir, tmp_path / "r", ["task_000", "task_001", "task_002"])
    path = run / "task_001" / "metadata.json"
    meta = json.loads(path.read_text())
    assert meta["eval_tasks"]["eval_task_ids"] == [0, 1]
    meta["eval_tasks"]["eval_task_ids"] = ids
    path.write_text(json.dumps(meta))
    with pytest.raises(CljaxError, match=r"task_001/metadata.json: eval_tasks.eval_task_ids .* are not the task "
                                         r"slots of --eval-tasks 'window:2' at task 1 of 5"):
        analyze_run(run, tmp_path / "a", glue=False, make_plots=False)


@pytest.mark.parametrize("field, value, message", [
    ("eval_tasks", "all", "records eval_tasks as str 'all', not the mapping cljax writes: it was edited or damaged"),
    ("config", "x", "records config as str 'x', not the mapping cljax writes"),
    ("schedule", "pairs", "records schedule as str 'pairs', not the mapping cljax writes"),
    ("shapes.weights", 4, "records the shape of weights as '4', not a list of sizes"),
    ("task_index", "1", "records task_index '1', not a task number"),
    ("eval_tasks.current_slot", 0, "eval_tasks.current_slot 0 is not the slot of task 1 in eval_task_ids [0, 1]"),
    ("eval_tasks.current_slot", 5, "eval_tasks.current_slot 5 is not the slot of task 1"),
])
def test_a_field_of_metadata_json_edited_to_another_type_or_slot_is_one_line_in_analyze_and_compare(
        window_and_all, tmp_path, field, value, message):
    # Tracebacks (AttributeError, TypeError, IndexError), and a current_slot of another task gave compare
    # that task's accuracy as the current one, exit 0. (metadata.json has no hash of its own.)
    import json

    from cljax.analysis.compare import current_task_accuracy

    run = _copy_run(window_and_all[0].algo_dir, tmp_path / "r", ["task_000", "task_001", "task_002"])
    path = run / "task_001" / "metadata.json"
    meta = json.loads(path.read_text())
    *parents, key = field.split(".")
    node = meta
    for name in parents:
        node = node[name]
    node[key] = value
    path.write_text(json.dumps(meta))
    for read in (lambda: analyze_run(run, tmp_path / "a", glue=False, make_plots=False),
                 lambda: current_task_accuracy(run)):
        with pytest.raises(CljaxError, match=re.escape(message)):
            read()


def test_the_analysis_reads_log_steps_from_the_hashed_metrics_not_metadata_json(window_and_all, tmp_path):
    # An edited log_steps in metadata.json changed the auc variant's numbers, exit 0.
    import json

    run = _copy_run(window_and_all[0].algo_dir, tmp_path / "r", ["task_000", "task_001", "task_002"])
    before = analyze_run(run, tmp_path / "a", glue=False, make_plots=False, variant="auc")
    path = run / "task_001" / "metadata.json"
    meta = json.loads(path.read_text())
    meta["log_steps"] = [1] * (len(meta["log_steps"]) - 1) + [400]
    path.write_text(json.dumps(meta))
    after = analyze_run(run, tmp_path / "b", glue=False, make_plots=False, variant="auc")
    assert after["bwt"] == before["bwt"] and after["cl"] == before["cl"]


def test_masked_metrics_equal_the_full_ones_when_everything_is_evaluated():
    rng = np.random.default_rng(0)
    A, E, b = rng.uniform(size=(3, 4, 4)), rng.uniform(size=(3, 4)), rng.uniform(size=(3, 4))
    full = cl_metrics_from_matrix(A, E, b)
    masked = cl_metrics_band(Band(A, np.tile(np.arange(4), (4, 1)), 4), E, b, np.ones(4, bool))
    for key in ("average_accuracy", "bwt", "fwt", "forgetting", "forgetting_per_task", "accuracy_matrix",
                "plasticity_gap", "normalised_transfer"):
        np.testing.assert_allclose(masked[key], full[key], rtol=1e-12, err_msg=key)


def test_plan_and_disk_per_task_do_not_grow_with_T_for_a_window(tmp_path):
    small = make_plan(tiny(tmp_path, eval_tasks="current", num_tasks=10))
    large = make_plan(tiny(tmp_path, eval_tasks="current", num_tasks=2000))
    assert small["evaluation"]["slots"] == large["evaluation"]["slots"] == 1
    assert small["device_bytes_per_task"] == large["device_bytes_per_task"]
    for name in SAVED:
        assert small["disk_files_per_task"][name] == large["disk_files_per_task"][name], name
    # metadata.json: only the pairs_seen counts' digits grow
    assert large["disk_files_per_task"]["metadata.json"] - small["disk_files_per_task"]["metadata.json"] < 64
    assert large["host_components"]["test_sets"] == small["host_components"]["test_sets"]
    every = make_plan(tiny(tmp_path, num_tasks=2000))
    assert every["evaluation"]["slots"] == 2000
    assert every["disk_files_per_task"]["representations.npy"] > 1000 * large["disk_files_per_task"]["representations.npy"]


def test_seen_saves_every_slot_with_nan_past_the_current_task(tmp_path):
    run = run_experiment(tiny(tmp_path, eval_tasks="seen", num_tasks=3, eval_chunk_tasks=1), progress=False)
    m = results.load_metrics(run.algo_dir / "task_000")
    assert m["test_acc"].shape == (2, 2, 3)
    assert np.isfinite(m["test_acc"][..., 0]).all() and np.isnan(m["test_acc"][..., 1:]).all()
    assert np.isfinite(m["test_loss"][..., 0]).all() and np.isnan(m["test_loss"][..., 1:]).all()
    assert np.isnan(results.load_representations(run.algo_dir / "task_001")[:, :, 2]).all()
    assert results.load_metadata(run.algo_dir / "task_001")["eval_tasks"]["eval_task_ids"] == [0, 1, -1]
    assert np.isfinite(results.load_metrics(run.algo_dir / "task_002")["test_acc"]).all()


def test_the_curves_of_a_cycled_run_are_of_distinct_pairs_and_the_legend_says_so(window_and_all, tmp_path,
                                                                                  monkeypatch):
    # A cycle of 2 pairs over 5 tasks, every task evaluated: task j + 2 is task j's pair on the same
    # test images, so evenly spaced tasks (0, 1, 2, 3, 4) drew each of the two curves several times.
    import cljax.analysis.plots as plots

    _, full, _, _ = window_and_all
    drawn, real = {}, plots.plot_accuracy_over_time
    monkeypatch.setattr(plots, "plot_accuracy_over_time",
                        lambda acc, path, **kw: (drawn.update(kw, acc=acc), real(acc, path, **kw))[1])
    analyze_run(full.algo_dir, tmp_path / "c", analyses=["curves"])
    curves = np.load(tmp_path / "c" / "curves.npz")
    assert curves["task_ids"].tolist() == [0, 1] and drawn["task_ids"] == [0, 1]
    assert drawn["legend_title"] == "a cycle of 2 pairs: task j is also task j + 2, j + 4, ..."
    acc = results.load_metrics(full.algo_dir / "task_004")["test_acc"]
    np.testing.assert_array_equal(curves["test_acc"][-acc.shape[0]:], acc[:, :, [0, 1]])
    # a window run evaluates each visit only while near it: its curves are of the tasks, as before, and
    # the legend says which are one pair (tests/test_eval_modes.py, every mode)
    window = window_and_all[0]
    analyze_run(window.algo_dir, tmp_path / "w", analyses=["curves"])
    assert drawn["legend_title"] == ("a cycle of 2 pairs: tasks j and j + 2 are the same class pair, on the same "
                                     "test images")
    assert np.load(tmp_path / "w" / "curves.npz")["task_ids"].size > 2


def test_glue_across_tasks_of_a_cycled_run_groups_each_class_pair_once(window_and_all, tmp_path):
    # Tasks 0-4 of 2 pairs were grouped as 5 manifold pairs, three of them copies (task j + 2 is task j's pair on
    # the same images): a random dichotomy that splits two copies of one manifold is not separable at all.
    full = window_and_all[1]
    summary = analyze_run(full.algo_dir, tmp_path / "a", glue=True, make_plots=False)
    across = summary["glue"]["across_tasks"]
    assert across["tasks"] == [0, 1] and across["n_manifolds"] == 4


def test_the_printed_probe_line_says_over_which_earlier_tasks_it_is(window_and_all, tmp_path):
    # Under window:2 it averages 1 of the 4 earlier tasks and did not say so; under current it printed nothing.
    from cljax.analysis.summary_text import format_summary

    summary = analyze_run(window_and_all[0].algo_dir, tmp_path / "a", glue=False, make_plots=False)
    line = next(x for x in format_summary(summary).splitlines() if x.startswith("accuracy on earlier tasks"))
    assert line.endswith(" (over 1 of the 4: --eval-tasks window:2)"), line
    summary = {**summary, "config": {**summary["config"], "eval_tasks": "current"},
               "probe": {**summary["probe"], "earlier_tasks": {**summary["probe"]["earlier_tasks"], "n_tasks": 0}}}
    assert ("accuracy on earlier tasks after the last one: not measured (--eval-tasks current evaluates none of the "
            "4)") in format_summary(summary).splitlines()


def test_the_probe_before_a_task_is_undefined_where_no_folder_saved_it(window_and_all, tmp_path):
    """The probe's baseline (task j at folder j-1, j, n-1 for 1 <= j < n-1) needs task j's slot in
    the folder before its task: window:2 never has it, and one or two folders have no such j."""
    from cljax.analysis.summary_text import format_summary

    window, full = window_and_all[:2]
    summary = analyze_run(window.algo_dir, tmp_path / "w", analyses=["probe"], glue=False, make_plots=False)
    gain = summary["probe"]["trained_gain"]
    assert gain["n_tasks"] == 0
    for key in ("before", "after", "end", "kept"):
        assert gain[key]["n"] == 0 and gain[key]["n_nonfinite"] == 0, key
        assert "only --eval-tasks all saves a task's representations before its task" in gain[key]["undefined"]
    assert ("  the probe's gain from training a task (its probe before the task, right after it and after the last "
            "task): undefined: no task folder holds a task's representations from before its task: --eval-tasks "
            "seen, current and window:K evaluate a task only once it is trained (only --eval-tasks all saves a "
            "task's representations before its task); a run with --eval-tasks all measures it"
            ) in format_summary(summary).splitlines()
    for folders in (["task_000"], ["task_000", "task_001"]):
        part = _copy_run(full.algo_dir, tmp_path / f"n{len(folders)}", folders)
        gain = analyze_run(part, tmp_path / f"a{len(folders)}", analyses=["probe"], glue=False,
                           make_plots=False)["probe"]["trained_gain"]
        assert gain["n_tasks"] == 0 and gain["before"]["undefined"].startswith("it needs 3 task folders or more")
        assert gain["kept"]["n"] == 0


def test_a_cycled_runs_earlier_tasks_say_which_are_the_last_tasks_pair(window_and_all, tmp_path):
    """5 tasks over 2 pairs: the last task (4) trains pair 0, as tasks 0 and 2 did; its row holds the
    same network on the same images for the three. The printed line says so and gives the figures
    over tasks 1 and 3, the other pair."""
    from cljax.analysis.probe import probe_accuracy
    from cljax.analysis.summary_text import format_summary

    full = window_and_all[1]
    last = full.algo_dir / results.task_dir_name(4)
    head = results.load_metrics(last)["test_acc"][-1]  # (R, T)
    np.testing.assert_array_equal(head[:, 0], head[:, 4])
    np.testing.assert_array_equal(head[:, 2], head[:, 4])
    probe = probe_accuracy(results.load_representations(last)[-1], results.load_binary_labels(last)[-1])
    summary = analyze_run(full.algo_dir, tmp_path / "a", analyses=["probe"], glue=False, make_plots=False)
    other = summary["probe"]["earlier_tasks"]["other_pairs_than_last"]
    assert (other["n_pairs"], other["n_same_pair_as_last"], other["n_tasks"]) == (2, 2, 2)
    want = {"head_acc": head[:, [1, 3]].mean(axis=1), "probe_acc": probe[:, [1, 3]].mean(axis=1)}
    for key, values in want.items():
        assert other[key]["mean"] == pytest.approx(values.mean(), abs=1e-12), key
        assert other[key]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12), key
    text = format_summary(summary)
    line = next(x for x in text.splitlines() if x.startswith("accuracy on earlier tasks"))
    assert line.endswith(f" [cycled schedule: 2 of these 4 are the last task's class pair, just trained again; the "
                         f"other 2: head {want['head_acc'].mean():.4f} +- {want['head_acc'].std(ddof=1):.4f}, linear "
                         f"probe {want['probe_acc'].mean():.4f} +- {want['probe_acc'].std(ddof=1):.4f}]")
    # "before" is before the task, not before its pair: task 3's pair (1) was trained by task 1
    assert "before their task (under the cycled schedule its pair may have been trained earlier)" in text
    assert "an earlier task of the cycle may have trained" in summary["probe"]["trained_gain"]["definition"]
