"""Cells near chance: a mean +- std over repeats hides repeats that split in two (some learn every
task, others sit at chance), so the analysis counts the cells and says which repeats they are in."""

import pickle

import numpy as np

from cljax.analysis import analyze_run
from cljax.analysis.chance import NEAR_CHANCE, near_chance, near_chance_plot_note, near_chance_text
from cljax.analysis.summary_text import format_summary
from tests.test_analysis_driver import write_fake_run
from tests.test_analysis_expert import collapse_one_expert


def set_learner_last(algo, task, repeat, value):
    """The learner's last snapshot on its own task (R[task, task] of one repeat), saved in float32."""
    path = algo / f"task_{task:03d}" / "metrics.pkl"
    metrics = pickle.loads(path.read_bytes())
    metrics["test_acc"][-1, repeat, task] = np.float32(value)
    path.write_bytes(pickle.dumps(metrics, protocol=4))


def test_the_cells_near_chance_are_counted_by_repeat_and_printed(tmp_path):
    algo = tmp_path / "run"
    write_fake_run(algo)  # 2 repeats x 3 tasks; every learner and expert cell ends at 0.85 or more
    set_learner_last(algo, 1, 0, 0.55)  # 0.55 in float32 reads 0.550000011920929: near chance still
    set_learner_last(algo, 2, 0, 0.5)
    set_learner_last(algo, 0, 1, 0.5505)  # above the threshold by half an image in 1000: not near
    collapse_one_expert(algo, task=0, repeat=1, snapshots=(0.97, 0.52))
    s = analyze_run(algo, glue=False, make_plots=False)
    entry = s["near_chance"]
    assert entry["threshold"] == NEAR_CHANCE == 0.55
    assert entry["learner"] == {"n_cells": 6, "n_near_chance": 2, "n_nonfinite": 0, "per_repeat": [2, 0],
                                "tasks_per_repeat": [3, 3]}
    assert entry["expert"] == {"n_cells": 6, "n_near_chance": 1, "n_nonfinite": 0, "per_repeat": [0, 1],
                               "tasks_per_repeat": [3, 3]}
    line = ("near chance (current task <= 0.55 at its end; 0.5 is chance): learner 2 of 6 (repeat, task) cells, "
            "expert 1 of 6; the learner's share of its tasks, by repeat: 67%, 0% (more than half in 1 of 2 repeats)")
    assert line in format_summary(s).splitlines()
    assert near_chance_plot_note(entry) == ("learner near chance (<= 0.55) in 2 of 6 cells; on more than half its "
                                            "tasks in 1 of 2 repeats")


def test_no_line_when_no_cell_is_near_chance_and_nonfinite_cells_are_left_out():
    learner = np.array([[0.9, np.nan, 0.8], [0.7, 0.8, 0.9]])
    entry = near_chance(learner, np.full((2, 3), 0.9))
    assert entry["learner"] == {"n_cells": 5, "n_near_chance": 0, "n_nonfinite": 1, "per_repeat": [0, 0],
                                "tasks_per_repeat": [2, 3]}
    assert near_chance_text(entry) is None and near_chance_plot_note(entry) is None
    only_expert = near_chance(learner, np.array([[0.5, 0.9, 0.9], [0.9, 0.9, 0.9]]))
    assert near_chance_text(only_expert).endswith("learner 0 of 5 (repeat, task) cells, expert 1 of 6")
    assert near_chance_plot_note(only_expert) is None  # the plot's note is about the learner's curve


def test_many_repeats_give_the_spread_of_the_shares_not_each_one():
    # 16 repeats of 4 tasks: 12 at chance on every task, 4 on none (the split of docs/plasticity.md's
    # plain backprop, 12 of 16 repeats stopped learning), as the mean 0.6 +- 0.18 does not show.
    learner = np.vstack([np.full((12, 4), 0.5), np.full((4, 4), 0.9)])
    text = near_chance_text(near_chance(learner, np.full((16, 4), 0.9)))
    assert text.endswith("learner 48 of 64 (repeat, task) cells, expert 0 of 64; the learner's share of its tasks "
                         "per repeat: min 0%, median 100%, max 100% (more than half in 12 of 16 repeats)")
