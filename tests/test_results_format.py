"""cljax.results' conventions on their own: task folders listed in task order past task_999,
weights flattened in sorted (jax.tree) order whatever order the model created them in, and
readers that refuse what they would misread."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from cljax import results
from cljax.errors import DamagedFile


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


def test_bfloat16_representations_round_trip_and_bare_uint16_bits_are_refused(tmp_path):
    reps = np.array([1.0, -2.5, 3.140625], np.float32).astype(ml_dtypes.bfloat16).reshape(1, 1, 1, 1, 3)
    on_disk, storage = results.representations_on_disk(reps)
    assert on_disk.dtype == np.uint16 and storage["dtype"] == "bfloat16"
    final = results.write_folder(tmp_path, "task_000", {"representations": on_disk}, {},
                                 {"representations_storage": storage})
    back = results.load_representations(final, as_float32=True)
    assert back.dtype == np.float32 and back.ravel().tolist() == [1.0, -2.5, 3.140625]
    meta = json.loads((final / "metadata.json").read_text())
    del meta["representations_storage"]  # uint16 bits without the record: other numbers if read as such
    (final / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedFile, match="does not record the bfloat16 storage"):
        results.load_representations(final)


def test_metadata_that_is_not_a_json_object_is_a_damaged_file(tmp_path):
    (tmp_path / "metadata.json").write_text("[1, 2]")
    with pytest.raises(DamagedFile, match="holds a JSON list, not the object cljax writes"):
        results.load_metadata(tmp_path)
