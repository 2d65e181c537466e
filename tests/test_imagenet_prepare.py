"""ImageNet preparation on a small source of real encoded images in the hub's parquet layout
(tests/imagenet_kit.py): shapes, labels, the crop and the luma against an independent numpy
reference, resume, workers and the other source kinds. Bad input and the command lines:
tests/test_imagenet_prepare_cli.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from PIL import Image, ImageOps

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.decode import image_to_gray
from cljax.data.imagenet.prepare import prepare_imagenet, prepare_main
from cljax.data.prepared import ARRAY_FILES, load_prepared
from cljax.errors import CljaxError

from tests.imagenet_kit import CLASS_NAMES, encode, module_fixtures, photo  # skips the module without datasets


source, prepared = module_fixtures()


# ---------------------------------------------------------------------------- reference


def _area_weights(length: int, offset: float, side: float, size: int) -> np.ndarray:
    """(size, length): output cell i averages [offset + i*side/size, offset + (i+1)*side/size)."""
    edges = offset + np.arange(size + 1) * side / size
    pixels = np.arange(length)
    overlap = np.clip(np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _reference_gray(blob: bytes, size: int = 28) -> np.ndarray:
    """Full-size RGB decode, numpy ITU-R 601 luma, exact area average of the central square."""
    rgb = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    height, width = luma.shape
    side = min(height, width)
    wy = _area_weights(height, (height - side) / 2, side, size)
    wx = _area_weights(width, (width - side) / 2, side, size)
    return wy @ luma @ wx.T


# ---------------------------------------------------------------------------- tests


def test_parquet_source_shapes_labels_and_classes(prepared, source):
    data = load_prepared(prepared, verify_checksums=True)
    assert data.train_images.shape == (11, 28, 28) and data.train_images.dtype == np.uint8
    assert data.test_images.shape == (5, 28, 28) and data.test_images.dtype == np.uint8
    assert data.train_labels.dtype == np.int32 and data.test_labels.dtype == np.int32
    np.testing.assert_array_equal(data.train_labels, source["train_labels"])
    np.testing.assert_array_equal(data.test_labels, source["val_labels"])
    assert data.class_names == tuple(CLASS_NAMES) and data.n_classes == 3
    assert data.meta["counts"] == {"train": [4, 4, 3], "test": [1, 2, 2]}
    assert data.meta["name"] == "imagenet_28_gray"
    assert data.meta["preprocessing"]["size"] == 28
    assert data.meta["preprocessing"]["splits"] == {"train": ["train"], "test": ["validation"]}
    # Shards were written to OUT.partial and it is gone once the folder is complete.
    assert not imagenet.work_dir_for(prepared).exists()


def test_crop_is_centred(prepared, source):
    data = load_prepared(prepared)
    wide = data.train_images[source["train_kinds"].index("pattern wide")]
    tall = data.train_images[source["train_kinds"].index("pattern tall")]
    # The wide image's central square is all white: any shift would bring in a black column.
    assert wide.min() == 255
    # The tall image's central square: black left half, white right half, rows all alike.
    assert tall[:, :14].max() == 0
    assert tall[:, 14:].min() == 255


def test_luma_matches_independent_numpy(prepared, source):
    data = load_prepared(prepared)
    for blob, kind, got in zip(source["train"], source["train_kinds"], data.train_images):
        expected = _reference_gray(blob)
        diff = np.abs(got.astype(np.float64) - expected)
        # Reduced-scale JPEG decoding (and the Y channel instead of luma of rounded RGB) costs a
        # little; PNGs decode exactly, so only the final rounding remains (64x48 is not reduced,
        # but its large max is JPEG chroma clipping: Y is not the luma of clipped RGB).
        limit_mean, limit_max = (0.5, 1.0) if "png" in kind else (0.6, 4.0)
        assert diff.mean() < limit_mean, (kind, diff.mean())
        assert diff.max() < limit_max, (kind, diff.max())
    for blob, got in zip(source["val"], data.test_images):
        assert np.abs(got - _reference_gray(blob)).mean() < 0.6


def test_datasets_reader_gives_the_same_arrays(prepared, source, tmp_path):
    # The hub path reads through datasets.load_dataset(..., streaming=True); so does this one,
    # on the local parquet files, and it must produce the very same folder.
    out = tmp_path / "via_datasets"
    prepare_imagenet(str(source["root"]), out, workers=1, reader="datasets", progress=False)
    for fname in ARRAY_FILES:
        assert (out / fname).read_bytes() == (prepared / fname).read_bytes(), fname
    assert json.loads((out / "meta.json").read_text())["class_names"] == CLASS_NAMES


def test_interrupted_run_resumes_to_identical_output(prepared, source, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = imagenet.process_shard
    calls = []

    def crash_on_third(*args, **kwargs):
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(imagenet, "process_shard", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_imagenet(str(source["root"]), out, workers=1, shard_rows=4, progress=False)
    monkeypatch.undo()
    work = imagenet.work_dir_for(out)
    assert not out.exists()
    assert sorted(p.stem for p in work.glob("*.npz")) == sorted(calls) == ["train-00000", "train-00001"]
    (work / ".train-00002.npz.tmp-99999").write_bytes(b"half a shard")  # as a kill mid-write leaves

    finished = (work / "train-00001.npz").read_bytes()
    (work / "train-00001.npz").write_bytes(finished[:100])  # a shard cut short: one line naming it, no traceback
    with pytest.raises(CljaxError, match=r"train-00001.npz is damaged .*delete it and rerun"):
        prepare_imagenet(str(source["root"]), out, workers=1, shard_rows=4, progress=False)
    (work / "train-00001.npz").write_bytes(finished)

    seen = []
    monkeypatch.setattr(imagenet, "process_shard", lambda *a, **k: seen.append(a[0].name) or real(*a, **k))
    prepare_imagenet(str(source["root"]), out, workers=1, shard_rows=4, progress=False)
    assert "train-00000" not in seen and "train-00001" not in seen  # finished shards were not redone
    for fname in (*ARRAY_FILES, "meta.json"):
        assert (out / fname).read_bytes() == (prepared / fname).read_bytes(), fname
    assert not work.exists()


def test_worker_pool_gives_identical_output(prepared, source, tmp_path):
    out = tmp_path / "pool"
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--workers", "2", "--shard-rows", "4", "--no-progress"]) == 0
    for fname in (*ARRAY_FILES, "meta.json"):
        assert (out / fname).read_bytes() == (prepared / fname).read_bytes(), fname


def test_image_folder_source(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    files = {}
    for split, n in (("train", 3), ("val", 2)):
        for c, name in enumerate(["ant", "bee"]):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                path = root / split / name / f"{i:02d}.jpg"
                path.write_bytes(encode(Image.fromarray(photo(rng, 40 + 10 * i, 70 - 5 * i)), "JPEG", quality=90))
                files.setdefault(split, []).append((path, c))
    (root / "train" / "bee" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert prepare_main(["--source", str(root), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    data = load_prepared(out)
    assert data.class_names == ("ant", "bee")
    assert data.train_images.shape == (6, 28, 28) and data.test_images.shape == (4, 28, 28)
    np.testing.assert_array_equal(data.train_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.test_labels, [0, 0, 1, 1])
    for (path, _), got in zip(files["train"] + files["val"], np.concatenate([data.train_images, data.test_images])):
        np.testing.assert_array_equal(got, image_to_gray(path.read_bytes()))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pil(orientation):
    # A 96x64 JPEG of four flat 16-aligned patches (exact in JPEG) with an orientation tag must
    # come out as PIL's exif_transpose of it (the upright view that datasets decodes).
    quadrants = np.zeros((64, 96), np.uint8)
    quadrants[:32, 48:], quadrants[32:, :48], quadrants[32:, 48:] = 80, 160, 240
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = encode(Image.fromarray(quadrants), "JPEG", quality=95, exif=exif.tobytes())
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(stored)))
    expected = image_to_gray(encode(upright, "PNG"))
    assert np.abs(image_to_gray(stored).astype(int) - expected).max() <= 2


def test_16bit_png_keeps_its_range():
    # 16-bit gray keeps its full range (PIL's convert("L") would clip it at 255).
    wide = Image.fromarray(np.full((30, 30), 32896, np.uint16))
    assert image_to_gray(encode(wide, "PNG")).tolist() == np.full((28, 28), 128).tolist()


def test_plain_parquet_with_dataset_card(tmp_path):
    # Parquet written without the `huggingface` schema metadata (plain pyarrow, binary image
    # column) next to a hub dataset card: the class names come from the card's ClassLabel.
    pa = pytest.importorskip("pyarrow", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(11)
    blobs = [encode(Image.fromarray(photo(rng, 60 + 7 * i, 90 - 5 * i)), "JPEG", quality=90) for i in range(6)]
    table = pa.table({"img": pa.array(blobs, pa.binary()), "label": pa.array([1, 0, 1, 0, 1, 0], pa.int64())})
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet", row_group_size=4)
    pq.write_table(table.slice(0, 2), tmp_path / "validation-00000-of-00001.parquet")
    (tmp_path / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: img\n    dtype: image\n  - name: label\n    dtype:\n"
        "      class_label:\n        names:\n          '0': tench, Tinca tinca\n          '1': goldfish, Carassius auratus\n"
        "---\n# card\n"
    )
    out = prepare_imagenet(str(tmp_path), tmp_path / "out", workers=1, progress=False)
    data = load_prepared(out)
    assert data.class_names == ("tench, Tinca tinca", "goldfish, Carassius auratus")
    assert data.meta["counts"] == {"train": [3, 3], "test": [1, 1]}
    np.testing.assert_array_equal(data.train_images, np.stack([image_to_gray(b) for b in blobs]))


