"""The safe readers of the results tree (cljax/safe_files.py): every missing, empty, padded or
foreign file is one CljaxError naming it, and a pickle's globals are checked before any import."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cljax import results, safe_files
from cljax.errors import CljaxError, DamagedFile


def test_a_pickle_naming_a_numpy_scalar_name_in_another_module_is_refused_before_it_is_imported(tmp_path):
    # find_class imports the module it is given: only "numpy" may supply the scalar names.
    path = tmp_path / "metrics.pkl"
    path.write_bytes(b"cthis\nfloat64\n.")  # GLOBAL this.float64 (importing `this` prints the Zen of Python)
    had_this = "this" in sys.modules
    with pytest.raises(CljaxError, match=r"refusing to load this\.float64.*do not trust it"):
        safe_files.safe_load_pickle(path)
    assert ("this" in sys.modules) == had_this
    path.write_bytes(b"cnumpy\nfloat64\n.")  # the scalar type itself, from numpy: allowed
    assert safe_files.safe_load_pickle(path) is np.float64


def test_an_empty_or_missing_pickle_is_a_damaged_file_naming_it(tmp_path):
    task = tmp_path / "task_000"
    task.mkdir()
    (task / "metrics.pkl").write_bytes(b"")  # a write cut before its first byte: EOFError from pickle
    with pytest.raises(DamagedFile, match=r"metrics.pkl is truncated or damaged \(EOFError"):
        results.load_metrics(task)
    with pytest.raises(DamagedFile, match=r"expert_metrics.pkl is missing"):
        results.load_expert_metrics(task)
    with pytest.raises(DamagedFile, match=r"task_000/metadata.json is missing"):
        results.load_metadata(task)


def test_a_npy_longer_than_its_header_says_is_refused(tmp_path):
    task = tmp_path / "task_000"
    task.mkdir()
    path = task / "binary_labels.npy"
    np.save(path, np.zeros((2, 3), np.uint8))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0" * 8)  # what a folder written before hashes has no other check for
    with pytest.raises(DamagedFile, match=rf"binary_labels.npy is longer than its header says \({size + 8} bytes, "
                                          rf"{size} expected\)"):
        results.load_binary_labels(task)


def test_atomic_write_leaves_the_old_file_or_the_new_one_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    safe_files.atomic_write(path, lambda f: f.write(b"old"))
    assert path.read_bytes() == b"old"

    def cut(f):  # a disk that fills, or a stop, half way through
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        safe_files.atomic_write(path, cut)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    safe_files.atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_plot_that_fails_while_written_leaves_the_previous_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from cljax.analysis import plots

    path = tmp_path / "gap.png"
    plots.plot_plasticity_gap({"run": np.array([0.1, 0.2, 0.3])}, path)
    before = path.read_bytes()
    assert before[:8] == b"\x89PNG\r\n\x1a\n"

    def fails(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise KeyboardInterrupt  # a stop while the figure is written

    monkeypatch.setattr(Figure, "savefig", fails)
    with pytest.raises(KeyboardInterrupt):
        plots.plot_plasticity_gap({"run": np.array([0.3, 0.2, 0.1])}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["gap.png"]
