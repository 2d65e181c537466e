"""A small source of real encoded images in the Hugging Face hub's parquet layout, for the
ImageNet preparation tests (tests/test_imagenet_prepare.py, tests/test_imagenet_prepare_cli.py).
It needs the imagenet extra (`datasets`): a test module that imports this is skipped without it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cljax.data.imagenet.prepare import prepare_imagenet

# The imagenet extra (a GPU image may lack it; `make test` installs it).
datasets = pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["cat", "dog", "fox"]


def photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Photo-like RGB: a smooth random colour field plus pixel noise."""
    coarse = rng.uniform(0, 255, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float64)
    return np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _centre_white_wide() -> bytes:
    # 576x192: black 192-wide sides, white central square. Edges on 16-pixel boundaries, so the
    # JPEG blocks are uniform and decode exactly; any off-centre crop would pull black in.
    a = np.zeros((192, 576), np.uint8)
    a[:, 192:384] = 255
    return encode(Image.fromarray(a).convert("RGB"), "JPEG", quality=95)


def _centre_split_tall() -> bytes:
    # 192x576 (w x h): white top and bottom; central square black on the left, white on the right.
    a = np.full((576, 192), 255, np.uint8)
    a[192:384, :96] = 0
    return encode(Image.fromarray(a), "JPEG", quality=95)


def _train_images(rng) -> list[tuple[bytes, str]]:
    rgba = np.dstack([photo(rng, 60, 80), rng.integers(0, 256, (60, 80), dtype=np.uint8)])
    palette = Image.fromarray(photo(rng, 50, 70)).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return [
        (encode(Image.fromarray(photo(rng, 48, 64)), "JPEG", quality=90), "rgb 64x48"),
        (encode(Image.fromarray(photo(rng, 200, 300)), "JPEG", quality=90), "rgb 300x200"),
        (encode(Image.fromarray(photo(rng, 300, 200)), "JPEG", quality=90), "rgb 200x300"),
        (encode(Image.fromarray(photo(rng, 97, 131)[..., 0]), "JPEG", quality=90), "gray 131x97"),
        (encode(Image.fromarray(rgba, "RGBA"), "PNG"), "rgba png 80x60"),
        (encode(Image.fromarray(photo(rng, 90, 120)).convert("CMYK"), "JPEG", quality=90), "cmyk 120x90"),
        (encode(Image.fromarray(photo(rng, 375, 500)), "JPEG", quality=90), "rgb 500x375"),
        (_centre_white_wide(), "pattern wide"),
        (_centre_split_tall(), "pattern tall"),
        (encode(Image.fromarray(photo(rng, 500, 333)), "JPEG", quality=85), "rgb 333x500"),
        (encode(palette, "PNG"), "palette png 70x50"),
    ]



def write_parquet(path: Path, blobs: list[bytes], labels: list[int]) -> None:
    """One file of the hub's export, written by `datasets` itself (3 rows per row group)."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    rows = {"image": [{"bytes": b, "path": f"img{i}.jpg"} for i, b in enumerate(blobs)], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path), batch_size=3)


def hub_source(root: Path) -> dict:
    """data/train-0000{0,1}-of-00002.parquet, data/validation-00000-of-00001.parquet, data/test-...
    (unlabelled) under ``root``, and what was written into them."""
    datasets.disable_progress_bars()
    rng = np.random.default_rng(7)
    (root / "data").mkdir()
    train = _train_images(rng)
    train_labels = [i % 3 for i in range(len(train))]
    val = [encode(Image.fromarray(photo(rng, h, w)), "JPEG", quality=90) for h, w in [(120, 160), (160, 120), (64, 64), (90, 250)]]
    val.append(encode(Image.fromarray(photo(rng, 80, 100)[..., 1]), "JPEG", quality=90))
    val_labels = [2, 0, 1, 1, 2]
    write_parquet(root / "data" / "train-00000-of-00002.parquet", [b for b, _ in train[:7]], train_labels[:7])
    write_parquet(root / "data" / "train-00001-of-00002.parquet", [b for b, _ in train[7:]], train_labels[7:])
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", val, val_labels)
    # The hub's test split has no labels: ClassLabel -1.
    write_parquet(root / "data" / "test-00000-of-00001.parquet", val[:2], [-1, -1])
    return {
        "root": root,
        "train": [b for b, _ in train],
        "train_kinds": [k for _, k in train],
        "train_labels": train_labels,
        "val": val,
        "val_labels": val_labels,
    }


def module_fixtures():
    """The fixtures ``source`` (the hub-layout source, ``hub_source``) and ``prepared`` (it
    prepared into a folder), one of each per test module: ``source, prepared = module_fixtures()``."""

    @pytest.fixture(scope="module")
    def source(tmp_path_factory) -> dict:
        return hub_source(tmp_path_factory.mktemp("hub_export"))

    @pytest.fixture(scope="module")
    def prepared(source, tmp_path_factory) -> Path:
        out = tmp_path_factory.mktemp("prepared") / "imagenet28"
        prepare_imagenet(str(source["root"]), out, workers=1, shard_rows=4, progress=False)
        return out

    return source, prepared
