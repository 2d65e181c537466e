"""The whole path on real Fashion-MNIST: data -> schedule -> fused scan -> results tree."""

from __future__ import annotations

import json
import pickle

import jax
import numpy as np
import pytest

from cljax import results, safe_files
from cljax.data import load_dataset
from cljax.experiment import run_experiment
from cljax.models import MODELS, ModelContext, build_model
from cljax.tasks import TaskData, make_schedule
from tests.conftest import small_config

@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    config = small_config(tmp)
    return config, run_experiment(config, progress=False)


def test_every_file_has_its_shape_and_format(small_run):
    config, run = small_run
    L, R, T, S, H = 4, 2, 3, 16, 64
    dirs = results.task_dirs(run.algo_dir)
    assert [d.name for d in dirs] == ["task_000", "task_001", "task_002"]
    assert run.algo_dir.name == "SL_T3" and run.algo_dir.parent.name == "fashion_mnist"
    for t, d in enumerate(dirs):
        assert sorted(p.name for p in d.iterdir()) == sorted(results.TASK_FILES)
        reps = np.load(d / "representations.npy", allow_pickle=False)
        assert reps.shape == (L, R, T, S, H) and reps.dtype == np.float32
        labels = np.load(d / "binary_labels.npy", allow_pickle=False)
        assert labels.shape == (L, R, T, S) and set(np.unique(labels)) == {0, 1}
        assert (labels.sum(-1) == S // 2).all()  # balanced subsample
        w = np.load(d / "weights.npy", allow_pickle=False)
        assert w.shape == (L, R)
        assert "conv1/kernel" in w.dtype.names and "head/bias" in w.dtype.names
        flat = w.view(np.float32).reshape(L, R, -1)
        assert flat.shape[-1] == sum(int(np.prod(w.dtype[n].shape)) for n in w.dtype.names)
        nested = results.load_weights(d)
        assert nested["conv1"]["kernel"].shape == (L, R, 3, 3, 1, 16)
        assert nested["conv3"]["kernel"].shape == (L, R, 3, 3, 32, 64)
        assert nested["head"]["kernel"].shape == (L, R, 64, 1)
        metrics = results.load_metrics(d)
        for key in ("test_acc", "test_loss"):
            assert metrics[key].shape == (L, R, T)
        for key in ("train_acc", "train_loss"):
            assert metrics[key].shape == (L, R)
        assert metrics["start_test_acc"].shape == (R, T)
        assert metrics["log_steps"].tolist() == [10, 20, 30, 40]
        expert = results.load_expert_metrics(d)
        assert sorted(expert) == sorted(results.EXPERT_KEYS)
        assert all(v.shape == (L, R) for v in expert.values())
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["task_index"] == t
        assert np.array(meta["task_class_pairs"]).shape == (T, R, 2)
        assert meta["task_pairs"] == meta["task_class_pairs"][t]
        assert meta["config"]["num_tasks"] == 3 and meta["log_steps"] == [10, 20, 30, 40]
        assert meta["versions"]["jax"] == jax.__version__
        assert meta["timings"]["task_seconds"] > 0
        assert meta["shapes"]["representations"] == [L, R, T, S, H]
        assert meta["lowering"]["matmul_precision"] == meta["config"]["matmul_precision"] == "highest"
    # nothing temporary is left behind
    assert [p.name for p in run.algo_dir.iterdir() if p.name.startswith(".")] == []


def test_class_pairs_are_permutations_and_labels_follow_the_pair(small_run, tmp_path):
    config, run = small_run
    pairs = run.task_class_pairs  # (T, R, 2)
    for r in range(pairs.shape[1]):
        used = pairs[:, r].reshape(-1)
        assert len(set(used.tolist())) == used.size  # a repeat never uses a class twice
    assert not np.array_equal(pairs[:, 0], pairs[:, 1])  # repeats differ
    data = load_dataset(config)
    td = TaskData(data, config)
    x_NRHW, y_NR = td.train(pairs[1])
    # every image labelled 0 is an image of the pair's first class, label 1 of the second
    train_rows = {data.train_images[i].tobytes(): int(data.train_labels[i]) for i in range(len(data.train_labels))}
    for r in range(pairs.shape[1]):
        for n in range(0, y_NR.shape[0], 17):
            assert train_rows[x_NRHW[n, r].tobytes()] == pairs[1, r, y_NR[n, r]]
    xt, yt = td.test(pairs[1])
    test_rows = {data.test_images[i].tobytes(): int(data.test_labels[i]) for i in range(len(data.test_labels))}
    assert (yt[:4, 0] == [0, 1, 0, 1]).all()
    for r in range(pairs.shape[1]):
        for n in range(0, yt.shape[0], 7):
            assert test_rows[xt[n, r].tobytes()] == pairs[1, r, yt[n, r]]


def test_too_many_tasks_is_an_error():
    from cljax.errors import CljaxError

    with pytest.raises(CljaxError, match="at most 5 tasks"):
        make_schedule(10, 6, 2, 0)
    assert make_schedule(10, 5, 3, 0).shape == (5, 3, 2)


def test_evaluation_on_all_tasks_is_real(small_run):
    config, run = small_run
    dirs = results.task_dirs(run.algo_dir)
    for t, d in enumerate(dirs):
        m = results.load_metrics(d)
        acc = m["test_acc"]  # (L, R, T)
        # accuracy on the current task moves during the task and ends well above chance
        assert np.abs(acc[-1, :, t] - m["start_test_acc"][:, t]).mean() > 0.15
        assert acc[-1, :, t].mean() > 0.8
    # tasks not yet trained stay near chance (what an untrained-on-them network gives)
    m0 = results.load_metrics(dirs[0])
    future = m0["test_acc"][:, :, 1:]
    assert abs(future.mean() - 0.5) < 0.2
    assert abs(m0["start_test_acc"].mean() - 0.5) < 0.2


def test_saved_accuracy_equals_recomputation_from_saved_weights(small_run):
    config, run = small_run
    # the readable lowering (nn.Conv), whichever one the run used: an independent recomputation
    model = build_model("cnn", MODELS["cnn"].params(), ModelContext(config.out_dim, (28, 28), "lax"))
    data = load_dataset(config)
    td = TaskData(data, config)
    for t, d in enumerate(results.task_dirs(run.algo_dir)):
        weights = results.load_weights(d)
        m = results.load_metrics(d)
        x_NRHW, y_NR = td.test(run.task_class_pairs[t])
        for r in range(config.n_repeats):
            params = jax.tree.map(lambda w: np.asarray(w[-1, r]), weights)
            # at the precision the run recorded: on a GPU, TF32 against float32 differs by ~1e-3
            with jax.default_matmul_precision(results.load_metadata(d)["lowering"]["matmul_precision"]):
                logits, hidden = model.apply({"params": params}, x_NRHW[:, r])
            logits = np.asarray(logits)
            pred = (logits[:, 0] > 0).astype(int)
            acc = (pred == y_NR[:, r]).mean()
            # one image whose logit is within rounding of 0 may fall the other way
            assert abs(acc - m["test_acc"][-1, r, t]) <= 1.0 / config.n_test + 1e-6
            # the loss too: the mean binary cross-entropy of the sigmoid output, softplus(z) - y z
            loss = np.mean(np.logaddexp(0.0, logits[:, 0]) - y_NR[:, r] * logits[:, 0])
            np.testing.assert_allclose(m["test_loss"][-1, r, t], loss, rtol=1e-4)
            reps = results.load_representations(d)
            # the same float32 maths in another order (batched evaluation, another convolution
            # lowering): differences of a few ulps (~1e-6 relative) grown over five layers
            np.testing.assert_allclose(reps[-1, r, t], np.asarray(hidden)[: config.n_subsamples], rtol=1e-4, atol=1e-5)


def test_same_seed_is_bit_identical_and_another_seed_differs(small_run, tmp_path):
    config, run = small_run
    again = run_experiment(small_config(tmp_path / "again"), progress=False)
    for a, b in zip(results.task_dirs(run.algo_dir), results.task_dirs(again.algo_dir)):
        for name in ("representations.npy", "binary_labels.npy", "weights.npy"):
            assert np.load(a / name).tobytes() == np.load(b / name).tobytes()
        for name in ("metrics.pkl", "expert_metrics.pkl"):
            ma, mb = safe_files.safe_load_pickle(a / name), safe_files.safe_load_pickle(b / name)
            assert all(np.asarray(ma[k]).tobytes() == np.asarray(mb[k]).tobytes() for k in ma)
    other = make_schedule(10, 3, 2, seed=1)
    assert not np.array_equal(other, run.task_class_pairs)


def test_one_compilation_per_program_for_the_whole_run(tmp_path, compile_counter, monkeypatch):
    import cljax.experiment as experiment

    counts_at_write = []
    real_write = experiment.write_task

    def counting_write(*args, **kwargs):
        counts_at_write.append(compile_counter.count)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(experiment, "write_task", counting_write)
    run_experiment(small_config(tmp_path, num_tasks=4, seed=3), progress=False)
    assert len(counts_at_write) == 4
    assert counts_at_write[0] >= 2  # the task program and the evaluation program
    assert counts_at_write[-1] == counts_at_write[0], f"tasks after the first compiled: {counts_at_write}"


def test_results_reader_refuses_a_malicious_pickle(small_run, tmp_path):
    from cljax.errors import CljaxError

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    bad = tmp_path / "metrics.pkl"
    bad.write_bytes(pickle.dumps({"test_acc": Evil()}))
    with pytest.raises(CljaxError, match="refusing to load builtins.print"):
        safe_files.safe_load_pickle(bad)


def test_it_learns_with_default_hyperparameters(tmp_path):
    # 3 epochs (187 steps per task) keep the learner's and the expert's mean accuracy well above the
    # 0.85 below on every seed measured (docs/benchmark.md, "Test suite").
    config = small_config(tmp_path, num_tasks=2, n_train_per_class=1000, n_test_per_class=250, n_subsamples=64,
                          epochs=3, batch_size=32, log_frequency=25)
    run = run_experiment(config, progress=False)
    cur, expert = [], []
    for t, d in enumerate(results.task_dirs(run.algo_dir)):
        cur.append(results.load_metrics(d)["test_acc"][-1, :, t].mean())
        expert.append(results.load_expert_metrics(d)["test_acc"][-1].mean())
    assert np.mean(cur) >= 0.85, cur
    assert np.mean(expert) >= 0.85, expert


def test_run_table_gives_the_probe_beside_the_head(small_run):
    """The run table's probe column is the linear probe on the earlier tasks' saved
    representations at the task's last snapshot; the head's column is the saved accuracy."""
    from cljax.analysis.probe import probe_accuracy
    from cljax.run_result import format_summary

    _, run = small_run
    assert np.isnan(run.summary[0]["probe_earlier"])  # no earlier task
    for t, d in enumerate(results.task_dirs(run.algo_dir)[1:], start=1):
        reps, labels = results.load_representations(d)[-1], results.load_binary_labels(d)[-1]
        expected = probe_accuracy(reps[:, :t], labels[:, :t]).mean()  # T = 3: every earlier task
        assert run.summary[t]["probe_earlier"] == pytest.approx(expected, abs=1e-12)
        assert 0.5 <= run.summary[t]["probe_earlier"] <= 1.0
        head = results.load_metrics(d)["test_acc"][-1][:, :t].mean()
        assert run.summary[t]["acc_earlier"] == pytest.approx(head, abs=1e-6)
    table = format_summary(run).splitlines()
    assert "probe_earlier_tasks" in table[0]
    assert table[3].split()[5] == f"{run.summary[1]['probe_earlier']:.3f}"  # after "acc +- std earlier"


def test_saved_labels_are_those_of_the_saved_representations(small_run):
    """The head applied to a saved representation predicts its saved binary label: on the
    current task, after training, for most of the S = 16 subsampled images of every repeat
    (labels swapped would score below 0.5)."""
    _, run = small_run
    for t, d in enumerate(results.task_dirs(run.algo_dir)):
        reps, labels = results.load_representations(d)[-1], results.load_binary_labels(d)[-1]  # (R, K, S, H)
        head = results.load_weights(d)["head"]
        logits = np.einsum("rsh,rho->rso", reps[:, t].astype(np.float64), head["kernel"][-1])[..., 0]
        agree = ((logits + head["bias"][-1][:, :1] > 0) == (labels[:, t] == 1)).mean(axis=1)
        assert (agree >= 0.75).all(), (t, agree)


def test_the_run_table_of_a_long_run_shows_the_first_last_and_spaced_tasks():
    from pathlib import Path

    from cljax.run_result import RunResult, format_summary

    rows = [{"task": t, "acc_current": 0.9, "acc_earlier": 0.6, "probe_earlier": 0.8, "expert_acc": 0.95}
            for t in range(1000)]
    table = format_summary(RunResult(algo_dir=Path("x"), task_class_pairs=np.zeros((1000, 1, 2)), summary=rows))
    lines = table.splitlines()
    shown = [int(line.split()[0]) for line in lines[2:-1]]
    assert len(shown) == 40 and shown[:10] == list(range(10)) and shown[-10:] == list(range(990, 1000))
    assert any(400 < t < 600 for t in shown)  # and evenly spaced ones between
    assert lines[-1].startswith(f"({len(shown)} of 1000 tasks shown")
    short = format_summary(RunResult(algo_dir=Path("x"), task_class_pairs=np.zeros((40, 1, 2)), summary=rows[:40]))
    assert len(short.splitlines()) == 42
    for n in (41, 50):  # just past the cap: 40 rows still (the spaced ones fell on the first and last ten: 30, 32)
        table = format_summary(RunResult(algo_dir=Path("x"), task_class_pairs=np.zeros((n, 1, 2)), summary=rows[:n]))
        assert len(table.splitlines()) == 2 + 40 + 1


def test_the_run_table_leaves_a_diverged_repeat_out_and_says_so():
    # Repeat 0 of 3 diverged during task 1 (NaN accuracy, kept with --allow-nonfinite): the
    # table's means are over the finite repeats, as every summary's (docs/metrics.md); it printed
    # nan for two columns and a blank, "no earlier task", for the third.
    from pathlib import Path

    from cljax.run_result import RunResult, format_summary
    from cljax.records import summary_row

    acc = np.array([[np.nan, np.nan, 0.5], [0.7, 0.9, 0.5], [0.8, 1.0, 0.5]])  # (R, K), all 3 tasks evaluated
    expert = np.array([[0.6, 0.9, 0.7]])
    rows = [summary_row(t, {"metrics": {"test_acc": acc[None]}, "expert_metrics": {"test_acc": expert}},
                        [0, 1, 2]) for t in (0, 1)]
    assert rows[1]["acc_current"] == pytest.approx(0.95) and rows[1]["acc_earlier"] == pytest.approx(0.75)
    assert rows[1]["expert_acc"] == pytest.approx((0.6 + 0.9 + 0.7) / 3)
    assert rows[1]["n_nonfinite"] == 1 and rows[0]["n_earlier"] == 0 and rows[1]["n_earlier"] == 1
    expert_nan = summary_row(1, {"metrics": {"test_acc": acc[None, 1:]},  # learner finite, one expert NaN
                                 "expert_metrics": {"test_acc": np.array([[0.6, np.nan]])}}, [0, 1, 2])
    assert expert_nan["n_nonfinite"] == 1 and expert_nan["expert_acc"] == pytest.approx(0.6)
    all_nan = summary_row(1, {"metrics": {"test_acc": np.full((1, 3, 3), np.nan)},
                              "expert_metrics": {"test_acc": expert}}, [0, 1, 2])
    table = format_summary(RunResult(algo_dir=Path("x"), task_class_pairs=np.zeros((3, 3, 2)),
                                     summary=[*rows, all_nan])).splitlines()
    # mean +- sample std over the finite repeats; a blank for task 0's earlier tasks
    assert table[2].split() == ["0", "0.750", "+-", "0.071", "0.733", "+-", "0.153"]
    assert table[3].split()[:5] == ["1", "0.950", "+-", "0.071", "0.750"]
    assert table[4].split()[:3] == ["1", "nan", "nan"]  # no finite value: nan, not blank, and no spread
    assert table[-1] == ("(in 3 of 3 tasks a repeat has non-finite values, e.g. a diverged network: the means "
                         "leave them out; per repeat: cljax analyze)")


def test_each_task_trains_on_its_own_pairs_images(tmp_path, monkeypatch):
    """The loop gathers task t+1's images while the device trains task t: each task's program
    call receives its own pair's images and labels, the last task's included."""
    import cljax.experiment as experiment
    from tests.run_folder_kit import TINY

    sent = []
    put = experiment.put_repeats

    def spy(x, axis):
        sent.append(np.array(x))
        return put(x, axis)

    monkeypatch.setattr(experiment, "put_repeats", spy)
    config = small_config(tmp_path, **TINY)
    run = run_experiment(config, progress=False)
    td = TaskData(load_dataset(config), config)
    expected = [a for t in range(config.num_tasks) for a in td.train(run.task_class_pairs[t])]
    assert len(sent) == 2 + len(expected)  # the compilation's images and labels, then each task's
    assert not np.array_equal(expected[0], expected[2])  # the tasks' images differ
    for i, (got, want) in enumerate(zip(sent[2:], expected)):
        assert np.array_equal(got, want), f"task {i // 2}: {'images' if i % 2 == 0 else 'labels'}"


def test_the_probe_before_a_task_right_after_and_at_the_end_by_hand(small_run, tmp_path):
    """T = 3: task 1 is the one task with a before (folder 0, task 1 not yet trained), an after
    (folder 1) and an end (folder 2). Each figure is the probe of the saved representations of
    that slot; the kept share is (end - before) / (after - before) per repeat, then the spread."""
    from cljax.analysis import analyze_run
    from cljax.analysis.probe import probe_accuracy
    from cljax.analysis.summary_text import format_summary

    _, run = small_run
    dirs = results.task_dirs(run.algo_dir)
    b, a, e = (probe_accuracy(results.load_representations(d)[-1][:, 1], results.load_binary_labels(d)[-1][:, 1])
               for d in dirs)  # (R,) each
    kept = (e - b) / (a - b)
    assert (a - b > 1 / 16).all()  # training task 1 raised its probe on this run: the share is defined
    summary = analyze_run(run.algo_dir, tmp_path / "a", analyses=["probe"], glue=False, make_plots=False)
    gain = summary["probe"]["trained_gain"]
    assert gain["n_tasks"] == 1
    for key, want in (("before", b), ("after", a), ("end", e), ("kept", kept)):
        assert gain[key]["mean"] == pytest.approx(want.mean(), abs=1e-12), key
        assert gain[key]["std"] == pytest.approx(want.std(ddof=1), abs=1e-12), key
        assert gain[key]["n"] == 2 and gain[key]["n_nonfinite"] == 0
    assert gain["kept"]["n_no_gain"] == 0
    of_means = (e.mean() - b.mean()) / (a.mean() - b.mean())
    assert gain["kept_of_means"] == pytest.approx(of_means, abs=1e-12)
    assert "other_pairs_than_last" not in summary["probe"]["earlier_tasks"]  # pairs: no task's pair returns
    line = next(x for x in format_summary(summary).splitlines() if x.startswith("  the probe on"))
    assert line == (f"  the probe on task 1 (1 evaluated) before it was trained {b.mean():.4f} +- "
                    f"{b.std(ddof=1):.4f}, right after {a.mean():.4f} +- {a.std(ddof=1):.4f}, after the last "
                    f"{e.mean():.4f} +- {e.std(ddof=1):.4f}: the representation kept {100 * kept.mean():.0f} +- "
                    f"{100 * kept.std(ddof=1):.0f}% of what training added, per repeat ({100 * of_means:.0f}% from the "
                    f"means over repeats)")
