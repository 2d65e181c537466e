"""Weight change is measured from the true references: the network before its first step
(initial/, once per run) and the state each task's training starts from (start_weights.npy,
after shrink+perturb at the boundary). One tiny run with shrink+perturb (lam 0.5, sigma 0, so
the boundary is exactly a halving) serves every test."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from cljax import results
from cljax.analysis import weight_change
from cljax.initial_state import INITIAL, load_initial_weights
from tests.conftest import small_config

TINY = dict(dataset="synthetic", synthetic_classes=4, num_tasks=2, n_repeats=2, n_train_per_class=16,
            n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1,
            add_plasticity=True, sp_lambda=0.5, sp_sigma=0.0, model="mlp", mlp_hidden=32)  # the MLP compiles fastest


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from cljax.analysis import analyze_run
    from cljax.experiment import run_experiment
    from cljax.program import build_task_program

    root = tmp_path_factory.mktemp("init")
    config = small_config(root, **TINY)
    algo_dir = run_experiment(config, progress=False).algo_dir
    init = build_task_program(config, (28, 28)).init_learner(jax.random.key(config.seed))
    summary = analyze_run(algo_dir, glue=False, make_plots=False)
    return {"algo_dir": algo_dir, "init": init, "summary": summary}


def test_the_initial_network_is_saved_once_and_is_the_initialisation(run):
    algo_dir = run["algo_dir"]
    saved = load_initial_weights(algo_dir)
    assert [x.shape for x in leaves(saved)] == [np.shape(x) for x in leaves(run["init"].params)]
    for s, want in zip(leaves(saved), leaves(run["init"].params)):
        np.testing.assert_array_equal(s, want)
    meta = json.loads((algo_dir / INITIAL / "metadata.json").read_text())
    assert meta["run_id"] == json.loads((algo_dir / "run.json").read_text())["run_id"]
    assert sorted(meta["files"]) == ["weights.npy"]  # the CNN has no mutable model state
    # Task 0 starts from it (no shrink+perturb before the first task); its first snapshot is
    # already a logging interval away from it.
    task0 = algo_dir / "task_000"
    for s, start, first in zip(leaves(saved), leaves(results.load_start_weights(task0)),
                               leaves(results.load_weights(task0))):
        np.testing.assert_array_equal(start, s)
        assert not np.array_equal(first[0], s)


def test_the_initialisation_compiled_for_speed_gives_the_bits_of_xla_defaults(tmp_path):
    """The learner's initialisation is compiled with its own XLA options (on the CPU a lower LLVM
    level, which compiles it faster): its output is, bit for bit, that of the same function
    compiled at XLA's default level, 3 (given here, as the suite's XLA_FLAGS lower it for every
    other program: tests/conftest.py). Bio draws fixed feedback matrices, and CBP and UL keep states
    of their own (more models, rules and options were compared once: docs/benchmark.md)."""
    from cljax.program import build_task_program, init_compiler_options

    options = init_compiler_options()
    assert options == ({"xla_backend_optimization_level": 2} if jax.default_backend() == "cpu" else {})
    config = small_config(tmp_path, **{**TINY, "algorithm": "Bio", "n_repeats": 3, "use_cbp": True, "use_ul": True,
                                       "ul_kind": "recon"}).validate()
    init = build_task_program(config, (28, 28)).init_learner
    key = jax.random.key(11)
    at_level_3 = jax.jit(init.__wrapped__).lower(key).compile({"xla_backend_optimization_level": 3})
    ours, defaults = leaves(init(key)), leaves(at_level_3(key))
    assert len(ours) == len(defaults) > 10
    for a, b in zip(ours, defaults):
        np.testing.assert_array_equal(a, b)


def test_a_task_starts_from_the_shrunk_network_and_its_change_is_measured_from_there(run):
    algo_dir = run["algo_dir"]
    last0 = [x[-1] for x in leaves(results.load_weights(algo_dir / "task_000"))]
    start1 = leaves(results.load_start_weights(algo_dir / "task_001"))
    for s, w in zip(start1, last0):
        np.testing.assert_allclose(s, np.float32(0.5) * w, rtol=1e-6, atol=0)
    # Task 1's evaluation at its start is of the halved network, not of task 0's last snapshot.
    start_acc = results.load_metrics(algo_dir / "task_001")["start_test_acc"]
    end_acc0 = results.load_metrics(algo_dir / "task_000")["test_acc"][-1]
    assert start_acc.shape == end_acc0.shape == (2, 2)

    arrays = np.load(algo_dir / "analysis" / "plasticity.npz")
    w1 = results.load_weights(algo_dir / "task_001")
    want_task_start = weight_change(leaves(w1), start1)
    want_init = weight_change(leaves(w1), leaves(load_initial_weights(algo_dir)))
    np.testing.assert_allclose(arrays["weight_change_task_start"][1], want_task_start, rtol=1e-6)
    np.testing.assert_allclose(arrays["weight_change_init"][1], want_init, rtol=1e-6)
    # Measured from task 0's last snapshot instead, the figure would be mostly the halving.
    from_last = weight_change(leaves(w1), last0)
    assert (from_last[0] > 2 * want_task_start[0]).all()
    # The first snapshot of the run has moved from the initialisation (from the first snapshot
    # itself, the old reference, it read exactly 0).
    assert (arrays["weight_change_init"][0, 0] > 0).all()
    refs = run["summary"]["plasticity"]["weight_change_reference"]
    assert refs == {"init": "initial/weights.npy", "task_start": ["start_weights.npy of the task folder"]}


def test_a_run_from_before_these_files_is_analysed_from_its_snapshots_and_says_so(run, tmp_path, capsys):
    from cljax.analysis import analyze_run

    old = tmp_path / "old"
    shutil.copytree(run["algo_dir"], old)
    shutil.rmtree(old / INITIAL)
    deleted = tmp_path / "deleted"  # initial/ deleted from a run that wrote it: the analysis says how to restore it
    shutil.copytree(old, deleted)
    shutil.rmtree(deleted / "analysis")
    analyze_run(deleted, glue=False, make_plots=False)
    assert f"warning: {deleted / INITIAL} is missing, so the change from the initial weights is measured from " \
           f"task_000's first snapshot; run the run's `cljax run` command again" in capsys.readouterr().err
    record = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**record, "schema": 2}))  # before initial/ existed
    shutil.rmtree(old / "analysis")
    for t in ("task_000", "task_001"):
        (old / t / "start_weights.npy").unlink()
        meta = json.loads((old / t / "metadata.json").read_text())
        del meta["files"]["start_weights.npy"], meta["shapes"]["start_weights"]
        (old / t / "metadata.json").write_text(json.dumps(meta))
    summary = analyze_run(old, glue=False, make_plots=False)
    assert "is missing" not in capsys.readouterr().err
    refs = summary["plasticity"]["weight_change_reference"]
    assert refs["init"].startswith("first snapshot of task_000")
    assert refs["task_start"] == ["last snapshot of the previous task folder (no start_weights.npy)"]
    arrays = np.load(old / "analysis" / "plasticity.npz")
    assert (arrays["weight_change_init"][0, 0] == 0).all()
    w0, w1 = leaves(results.load_weights(old / "task_000")), leaves(results.load_weights(old / "task_001"))
    np.testing.assert_allclose(arrays["weight_change_task_start"][1],
                               weight_change(w1, [x[-1] for x in w0]), rtol=1e-6)


def test_a_model_with_mutable_state_saves_it_beside_the_weights(tmp_path):
    """initial/model_state.npy: one row per repeat, for a model with mutable state (BatchNorm
    statistics); none for a model without."""
    from cljax.initial_state import initial_arrays, write_initial

    params = {"dense": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                        "bias": np.zeros((2, 4), np.float32)}}
    state = {"batch_stats": {"bn": {"mean": np.arange(6, dtype=np.float32).reshape(2, 3),
                                    "var": np.ones((2, 3), np.float32)}}}
    assert initial_arrays(params, {})["model_state"] is None
    arrays = initial_arrays(params, state)
    assert arrays["weights"].shape == arrays["model_state"].shape == (2,)
    folder = write_initial(tmp_path, arrays, "run-1")
    meta = json.loads((folder / "metadata.json").read_text())
    assert sorted(meta["files"]) == ["model_state.npy", "weights.npy"]
    assert meta["shapes"] == {"weights": [2], "model_state": [2]} and meta["run_id"] == "run-1"
    saved = results.load_structured(folder / "model_state.npy")
    np.testing.assert_array_equal(saved["batch_stats"]["bn"]["mean"], state["batch_stats"]["bn"]["mean"])
    np.testing.assert_array_equal(load_initial_weights(tmp_path)["dense"]["kernel"], params["dense"]["kernel"])


def test_a_run_resumed_before_its_first_task_writes_its_initial_network_again(run, tmp_path):
    # run.json edited (seed 0 -> 1) while the run was still in task 0: the resume trained seed 1,
    # and initial/ kept seed 0's network (weight_change_init read 0.072 where it is 0.0004).
    from cljax.experiment import run_experiment

    shutil.copytree(run["algo_dir"].parents[1], tmp_path / "r")  # the results root: {dataset}/{algorithm}
    algo_dir = tmp_path / "r" / run["algo_dir"].relative_to(run["algo_dir"].parents[1])
    for folder in results.task_dirs(algo_dir):
        shutil.rmtree(folder)
    for name in ("checkpoint.npz", "verified.json", "verified.jsonl"):
        (algo_dir / name).unlink(missing_ok=True)
    record = json.loads((algo_dir / "run.json").read_text())
    record["config"]["seed"] = 1
    (algo_dir / "run.json").write_text(json.dumps(record))
    config = small_config(tmp_path, **{**TINY, "seed": 1, "results_dir": str(tmp_path / "r")})
    assert run_experiment(config, progress=False).algo_dir == algo_dir
    fresh = small_config(tmp_path, **{**TINY, "seed": 1, "results_dir": str(tmp_path / "fresh")})
    fresh_dir = run_experiment(fresh, progress=False).algo_dir
    for resumed, clean in zip(leaves(load_initial_weights(algo_dir)), leaves(load_initial_weights(fresh_dir))):
        np.testing.assert_array_equal(resumed, clean)
