"""cljax.results' conventions on their own: task folders listed in task order past task_999,
weights flattened in sorted (jax.tree) order whatever order the model created them in, and
readers that refuse what they would misread."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from cljax import results
from cljax.errors import CljaxError, DamagedFile
from tests.lock_kit import lock_held_elsewhere


def test_task_folders_are_listed_in_task_order_past_999(tmp_path):
    for t in (1000, 2, 999, 10):
        (tmp_path / results.task_dir_name(t)).mkdir()
    (tmp_path / "task_12").mkdir()  # not a task folder name (fewer than three digits)
    (tmp_path / ".task_003.tmp").mkdir()  # a folder being written
    (tmp_path / "task_004").write_text("")  # not a folder
    (tmp_path / "task_\u0660\u0660\u0662").mkdir()  # Arabic-Indic digits: int() reads 2, a second task 2
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


def _folder_with_start_weights(run):
    start = results.weights_to_structured({"head": {"kernel": np.ones((2, 3, 1), np.float32)}}, lead=1)
    return results.write_folder(run, "task_000", {"start_weights": start}, {"metrics": {"a": np.zeros(2)}}, {})


def test_an_optional_file_its_folder_was_written_with_is_missing_not_absent(tmp_path):
    # A deleted start_weights.npy read as None, "a folder from before it existed", although
    # metadata.json lists it (model_state.npy's reader, the same: {} for a ResNet's lost state).
    task = _folder_with_start_weights(tmp_path)
    assert results.load_start_weights(task)["head"]["kernel"].shape == (2, 3, 1)
    (task / "start_weights.npy").unlink()
    with pytest.raises(DamagedFile, match=r"task_000/start_weights.npy is missing: restore it"):
        results.load_start_weights(task)
    meta = json.loads((task / "metadata.json").read_text())
    assert "model_state.npy" not in meta["files"] and results.load_model_state(task) == {}
    del meta["files"]["start_weights.npy"]  # a folder written before the file existed
    (task / "metadata.json").write_text(json.dumps(meta))
    assert results.load_start_weights(task) is None


def test_a_run_folder_or_a_results_root_passed_for_another_is_named(tmp_path):
    # load_metrics(run folder) said "metrics.pkl is missing: ... --repair, which trains the tasks
    # up to it again"; task_dirs of a task folder or of the results root returned [].
    run = tmp_path / "results" / "fashion_mnist" / "SL_T1"
    task = _folder_with_start_weights(run)
    with pytest.raises(DamagedFile, match=rf"{run}/metrics.pkl is missing: {run} is a run's folder, not a task "
                                          rf"folder: pass one of its task folders, e.g. {task} \(cljax.results"):
        results.load_metrics(run)
    with pytest.raises(CljaxError, match=rf"{task} is not a run's folder: task_000 is a task folder: pass its run's "
                                         rf"folder, {run}\.$"):
        results.task_dirs(task)
    with pytest.raises(CljaxError, match=rf"is not a run's folder: it holds runs: pass one of them, e.g. {run}\.$"):
        results.task_dirs(tmp_path / "results")
    (tmp_path / "new").mkdir()
    assert results.task_dirs(tmp_path / "new") == [] and results.task_dirs(run) == [task]


def test_a_file_missing_while_a_run_writes_the_folder_names_the_run(tmp_path):
    # A reader during `cljax run --overwrite` met folders half deleted, and was told to restore
    # them or --repair a run that was fine.
    task = _folder_with_start_weights(tmp_path)
    (task / "metrics.pkl").unlink()
    with lock_held_elsewhere(tmp_path) as holder:
        with pytest.raises(DamagedFile, match=rf"metrics.pkl is missing: a cljax run is writing {tmp_path} now "
                                              rf"\(process {holder.pid} on .+\) and may be replacing its task folders"):
            results.load_metrics(task)
    with pytest.raises(DamagedFile, match=r"metrics.pkl is missing: restore it from a copy"):
        results.load_metrics(task)
