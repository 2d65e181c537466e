"""The tests stage of benchmarks/gpu_check.py: which tests it runs, with which flags, and which
of them the next call should run again (``tests_left.txt``: failed, or not finished before the
stage's limit), by exact node id (``pytest_ids_now``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

COLLECTED_FILE, DONE_FILE, LEFT_FILE = "tests_collected.txt", "tests_done.txt", "tests_left.txt"  # in OUT
LISTED_FILE = "tests_listed.txt"  # in OUT: a copy of --tests-from's ids, to name those not collected
# The two tests that failed on an H200 before the precision setting first (--keep-duplicates keeps
# the order given; they run again with their files), then the files around the numbers and the model.
GPU_TESTS = ["tests/test_end_to_end.py::test_saved_accuracy_equals_recomputation_from_saved_weights",
             "tests/test_rules.py::test_bio_is_the_three_factor_rule_with_fixed_random_feedback",
             "tests/test_precision.py", "tests/test_compute_dtype.py", "tests/test_lowering_flags.py",
             "tests/test_end_to_end.py", "tests/test_models.py", "tests/test_initial_state.py", "tests/test_rules.py",
             "tests/test_options.py"]
# The other files whose numbers depend on the backend (the rest of the suite is file, CLI and
# analysis logic): ``--tests rest``, for a second call with a longer ``--limit tests=...``.
GPU_TESTS_REST = ["tests/test_sharding.py", "tests/test_scale.py", "tests/test_schedule.py", "tests/test_methods.py",
                  "tests/test_heads.py", "tests/test_reliability.py", "tests/test_run_folder.py",
                  "tests/test_run_folder_split.py", "tests/test_run_folder_inputs.py", "tests/test_profile_task.py",
                  "tests/test_benchmark_smoke.py", "tests/test_analysis_glue.py", "tests/test_fused.py",
                  "tests/test_trace.py", "tests/test_options_units.py", "tests/test_built_programs.py",
                  "tests/test_resnet_im2col.py"]
SMOKE_TESTS = ["tests/test_precision.py::test_a_bad_precision_is_one_clear_error"]


def test_workers(args) -> list[str]:
    """pytest-xdist's flags for the full tests stage (none in the smoke, or without xdist): each
    test file runs whole in one worker (--dist loadfile), as its module-scoped runs expect."""
    if args.smoke or importlib.util.find_spec("xdist") is None:
        return []
    return ["-n", str(args.test_workers), "--dist", "loadfile"]


def tests_to_run(args) -> list[str]:
    """The paths given to pytest: with ``--tests-from FILE``, the files of the node ids it lists
    (the plugin keeps those ids alone)."""
    if args.smoke:
        return SMOKE_TESTS
    if args.tests_from:
        from pytest_ids_now import read_ids  # the plugin imports pytest: only where the tests run

        return list(dict.fromkeys(i.split("::")[0] for i in read_ids(args.tests_from)))
    if args.tests in (["rest"], ["all"]):
        return GPU_TESTS_REST if args.tests == ["rest"] else ["tests"]
    return args.tests or GPU_TESTS


def ids_env(args, out: Path) -> dict:
    """The plugin's variables: what was collected and what finished, into OUT; the ids to keep.
    The files of an earlier call into the same OUT are removed first (the outcomes are appended as
    tests end, and an old FAILED would outlive a pass). --tests-from's ids are read before that
    (they may be that call's tests_left.txt) into OUT/tests_listed.txt, which the plugin keeps."""
    from pytest_ids_now import COLLECTED, DONE, KEEP, read_ids

    listed = read_ids(args.tests_from) if args.tests_from and not args.smoke else None
    for name in (COLLECTED_FILE, DONE_FILE, LEFT_FILE, LISTED_FILE):
        (out / name).unlink(missing_ok=True)
    env = {COLLECTED: str(out / COLLECTED_FILE), DONE: str(out / DONE_FILE)}
    if listed is None:
        return env
    (out / LISTED_FILE).write_text("".join(f"{i}\n" for i in listed))
    return {**env, KEEP: str((out / LISTED_FILE).resolve())}


def tests_left(out: Path) -> dict | None:
    """The node ids of the stage that failed or did not finish, written to OUT/tests_left.txt
    (none written when every test finished and passed or skipped); and the ids --tests-from
    listed that were not collected (a test renamed since, or a file that needs an extra the
    machine lacks): not run, and not in tests_left.txt, as a next call would not collect them
    either."""
    if not (out / COLLECTED_FILE).exists() and not (out / LISTED_FILE).exists():
        return None
    from pytest_ids_now import read_ids

    outcomes = {}
    if (out / DONE_FILE).exists():
        for line in read_ids(out / DONE_FILE):
            outcome, _, node = line.partition("\t")
            outcomes[node] = "FAILED" if outcomes.get(node) in ("FAILED", "ERROR") else outcome  # a teardown's error
    collected = read_ids(out / COLLECTED_FILE) if (out / COLLECTED_FILE).exists() else []  # none of those listed
    left = [i for i in collected if outcomes.get(i) in (None, "FAILED", "ERROR")]
    (out / LEFT_FILE).unlink(missing_ok=True)
    if left:
        (out / LEFT_FILE).write_text("".join(f"{i}\n" for i in left))
    got = set(collected)
    absent = [i for i in read_ids(out / LISTED_FILE) if i not in got] if (out / LISTED_FILE).exists() else []
    return {"collected": len(collected), "finished": sum(i in outcomes for i in collected),
            "not_finished": sum(i not in outcomes for i in collected), "left": len(left),
            "left_file": LEFT_FILE if left else None, **({"not_collected": absent} if absent else {})}
