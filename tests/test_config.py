"""Config: validate's bounds (each value at its bound accepted, one past it refused in one line),
the snapshot steps, and what a resume must match (cljax/config.py)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from cljax.config import SPEED_ONLY, Config, settings_fields
from cljax.errors import CljaxError
from cljax.setting_match import differing_settings

# 16 training and 8 test images a task, 2 steps a task: every bound below sits at its edge
EDGE = dict(dataset="synthetic", n_train_per_class=8, n_test_per_class=4, n_subsamples=8, batch_size=16, epochs=2,
            log_frequency=2, momentum=0.999)


@pytest.mark.parametrize("change, message", [
    (dict(n_subsamples=10), "--n-subsamples 10 must be at most 2 * --n-test-per-class = 8"),
    (dict(n_subsamples=0), "--n-subsamples must be at least 2"),
    (dict(batch_size=17), "--batch-size 17 is larger than a task's 16 training images"),
    (dict(log_frequency=3), "--log-frequency 3 is larger than a task's 2 steps"),
    (dict(momentum=1.0), "--momentum must be at most 0.999"),
    (dict(data_dir="  "), "--data-dir is empty"),
    (dict(results_dir=" "), "--results-dir is empty"),
])
def test_validate_accepts_each_bound_and_refuses_one_past_it_in_one_line(change, message):
    edge = Config.from_flat(EDGE)
    assert edge.validate() is edge and edge.n_subsamples == edge.n_test and edge.batch_size == edge.n_train
    assert edge.log_frequency == edge.steps_per_task
    with pytest.raises(CljaxError) as refused:
        dataclasses.replace(edge, **change).validate()
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_snapshots_end_at_the_task_end_with_the_remainder_before_the_first():
    # 20 steps a task (5 epochs of 32 // 8 batches), a snapshot every 6: 2 steps run before the first
    config = Config.from_flat(n_train_per_class=16, batch_size=8, epochs=5, log_frequency=6)
    assert (config.steps_per_task, config.n_logs, config.log_steps) == (20, 3, [8, 14, 20])
    assert Config.from_flat(n_train_per_class=16, batch_size=8, epochs=5, log_frequency=5).log_steps == [5, 10, 15, 20]


def test_speed_only_settings_are_exactly_those_that_do_not_change_what_a_run_computes():
    assert set(SPEED_ONLY) == {"results_dir", "eval_batch_size", "eval_chunk_tasks", "device_memory", "scan_unroll",
                               "repeat_axis", "learner_expert", "keep_checkpoints"}


def _other_value(f):
    choices = f.metadata.get("choices")
    if choices:
        return next(c for c in choices if c != f.default)
    if type(f.default) is int:
        return f.default + 2
    return {float: 0.5, str: {"eval_tasks": "current"}.get(f.name)}.get(type(f.default))


@pytest.mark.parametrize("name", [f.name for f in settings_fields(Config)
                                  if f.name not in ("head_reset_to", "data_dir", "results_dir") and _other_value(f) is not None])
def test_a_resume_must_match_every_setting_that_changes_the_numbers(name):
    # representation_dtype, test_source, n_subsamples, ...: a resume with another value mixes two runs' results
    f = next(f for f in settings_fields(Config) if f.name == name)
    changed = Config.from_flat({name: _other_value(f)})
    assert differing_settings(Config().to_dict(), changed) == ([] if name in SPEED_ONLY else [name])


def test_a_resume_takes_conv_impl_auto_and_the_lowering_it_runs_as_one():
    from cljax.models import resolve_conv_impl

    auto = Config().to_dict()
    assert auto["conv_impl"] == "auto" and resolve_conv_impl("auto") == "im2col"
    assert differing_settings(auto, Config.from_flat(conv_impl="im2col")) == []  # it was refused
    assert differing_settings(Config.from_flat(conv_impl="im2col").to_dict(), Config()) == []
    assert differing_settings(auto, Config.from_flat(conv_impl="lax")) == ["conv_impl"]
    # a setting the model never reads (ignores=): the MLP's resume was refused a --conv-impl it warned did nothing
    mlp = Config.from_flat(model="mlp").to_dict()
    assert differing_settings(mlp, Config.from_flat(model="mlp", conv_impl="lax")) == []


def test_a_resume_compares_the_data_folder_by_what_it_points_to(tmp_path):
    folder = tmp_path / "data"
    recorded = Config.from_flat(data_dir=str(folder)).to_dict()
    assert differing_settings(recorded, Config.from_flat(data_dir=str(tmp_path / "x" / ".." / "data"))) == []
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    folder.mkdir()
    assert differing_settings(recorded, Config.from_flat(data_dir=str(tmp_path / "link"))) == []
    home = os.path.expanduser("~")
    assert differing_settings(Config.from_flat(data_dir=os.path.join(home, "d")).to_dict(),
                              Config.from_flat(data_dir="~/d")) == []
    assert differing_settings(recorded, Config.from_flat(data_dir=str(tmp_path / "other"))) == ["data_dir"]


def test_an_option_on_one_side_only_lists_its_settings_too():
    with_replay = Config.from_flat(use_replay=True)
    expected = ["replay_batch", "replay_size", "use_replay"]
    assert differing_settings(with_replay.to_dict(), Config()) == expected
    assert differing_settings(Config().to_dict(), with_replay) == expected


def test_a_run_past_the_int32_step_counters_or_of_too_many_snapshots_is_refused_before_anything_is_written():
    # 8e9 steps per task: plan said it fits, run wrote run.json and initial/ and then died in a traceback;
    # 4e9 snapshots: plan built the list of their steps and ran out of memory.
    with pytest.raises(CljaxError, match=r"^the run's 5 x 2,147,483,648 steps pass 2\^31 - 1, the range of the step "):
        Config.from_flat(n_train_per_class=16, batch_size=8, epochs=2**31 // 4, log_frequency=2**30).validate()
    Config.from_flat(num_tasks=1, n_train_per_class=16, batch_size=8, epochs=(2**31 - 1) // 4,
                     log_frequency=2**29).validate()  # 2^31 - 4 steps: within range
    with pytest.raises(CljaxError, match=r"^1,048,580 snapshots per task: .* \(at most 1,048,576\); raise --log-freq"):
        Config.from_flat(n_train_per_class=16, batch_size=8, epochs=262145, log_frequency=1).validate()
