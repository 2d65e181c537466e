"""The data on disk and the built-in loaders: the prepared folder (write, load, checksums,
identity), the loader contract, data-info's table and grid, the Fashion-MNIST IDX reader and the
synthetic generator. Every damaged input is one CljaxError naming it, never data taken as is."""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cljax.data import ClassData, check_class_data
from cljax.data.info import IDX_SAMPLES, data_info_main, describe, write_sample_grid
from cljax.data.prepared import (ARRAY_FILES, check_unchanged, data_identity, load_prepared, sha256_of,
                                  write_prepared)
from cljax.datasets.fashion_mnist import FILES, load_fashion_mnist, read_idx
from cljax.datasets.synthetic import SyntheticParams, load_synthetic, make_synthetic
from cljax.errors import CljaxError

LABELS = np.repeat(np.arange(4), 2)  # 8 images, 4 classes


def _prepared(tmp_path, name="data"):
    rng = np.random.default_rng(0)
    return write_prepared(tmp_path / name, rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), LABELS,
                          rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), LABELS[::-1], name="test", source="test",
                          preprocessing={}, n_classes=4)


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, **changes}))


# ---- the prepared folder ------------------------------------------------------------------------------------
def test_write_prepared_refuses_images_and_labels_of_other_counts(tmp_path):
    images = np.zeros((8, 28, 28), np.uint8)
    with pytest.raises(ValueError, match=r"test: images \(8, 28, 28\) and labels \(7,\) do not match"):
        write_prepared(tmp_path / "data", images, LABELS, images, LABELS[:7], name="t", source="t", preprocessing={})
    assert not (tmp_path / "data").exists()


def test_a_prepared_folder_is_memory_mapped_so_the_host_estimate_counts_none_of_it(tmp_path):
    # An ImageNet folder is 1.28M images: the run reads them from the page cache, and `cljax plan`
    # counts them in no host figure (cljax.budget.host_components, docs/scale.md).
    data = load_prepared(_prepared(tmp_path))
    assert all(isinstance(a, np.memmap) for a in (data.train_images, data.train_labels, data.test_images,
                                                   data.test_labels))


@pytest.mark.parametrize("fname", ARRAY_FILES)
def test_a_change_to_any_of_the_four_arrays_is_caught(tmp_path, fname):
    folder = _prepared(tmp_path)
    arr = np.load(folder / fname)
    np.save(folder / fname, 255 - arr if arr.dtype == np.uint8 else 3 - arr)  # shape, dtype, range kept
    data = load_prepared(folder)  # checksums are not read by default
    with pytest.raises(CljaxError, match=rf"{fname} does not match its checksum in meta.json: the dataset changed"):
        check_unchanged(data)
    with pytest.raises(CljaxError, match=rf"{fname} does not match its checksum in meta.json"):
        load_prepared(folder, verify_checksums=True)


def test_the_data_identity_covers_the_class_names(tmp_path):
    folder = _prepared(tmp_path)
    before = data_identity(load_prepared(folder))
    assert data_identity(load_prepared(folder)) == before
    _edit_meta(folder, class_names=["a", "b", "c", "d"])
    assert data_identity(load_prepared(folder)) != before


