"""The run folder, part 2: the resume key is what changes the numbers, and the device split
a run started on is kept (or its change warned and recorded)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from cljax import results
from tests.conftest import small_config
from tests.run_folder_kit import FLAGS, RUN_DIR, TINY, assert_one_error, copy, flip_byte, make_runs, run_cli


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_runs(tmp_path_factory)


# ---- 5. the resume key is what changes the numbers -------------------------------------------------------
def test_paths_and_speed_only_settings_do_not_block_a_resume(made, tmp_path, capsys, monkeypatch):
    run_dir = copy(made, "finished", tmp_path / "moved")  # a copied tree, under another path
    monkeypatch.chdir(tmp_path)
    for extra in (["--results-dir", str(tmp_path / "moved") + "/"], ["--results-dir", "moved"],
                  ["--results-dir", "moved", "--eval-batch-size", "5", "--eval-chunk-tasks", "1"],
                  ["--results-dir", "moved", "--device-memory", str(2**40)],
                  ["--results-dir", "moved", "--data-dir", str(tmp_path)]):  # the same (generated) data
        rc, out, err = run_cli(["run", *FLAGS, *extra], capsys)
        assert rc == 0 and "already finished" in out and "--overwrite would delete it" in out, (extra, err)
    rc, _, err = run_cli(["run", *FLAGS, "--results-dir", "moved", "--lr", "0.2"], capsys)
    assert_one_error(rc, err, "other settings (lr)", "--overwrite to replace it (it deletes its 2 task folder(s)")
    assert (run_dir / "task_001").is_dir()


def test_the_data_is_compared_by_content_not_by_the_folder_spelling(tmp_path):
    from cljax.data import load_dataset
    from cljax.data.prepared import data_identity
    from cljax.datasets.fashion_mnist import DEFAULT_DIR
    from tests.conftest import FASHION_DIR

    if not Path(DEFAULT_DIR).is_dir() or Path(FASHION_DIR).resolve() != Path(DEFAULT_DIR).resolve():
        pytest.skip("Fashion-MNIST is not at its default place")
    default = small_config(tmp_path, data_dir=None)
    spelled = small_config(tmp_path, data_dir=str(FASHION_DIR) + "/")
    assert data_identity(load_dataset(default)) == data_identity(load_dataset(spelled))


# ---- 6. the device split ---------------------------------------------------------------------------------
def test_the_recorded_cpu_split_is_reproduced_unless_set_otherwise():
    from cljax.devices.cpu_split import cpu_devices_wanted

    two = {"backend": "cpu", "devices": 2, "processes": 1}
    assert cpu_devices_wanted(4, {}, cores=1, recorded=two) == 2  # a host with fewer cores
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "devices": 1}) is None  # one device, as recorded
    assert cpu_devices_wanted(4, {}, cores=8, recorded={**two, "backend": "gpu"}) == 4
    assert cpu_devices_wanted(4, {"CLJAX_CPU_DEVICES": "off"}, cores=8, recorded=two) is None  # said explicitly


def test_overwrite_does_not_take_the_split_of_the_run_it_deletes(tmp_path, monkeypatch):
    from cljax import cli
    from cljax.config import algo_dir_of
    from cljax.devices import cpu_split

    calls = []
    monkeypatch.setattr(cpu_split, "configure_cpu_devices", lambda n, recorded=None: calls.append((n, recorded)))
    config = small_config(tmp_path, n_repeats=4)
    algo_dir_of(config).mkdir(parents=True)
    split = {"backend": "cpu", "devices": 2, "processes": 1}
    (algo_dir_of(config) / "run.json").write_text(json.dumps({"split": split}))
    cli._use_every_core(config)  # a resume: the split it started on
    cli._use_every_core(config, overwrite=True)  # a new run: this host's own
    assert calls == [(4, split), (4, None)]



def test_a_resume_takes_the_split_it_started_on_and_stays_byte_identical(made, tmp_path):
    """The run started on one CPU device; the CLI would split this host by default; resumed
    from a kill after task 0, it takes one device again and task 1 equals the uninterrupted run's."""
    run_dir = copy(made, "partial", tmp_path / "r")
    assert json.loads((run_dir / "run.json").read_text())["split"]["devices"] == 1
    env = {k: v for k, v in os.environ.items() if k != "CLJAX_CPU_DEVICES"}
    proc = subprocess.run([sys.executable, "-m", "cljax.cli", "run", *FLAGS, "--results-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and "resumed from task 1" in proc.stdout, proc.stderr
    # cljax's warnings start a line with "warning:" (on a GPU, a compiler's own lines may say "warning")
    assert not [line for line in proc.stderr.splitlines() if line.startswith("warning:")], proc.stderr
    meta = results.load_metadata(run_dir / "task_001")
    assert len(meta["device"]) == 1 and meta["split"]["devices"] == 1
    finished = made["finished"] / RUN_DIR / "task_001"
    for name in ("representations.npy", "weights.npy", "metrics.pkl", "expert_metrics.pkl"):
        assert (run_dir / "task_001" / name).read_bytes() == (finished / name).read_bytes(), name


def test_a_moved_run_resumes_byte_identical_and_another_split_is_warned_and_recorded(made, tmp_path, capsys):
    from cljax.experiment import run_experiment

    first = copy(made, "partial", tmp_path / "first")
    shutil.move(tmp_path / "first", tmp_path / "elsewhere")  # what a kill after task 0 leaves, moved
    run_dir = tmp_path / "elsewhere" / RUN_DIR
    record = json.loads((run_dir / "run.json").read_text())
    record["split"] = {**record["split"], "devices": 2}  # as if started on two devices of this backend
    (run_dir / "run.json").write_text(json.dumps(record))
    config = small_config(tmp_path, results_dir=str(tmp_path / "elsewhere"), **TINY)
    resumed = run_experiment(config, progress=False)
    err = capsys.readouterr().err
    assert resumed.first_task == 1 and not first.exists()
    backend = jax.default_backend()
    assert err.count(f"warning: this run started on 2 {backend} device(s)") == 1
    assert ("CLJAX_CPU_DEVICES=2" in err) == (backend == "cpu")  # how to keep a CPU split; a GPU count is the machine's
    assert results.load_metadata(run_dir / "task_001")["split_at_run_start"]["devices"] == 2
    finished = made["finished"] / RUN_DIR
    for t in ("task_000", "task_001"):
        for name in ("representations.npy", "binary_labels.npy", "weights.npy", "metrics.pkl", "expert_metrics.pkl"):
            assert (run_dir / t / name).read_bytes() == (finished / t / name).read_bytes(), (t, name)


def test_the_mlps_convolution_lowering_is_neither_compared_nor_named(made, tmp_path, capsys):
    """The MLP never convolves, yet records the backend's convolution lowering: a resume under
    another --conv-impl (a setting it ignores) was warned about as another split, with the hint to
    rerun with the recorded --conv-impl, and `cljax plan` named im2col convolutions for it."""
    from cljax.config import Config
    from cljax.experiment import run_experiment
    from cljax.plan import format_plan, make_plan
    from cljax.program import loop_repeats_default

    run_dir = copy(made, "partial", tmp_path / "r")
    assert json.loads((run_dir / "run.json").read_text())["split"]["lowering"]["conv"] == "im2col"
    resumed = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "r"), conv_impl="lax", **TINY),
                             progress=False)
    assert resumed.first_task == 1 and "warning" not in capsys.readouterr().err
    assert "split_at_run_start" not in results.load_metadata(run_dir / "task_001")
    # another split still is warned about, without the convolutions it does not have
    run_dir = copy(made, "partial", tmp_path / "v")
    other = "vmap" if loop_repeats_default() else "loop"  # not the backend's default (a GPU's is vmap)
    run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "v"), repeat_axis=other, **TINY), progress=False)
    warned = [line for line in capsys.readouterr().err.splitlines() if "this run started on" in line]
    assert len(warned) == 1 and "repeats loop" in warned[0] and "repeats vmap" in warned[0], warned
    assert "convolution" not in warned[0] and "--conv-impl" not in warned[0]
    line = [x for x in format_plan(make_plan(Config.from_flat(**TINY).validate())).splitlines() if "program:" in x]
    assert "learner and expert paired, no convolution, matmul precision" in line[0] or \
        "learner and expert separate, no convolution, matmul precision" in line[0], line
    cnn = format_plan(make_plan(Config.from_flat(**{**TINY, "model": "cnn"}).validate()))
    assert "im2col convolutions" in cnn and "no convolution" not in cnn


