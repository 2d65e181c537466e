"""What `--help` tells a researcher of each flag (its values, its range, its default), that the
README's flag table says the same, and the one-line answers to a misspelt flag, a negative seed
list and an empty job name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cljax.cli import main
from cljax.registry import RULES
from cljax.settings import Parser, add_repair_flag, add_run_flags, add_settings_flags
from tests.run_folder_kit import assert_one_error, run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _help(capsys, *command) -> str:
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone


def test_run_help_gives_each_flags_choices_range_and_default(capsys):
    # The metavar hid every flag's choices (float16, train_holdout were never named), and no
    # param's min/max was said.
    text = _help(capsys, "run")
    for said in ("--representation-dtype {float32,float16,bfloat16}", "--test-source {test,train_holdout}",
                 "--head {shared,reset,multi}", "--out-dim {1,2} classifier outputs",
                 "--num-tasks NUM_TASKS T, number of sequential binary tasks (at most n_classes // 2 with "
                 "--task-schedule pairs) (>=1; default: 5)",
                 "plain SGD) (in [0,0.999]; default: 0.0)",  # --momentum, both ends allowed
                 "shuffling all derive from it (in [0,2^32-1]; default: 0)",  # --seed
                 "on the CPU the host's available memory) (in [0,2^62]; default: 0)",  # --device-memory
                 "learning rate of the feature layers (>=0; default: --lr)",  # its own default kept
                 "shrink factor lam (in [0,1]; default: 0.99)", "number of hidden layers of the MLP (in [1,1000]; "
                 "default: 2)", "held-out part of the train split, disjoint from the training images (train_holdout) "
                 "(default: test)", "beside it win (cljax/presets.py) (default: none)",
                 "image channels, any count (1: gray, images (N, H, W); C > 1: (N, H, W, C), 3 for colour) (>=1; "
                 "default: 1)",
                 "--data-dir DATA_DIR dataset location (default: fashion_mnist: /usr/share/datasets/fashion-mnist; "
                 "imagenet_28_gray: none, required"):
        assert said in text, said
    # --lr: each registered rule's default in its text. Registration is per process, so a plugin
    # an earlier test of this worker loaded is listed too (the CLI loads only its --plugin files).
    listed = re.search(r"each registered rule's: (.*?) \(>=0\) --lr-features", text)
    assert listed, "no default learning rates in --lr's help"
    defaults = dict(entry.rsplit(" ", 1) for entry in listed.group(1).split(", "))
    assert {name: defaults.get(name) for name in ("Bio", "RL", "SL")} == {"Bio": "0.05", "RL": "0.1", "SL": "0.05"}
    assert set(defaults) <= set(RULES.names()) and list(defaults) == sorted(defaults)
    assert "--momentum MOMENTUM" in text and "--head HEAD" not in text  # a flag with choices shows them instead
    assert "(default: False)" in text and "--use-replay, --no-use-replay" in text  # a bool: no range


def test_sweep_help_gives_each_flag_its_own_note_and_the_slurm_defaults(capsys):
    text = _help(capsys, "sweep")
    # "(every job; jobs never draw a progress bar)" ended --overwrite's and --allow-nonfinite's help too
    assert "record it and stop) (every job) --no-progress" in text
    assert "and start again (default: resume the same run, refuse another unless it finished no task) (every job)" \
        in text and text.count("never draws a bar") == 1
    assert "(every job's log; a job never draws a bar)" in text
    for said in ("SLURM partition (default: the cluster's default one)", "SLURM account (default: your default account)",
                 "(>0; default: none asked for, the partition's default)", "memory per job in GB (>0; default: the "
                 "cluster's)", "at most this many jobs at once (>0; default: submitit's, 256)",
                 "--seeds SEEDS comma-separated seeds, each in [0,2^32-1] (default: --seed)",
                 "job name, not empty (default: cljax)"):
        assert said in text, said


def test_the_other_commands_help_gives_the_defaults_it_lacked(capsys):
    assert "write the comparison as JSON here (default: none)" in _help(capsys, "compare")
    assert "print the plan as JSON (default: as text)" in _help(capsys, "plan")
    text = _help(capsys, "prepare-imagenet")
    assert "--reader {auto,datasets} how a local parquet folder is read: auto (pyarrow;" in text
    assert "(HF datasets, the hub's code path) (default: auto)" in text
    assert "images per resumable shard (local parquet / image folders) (>=1; default: 1024)" in text


@pytest.mark.parametrize("typed, said", [
    (["--n-repeat", "3"], "--n-repeat 3: did you mean --n-repeats?"),
    (["--num_tasks", "2"], "--num_tasks 2: did you mean --num-tasks?"),  # only '_' for '-' wrong: that flag alone
    (["--num_tasks=2"], "--num_tasks=2: did you mean --num-tasks?"),
    (["--n-tasks", "2"], "--n-tasks 2: did you mean --num-tasks?"),
    (["--n-tasks", "2", "--sp-lamda", "0.5"], "--n-tasks 2 --sp-lamda 0.5: did you mean --num-tasks (for --n-tasks), "
                                              "--sp-lambda (for --sp-lamda)?")])
def test_a_misspelt_flag_is_answered_with_the_nearest_in_one_line(capsys, typed, said):
    for command in ("run", "plan", "sweep"):
        rc, _, err = run_cli([command, *typed], capsys)
        assert_one_error(rc, err)
        assert err == (f"error: unrecognized arguments: {said} (see `cljax {command} --help`; if it is a flag of a "
                       f"plugin's entry, load its file: --plugin FILE or $CLJAX_PLUGINS)\n")  # a plugin's flag typed alone


def test_a_flag_near_none_is_not_given_a_guess():
    parser = Parser(prog="cljax run")
    add_settings_flags(parser)
    add_run_flags(parser)
    add_repair_flag(parser)
    assert parser.closest_flags("--use-gradnoise") == [] and parser.closest_flags("--seeds") == ["--seed"]
    assert parser.closest_flags("--data_dir=/x") == ["--data-dir"]


@pytest.mark.parametrize("typed, said", [
    (["--seeds", "-1,2"], "--seeds '-1,2': -1 is not a seed, which is an integer in [0, 2^32-1]"),  # "expected one argument"
    (["--seeds=0,-3"], "--seeds '0,-3': -3 is not a seed"),
    (["--seeds", "0,4294967296"], "--seeds '0,4294967296': 4294967296 is not a seed"),
    (["--seeds", "1,x"], "--seeds '1,x': write comma-separated integers, e.g. --seeds 0,1,2."),
    (["--job-name", ""], "--job-name '' is empty: give the jobs a name (default: cljax), or leave the flag out."),
    (["--job-name", " "], "--job-name ' ' is empty")])
def test_a_sweeps_bad_seeds_or_empty_job_name_is_one_line_before_anything_is_written(tmp_path, capsys, typed, said):
    rc, _, err = run_cli(["sweep", "--dataset", "synthetic", "--executor", "local", "--results-dir",
                          str(tmp_path / "s"), *typed], capsys)
    assert_one_error(rc, err, said)
    assert not (tmp_path / "s").exists()


def test_a_negative_value_is_read_as_the_flags_value_and_refused_as_a_value(tmp_path, capsys):
    rc, _, err = run_cli(["run", "--lr", "-1e-3", "--results-dir", str(tmp_path)], capsys)  # "expected one argument"
    assert_one_error(rc, err, "--lr must be at least 0.0, got -0.001.")


def _readme_table() -> list[tuple[list[str], list[str]]]:
    """(flags, defaults) of each row of the README's table of `cljax run`'s flags."""
    text = README.read_text()
    table = text[text.index("| flag | default | meaning |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("| `--"):
            break
        flags_cell, default_cell = line.split(" | ")[:2]
        rows.append((re.findall(r"`(--[a-z0-9-]+)`", flags_cell), [d.strip() for d in default_cell.split(" / ")]))
    return rows


def test_the_readme_flag_table_names_flags_and_defaults_as_the_help_does():
    parser = Parser(prog="cljax run")
    add_settings_flags(parser)
    add_run_flags(parser)
    add_repair_flag(parser)
    rows = _readme_table()
    assert len(rows) > 30
    for flags, defaults in rows:
        for i, flag in enumerate(flags):
            action = parser._option_string_actions.get(flag)
            assert action is not None, f"README names {flag}, which `cljax run` lacks"
            said = defaults[i] if len(defaults) == len(flags) else None
            if said in ("off", "none"):
                assert action.default in (False, None), (flag, said)
            elif said and re.fullmatch(r"`[^`]*`|-?[0-9.e-]+", said):  # a plain value (not "the rule's: ...")
                value = said.strip("`")
                assert value == str(action.default) or float(value) == action.default, (flag, said, action.default)