@pytest.mark.parametrize("changes, message", [
    # a count of a billion classes without names built a billion names (20+ GB); Infinity was an OverflowError
    ({"n_classes": 10**9, "class_names": None}, r"has n_classes 1000000000 and no class_names, more classes than the "
                                                r"folder's 16 images: the folder is damaged"),
    ({"n_classes": float("inf")}, r"has n_classes inf, not a count of classes"),
    ({"n_classes": 4.7}, r"has n_classes 4.7, not a count of classes"),  # was taken as 4
    ({"n_classes": "4"}, r"has n_classes '4', not a count"),
    ({"n_classes": True}, r"has n_classes True, not a count"),
    ({"n_classes": 0}, r"has n_classes 0, not a count"),
    # whole (an older prepare-imagenet wrote it), but of no use to a run: not called damaged
    ({"n_classes": 1, "class_names": ["a"]}, r"has one class, and a task is a pair of classes: prepare the folder "
                                             r"from a source of two classes or more\.$"),
    ({"format_version": True}, r"has format_version True, expected 1"),  # was taken as 1
    ({"format_version": 1.0}, r"has format_version 1.0, expected 1"),
    ({"class_names": "abcd"}, r"has class_names as a str, not a list of strings"),  # was split into characters
    ({"class_names": {"a": 0, "b": 1, "c": 2, "d": 3}}, r"has class_names as a dict, not a list"),  # gave its keys
    ({"class_names": ["a", "b", 3, "d"]}, r"has class_names as a list holding 3, not a list of strings"),
])
def test_a_damaged_class_count_or_names_in_meta_json_is_one_line(tmp_path, changes, message):
    folder = _prepared(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    if meta.get("class_names") is None:
        del meta["class_names"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CljaxError, match=re.escape(str(folder / "meta.json")) + " " + message):
        load_prepared(folder)


def test_a_class_count_without_names_gives_numbered_classes(tmp_path):
    folder = _prepared(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    del meta["class_names"]
    (folder / "meta.json").write_text(json.dumps(meta))
    assert load_prepared(folder).class_names == ("0", "1", "2", "3")


def _without(files: dict, fname: str, key: str) -> dict:
    return {**files, fname: {k: v for k, v in files[fname].items() if k != key}}


@pytest.mark.parametrize("edit, what", [
    (lambda files: None, r'no "files"'),
    (lambda files: [], r'"files" as a list'),
    (lambda files: {k: v for k, v in files.items() if k != "test_labels.npy"}, r"no entry for test_labels.npy"),
    (lambda files: {**files, "train_images.npy": {**files["train_images.npy"], "sha256": 5}},
     r'a malformed entry for train_images.npy: \{"shape": \[8, 28, 28\], "dtype": "uint8", "sha256": 5\}'),
    (lambda files: _without(files, "train_labels.npy", "sha256"), r"a malformed entry for train_labels.npy"),
    (lambda files: _without(files, "test_images.npy", "shape"), r"a malformed entry for test_images.npy"),
])
def test_a_meta_json_that_lost_its_checksums_is_refused(tmp_path, edit, what):
    """The checksums are the folder's identity: without them a resume took the identity from the
    contents and refused its own run as one "made on other data", and a sha256 that is not a
    string skipped the check before training, so changed arrays passed."""
    folder = _prepared(tmp_path)
    files = edit(json.loads((folder / "meta.json").read_text())["files"])
    meta = json.loads((folder / "meta.json").read_text())
    if files is None:
        del meta["files"]
    else:
        meta["files"] = files
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CljaxError, match=re.escape(str(folder / "meta.json")) + rf" lost its checksums \({what}.*\): "
                                         r"restore it, or prepare the folder again\.$"):
        load_prepared(folder)


def test_an_array_of_another_dtype_than_meta_json_says_is_damage(tmp_path):
    folder = _prepared(tmp_path)
    np.save(folder / "test_labels.npy", LABELS[::-1].astype(np.int64))  # same shape and values
    with pytest.raises(CljaxError, match=r"test_labels.npy has shape \[8\] int64, meta.json says \[8\] int32: the "
                                         r"folder is damaged"):
        load_prepared(folder)


@pytest.mark.parametrize("fname, array, message", [
    ("train_images.npy", np.zeros((8, 28, 28), np.float32), r"train_images.npy holds float32 of shape \[8, 28, 28\], "
                                                            r"not uint8 images"),
    ("test_labels.npy", LABELS[:7].astype(np.int32), r"test_labels.npy holds int32 of shape \[7\], not one integer "
                                                     r"label per image \(8\)"),
    ("train_labels.npy", np.r_[-1, LABELS[1:]].astype(np.int32), r"train_labels.npy holds labels from -1 to 3, "
                                                                 r"outside 0 \.\.\. 3"),
    ("test_labels.npy", np.r_[LABELS[:-1], 4].astype(np.int32), r"test_labels.npy holds labels from 0 to 4, outside "
                                                                r"0 \.\.\. 3"),
])
def test_a_damaged_array_is_one_line_naming_it(tmp_path, fname, array, message):
    # meta.json describing the damaged array as it is (as another tool might have written it): the
    # arrays' own checks
    folder = _prepared(tmp_path)
    np.save(folder / fname, array)
    files = json.loads((folder / "meta.json").read_text())["files"]
    _edit_meta(folder, files={**files, fname: {"shape": list(array.shape), "dtype": str(array.dtype),
                                               "sha256": sha256_of(folder / fname)}})
    with pytest.raises(CljaxError, match=message + r".*the folder is damaged"):
        load_prepared(folder)


def test_the_loader_contract_refuses_a_negative_label():
    rng = np.random.default_rng(0)
    good = ClassData(train_images=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), train_labels=np.arange(12) % 3,
                     test_images=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), test_labels=np.arange(6) % 3,
                     n_classes=3, class_names=("a", "b", "c"), meta={})
    check_class_data(good, "mine")
    with pytest.raises(CljaxError, match=r"^dataset 'mine': its loader gave train labels from -1 to 2 with n_classes = 3"):
        check_class_data(dataclasses.replace(good, train_labels=np.r_[np.arange(11) % 3, -1]), "mine")