def test_a_resume_with_another_evaluation_chunk_is_warned_once(made, tmp_path, capsys):
    """--eval-batch-size is a speed setting, so a resume may change it; when it changes the chunks
    the test set is evaluated in (here 16 test images per call, then 4), it says so in one line."""
    from cljax.experiment import run_experiment

    for size, chunk in ((50, 16), (5, 4)):  # 50: still the whole test set of 16 in one call
        copy(made, "partial", tmp_path / str(size))
        resumed = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / str(size)), eval_batch_size=size,
                                              **TINY), progress=False)
        err = capsys.readouterr().err
        assert resumed.first_task == 1
        warned = [line for line in err.splitlines() if "--eval-batch-size" in line]
        assert warned == ([] if chunk == 16 else [
            "warning: this run started with --eval-batch-size 100 (16 test images per evaluation call) and continues "
            "with 5 (4): from task 1 on its test losses and representations can differ from an uninterrupted run's "
            "in the last bits; to keep them, rerun with --eval-batch-size 100."])


def test_a_finished_run_with_a_damaged_initial_state_writes_it_again_and_stays_finished(made, tmp_path, capsys):
    """The analysis refuses a damaged initial/ and says to run the command again: for a finished
    run that writes initial/ again, byte for byte, and touches nothing else."""
    from cljax.experiment import run_experiment
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "finished", tmp_path / "r")
    flip_byte(run_dir / INITIAL / "weights.npy")
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 2 and "run the run's `cljax run` command again" in err
    kept = lambda: {p: p.read_bytes() for p in run_dir.rglob("*")  # noqa: E731 (run.lock names its last holder)
                    if p.is_file() and INITIAL not in p.parts and p.name != "run.lock"}
    before = kept()
    again = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "r"), **TINY), progress=False)
    assert again.already_finished
    assert "initial/weights.npy does not match the sha256" in capsys.readouterr().err
    finished = made["finished"] / RUN_DIR / INITIAL
    for name in ("weights.npy", "metadata.json"):
        assert (run_dir / INITIAL / name).read_bytes() == (finished / name).read_bytes(), name
    assert kept() == before
    rc, _, err = run_cli(["analyze", str(run_dir), "--no-glue", "--no-plots"], capsys)
    assert rc == 0, err



