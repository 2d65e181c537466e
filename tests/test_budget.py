"""The planner's figures, term by term: device memory per task (resident or two chunks in flight),
XLA scratch, the chunk that fits a budget and the headroom every check keeps, the host memory a
run is refused on, the disk files that scale with R, and what `cljax plan` reports of them. Traced
shapes only (nothing compiled, nothing run): each test takes a few seconds."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from cljax.budget import (HEADROOM, Budget, _per_device, choose_eval_chunk, chunk_need,
                          device_components, fit_chunk, given_chunk_problem, host_components, host_problem, host_total,
                          scratch_bytes, scratch_parts)
from cljax.budget_refusal import does_not_fit
from cljax.budget_disk import (_metadata_estimate, _metadata_json_bytes, _weights_dtype, _widest_row, disk_files_per_task,
                                disk_run_files, pickle_bytes)
from cljax.config import Config
from cljax.errors import CljaxError
from cljax.program import build_task_program

IMAGE_SHAPE = (28, 28)  # the synthetic images
PER_IMAGE = 28 * 28 + 4  # uint8 pixels + an int32 label
# T = 5 tasks, R = 2, N = 32 training and Nt = 16 test images per task and repeat, L = 2 snapshots.
SMALL = dict(dataset="synthetic", synthetic_classes=10, num_tasks=5, n_repeats=2, n_train_per_class=16,
             n_test_per_class=8, n_subsamples=4, epochs=1, batch_size=16, log_frequency=1)


def config_of(**overrides) -> Config:
    return Config.from_flat({**SMALL, **overrides})


def budget_of(config: Config) -> Budget:
    return Budget.of(config, build_task_program(config, IMAGE_SHAPE), IMAGE_SHAPE)


@pytest.fixture(scope="module")
def small():
    return budget_of(config_of())


# ---- device memory ---------------------------------------------------------------------------------
def test_device_components_hold_all_T_resident_and_two_chunks_while_streaming(small):
    pb, R, N, Nt = small.pb, 2, 32, 16
    resident = device_components(small, 5)
    assert device_components(small, 9) == resident  # K above T is resident too
    assert resident["train_data"] == N * R * PER_IMAGE
    assert resident["current_test_set"] == Nt * R * PER_IMAGE
    assert resident["eval_test_sets"] == 5 * Nt * R * PER_IMAGE  # T sets, not 2T
    chunked = device_components(small, 2)
    assert chunked["eval_test_sets"] == 2 * 2 * Nt * R * PER_IMAGE  # one chunk evaluating, one coming back
    for name, one_task in pb.eval_per_task.items():
        assert resident[f"eval_outputs.{name}"] == 5 * one_task
        assert chunked[f"eval_outputs.{name}"] == 4 * one_task
    assert pb.eval_per_task["acc"] == 3 * R * 4  # (L+1, R, 1) float32
    assert {k: v for k, v in chunked.items() if "eval" not in k} == {k: v for k, v in resident.items() if "eval" not in k}


def test_scratch_counts_both_a_training_step_and_an_evaluation_call(small):
    pb, R, Nt = small.pb, 2, 16
    assert pb.learner["params"] == R * pb.n_params * 4
    parts = scratch_parts(small)
    act = pb.activation_bytes_per_image
    assert parts["train"] == 3 * (pb.learner_batch + 16) * R * act + 2 * pb.learner["params"]
    # ... a copy of one test set included: a call of one slot evaluates it twice (map_at_least_twice).
    assert parts["evaluate"] == 2 * small.config.eval_chunk() * R * act + R * Nt * pb.hidden * 4 + Nt * R * PER_IMAGE
    assert scratch_bytes(small) == max(parts.values())


def test_per_device_bytes_round_up_and_scratch_is_part_of_the_need(small):
    assert (_per_device(8, 4), _per_device(9, 4), _per_device(11, 4), _per_device(0, 3)) == (2, 3, 3, 0)
    arrays, scratch = sum(device_components(small, 2).values()), scratch_bytes(small)
    assert chunk_need(small, 2, 1) == arrays + scratch
    assert chunk_need(small, 2, 3) == -(-arrays // 3) + -(-scratch // 3)


def test_the_largest_chunk_that_fits_is_chosen_with_headroom(small):
    need = {k: chunk_need(small, k, 1) for k in range(1, 6)}
    assert need[1] < need[2] < need[5] <= need[3] <= need[4]  # K > T/2 streams 2K > T tasks: never a candidate
    room = {k: math.ceil(n / HEADROOM) + 1 for k, n in need.items()}  # just enough for K = k
    assert fit_chunk(small, room[5], 1) == 5  # resident
    assert fit_chunk(small, room[5] - 2, 1) == 2  # K = 3 would hold 6 tasks: more than resident
    assert fit_chunk(small, room[2], 1) == 2  # the largest that fits, not the smallest
    assert fit_chunk(small, room[1], 1) == 1
    assert fit_chunk(small, room[1] - 1000, 1) == 0
    assert fit_chunk(small, need[1], 1) == 0  # all of the budget is more than HEADROOM of it
    # On two devices each holds half (R splits): the same budget takes K = 5.
    assert fit_chunk(small, math.ceil(chunk_need(small, 5, 2) / HEADROOM) + 1, 2) == 5


def test_a_given_chunk_keeps_the_headroom_and_is_capped_at_T(small):
    need = chunk_need(small, 2, 1)
    assert given_chunk_problem(small, 2, math.ceil(need / HEADROOM) + 1, 1) is None
    problem = given_chunk_problem(small, 2, need, 1)  # the whole budget, but not 90% of it
    assert problem is not None and f"({need:,} bytes) per device" in str(problem)
    roomy = math.ceil(chunk_need(small, 5, 1) / HEADROOM) + 1
    assert choose_eval_chunk(budget_of(config_of(eval_chunk_tasks=9, device_memory=roomy))) == 5
    assert choose_eval_chunk(budget_of(config_of(eval_chunk_tasks=2, device_memory=roomy))) == 2
    with pytest.raises(CljaxError, match="--eval-chunk-tasks 2: a task then needs"):
        choose_eval_chunk(budget_of(config_of(eval_chunk_tasks=2, device_memory=need)))


def test_a_task_dominated_by_training_scratch_names_replay_only_with_replay(small):
    def training_bound(b):  # activations so large that a training step's scratch is most of the need
        return b._replace(pb=dataclasses.replace(b.pb, activation_bytes_per_image=10**9))

    text = str(does_not_fit(training_bound(small), 1000, 1))
    assert "most of it is a training step's scratch: lower --batch-size or --n-repeats (or use more devices), or " \
           "raise --device-memory" in text
    assert "--replay-batch" not in str(does_not_fit(training_bound(small), 1000, 2))
    assert "lower --batch-size, or raise" in str(does_not_fit(training_bound(small), 1000, 2))  # R = 2 devices
    replay = budget_of(config_of(use_replay=True, replay_size=64))
    assert replay.pb.learner_batch > 16
    assert "lower --batch-size, --replay-batch or --n-repeats" in str(does_not_fit(training_bound(replay), 1000, 1))


def test_a_task_dominated_by_an_array_names_what_shrinks_that_array(small):
    # A replay buffer of 45 of 46 MiB got "lower --n-test-per-class, --n-subsamples or snapshots".
    replay = budget_of(config_of(use_replay=True, replay_size=65536))
    text = str(does_not_fit(replay, 1000, 2))
    assert "most of it is option replay's state (" in text and "lower --replay-size, or raise --device-memory" in text
    many = budget_of(config_of(n_train_per_class=4096, epochs=1, log_frequency=512))  # one snapshot
    assert "most of it is the task's training images (" in str(does_not_fit(many, 1000, 2))
    assert "lower --n-train-per-class, or raise" in str(does_not_fit(many, 1000, 2))
    reps = budget_of(config_of(n_subsamples=4096, n_test_per_class=2048, representation_dtype="bfloat16", model="mlp",
                               mlp_hidden=2048))
    text = str(does_not_fit(reps, 1000, 2))
    assert "most of it is the saved representations (" in text and "bfloat16" not in text  # already bfloat16


# ---- host memory -----------------------------------------------------------------------------------
def fake_data(tmp_path, in_ram: int):
    """A loaded dataset of ``in_ram`` bytes in RAM, its test images memory-mapped (not counted)."""
    mapped = np.memmap(tmp_path / "test_images.u8", np.uint8, "w+", shape=(10**6,))
    return SimpleNamespace(train_images=np.zeros(in_ram, np.uint8), train_labels=np.zeros(0, np.int32),
                           test_images=mapped, test_labels=np.zeros(0, np.int32))


def test_host_components_of_a_window(tmp_path):
    b = budget_of(config_of(eval_tasks="window:2"))
    R, N, Nt, L, S = 2, 32, 16, 2, 4
    host = host_components(b, fake_data(tmp_path, 12345), 2)
    assert host["dataset_in_ram"] == 12345  # the memory-mapped test images are not in RAM
    assert host["test_sets"] == (2 + 1) * Nt * R * PER_IMAGE  # the window's K sets and the next task's
    assert host["train_data_current_and_next"] == 2 * N * R * PER_IMAGE
    assert host["results_copies"] == L * R * b.pb.n_params * 4 + L * R * 2 * S
    assert host["fetched_task_outputs"] == sum(b.pb.snapshots.values()) + 2 * sum(b.pb.eval_per_task.values())
    assert host["learner_copy"] == sum(b.pb.learner.values())


def test_host_problem_counts_what_is_not_loaded_yet_with_headroom(small, tmp_path):
    data = fake_data(tmp_path, 50 * 2**20)  # already loaded: not part of what the run needs more
    more = host_total(small, data, 5) - 50 * 2**20
    assert more > sum(device_components(small, 5).values())
    assert host_problem(small, data, 5, (math.ceil(more / HEADROOM) + 1, "the machine's MemAvailable")) is None
    problem = host_problem(small, data, 5, (more, "the machine's MemAvailable"))  # all of it available, but not 90%
    assert problem is not None and f"({more:,} bytes) more host memory" in str(problem)
    assert "available (the machine's MemAvailable): lower --n-repeats" in str(problem)
    assert str(problem).endswith("or free memory. `cljax plan` shows the parts.")


def test_host_total_on_the_cpu_holds_the_arrays_twice_and_a_batch_of_activations(tmp_path, monkeypatch):
    # The ResNet's peak ran 1,104 MiB over its plan at R = 32, the CNN's came within 14 MiB at R = 512
    # (docs/scale.md): XLA's temporaries are a training batch's activations, which the plan left
    # out (the ResNet's are 17 times the CNN's per image).
    import jax

    from cljax.budget import RUN_EXTRA_HOST_BYTES

    data = fake_data(tmp_path, 0)
    cnn, resnet = budget_of(config_of()), budget_of(config_of(model="resnet"))
    for b in (cnn, resnet):
        arrays = sum(device_components(b, 5).values())
        batch = b.pb.learner_batch * 2 * b.pb.activation_bytes_per_image
        assert b is cnn or batch > 4 * arrays
        parts = sum(host_components(b, data, 5).values())
        # host_total's figure where JAX computes on the CPU, and on an accelerator, whichever this backend is
        monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
        assert host_total(b, data, 5) - parts == 2 * arrays + batch
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # the arrays are in the device's own memory
        assert host_total(b, data, 5) == parts
        monkeypatch.undo()
    # ... and compiling its larger programs takes more than the base allowance, which the model registers
    assert host_components(cnn, data, 5)["compilation_and_executables"] == RUN_EXTRA_HOST_BYTES
    assert host_components(resnet, data, 5)["compilation_and_executables"] == RUN_EXTRA_HOST_BYTES + 940 * 2**20


# ---- disk -------------------------------------------------------------------------------------------
def test_disk_files_that_scale_with_R_and_the_representation_dtype():
    two, four = budget_of(config_of()), budget_of(config_of(n_repeats=4))
    row = _weights_dtype(two).itemsize
    assert row == two.pb.n_params * 4
    files2, files4 = disk_files_per_task(two), disk_files_per_task(four)
    assert files4["start_weights.npy"] - files2["start_weights.npy"] == 2 * row  # one row per repeat
    assert files4["weights.npy"] - files2["weights.npy"] == 2 * 2 * row  # L = 2 rows per repeat
    run2, run4 = disk_run_files(two), disk_run_files(four)
    assert run4["initial/"] - run2["initial/"] == 2 * row
    bf16 = disk_files_per_task(budget_of(config_of(representation_dtype="bfloat16")))
    L, R, T, S, H = 2, 2, 5, 4, two.pb.hidden
    assert files2["representations.npy"] - bf16["representations.npy"] == L * R * T * S * H * 2  # 2 bytes, not 4


@pytest.mark.parametrize("L, R, T", [(12, 30, 5), (12, 300, 5), (12, 70000, 5), (3, 100000, 2), (12, 256, 300),
                                     (12, 65535, 3), (2, 3, 300000), (12, 30, 60000)])
def test_the_metrics_pickles_size_is_exact_without_making_the_arrays(L, R, T):
    # The estimate pickled zero arrays of the run's size: `plan --n-repeats 100000000` took the host's memory.
    import pickle

    parts = {"test_acc": ((L, R, T), np.float32), "train_acc": ((L, R), np.float32), "start": ((R, T), np.float32),
             "log_steps": ((L,), np.int64)}
    written = len(pickle.dumps({k: np.zeros(shape, dtype) for k, (shape, dtype) in parts.items()}, protocol=4))
    assert pickle_bytes(parts, most=0) == pickle_bytes(parts) == written  # cut to 64 KiB arrays, or whole


def test_a_schedule_larger_than_half_the_host_memory_is_one_line_before_it_is_built(monkeypatch):
    import cljax.devices.memory as memory
    from cljax.tasks import make_schedule

    monkeypatch.setattr(memory, "host_available", lambda: (2**30, "a test's 1 GiB"))
    assert make_schedule(10, 5, 100_000, 0).shape == (5, 100_000, 2)  # 28 MB
    with pytest.raises(CljaxError, match=r"^--n-repeats 10000000 x --num-tasks 5: the class pairs of the tasks alone "
                                         r"take 2\.6 GiB of host memory, more than half of the 1\.0 GiB available "
                                         r"\(a test's 1 GiB\): lower --n-repeats or --num-tasks"):
        make_schedule(10, 5, 10_000_000, 0)


def test_metadata_estimate_above_64_repeats_extends_the_schedule_linearly():
    from cljax.tasks import make_schedule

    b = budget_of(config_of(n_repeats=256))
    names = [f"class_{i}" for i in range(10)]
    schedule = make_schedule(10, 5, 256, 0)
    small = budget_of(config_of(n_repeats=64))  # the part beside the schedule's, exact at R <= 64
    known = _metadata_estimate(small, schedule[:, :64], names, ["weights.npy"]) - _metadata_json_bytes(
        small, schedule[:, :64], names)
    known += sum(s * len(json.dumps({"summary": _widest_row(5, r)}, indent=1)) for s, r in ((1, 256), (-1, 64)))  # O(R)
    exact = _metadata_json_bytes(b, schedule, names) + known
    at_64 = _metadata_json_bytes(b, schedule[:, :64], names) + known
    assert exact > 2 * at_64 - known  # the schedule is most of it
    assert abs(_metadata_estimate(b, schedule, names, ["weights.npy"]) - exact) < 0.05 * exact


def test_the_checkpoint_estimate_covers_the_real_file(small, tmp_path):
    import jax

    from cljax.checkpoint import CHECKPOINT, save_learner

    save_learner(tmp_path, small.program.init_learner(jax.random.key(0)), 3, "a" * 32)  # a run id as written
    actual = (tmp_path / CHECKPOINT).stat().st_size
    assert actual <= disk_run_files(small)[CHECKPOINT] <= 1.01 * actual
    assert "checkpoints/" not in disk_run_files(small)


def test_the_run_record_estimate_is_the_records_size(small, tmp_path):
    """run.json as a run writes it (run id, data hash, split, plugin sources, dataset meta): the plan left out
    the id, the hash and the split, about 400 bytes of a 1.4 KB file."""
    import uuid

    from cljax.checkpoint import RUN_RECORD, write_run_record
    from cljax.config import SCHEMA_VERSION
    from cljax.run_split import split_of
    from cljax.sources import entry_sources

    meta = {"name": "synthetic", "source": "generator seed 0"}  # the dataset's description, recorded too
    write_run_record(tmp_path, small.config.to_dict(), SCHEMA_VERSION, run_id=uuid.uuid4().hex, data="f" * 64,
                     split=split_of(small.program), sources=entry_sources(small.config), dataset_meta=meta)
    assert disk_run_files(small, meta)[RUN_RECORD] == (tmp_path / RUN_RECORD).stat().st_size


@pytest.mark.parametrize("every, n_kept", [(1, 4), (2, 2), (4, 1), (5, 0)])
def test_kept_checkpoints_take_one_checkpoint_each_as_every_nth_of_the_5_tasks_begins(small, every, n_kept):
    kept = disk_run_files(small._replace(config=config_of(keep_checkpoints=every))).get("checkpoints/", 0)
    assert kept == n_kept * disk_run_files(small)["checkpoint.npz"]


# ---- what `cljax plan` reports ------------------------------------------------------------------------
def test_plan_reports_the_given_chunk_capped_at_the_slots_and_its_calls(tmp_path):
    from cljax.plan import make_plan

    chunked = make_plan(config_of(eval_chunk_tasks=2, device_memory=10**10, results_dir=str(tmp_path)))
    assert chunked["evaluation"] == {"eval_tasks": "all", "slots": 5, "mode": "chunked", "chunk_tasks": 2,
                                     "calls_per_task": 3, "chosen_by": "--eval-chunk-tasks"}
    assert chunked["device_components"]["eval_test_sets"] == 2 * 2 * 16 * 2 * PER_IMAGE
    assert chunked["fits"] and chunked["problem"] is None
    capped = make_plan(config_of(eval_chunk_tasks=9, device_memory=10**10, results_dir=str(tmp_path)))
    assert capped["evaluation"]["chunk_tasks"] == 5 and capped["evaluation"]["mode"] == "resident"
    assert capped["evaluation"]["calls_per_task"] == 1
    assert capped["device_components"]["eval_test_sets"] == 5 * 16 * 2 * PER_IMAGE
    # K = 3 of 5: two chunks in flight hold 6 test sets, more than resident's 5; the text says so
    from cljax.plan import format_plan

    wide = make_plan(config_of(eval_chunk_tasks=3, device_memory=10**10, results_dir=str(tmp_path)))
    assert wide["evaluation"]["mode"] == "chunked"
    assert wide["device_components"]["eval_test_sets"] > capped["device_components"]["eval_test_sets"]
    assert ("note: two chunks are in flight while streaming, 6 tasks of the 5, so this needs as much device memory as "
            "resident evaluation; streaming saves memory only below K = 3") in format_plan(wide)
    assert "note: two chunks" not in format_plan(chunked)
    # K = 1 of 2: it said "streaming saves memory only below K = 1", which no K is
    pair = make_plan(config_of(num_tasks=2, eval_chunk_tasks=1, device_memory=10**10, results_dir=str(tmp_path)))
    assert ("note: two chunks are in flight while streaming, 2 tasks of the 2, so this needs as much device memory as "
            "resident evaluation; streaming saves no memory with 2 task slots, whatever K (--eval-chunk-tasks 0 keeps "
            "them resident)") in format_plan(pair)


def test_plan_splits_the_repeats_over_the_devices(tmp_path, monkeypatch):
    import cljax.devices.mesh as mesh
    from cljax.plan import make_plan

    config = config_of(device_memory=10**10, results_dir=str(tmp_path))
    one = make_plan(config)
    monkeypatch.setattr(mesh, "device_count", lambda: 2)
    two = make_plan(config)
    assert (one["devices"]["repeats_per_device"], two["devices"]["repeats_per_device"]) == (2, 1)
    assert two["device_bytes_per_task_all_devices"] == one["device_bytes_per_task_all_devices"]
    assert two["device_components"] == {k: -(-v // 2) for k, v in one["device_components"].items()}
    assert two["device_bytes_per_task"] == -(-one["device_bytes_per_task"] // 2)