# ---- data-info ----------------------------------------------------------------------------------------------
def _uneven() -> ClassData:
    # class 0: 3 train, 1 test; class 1: no train image, 2 test images (black)
    return ClassData(train_images=np.full((3, 8, 8), 200, np.uint8), train_labels=np.zeros(3, np.int32),
                     test_images=np.zeros((3, 8, 8), np.uint8), test_labels=np.array([0, 1, 1], np.int32),
                     n_classes=2, class_names=("zero", "one"), meta={"name": "uneven", "source": "here"})


def test_describe_lists_train_and_test_counts_per_class(tmp_path):
    lines = describe(_uneven(), tmp_path).splitlines()
    assert "train: 3 images, per class 0..3" in lines and "test: 3 images, per class 1..2" in lines
    assert [line.split() for line in lines[-2:]] == [["0", "3", "1", "zero"], ["1", "0", "2", "one"]]


def test_the_sample_grid_draws_a_class_without_train_images_from_the_test_split(tmp_path, monkeypatch):
    # Class 1 has no train image: its cell shows a black test image (the figure is white, class 0
    # gray), and its label says it is a test image (it read as the train images of the other rows).
    from matplotlib.axes import Axes

    labels = []
    set_ylabel = Axes.set_ylabel
    monkeypatch.setattr(Axes, "set_ylabel", lambda ax, text, **kw: labels.append(text) or set_ylabel(ax, text, **kw))
    png = write_sample_grid(_uneven(), tmp_path / "grid.png", per_class=1)
    assert labels == ["0: zero", "1: one (test)"]
    with Image.open(png) as im:
        gray = np.asarray(im.convert("L"))
    lower = gray[gray.shape[0] // 2:]  # class 1's row
    assert (lower < 30).sum() > 1000  # a drawn image, not a few pixels of its label


@pytest.mark.parametrize("per_class, title", [(2, "4 classes, 2 images each"),
                                              (3, "4 classes, up to 3 images each (fewer: all a class has)")])
def test_the_sample_grids_title_says_how_many_images_a_class_shows(tmp_path, monkeypatch, per_class, title):
    """Each class has 2 train images: a grid of 3 per class said '3 images each'."""
    from matplotlib.figure import Figure

    titles = []
    suptitle = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda fig, text, **kw: titles.append(text) or suptitle(fig, text, **kw))
    write_sample_grid(load_prepared(_prepared(tmp_path)), tmp_path / "grid.png", per_class=per_class)
    assert titles == [f"test: {title}"]


