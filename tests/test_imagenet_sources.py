"""ImageNet preparation, the parts a small end-to-end source does not reach: the exact pixels of
the area average and of 16-bit images, how SOURCE folders are planned (class ids, split and file
names, class names from a card), and the refusals on a mixed-up source or a resume with other
settings."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.decode import image_to_gray
from cljax.data.imagenet.prepare import _parse_splits, prepare_imagenet, process_shard
from cljax.data.imagenet.shards import FilesShard
from cljax.data.imagenet.sources import plan_source
from cljax.data.prepared import load_prepared
from cljax.errors import CljaxError


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _folder(root, layout: dict[str, dict[str, int]], suffix: str = ".png"):
    """root/{split}/{class}/NN{suffix}: small gray PNGs, n per class."""
    rng = np.random.default_rng(5)
    for split, classes in layout.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                (root / split / name / f"{i:02d}{suffix}").write_bytes(_png(rng.integers(0, 256, (12, 16), dtype=np.uint8)))
    return root


def _labels(plan, split: str) -> list[int]:
    return [label for shard in plan.shards if shard.split == split for _, label in shard.files]


# ---- pixels -------------------------------------------------------------------------------------------------
def test_area_average_is_exact_to_the_last_row_and_column():
    # 84x56 (w x h): the central 56x56 square, each output pixel the mean of a 2x2 block.
    pixels = np.random.default_rng(0).integers(0, 256, (56, 84), dtype=np.uint8)
    square = pixels[:, 14:70].astype(np.float64)
    expected = np.rint(square.reshape(28, 2, 28, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(image_to_gray(_png(pixels)), expected)


def test_16bit_values_are_scaled_by_257():
    levels = [0, 1, 100, 127, 128, 200, 254, 255]
    got = [int(image_to_gray(_png(np.full((30, 30), 257 * v, np.uint16)))[0, 0]) for v in levels]
    assert got == levels
    # ... also where Pillow opens a 16-bit gray PNG as mode "I" (32-bit), as older versions do:
    # convert("L") clipped every value above 255 to white.
    from PIL import PngImagePlugin

    ramp = _png((np.arange(30 * 30).reshape(30, 30) * 72).astype(np.uint16))
    as_i16 = image_to_gray(ramp)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PngImagePlugin._MODES, (16, 0), ("I", "I;16B"))
        assert Image.open(io.BytesIO(ramp)).mode == "I"
        np.testing.assert_array_equal(image_to_gray(ramp), as_i16)
    assert as_i16.min() < 20 and as_i16.max() > 230


@pytest.mark.parametrize("dtype, kind", [(np.int32, "32-bit integer pixels (PIL mode I)"),
                                         (np.float32, "floating-point pixels (PIL mode F)")])
def test_images_of_32_bit_samples_are_refused_by_name(tmp_path, dtype, kind):
    # Their range is not known: convert("L") clipped them (I: 1000 and 60000 both white) or
    # zeroed them (F: 0.2 and 0.9 both black).
    pixels = np.full((30, 30), 1000 if dtype == np.int32 else 0.2, dtype)
    pixels[:, 15:] = 60000 if dtype == np.int32 else 0.9
    root = tmp_path / "src"
    (root / "ant").mkdir(parents=True)
    (root / "bee").mkdir()
    Image.fromarray(pixels).save(root / "ant" / "a.tif")
    (root / "bee" / "b.png").write_bytes(_png(np.zeros((30, 30), np.uint8)))
    with pytest.raises(CljaxError) as raised:
        prepare_imagenet(str(root), tmp_path / "out", workers=1, progress=False)
    assert str(raised.value) == (
        f"cannot decode the image at {root / 'ant' / 'a.tif'} (ValueError: {kind}, whose range is not known: convert "
        f"the image to 8 or 16 bits per sample): replace it with a readable image, or remove it, and rerun the same "
        f"command (the shards done before it are kept).")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF"])
def test_a_large_image_below_the_bomb_limit_is_decoded_without_a_warning(monkeypatch, fmt):
    # Between MAX_IMAGE_PIXELS and twice that PIL warned in two lines on stderr; above twice, its
    # DecompressionBombError is still raised (and reported by process_shard).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(buf, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_to_gray(buf.getvalue()).shape == (28, 28)
    buf = io.BytesIO()
    Image.fromarray(np.full((15, 15, 3), 90, np.uint8)).save(buf, fmt)
    with pytest.raises(Image.DecompressionBombError):
        image_to_gray(buf.getvalue())


# ---- planning -----------------------------------------------------------------------------------------------
def test_image_folder_class_ids_are_shared_by_the_splits(tmp_path):
    # The validation split lacks "bee": "cat" is class 2 there too, not 1 (both into train).
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1, "cat": 2}, "val": {"ant": 1, "cat": 1}})
    plan = plan_source(str(root), {"train": "train", "validation": "train"})
    assert plan.class_names == ("ant", "bee", "cat") and plan.n_classes == 3
    assert _labels(plan, "train") == [0, 1, 2, 2, 0, 2]


def test_a_class_with_images_in_one_split_only_is_refused(tmp_path):
    # It was taken silently: a class of no test (or no train) images, which `run` then failed on.
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1, "cat": 2}, "val": {"ant": 1, "cat": 1}})
    with pytest.raises(CljaxError, match=re.escape(
            f"{root / 'train' / 'bee'} has images but {root / 'val' / 'bee'} has none: each class needs images in both "
            f"the train and the test split (one without test images cannot be measured, one without train images "
            f"cannot be learnt): add them, remove the class from both splits, or prepare one split only (--splits "
            f"train).")):
        plan_source(str(root))
    (root / "val" / "bee").mkdir()  # a class folder with no image in it is none
    (root / "val" / "dog" / "x").mkdir(parents=True)
    (root / "val" / "dog" / "x" / "00.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (root / "val" / "eel").mkdir()
    (root / "val" / "eel" / "00.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    with pytest.raises(CljaxError, match=re.escape(f"{root / 'train' / 'bee'} has images but {root / 'val' / 'bee'} "
                                                   f"has none:")):
        plan_source(str(root))
    shutil.rmtree(root / "train" / "bee")
    with pytest.raises(CljaxError, match=re.escape(f"{root / 'val' / 'dog'} has images but {root / 'train' / 'dog'} "
                                                   f"has none (and 1 more class): ")):
        plan_source(str(root))
    # One split prepared: its classes only (a val-only class was a class of no train images).
    plan = plan_source(str(root), {"train": "train"})
    assert plan.class_names == ("ant", "cat") and _labels(plan, "train") == [0, 1, 1]


def test_image_folder_takes_upper_case_suffixes(tmp_path):
    root = _folder(tmp_path / "src", {"train": {"ant": 2, "bee": 1}}, suffix=".PNG")
    plan = plan_source(str(root))
    assert plan.expected_total == 3 and _labels(plan, "train") == [0, 0, 1]


def test_a_split_folder_of_images_without_class_folders_is_named_unlabelled(tmp_path):
    # As the official ILSVRC val archive unpacks: val/ILSVRC2012_val_00000001.JPEG, ... The note
    # said only that the source "has no 'validation' split", with 0 test images.
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}})
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    why = re.escape(f"{root / 'val'} holds images directly, not in class subfolders, so they have no labels: to use "
                    f"them as the test split, sort them into {root / 'val'}/<class>/ folders named as the train classes")
    plan = plan_source(str(root))
    assert [s.split for s in plan.shards] == ["train"] and len(plan.notes) == 1
    assert re.fullmatch(why + r"\. The test arrays will be empty \(--splits train leaves the split out without this "
                              r"note\)\.", plan.notes[0]), plan.notes
    with pytest.raises(CljaxError, match=why + "; or leave that split out with --splits"):
        plan_source(str(root), {"train": "train", "validation": "test"})
    # --splits val:test, the folder as spelt (docs/imagenet.md): the same refusal, where it said
    # the source "has no split 'val'" and suggested the spelling above
    with pytest.raises(CljaxError, match=why + "; or leave that split out with --splits"):
        plan_source(str(root), {"train": "train", "val": "test"})
    assert plan_source(str(root), {"train": "train"}).notes == ()


def test_loose_images_beside_class_folders_are_named_as_left_out(tmp_path):
    # They were left out without a word: a user who dropped images into train/ beside its
    # class folders heard nothing of them.
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}, "val": {"ant": 1, "bee": 1}})
    for name in ("a.png", "b.PNG"):
        (root / "train" / name).write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (root / "val" / "c.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (root / "train" / "notes.txt").write_text("not an image")
    plan = plan_source(str(root))
    assert _labels(plan, "train") == [0, 1] and _labels(plan, "test") == [0, 1]
    assert plan.notes == (
        f"{root / 'train'} holds 2 images directly, beside its class subfolders: they have no class and are left "
        f"out (move them into a class subfolder to use them).",
        f"{root / 'val'} holds 1 image directly, beside its class subfolders: it has no class and is left out (move "
        f"it into a class subfolder to use it).")
    assert len(plan_source(str(root), {"train": "train"}).notes) == 1  # a split left out is not looked at


def test_hidden_files_and_folders_in_class_folders_are_not_images(tmp_path):
    # rglob took macOS's AppleDouble stubs (._x.JPEG, not an image: the preparation failed on
    # it) and Jupyter's .ipynb_checkpoints copies (counted twice in their class).
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    (root / "train" / "ant" / "._00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "train" / "bee" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "bee" / ".ipynb_checkpoints" / "00-checkpoint.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (root / "train" / "bee" / "more" / ".cache").mkdir(parents=True)
    (root / "train" / "bee" / "more" / ".cache" / "x.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (root / "train" / "bee" / "more" / "y.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))  # not hidden: taken
    (root / "val" / "._c.png").write_bytes(b"AppleDouble")  # no "holds 1 image directly" note
    plan = plan_source(str(root))
    assert _labels(plan, "train") == [0, 1, 1, 1] and _labels(plan, "test") == [0, 1] and plan.notes == ()
    assert not any("/." in path for shard in plan.shards for path, _ in shard.files)


def test_a_test_folder_left_out_by_the_default_splits_is_named(tmp_path):
    # The note said only that there is no 'validation' split, not that test/ was passed over.
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}, "test": {"ant": 1, "bee": 1}})
    plan = plan_source(str(root))
    assert plan.notes == (f"{root} has no 'validation' split: the test arrays will be empty; {root / 'test'} is left "
                          f"out (`--splits train test` makes it the test arrays).",)
    assert _labels(plan_source(str(root), {"train": "train", "test": "test"}), "test") == [0, 1]


def test_a_source_without_a_train_split_is_refused_by_default(tmp_path):
    root = _folder(tmp_path / "src", {"val": {"ant": 1, "bee": 1}})
    with pytest.raises(CljaxError, match=r"has no split 'train' \(it has validation\); choose splits with --splits"):
        plan_source(str(root))
    plan = plan_source(str(root), {"validation": "test"})  # asked for explicitly
    assert _labels(plan, "test") == [0, 1] and _labels(plan, "train") == []


def test_parquet_files_of_two_exports_are_refused(tmp_path):
    for name in ("train-00000-of-00002", "train-00001-of-00002", "train-00000-of-00001"):
        (tmp_path / f"{name}.parquet").write_bytes(b"")
    with pytest.raises(CljaxError, match=r"incomplete set of train parquet files \(e.g. train-\*-of-00002.parquet is "
                                         r"missing or from another export\)"):
        plan_source(str(tmp_path))


def _plain_parquet(path, labels):
    pa = pytest.importorskip("pyarrow", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    import pyarrow.parquet as pq

    blobs = [_png(np.full((8, 8), 40 * i % 256, np.uint8)) for i in range(len(labels))]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": pa.array(labels, pa.int64())}), path)



def test_parquet_names_with_a_suffix_after_the_count_are_the_export_s(tmp_path):
    # Older `datasets` pushed files named {split}-NNNNN-of-NNNNN-{fingerprint}.parquet, which
    # datasets reads ("-of-NNNNN*.parquet"); they were "neither parquet files nor class folders".
    (tmp_path / "data").mkdir()
    for i, labels in enumerate(([0, 1], [1, 0])):
        _plain_parquet(tmp_path / "data" / f"train-0000{i}-of-00002-5b2b0e1ed5f1b7f6.parquet", labels)
    _plain_parquet(tmp_path / "data" / "validation-00000-of-00001-5b2b0e1ed5f1b7f6.parquet", [1, 0])
    plan = plan_source(str(tmp_path))
    assert [(s.split, s.source_split, s.path.rsplit("/", 1)[1][:20]) for s in plan.shards] == [
        ("train", "train", "train-00000-of-00002"), ("train", "train", "train-00001-of-00002"),
        ("test", "validation", "validation-00000-of-")]
    assert plan.expected_total == 6
    # Two files of one index (a second download, "(1)"), and a missing one, are named.
    (tmp_path / "data" / "train-00001-of-00002-5b2b0e1ed5f1b7f6 (1).parquet").write_bytes(b"")
    with pytest.raises(CljaxError, match=r"two train parquet files numbered 00001, train-00001-of-00002-5b2b0e1ed5f1b7f6 "
                                         r"\(1\).parquet and train-00001-of-00002-5b2b0e1ed5f1b7f6.parquet \(two exports"):
        plan_source(str(tmp_path))
    for f in (tmp_path / "data").glob("train-00001-*"):
        f.unlink()
    with pytest.raises(CljaxError, match=r"\(e.g. train-00001-of-00002\*.parquet is missing or from another export\)"):
        plan_source(str(tmp_path))


@pytest.mark.parametrize("reader", ["auto", "datasets"])
def test_parquet_files_named_otherwise_are_named(tmp_path, reader):
    (tmp_path / "data").mkdir()
    _plain_parquet(tmp_path / "data" / "train.parquet", [0, 1])
    with pytest.raises(CljaxError) as raised:
        plan_source(str(tmp_path), reader=reader)
    assert "(e.g. data/train.parquet)" in str(raised.value) or "otherwise (data/train.parquet)" in str(raised.value)
    assert "has none" not in str(raised.value) and "neither" not in str(raised.value)
    assert "e.g. data/train-00000-of-00001.parquet for a split in one file" in str(raised.value)

def _card(root, names: list[str], keys: list | None = None):
    """A hub card listing ``names`` under ``keys`` (default '0', '1', ...; a str key is quoted)."""
    keys = [str(i) for i in range(len(names))] if keys is None else keys
    lines = "".join(f"          {k!r}: {n}\n" if isinstance(k, str) else f"          {k}: {n}\n"
                    for k, n in zip(keys, names))
    (root / "README.md").write_text("---\ndataset_info:\n  features:\n  - name: label\n    dtype:\n      class_label:\n"
                                    f"        names:\n{lines}---\n")


def test_class_names_from_a_card_are_in_numeric_order(tmp_path):
    names = [f"class{i}" for i in range(12)]  # '10' and '11' sort before '2' as text
    _plain_parquet(tmp_path / "train-00000-of-00001.parquet", [11, *range(11)])
    _card(tmp_path, names)
    plan = plan_source(str(tmp_path))
    assert plan.class_names == tuple(names) and plan.n_classes == 12


def test_the_datasets_reader_takes_the_class_names_from_the_card_too(tmp_path):
    # It never read the card: a folder of parquet files without the hub's schema metadata was
    # prepared with classes '0', '1' (the default reader: the card's names), so the same files
    # made two datasets of different identity.
    pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    _plain_parquet(tmp_path / "train-00000-of-00001.parquet", [1, 0])
    _card(tmp_path, ["tench", "goldfish"])
    plan = plan_source(str(tmp_path), reader="datasets")
    assert plan.class_names == plan_source(str(tmp_path)).class_names == ("tench", "goldfish")


@pytest.mark.parametrize("keys, refused", [(["a", "b"], "['a', 'b']"), (["0", "2"], "['2']"), ([0, 1], None)])
def test_class_names_from_a_card_keyed_other_than_by_the_ids_are_refused(tmp_path, keys, refused):
    # Names keyed 'a', 'b' raised a bare ValueError (a traceback); ids with a gap shifted the names
    # against the labels. Keys YAML reads as integers are ids like quoted ones.
    _plain_parquet(tmp_path / "train-00000-of-00001.parquet", [0, 1])
    _card(tmp_path, ["name0", "name1"], keys)
    if refused is None:
        assert plan_source(str(tmp_path)).class_names == ("name0", "name1")
        return
    with pytest.raises(CljaxError, match=rf"README.md: the class_label names of its dataset_info are keyed "
                                         rf"{re.escape(refused)}, not by the class ids 0 .. 1: fix the card"):
        plan_source(str(tmp_path))


def test_parquet_files_with_other_class_names_are_refused(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")

    for i, names in enumerate((["cat", "dog"], ["dog", "cat"])):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        rows = {"image": [{"bytes": _png(np.zeros((8, 8), np.uint8)), "path": None}], "label": [0]}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / f"train-0000{i}-of-00002.parquet"))
    with pytest.raises(CljaxError, match=r"train-00001-of-00002.parquet lists other class names than the files before "
                                         r"it; the export is mixed up"):
        plan_source(str(tmp_path))


# ---- preparing ----------------------------------------------------------------------------------------------
def _hub_parquet(path, labels, names):
    """A parquet file with the hub's features metadata (an Image and a ClassLabel of `names`),
    written by pyarrow, so labels the ClassLabel would refuse can be stored."""
    pa = pytest.importorskip("pyarrow", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    import pyarrow.parquet as pq

    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(names)}}
    table = pa.table({"image": [{"bytes": _png(np.full((8, 8), 40 * i % 256, np.uint8)), "path": None}
                                for i in range(len(labels))], "label": pa.array(labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails a test in which an image is decoded."""
    monkeypatch.setattr(imagenet, "image_to_gray", lambda *a, **k: pytest.fail("an image was decoded"))


