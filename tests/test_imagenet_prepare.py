"""ImageNet preparation on a small source of real encoded images in the hub's parquet layout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from PIL import Image, ImageOps

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.decode import image_to_gray
from cljax.data.imagenet.prepare import prepare_imagenet, prepare_main
from cljax.data.info import data_info_main
from cljax.data.prepared import ARRAY_FILES, SAMPLES, load_prepared
from cljax.errors import CljaxError

# The imagenet extra (a GPU image may lack it; `make test` installs it).
datasets = pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["cat", "dog", "fox"]


# ---------------------------------------------------------------------------- source builders


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Photo-like RGB: a smooth random colour field plus pixel noise."""
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float64)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _centre_white_wide() -> bytes:
    # 576x192: black 192-wide sides, white central square. Edges on 16-pixel boundaries, so the
    # JPEG blocks are uniform and decode exactly; any off-centre crop would pull black in.
    a = np.zeros((192, 576), np.uint8)
    a[:, 192:384] = 255
    return _encode(Image.fromarray(a).convert("RGB"), "JPEG", quality=95)


def _centre_split_tall() -> bytes:
    # 192x576 (w x h): white top and bottom; central square black on the left, white on the right.
    a = np.full((576, 192), 255, np.uint8)
    a[192:384, :96] = 0
    return _encode(Image.fromarray(a), "JPEG", quality=95)


def _train_images(rng) -> list[tuple[bytes, str]]:
    rgba = np.dstack([_photo(rng, 60, 80), rng.integers(0, 256, (60, 80), dtype=np.uint8)])
    palette = Image.fromarray(_photo(rng, 50, 70)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return [
        (_encode(Image.fromarray(_photo(rng, 48, 64)), "JPEG", quality=90), "rgb 64x48"),
        (_encode(Image.fromarray(_photo(rng, 200, 300)), "JPEG", quality=90), "rgb 300x200"),
        (_encode(Image.fromarray(_photo(rng, 300, 200)), "JPEG", quality=90), "rgb 200x300"),
        (_encode(Image.fromarray(_photo(rng, 97, 131)[..., 0]), "JPEG", quality=90), "gray 131x97"),
        (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), "rgba png 80x60"),
        (_encode(Image.fromarray(_photo(rng, 90, 120)).convert("CMYK"), "JPEG", quality=90), "cmyk 120x90"),
        (_encode(Image.fromarray(_photo(rng, 375, 500)), "JPEG", quality=90), "rgb 500x375"),
        (_centre_white_wide(), "pattern wide"),
        (_centre_split_tall(), "pattern tall"),
        (_encode(Image.fromarray(_photo(rng, 500, 333)), "JPEG", quality=85), "rgb 333x500"),
        (_encode(palette, "PNG"), "palette png 70x50"),
    ]


