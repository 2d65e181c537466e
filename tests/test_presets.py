"""--preset: a named protocol's settings as defaults, flags beside it win, unknown names are one line."""

from __future__ import annotations

import pytest

from cljax.cli import main as cli_main
from cljax.errors import CljaxError
from cljax.presets import PRESETS, preset_from_argv
from cljax.settings import Parser, add_settings_flags, config_from_args, setting_specs


def config_of(argv):
    parser = Parser(prog="test")
    add_settings_flags(parser, argv)
    return config_from_args(parser.parse_args(argv))


def test_the_lop_preset_sets_the_protocol_and_a_flag_beside_it_wins():
    config = config_of(["--preset", "lop-imagenet"]).validate()
    assert (config.dataset, config.task_schedule, config.num_tasks, config.n_repeats) == ("imagenet_28_gray", "cycle",
                                                                                          5000, 30)
    assert (config.n_train_per_class, config.n_test_per_class, config.batch_size, config.epochs) == (600, 100, 100, 250)
    assert config.steps_per_task == 3000
    assert (config.n_logs, config.log_steps[0], config.head_reset_to) == (10, 300, "zero")  # 10 snapshots, zeroed head
    assert (config.lr, config.momentum, config.out_dim, config.head, config.eval_tasks) == (0.01, 0.9, 2, "reset",
                                                                                            "current")
    config = config_of(["--num-tasks", "7", "--preset=lop-imagenet", "--head", "shared"])
    assert (config.num_tasks, config.head, config.momentum) == (7, "shared", 0.9)
    assert config_of([]).num_tasks == 5  # no preset: the defaults
    assert all(set(p) <= set(setting_specs()) for p in PRESETS.values())


def test_the_lop_preset_takes_its_100_test_images_from_the_training_split(tmp_path):
    # ImageNet-1k's validation split, prepared as the test arrays, holds 50 images a class: the
    # protocol's 600 + 100 images a class come from the class's training images (at least 732).
    import numpy as np

    from cljax.data import load_dataset
    from cljax.data.prepared import write_prepared
    from cljax.tasks import TaskData

    train_labels, test_labels = np.repeat(np.arange(4), 732), np.repeat(np.arange(4), 50)
    rng = np.random.default_rng(0)
    write_prepared(tmp_path / "imagenet", rng.integers(0, 256, (len(train_labels), 28, 28), dtype=np.uint8),
                   train_labels, rng.integers(0, 256, (len(test_labels), 28, 28), dtype=np.uint8), test_labels,
                   name="imagenet_28_gray", source="a stand-in of ImageNet's class sizes", preprocessing={})
    config = config_of(["--preset", "lop-imagenet", "--data-dir", str(tmp_path / "imagenet"), "--num-tasks", "2",
                        "--n-repeats", "1"]).validate()
    assert config.test_source == "train_holdout"
    TaskData(load_dataset(config), config)  # refused before: "class 0 has 50 test images"


def test_an_unknown_preset_is_one_line(tmp_path, capsys):
    rc = cli_main(["run", "--preset", "lop", "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "unknown preset 'lop'" in err and "lop-imagenet" in err
    assert not any(tmp_path.iterdir())


def test_an_abbreviated_preset_flag_is_refused_not_ignored(capsys):
    # --preset is read from argv before the parser exists; argparse took "--pres" as an
    # abbreviation, so the run parsed and ran without the preset's settings.
    with pytest.raises(SystemExit) as stopped:  # argparse's exit, as for any unknown flag
        cli_main(["plan", "--pres", "lop-imagenet"])
    assert stopped.value.code == 2 and "unrecognized arguments: --pres" in capsys.readouterr().err


def test_the_last_preset_flag_wins_as_for_any_flag(monkeypatch):
    monkeypatch.setitem(PRESETS, "short", dict(num_tasks=3))
    assert preset_from_argv(["--preset", "short", "--preset=lop-imagenet"]) == PRESETS["lop-imagenet"]
    assert preset_from_argv(["--preset=lop-imagenet", "--preset", "short"]) == PRESETS["short"]  # in argv's order
    assert config_of(["--preset", "lop-imagenet", "--preset", "short"]).num_tasks == 3


def test_a_preset_with_an_unknown_setting_is_refused_before_any_run(monkeypatch):
    monkeypatch.setitem(PRESETS, "typo", dict(num_task=3))
    with pytest.raises(CljaxError, match=r"the preset sets unknown setting\(s\) num_task: fix cljax/presets.py"):
        config_of(["--preset", "typo"])


def test_planning_the_lop_preset_before_imagenet_is_prepared_names_a_plan_that_needs_no_data(capsys):
    rc = cli_main(["plan", "--preset", "lop-imagenet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--data-dir is required for imagenet_28_gray" in err and "cljax prepare-imagenet" in err
    hint = "--dataset synthetic --synthetic-classes 1000"
    assert f"`{hint}` added" in err
    config = config_of(["--preset", "lop-imagenet", *hint.split()]).validate()  # the plan it names is a valid one
    assert (config.dataset, config.num_tasks, config.n_repeats, config.n_train_per_class) == ("synthetic", 5000, 30,
                                                                                              600)


def test_an_error_naming_a_value_the_preset_set_says_so(capsys):
    # "--log-frequency 300 is larger than a task's 2 steps" named a value the user never typed.
    flags = ["plan", "--preset", "lop-imagenet", "--dataset", "synthetic", "--synthetic-classes", "8", "--num-tasks",
             "4", "--n-repeats", "2", "--epochs", "1", "--n-train-per-class", "100", "--n-test-per-class", "20"]
    assert cli_main(flags) == 2
    err = capsys.readouterr().err
    assert err.endswith("lower it to at most 2 (--preset lop-imagenet sets --log-frequency 300; give the flag to "
                        "change it).\n") and err.count("\n") == 1, err
    assert cli_main([*flags, "--log-frequency", "500"]) == 2  # typed: nothing to add
    assert "--preset" not in capsys.readouterr().err


def test_the_preset_note_leaves_out_a_setting_a_sweep_s_grid_gives():
    from cljax.presets import preset_note

    line = "--lr must be at least 0.0, got -1.0."
    for grid in (["--grid", "lr=-1,0.1"], ["--grid=lr=-1,0.1"], ["--grid", "--lr=-1,0.1"]):
        assert preset_note(line, ["--preset", "lop-imagenet", *grid]) == line  # the grid's value, not the preset's
    assert preset_note(line, ["--preset", "lop-imagenet"]).endswith("(--preset lop-imagenet sets --lr 0.01; give the "
                                                                     "flag to change it).")