def test_a_label_past_the_class_names_is_refused_by_file_and_row_before_decoding(tmp_path, no_decoding):
    # It was found at the assembly, after every image was decoded, and named no file or row.
    _plain_parquet(tmp_path / "train-00000-of-00001.parquet", [0, 2, 1])
    _card(tmp_path, ["a", "b"])
    with pytest.raises(CljaxError, match=r"train-00000-of-00001.parquet row 1 has label 2 but only 2 class names; the "
                                         r"source is inconsistent: re-export it with each label the id of one of its "
                                         r"class names \(0 .. 1\), or with the names of all its classes.$"):
        prepare_imagenet(str(tmp_path), tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_label_past_the_class_names_read_by_datasets_is_refused_by_row(tmp_path, monkeypatch):
    pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    _hub_parquet(tmp_path / "train-00000-of-00001.parquet", [0, 1, 0, 2], ["a", "b"])
    decoded = []
    real = imagenet.image_to_gray
    monkeypatch.setattr(imagenet, "image_to_gray", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with pytest.raises(CljaxError, match=r"^local parquet \(datasets reader\) split 'train' shard 0 row 3 has label 2 "
                                         r"but only 2 class names; the source is inconsistent"):
        prepare_imagenet(str(tmp_path), tmp_path / "out", workers=1, progress=False, reader="datasets")
    assert len(decoded) == 3 and not (tmp_path / "out").exists()  # at its row, not after the last image


def test_a_named_class_without_images_in_a_split_is_refused_when_planned(tmp_path, no_decoding):
    # A ClassLabel of 6 names with train images of the even ids only (as after a filter()) was
    # prepared without a word; every run then refused the folder.
    names = [f"n{i}" for i in range(6)]
    (tmp_path / "data").mkdir()
    _hub_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [0, 2, 4, 2, 0, 4], names)
    _hub_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", list(range(6)), names)
    with pytest.raises(CljaxError) as raised:
        plan_source(str(tmp_path))
    assert str(raised.value) == (
        f"{tmp_path}: 3 of its 6 classes have no image in the train split (source split 'train'): class 1 (n1), "
        f"3 (n3), 5 (n5). A run needs images of every class in each split it reads (one without train images cannot "
        f"be learnt, one without test images cannot be measured): re-export the source with only the classes it has "
        f"images of (their names, and labels renumbered 0 .. n - 1), or add their images.")
    # A class with train images but none in the validation split: the train split alone is a fix.
    _hub_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", [0, 1, 2, 3, 4, 5, 5], names)
    _hub_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", [5, 4, 3, 2, 1, 2, 3, 4], names)
    with pytest.raises(CljaxError, match=r": 1 of its 6 classes have no image in the test split \(source split "
                                         r"'validation'\): class 0 \(n0\)\. .* or prepare the train split only "
                                         r"\(--splits train; a run then takes its test images from the train split, "
                                         r"--test-source train_holdout\)\.$"):
        plan_source(str(tmp_path))
    plan = plan_source(str(tmp_path), {"train": "train"})
    assert plan.n_classes == 6 and plan.expected_total == 7


def test_a_named_class_without_images_read_by_datasets_is_refused_at_the_assembly(tmp_path):
    pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    _hub_parquet(tmp_path / "train-00000-of-00001.parquet", [0, 2, 2, 0], ["a", "b", "c"])
    with pytest.raises(CljaxError, match=r": 1 of its 3 classes have no image in the train split \(source split "
                                         r"'train'\): class 1 \(b\)\. A run needs images of every class"):
        prepare_imagenet(str(tmp_path), tmp_path / "out", workers=1, progress=False, reader="datasets")
    assert not (tmp_path / "out").exists()


def test_a_shard_that_gives_other_rows_than_planned_is_refused(tmp_path):
    root = _folder(tmp_path / "src", {"train": {"ant": 2}})
    files = tuple((str(p), 0) for p in sorted((root / "train" / "ant").iterdir()))
    shard = FilesShard(name="train-00000", split="train", source_split="train", n_rows=3, files=files)
    with pytest.raises(CljaxError, match=r"shard train-00000 gave 2 images, its source said 3; the source changed"):
        process_shard(shard, str(tmp_path), 28, "area")
    assert not (tmp_path / "train-00000.npz").exists()


def test_a_resume_with_another_filter_is_refused(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}})
    _stopped_after_first_shard(root, tmp_path / "out", monkeypatch, shard_rows=1)
    with pytest.raises(CljaxError, match="holds work from a different preparation"):
        prepare_imagenet(str(root), tmp_path / "out", workers=1, shard_rows=1, resample="bilinear", progress=False)


