"""cljax.results' conventions on their own: task folders listed in task order past task_999,
and weights flattened in sorted (jax.tree) order whatever order the model created them in."""

import jax
import numpy as np

from cljax import results


def test_task_folders_are_listed_in_task_order_past_999(tmp_path):
    for t in (1000, 2, 999, 10):
        (tmp_path / results.task_dir_name(t)).mkdir()
    (tmp_path / "task_12").mkdir()  # not a task folder name (fewer than three digits)
    (tmp_path / ".task_003.tmp").mkdir()  # a folder being written
    (tmp_path / "task_004").write_text("")  # not a folder
    assert [p.name for p in results.task_dirs(tmp_path)] == ["task_002", "task_010", "task_999", "task_1000"]
    assert results.task_dir_name(1000) == "task_1000"


def test_weights_are_flattened_in_sorted_order_whatever_the_creation_order():
    """Flax keeps the creation order (conv before dense, kernel before bias); weights.npy's
    fields follow jax.tree's sorted order, the order the docs give."""
    params = {"head": {"kernel": np.ones((2, 1)), "bias": np.zeros(1)}, "conv1": {"kernel": np.ones((3,))}}
    flat = results.flatten_params(params)
    assert list(flat) == ["conv1/kernel", "head/bias", "head/kernel"]
    leaves = jax.tree.leaves(params)
    assert all(np.array_equal(a, b) for a, b in zip(flat.values(), leaves))
