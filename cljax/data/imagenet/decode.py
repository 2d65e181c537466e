"""One encoded image -> a 28x28 uint8 luma array: `image_to_gray`.

JPEGs are decoded at a reduced DCT scale and straight to luma (``Image.draft``), the EXIF
orientation is applied as ``datasets`` does when it decodes, the central square (side = the
short side) is area-averaged down to 28x28 (the same as "resize the short side to 28, then
centre-crop 28x28", without rounding the intermediate size), and the result is 8-bit ITU-R 601
luma, L = 0.299 R + 0.587 G + 0.114 B, as PIL's ``convert("L")``.
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np

from cljax.errors import CljaxError

SIZE = 28
RESAMPLE_FILTERS = ("area", "bilinear", "bicubic", "lanczos")
# The JPEG decoder may shrink by 1/2, 1/4 or 1/8 as long as the short side stays >= this many
# times the output size. Scaled IDCTs are not exact area averages: the larger this factor, the
# closer to a full-size decode, for little time lost (the entropy decoding, the same at every
# scale, dominates); docs/imagenet.md has the measurements.
DRAFT_FACTOR = 4
_EXIF_ORIENTATION = 0x0112


def image_to_gray(
    data: bytes | str | os.PathLike,
    size: int = SIZE,
    *,
    resample: str = "area",
    draft_factor: int = DRAFT_FACTOR,
) -> np.ndarray:
    """Decode one encoded image (bytes or a file path) to a (size, size) uint8 luma array.

    The central square of side min(width, height) is resampled to size x size, which equals
    resizing the short side to `size` and centre-cropping. `resample="area"` (the default)
    averages each output pixel's exact footprint, fractional edge pixels included; "bilinear",
    "bicubic" and "lanczos" use PIL's filters. JPEGs are decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) that keeps the short side >= draft_factor * size, and RGB JPEGs straight to
    their luma channel. Raises PIL's errors (UnidentifiedImageError, OSError, ValueError) on
    undecodable input.
    """
    from PIL import Image

    filt = _pil_filter(resample)
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else open(data, "rb")
    # PIL warns (two lines on stderr) of an image above MAX_IMAGE_PIXELS, when it opens or loads
    # it, and raises DecompressionBombError above twice that, which the caller reports; a large
    # photo in between is decoded like any other, without a word.
    quiet = warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning)
    with stream, quiet, Image.open(stream) as im:
        # The content's extent in decoded pixels: a JPEG decoded at 1/s is ceil(W/s) pixels
        # wide but holds W/s pixels of picture; centring on the integer size would shift the
        # crop by up to half a reduced pixel (s/2 original pixels).
        extent_w, extent_h = float(im.width), float(im.height)
        if im.format == "JPEG":
            # Asks for the Y channel of YCbCr JPEGs (skipping chroma) at a reduced scale; CMYK and
            # gray JPEGs keep their mode but still get the reduced scale.
            drafted = im.draft("L", (draft_factor * size, draft_factor * size))
            if drafted is not None:
                extent_w, extent_h = drafted[1][2], drafted[1][3]
        orientation = im.getexif().get(_EXIF_ORIENTATION)
        gray = _to_luma(im)
    side = min(extent_w, extent_h)
    if filt is None:
        pixels_hw = np.asarray(gray, dtype=np.float32)
        rows_i, rows_w = _area_taps(gray.height, (extent_h - side) / 2, side, size)
        cols_i, cols_w = _area_taps(gray.width, (extent_w - side) / 2, side, size)
        # Gathers and weighted sums over the few taps of each cell, not a dense matmul: BLAS
        # would spread a 28 x H x W product over threads, which is much slower on busy cores
        # (docs/imagenet.md).
        rows_sw = np.einsum("sk,skw->sw", rows_w, pixels_hw[rows_i])
        area_ss = np.einsum("tk,stk->st", cols_w, rows_sw[:, cols_i])
        small_hw = np.clip(np.rint(area_ss), 0, 255).astype(np.uint8)
    else:
        box = ((extent_w - side) / 2, (extent_h - side) / 2, (extent_w + side) / 2, (extent_h + side) / 2)
        # reducing_gap first shrinks by an integer box reduce: faster on big non-JPEG images.
        small_hw = np.asarray(gray.resize((size, size), filt, box=box, reducing_gap=3.0), dtype=np.uint8)
    # The centred square and its resampling are symmetric under flips and quarter turns, so the
    # EXIF orientation can be applied to the small result rather than the decoded image.
    for op in _ORIENTATION_OPS.get(orientation, ()):
        small_hw = op(small_hw)
    return np.ascontiguousarray(small_hw)


@functools.lru_cache(maxsize=4096)
def _area_taps(length: int, offset: float, side: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices and weights (both (size, K)) of an exact area average along one axis.

    Output cell i averages [offset + i*side/size, offset + (i+1)*side/size); pixel j covers
    [j, j+1) and weighs its overlap with the cell. (PIL's BOX filter instead counts whole
    pixels whose centres fall in a cell, which at the 2-8 pixels per cell left after the JPEG
    draft jitters the cell edges by up to half a pixel.) Unused taps have weight 0.
    """
    edges = offset + np.arange(size + 1) * (side / size)
    first = np.clip(np.floor(edges[:-1]).astype(np.int64), 0, length - 1)
    n_taps = int(np.max(np.ceil(edges[1:]) - np.floor(edges[:-1]))) + 1
    index = np.minimum(first[:, None] + np.arange(n_taps)[None, :], length - 1)
    overlap = np.minimum(edges[1:, None], index + 1.0) - np.maximum(edges[:-1, None], index.astype(np.float64))
    overlap[:, 1:][index[:, 1:] == index[:, :-1]] = 0.0  # taps clamped onto the last pixel count once
    weights = np.clip(overlap, 0.0, None)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    for a in (index, weights):
        a.setflags(write=False)  # shared by the cache
    return index, weights