def test_splits_without_an_output_go_to_train_or_test_by_name():
    assert _parse_splits(["train", "validation", "extra:train"]) == {"train": "train", "validation": "test",
                                                                      "extra": "train"}
    with pytest.raises(CljaxError, match="--splits entry 'val:dev' is invalid"):
        _parse_splits(["val:dev"])


def _stopped_after_first_shard(root, out, monkeypatch, shard_rows=2, **kwargs):
    """Prepare ``root`` into ``out``, ``shard_rows`` images per shard, stopped after the first shard."""
    real = imagenet.process_shard

    def crash_after_first(shard, *args, **kwargs):
        if shard.name != "train-00000":
            raise RuntimeError("simulated crash")
        return real(shard, *args, **kwargs)

    monkeypatch.setattr(imagenet, "process_shard", crash_after_first)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_imagenet(str(root), out, workers=1, shard_rows=shard_rows, progress=False, **kwargs)
    monkeypatch.undo()
    return imagenet.work_dir_for(out) / "train-00000.npz"


@pytest.mark.parametrize("damage, message", [
    (lambda images, labels: (images[:1], labels[:1]), r"holds labels of shape \[1\] int32 where its shard has 2 int32 labels"),
    (lambda images, labels: (images[:, :14, :14], labels), r"holds images of shape \[2, 14, 14\] uint8 where its shard has \[2, 28, 28\] uint8"),
])
def test_a_work_shard_of_other_rows_or_shape_than_planned_is_refused(tmp_path, monkeypatch, damage, message):
    # The assembly's arrays are np.empty: a shard file short of its plan's rows left their tail
    # uninitialised, and that was written (or blamed on the source as a wrong label).
    root = _folder(tmp_path / "src", {"train": {"ant": 2, "bee": 2}})
    shard_file = _stopped_after_first_shard(root, tmp_path / "out", monkeypatch)
    with np.load(shard_file) as z:
        (images, labels), stamp = damage(z["images"], z["labels"]), z["source_stamp"]
    np.savez(shard_file, images=images, labels=labels, source_stamp=stamp)  # its files unchanged: kept by a resume
    with pytest.raises(CljaxError, match=re.escape(str(shard_file)) + " " + message + r".*delete it and rerun"):
        prepare_imagenet(str(root), tmp_path / "out", workers=1, shard_rows=2, progress=False)
    assert not (tmp_path / "out").exists()
    shard_file.unlink()
    prepare_imagenet(str(root), tmp_path / "out", workers=1, shard_rows=2, progress=False)
    assert load_prepared(tmp_path / "out").train_labels.tolist() == [0, 0, 1, 1]


