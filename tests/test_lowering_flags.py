"""--repeat-axis and --learner-expert: the lowering choices that ``auto`` makes per backend, from
the command line. They reach the program and its lowering record, are speed-only for a resume
(recorded with the lowering: a resume under another choice is warned about, not refused), and a
pairing that cannot hold is one error line. That they compute the same numbers is
tests/test_sharding.py's (vmapped vs looped, paired vs separate)."""

from __future__ import annotations

import pytest

from cljax.config import Config
from cljax.errors import CljaxError
from cljax.program import build_task_program, loop_repeats_default, paired_models_default
from cljax.run_split import same_split
from cljax.setting_match import differing_settings
from tests.test_precision import TINY


@pytest.mark.parametrize("axis, learner_expert", [("vmap", "separate"), ("loop", "paired")])
def test_the_choices_reach_the_program_and_its_record(axis, learner_expert):
    config = Config.from_flat(**TINY, repeat_axis=axis, learner_expert=learner_expert).validate()
    program = build_task_program(config, (28, 28))
    record = program.lowering.record()
    assert (record["repeats"], record["learner_expert"]) == (axis, learner_expert)
    assert program.parts.paired == (learner_expert == "paired")
    # an argument of build_task_program still wins over the config (the tests' way in)
    other = build_task_program(config, (28, 28), loop_repeats=axis == "vmap", paired_models=learner_expert != "paired")
    assert other.lowering.repeats != axis and other.lowering.learner_expert != learner_expert


def test_auto_is_the_backends_default():
    program = build_task_program(Config.from_flat(**TINY).validate(), (28, 28))
    assert program.lowering.repeats == ("loop" if loop_repeats_default() else "vmap")
    assert program.parts.paired == paired_models_default(1)


def test_paired_with_replay_is_one_error_line_and_auto_turns_pairing_off():
    replay = dict(TINY, use_replay=True, replay_size=8, replay_batch=4)
    with pytest.raises(CljaxError, match="--learner-expert paired needs the learner's batch to be the expert's"):
        build_task_program(Config.from_flat(**replay, learner_expert="paired").validate(), (28, 28))
    assert not build_task_program(Config.from_flat(**replay).validate(), (28, 28)).parts.paired


def test_the_choices_are_speed_only_for_a_resume_and_recorded_with_the_lowering():
    recorded = Config().to_dict()
    assert differing_settings(recorded, Config.from_flat(repeat_axis="vmap", learner_expert="separate")) == []
    older = {k: v for k, v in recorded.items() if k not in ("repeat_axis", "learner_expert")}
    assert differing_settings(older, Config()) == []
    split = {"backend": "cpu", "devices": 1, "processes": 1,
             "lowering": {"repeats": "loop", "learner_expert": "paired", "conv": "im2col", "devices": 1, "backend": "cpu",
                          "matmul_precision": "highest", "compute_dtype": "float32", "scan_unroll": 1}}
    assert not same_split(split, {**split, "lowering": {**split["lowering"], "repeats": "vmap"}})
    with pytest.raises(CljaxError, match="--repeat-axis"):
        Config.from_flat(repeat_axis="pmap").validate()


def test_auto_pairs_on_accelerators_and_on_a_cpu_device_with_a_core_to_itself(monkeypatch):
    """docs/benchmark.md: a CPU device that spans several cores runs the two models apart; one
    with at most a core to itself (cores <= devices) pairs them; accelerators always pair."""
    import jax

    import cljax.program as program

    for backend, cores, devices, paired in (("cpu", 1, 1, True), ("cpu", 2, 1, False), ("cpu", 4, 4, True),
                                            ("cpu", 4, 2, False), ("cpu", 2, 4, True), ("gpu", 16, 1, True)):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        monkeypatch.setattr(program, "usable_cores", lambda c=cores: c)
        assert program.paired_models_default(devices) == paired, (backend, cores, devices)