# ---- Fashion-MNIST IDX files ------------------------------------------------------------------------------
def _idx(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _fashion(tmp_path, train_labels=None, n_train_images=4) -> SimpleNamespace:
    folder = tmp_path / "fmnist"
    folder.mkdir()
    rng = np.random.default_rng(1)
    arrays = {"train_images": rng.integers(0, 256, (n_train_images, 28, 28), dtype=np.uint8),
              "train_labels": np.array([9, 0, 3, 7] if train_labels is None else train_labels, np.uint8),
              "test_images": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "test_labels": np.array([1, 8], np.uint8)}
    for key, stem in FILES.items():
        (folder / (stem + ".gz")).write_bytes(gzip.compress(_idx(arrays[key])))
    return SimpleNamespace(data_dir=str(folder), arrays=arrays)


def test_idx_files_are_read_exactly(tmp_path):
    config = _fashion(tmp_path)
    data = load_fashion_mnist(None, config)
    np.testing.assert_array_equal(data.train_images, config.arrays["train_images"])
    np.testing.assert_array_equal(data.test_images, config.arrays["test_images"])
    assert data.train_labels.tolist() == [9, 0, 3, 7] and data.test_labels.tolist() == [1, 8]
    assert data.train_labels.dtype == np.int32 and data.n_classes == 10 and data.class_names[9] == "Ankle boot"


def test_an_idx_label_equal_to_the_class_count_is_refused(tmp_path):
    with pytest.raises(CljaxError, match=r"train labels in .* go up to 10, past its 10 classes: the file is damaged"):
        load_fashion_mnist(None, _fashion(tmp_path, train_labels=[9, 0, 10, 7]))


def test_idx_images_and_labels_of_other_counts_are_refused(tmp_path):
    with pytest.raises(CljaxError, match=r"Fashion-MNIST train images and labels differ in count in .*fmnist: put good"):
        load_fashion_mnist(None, _fashion(tmp_path, n_train_images=5))


def test_an_idx_file_of_another_element_type_is_refused(tmp_path):
    path = tmp_path / "floats-idx1-ubyte"
    path.write_bytes(_idx(np.arange(4), type_code=0x0D))  # 0x0D: float32 elements, sized as uint8 here
    with pytest.raises(CljaxError, match="is not a uint8 IDX file"):
        read_idx(path)


# ---- synthetic ----------------------------------------------------------------------------------------------
def test_synthetic_images_are_generated_in_chunks_with_the_bytes_of_one_draw(monkeypatch):
    # The images are made a chunk at a time (the whole split's float temporaries took 8.7 GB for
    # lop-imagenet's 700k images); the noise is drawn in the same order, so the bytes do not depend
    # on the chunk, and are those the generator gave before it was chunked (pinned: a run records the
    # data's hash and a resume checks it).
    import hashlib

    import cljax.datasets.synthetic as synthetic

    whole = make_synthetic(5, 40, 10, seed=3, size=12, channels=3)
    digest = hashlib.sha256(whole.train_images.tobytes() + whole.test_images.tobytes()).hexdigest()
    assert digest == "f1f7f7326fab808f5eee0859573b15061c4b4b175dba546b46c1f5b545add4e7"
    monkeypatch.setattr(synthetic, "CHUNK_VALUES", 3 * 12 * 12 * 7)  # 7 images a chunk: 29 chunks, the last short
    chunked = make_synthetic(5, 40, 10, seed=3, size=12, channels=3)
    for k in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(chunked, k), getattr(whole, k))


def test_synthetic_test_images_are_not_copies_of_train_images():
    data = make_synthetic(3, 4, 4, size=8)
    assert data.train_images.shape == data.test_images.shape == (12, 8, 8)
    same = (data.test_images[:, None] == data.train_images[None]).all(axis=(2, 3))
    assert not same.any()


@pytest.mark.parametrize("test_source, n_train", [("test", 5), ("train_holdout", 8)])
def test_synthetic_holdout_draws_the_held_out_images_from_train(test_source, n_train):
    config = SimpleNamespace(n_train_per_class=5, n_test_per_class=3, test_source=test_source)
    data = load_synthetic(SyntheticParams(classes=3, size=8, channels=3), config)
    assert data.train_images.shape == (3 * n_train, 8, 8, 3) and data.test_images.shape == (9, 8, 8, 3)
    assert np.bincount(data.train_labels).tolist() == [n_train] * 3


def test_data_info_describes_a_folder_of_idx_files_and_draws_into_the_current_folder(tmp_path, monkeypatch, capsys):
    """Fashion-MNIST's own folder (a system package's, /usr/share/datasets/fashion-mnist) is
    described as it is, and its sample grid goes to the current folder, not beside the files."""
    config = _fashion(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in Path(config.data_dir).iterdir())
    assert data_info_main([config.data_dir]) == 0
    out = capsys.readouterr().out
    assert "dataset: fashion_mnist" in out and "train: 4 images, per class 0..1" in out
    assert "test: 2 images, per class 0..1" in out and out.rstrip().endswith(f"samples: {work / IDX_SAMPLES}")
    assert (work / IDX_SAMPLES).stat().st_size > 1000
    assert sorted(p.name for p in Path(config.data_dir).iterdir()) == before