def test_gaps_in_a_large_label_are_found_without_a_range_of_every_id(tmp_path, monkeypatch):
    # The gap check made np.arange(top): a label of 2e9 without class names asked for 16 GB.
    import cljax.data.imagenet.assemble as assemble
    import cljax.data.imagenet.labels as labels

    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1, "cat": 1, "dog": 1}})
    real = imagenet.process_shard

    def labels_of_a_plain_export(shard, *args, **kwargs):  # as a parquet source without class names
        files = tuple((path, [0, 1, 2_000_000_000, 1][i]) for i, (path, _) in enumerate(shard.files))
        return real(dataclasses.replace(shard, files=files), *args, **kwargs)

    monkeypatch.setattr(imagenet, "process_shard", labels_of_a_plain_export)
    monkeypatch.setattr(imagenet, "plan_source", lambda *a, **k: dataclasses.replace(plan_source(*a, **k), class_names=None,
                                                                                      n_classes=None))

    class NumpyWithoutLargeRanges:  # numpy, as the assembly sees it, refusing a range of a million ids or more
        def __getattr__(self, attr):
            return getattr(np, attr)

        @staticmethod
        def arange(stop, *args, **kwargs):
            assert stop < 10**6, f"np.arange({stop}): a range of every class id"
            return np.arange(stop, *args, **kwargs)

    monkeypatch.setattr(assemble, "np", NumpyWithoutLargeRanges())
    monkeypatch.setattr(labels, "np", NumpyWithoutLargeRanges())  # the check of the classes
    with pytest.raises(CljaxError, match=r"has labels up to 2000000000 but no image of class 2, 3, 4, 5, 6 \.\.\. and "
                                         r"no class names"):
        prepare_imagenet(str(root), tmp_path / "out", workers=1, progress=False)