def _to_luma(im):
    """Any PIL mode -> mode "L" (loads the pixels)."""
    from PIL import Image

    if im.mode == "L":
        im.load()
        return im
    if im.mode.startswith("I;16") or im.mode == "I" and im.format == "PNG":
        # 16-bit samples (older Pillow versions open a 16-bit gray PNG as "I"; a PNG holds at most
        # 16 bits a sample): PIL clips them to 255 when converting to L; scale the full range instead.
        wide = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("I", "F"):
        # 32-bit integers (a TIFF's) or floats have no range to scale by (0..1? 0..255? 0..65535?);
        # convert("L") clipped or zeroed them: refused, with the image named by the caller.
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise ValueError(f"{kind} pixels (PIL mode {im.mode}), whose range is not known: convert the image to 8 or 16 "
                         f"bits per sample")
    if im.mode == "HSV":
        return im.convert("RGB").convert("L")
    if im.mode == "LAB":
        # PIL cannot convert LAB to RGB without a colour profile; L* is the lightness.
        return Image.fromarray(np.asarray(im)[..., 0], mode="L")
    # RGB, RGBA/RGBX (alpha dropped, as convert("RGB") does), P/PA (via the palette), LA, 1,
    # CMYK (Adobe-inverted CMYK JPEGs are un-inverted by PIL's decoder), YCbCr.
    return im.convert("L")


def _pil_filter(resample: str):
    """None for "area" (done in numpy), else the PIL filter; CljaxError on an unknown name."""
    from PIL import Image

    filters = {
        "area": None,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
    }
    if resample not in filters:
        raise CljaxError(f"unknown resample filter {resample!r}: use one of {', '.join(RESAMPLE_FILTERS)}.")
    return filters[resample]


# EXIF orientation tag -> the array ops that turn the stored image upright (the table of
# PIL's ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
# clockwise, 7 transverse, 8 rotate 90 counter-clockwise), on (H, W) arrays.
_ORIENTATION_OPS = {
    2: (np.fliplr,),
    3: (lambda a: np.rot90(a, 2),),
    4: (np.flipud,),
    5: (np.transpose,),
    6: (lambda a: np.rot90(a, -1),),
    7: (lambda a: np.rot90(a, 2).T,),
    8: (np.rot90,),
}