def test_a_finished_run_from_before_the_initial_state_is_reported_finished_and_left_as_it_is(made, tmp_path, capsys):
    """No initial/ in a run recorded at schema 2 is a run from before it existed (analyze reads
    its snapshots), not a damaged one: the rerun reports it finished and writes nothing, warns of
    nothing."""
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "finished", tmp_path / "r")
    shutil.rmtree(run_dir / INITIAL)
    record = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**record, "schema": 2}))
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out and err == "", (out, err)
    assert not (run_dir / INITIAL).exists()


def test_a_finished_run_whose_initial_state_was_deleted_gets_it_again_as_the_run_began(made, tmp_path, capsys):
    """A run recorded since initial/ existed always wrote it: missing, it was deleted, and the
    rerun writes it again from the seed, byte for byte, and says so."""
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "finished", tmp_path / "r")
    shutil.rmtree(run_dir / INITIAL)
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out, (out, err)
    assert f"warning: {run_dir / INITIAL} is missing; the run is finished and its initial/ was written again" in err
    for name in ("weights.npy", "metadata.json"):
        assert (run_dir / INITIAL / name).read_bytes() == (made["finished"] / RUN_DIR / INITIAL / name).read_bytes()
    rc, out, err = run_cli(["run", *FLAGS, "--results-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "already finished" in out and err == "", (out, err)  # whole again: nothing more to say


@pytest.mark.parametrize("damage", ["missing", "flipped"])
def test_a_resume_writes_a_missing_or_damaged_initial_state_as_the_run_began(made, tmp_path, damage, capsys):
    """A run started before initial/ existed, or whose initial/ is damaged, is not refused: the
    initialisation is a function of the seed, and the resume writes it again, byte for byte."""
    from cljax.experiment import run_experiment
    from cljax.initial_state import INITIAL

    run_dir = copy(made, "partial", tmp_path / "r")
    if damage == "missing":
        shutil.rmtree(run_dir / INITIAL)
    else:
        raw = bytearray((run_dir / INITIAL / "weights.npy").read_bytes())
        raw[-1] ^= 0xFF
        (run_dir / INITIAL / "weights.npy").write_bytes(bytes(raw))
    resumed = run_experiment(small_config(tmp_path, results_dir=str(tmp_path / "r"), **TINY), progress=False)
    assert resumed.first_task == 1
    # said, as a finished run's repair of it is (a resume rewrote it without a word)
    assert "; it was written again from the run's seed, as the run began." in capsys.readouterr().err
    finished = made["finished"] / RUN_DIR / INITIAL
    for name in ("weights.npy", "metadata.json"):
        assert (run_dir / INITIAL / name).read_bytes() == (finished / name).read_bytes(), name