@pytest.mark.parametrize("labels, top, missing, first", [
    ([0, 5, 7, 7], 8, 5, [1, 2, 3, 4, 6]),
    ([1, 1], 2, 1, [0]),
    ([0, 2, 10], 11, 8, [1, 3, 4, 5, 6]),
    ([0, 1, 2], 3, 0, []),
])
def test_missing_class_ids_are_counted_and_the_first_named(labels, top, missing, first):
    from cljax.data.imagenet.labels import _missing_ids

    assert _missing_ids(np.array(labels, np.int32), top) == (missing, first)


def test_a_source_of_one_class_is_refused_before_anything_is_written(tmp_path, no_decoding):
    # The folder's reader refuses fewer than two classes: it was written, then refused; then it was
    # refused after every image was decoded, though an image folder's classes are known when planned.
    root = _folder(tmp_path / "src", {"train": {"ant": 2}})
    with pytest.raises(CljaxError, match=r"^\S+ has one class folder \(ant\) in the splits prepared; a task is a pair "
                                         r"of classes: give a source of two classes or more \(check --splits\)\.$"):
        prepare_imagenet(str(root), tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_parquet_source_of_one_class_is_refused_before_anything_is_written(tmp_path):
    # Without class names its classes are the labels found, known once its rows are read.
    _plain_parquet(tmp_path / "train-00000-of-00001.parquet", [0, 0])
    with pytest.raises(CljaxError, match=r"gave images of one class only; a task is a pair of classes"):
        prepare_imagenet(str(tmp_path), tmp_path / "out", workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_out_inside_an_image_folder_and_a_save_to_disk_folder_are_refused(tmp_path):
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}, "val": {"ant": 1, "bee": 1}})
    with pytest.raises(CljaxError, match=re.escape(f"--out {root / 'out'} is inside the image folder --source {root}:")):
        prepare_imagenet(str(root), root / "out", workers=1, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["train", "val"]
    # datasets' save_to_disk: "holds neither parquet files ... nor class subfolders" said nothing of it.
    saved = tmp_path / "saved"
    (saved / "train").mkdir(parents=True)
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (saved / "train" / "data-00000-of-00001.arrow").write_bytes(b"arrow")
    with pytest.raises(CljaxError, match=re.escape(f"{saved} is a folder written by datasets' save_to_disk (arrow "
                                                   f"files), which is not read: write each split as parquet")):
        plan_source(str(saved))


@pytest.mark.parametrize("asked", ["val", "validation"])
def test_an_image_folder_s_split_is_named_as_its_folder_is_spelt(tmp_path, asked):
    # `--splits train val:test` for DIR/val/ was refused: "has no split 'val' (it has train, validation)".
    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    plan = plan_source(str(root), {"train": "train", asked: "test"})
    assert [(s.split, s.source_split, s.n_rows) for s in plan.shards] == [("train", "train", 3), ("test", asked, 2)]
    with pytest.raises(CljaxError, match=re.escape(f"--splits names the folder {root / 'val'} 2 times (valid, validation): "
                                                   f"name each split once.")):
        plan_source(str(root), {"train": "train", "valid": "test", "validation": "test"})
    capital = _folder(tmp_path / "capital", {"train": {"ant": 1, "bee": 2}, "Val": {"ant": 1, "bee": 1}})
    assert [s.source_split for s in plan_source(str(capital), {"train": "train", "Val": "test"}).shards] == [
        "train", "Val"]  # as spelt on disk
    # Another case is no name of the folder: --splits TRAIN (which maps to test) took train/ as test images.
    with pytest.raises(CljaxError, match=re.escape("has no split 'TRAIN' (it has train, val)")):
        plan_source(str(root), {"TRAIN": "test", "val": "test"})


def test_the_readme_s_imagenet_run_fits_imagenet_s_smallest_class():
    """README's `cljax run` on the prepared ImageNet-1k and the lop-imagenet preset take no more
    images per class than its smallest class has (732 train, 50 validation): run's own check."""
    from cljax.data.prepared import ClassData
    from cljax.settings import Parser, add_settings_flags, config_from_args
    from cljax.tasks import TaskData

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("cljax run --dataset imagenet_28_gray"))
    train = np.repeat([0, 1], [732, 1300]).astype(np.int32)
    test = np.repeat([0, 1], 50).astype(np.int32)
    data = ClassData(np.zeros((len(train), 1, 1), np.uint8), train, np.zeros((len(test), 1, 1), np.uint8), test,
                     2, ("a", "b"), {})
    configs = []
    for argv in (line.split()[2:], ["--preset", "lop-imagenet"]):
        parser = Parser(prog="test")
        add_settings_flags(parser, argv)
        configs.append(config_from_args(parser.parse_args(argv)))
        TaskData(data, configs[-1])  # raises where a class has too few
    short = ClassData(data.train_images[33:], train[33:], data.test_images, test, 2, ("a", "b"), {})
    for config, need in zip(configs, (700, 700)):  # one image fewer than a run takes: refused
        with pytest.raises(CljaxError, match=f"class 0 has 699 training images, the fewest of any class, but {need} are needed"):
            TaskData(short, config)


def test_the_validation_split_a_source_has_now_is_found_as_the_default_splits_take_it(tmp_path):
    from cljax.data.imagenet.recorded import _validation_split_of

    root = _folder(tmp_path / "src", {"train": {"ant": 1, "bee": 1}})
    assert _validation_split_of(str(root)) is None
    (root / "Val").mkdir()
    (root / "Val" / "0001.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))  # unlabelled: left out by default
    assert _validation_split_of(str(root)) is None
    (root / "Val" / "ant").mkdir()
    assert _validation_split_of(str(root)) is None  # a class folder without images
    (root / "Val" / "ant" / "0001.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    assert _validation_split_of(str(root)) == "Val/"
    assert _validation_split_of("ILSVRC/imagenet-1k") is None  # a hub name: not asked