def _write_parquet(path: Path, blobs: list[bytes], labels: list[int]) -> None:
    """One file of the hub's export, written by `datasets` itself (3 rows per row group)."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    rows = {"image": [{"bytes": b, "path": f"img{i}.jpg"} for i, b in enumerate(blobs)], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path), batch_size=3)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    """data/train-0000{0,1}-of-00002.parquet, data/validation-00000-of-00001.parquet, data/test-... (unlabelled)."""
    datasets.disable_progress_bars()
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("hub_export")
    (root / "data").mkdir()
    train = _train_images(rng)
    train_labels = [i % 3 for i in range(len(train))]
    val = [_encode(Image.fromarray(_photo(rng, h, w)), "JPEG", quality=90) for h, w in [(120, 160), (160, 120), (64, 64), (90, 250)]]
    val.append(_encode(Image.fromarray(_photo(rng, 80, 100)[..., 1]), "JPEG", quality=90))
    val_labels = [2, 0, 1, 1, 2]
    _write_parquet(root / "data" / "train-00000-of-00002.parquet", [b for b, _ in train[:7]], train_labels[:7])
    _write_parquet(root / "data" / "train-00001-of-00002.parquet", [b for b, _ in train[7:]], train_labels[7:])
    _write_parquet(root / "data" / "validation-00000-of-00001.parquet", val, val_labels)
    # The hub's test split has no labels: ClassLabel -1.
    _write_parquet(root / "data" / "test-00000-of-00001.parquet", val[:2], [-1, -1])
    return {
        "root": root,
        "train": [b for b, _ in train],
        "train_kinds": [k for _, k in train],
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
    }


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "imagenet28"
    prepare_imagenet(str(source["root"]), out, workers=1, shard_rows=4, progress=False)
    return out


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
                path.write_bytes(_encode(Image.fromarray(_photo(rng, 40 + 10 * i, 70 - 5 * i)), "JPEG", quality=90))
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
    stored = _encode(Image.fromarray(quadrants), "JPEG", quality=95, exif=exif.tobytes())
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(stored)))
    expected = image_to_gray(_encode(upright, "PNG"))
    assert np.abs(image_to_gray(stored).astype(int) - expected).max() <= 2


def test_16bit_png_keeps_its_range():
    # 16-bit gray keeps its full range (PIL's convert("L") would clip it at 255).
    wide = Image.fromarray(np.full((30, 30), 32896, np.uint16))
    assert image_to_gray(_encode(wide, "PNG")).tolist() == np.full((28, 28), 128).tolist()


def test_plain_parquet_with_dataset_card(tmp_path):
    # Parquet written without the `huggingface` schema metadata (plain pyarrow, binary image
    # column) next to a hub dataset card: the class names come from the card's ClassLabel.
    pa = pytest.importorskip("pyarrow", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    import pyarrow.parquet as pq

    rng = np.random.default_rng(11)
    blobs = [_encode(Image.fromarray(_photo(rng, 60 + 7 * i, 90 - 5 * i)), "JPEG", quality=90) for i in range(6)]
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


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_give_one_clear_line(source, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert prepare_main(["--source", str(missing), "--out", str(tmp_path / "o1")]) == 2
    assert str(missing) in _one_error_line(capsys)

    empty = tmp_path / "empty_src"
    empty.mkdir()
    assert prepare_main(["--source", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert "parquet" in _one_error_line(capsys)
    # "" was the current folder: --source read it as an image folder, --out crashed
    assert prepare_main(["--source", "", "--out", str(tmp_path / "o5")]) == 2
    assert "--source is empty" in _one_error_line(capsys) and not (tmp_path / "o5").exists()
    assert prepare_main(["--source", str(empty), "--out", " "]) == 2
    assert "--out is empty" in _one_error_line(capsys)
    for flags in (["--source", str(empty), "--out", str(tmp_path / "o6"), "--resample", "foo"], []):
        with pytest.raises(SystemExit) as exc:  # a bad flag: one line, as in the other commands
            prepare_main(flags)
        assert exc.value.code == 2 and "(see `prepare-imagenet --help`)" in _one_error_line(capsys)

    garbage = tmp_path / "garbage" / "data"
    garbage.mkdir(parents=True)
    (garbage / "train-00000-of-00001.parquet").write_bytes(b"this is not parquet")
    assert prepare_main(["--source", str(garbage.parent), "--out", str(tmp_path / "o3")]) == 2
    assert "train-00000-of-00001.parquet" in _one_error_line(capsys)

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-00001-of-00002.parquet").write_bytes((source["root"] / "data" / "train-00001-of-00002.parquet").read_bytes())
    assert prepare_main(["--source", str(incomplete), "--out", str(tmp_path / "o4")]) == 2
    assert "train-00000-of-00002.parquet" in _one_error_line(capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    _write_parquet(broken / "train-00000-of-00001.parquet", [source["train"][0], b"\xff\xd8 not a jpeg"], [0, 1])
    args = ["--source", str(broken), "--out", str(tmp_path / "o5"), "--splits", "train", "--workers", "1", "--no-progress"]
    assert prepare_main(args) == 2
    line = _one_error_line(capsys)
    assert "train-00000-of-00001.parquet row 1" in line and "not a known image format" in line

    # The hub's unlabelled test split asked for explicitly.
    assert prepare_main(["--source", str(source["root"]), "--out", str(tmp_path / "o6"), "--splits", "test", "--no-progress"]) == 2
    assert "label -1" in _one_error_line(capsys)

    # A split the source does not have.
    assert prepare_main(["--source", str(source["root"]), "--out", str(tmp_path / "o7"), "--splits", "train", "val:test"]) == 2
    assert "no split 'val'" in _one_error_line(capsys)

    # An unrelated folder as --out is never overwritten.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "thesis.tex").write_text("precious")
    assert prepare_main(["--source", str(source["root"]), "--out", str(taken), "--overwrite"]) == 2
    assert "not a prepared dataset" in _one_error_line(capsys)
    assert (taken / "thesis.tex").read_text() == "precious"
    # ... nor one that only has a meta.json beside its own files (it was deleted whole before).
    (taken / "meta.json").write_text('{"foo": 1}')
    for extra in ([], ["--overwrite"]):
        assert prepare_main(["--source", str(source["root"]), "--out", str(taken), "--no-progress", *extra]) == 2
        assert "holds files that are not a prepared dataset's (thesis.tex)" in _one_error_line(capsys)
        assert (taken / "thesis.tex").read_text() == "precious"


def test_complete_output_is_kept_and_overwrite_redoes_it(source, prepared, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for fname in (*ARRAY_FILES, "meta.json"):
        (out / fname).write_bytes((prepared / fname).read_bytes())
    assert prepare_main(["--source", str(source["root"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "already prepared" in captured.out and "--overwrite" in captured.out and captured.err == ""
    # "Nothing to do" only for the data it prepared: a changed array is named, with the fix that works.
    images = np.load(out / "train_images.npy")
    np.save(out / "train_images.npy", 255 - images)
    assert prepare_main(["--source", str(source["root"]), "--out", str(out)]) == 2
    assert "train_images.npy does not match its checksum in meta.json. Pass --overwrite" in _one_error_line(capsys)
    (out / SAMPLES).write_bytes(b"drawn by data-info")  # cljax's own file does not block --overwrite
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--overwrite", "--workers", "1",
                         "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "train_images.npy").read_bytes() == (prepared / "train_images.npy").read_bytes()

    # A damaged folder of ours (an array missing) is prepared again without --overwrite.
    (out / "test_images.npy").unlink()
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "test_images.npy").read_bytes() == (prepared / "test_images.npy").read_bytes()

    # A work folder left by another preparation (other splits, say) is never mixed in.
    fresh = tmp_path / "fresh"
    stale = imagenet.work_dir_for(fresh)
    stale.mkdir()
    (stale / "plan.json").write_text(json.dumps({"fingerprint": "another run"}))
    (stale / "train-00000.npz").write_bytes(b"not ours")
    assert prepare_main(["--source", str(source["root"]), "--out", str(fresh), "--no-progress"]) == 2
    assert "different preparation" in _one_error_line(capsys)
    assert prepare_main(["--source", str(source["root"]), "--out", str(fresh), "--overwrite", "--workers", "1", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(load_prepared(fresh).train_images, load_prepared(prepared).train_images)


def test_top_level_script_reports_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "prepare_imagenet.py"), "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_data_info_prints_counts_and_writes_png(prepared, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert data_info_main([str(prepared), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "classes: 3" in out and "train: 11 images, per class 3..4" in out and "test: 5 images, per class 1..2" in out
    assert "dog" in out and str(png) in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
        # Something was drawn: the grid is not one flat colour.
        assert np.asarray(im.convert("L")).std() > 10

    assert data_info_main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_hub_name_offline_gives_one_line(tmp_path):
    # A hub name goes through datasets.load_dataset(name, streaming=True); offline it must fail
    # with one line that says what to do, not a traceback.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, str(REPO / "prepare_imagenet.py"), "--source", "nobody-here/no-such-imagenet", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=env,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nobody-here/no-such-imagenet" in errors[0] and "unreachable" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
