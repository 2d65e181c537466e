"""A deterministic synthetic dataset with any number of classes, image size and channel count,
for scale tests, benchmarks and models that need colour (never a real result).

Each class is a fixed random smooth prototype (a coarse grid of Gaussian values, upsampled 4x);
an image is its prototype shifted by up to two pixels (circularly) plus pixel noise, so classes
are learnable but not trivially. ``--synthetic-size`` must be a multiple of 4. With one channel
the images are (N, size, size), else (N, size, size, channels). The images are a function of the
dataset's own settings and of the images per class (train, and test with ``--test-source
train_holdout``), never of ``--seed``: runs with other seeds draw other pairs and samples of the
same images, as they would from a real dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cljax.data.prepared import ClassData
from cljax.errors import CljaxError
from cljax.registry import param, register_dataset


@dataclass(frozen=True)
class SyntheticParams:
    classes: int = param(20, "number of classes of the synthetic dataset", min=2)
    size: int = param(28, "synthetic: image height and width in pixels (a multiple of 4)", min=4)
    channels: int = param(1, "synthetic: image channels, any count (1: gray, images (N, H, W); C > 1: (N, H, W, C), "
                          "3 for colour)", min=1)


CHUNK_VALUES = 1 << 22  # pixel values generated at once (64 MiB of temporaries)


def _images_per_chunk(pixels: int) -> int:
    """Images generated at once: CHUNK_VALUES values, and at least one image."""
    return max(1, CHUNK_VALUES // pixels)


def make_synthetic(n_classes: int, n_train_per_class: int, n_test_per_class: int, seed: int = 1234, size: int = 28,
                   channels: int = 1) -> ClassData:
    if size % 4:
        raise CljaxError(f"--synthetic-size {size} must be a multiple of 4: use {size // 4 * 4 or 4} or "
                         f"{size // 4 * 4 + 4} (--model cnn, the default, needs at least 28).")
    _check_memory(n_classes * (n_train_per_class + n_test_per_class), size * size * channels)
    rng = np.random.default_rng(seed)
    coarse_shape = (n_classes, size // 4, size // 4) + ((channels,) if channels > 1 else ())
    coarse = rng.normal(size=coarse_shape).astype(np.float32)
    upsample = np.ones((4, 4) + ((1,) if channels > 1 else ()), np.float32)
    protos = np.kron(coarse, upsample)  # (C, size, size[, channels]) smooth blobs

    def split(n_per: int, split_seed: int):
        r = np.random.default_rng(seed + split_seed)
        labels = np.repeat(np.arange(n_classes, dtype=np.int32), n_per)
        shifts = r.integers(-2, 3, size=(labels.size, 2))
        rows = (np.arange(size)[None, :] - shifts[:, :1]) % size  # np.roll by dy, vectorised
        cols = (np.arange(size)[None, :] - shifts[:, 1:]) % size
        out = np.empty((labels.size, *protos.shape[1:]), np.uint8)
        # In chunks of images: the float32 images and their float64 noise exist for one chunk at a
        # time, not for the whole split (16 bytes a value: 8.7 GB for lop-imagenet's 700k images).
        # The noise stream is drawn in the same order, so the bytes are those of one draw.
        step = _images_per_chunk(int(np.prod(protos.shape[1:])))
        for a in range(0, labels.size, step):
            b = min(a + step, labels.size)
            imgs = protos[labels[a:b, None, None], rows[a:b, :, None], cols[a:b, None, :]]
            imgs += r.normal(scale=0.8, size=imgs.shape).astype(np.float32)
            out[a:b] = np.clip(128 + 40 * imgs, 0, 255).astype(np.uint8)
        return out, labels

    train_images, train_labels = split(n_train_per_class, 1)
    test_images, test_labels = split(n_test_per_class, 2)
    return ClassData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        n_classes=n_classes,
        class_names=tuple(f"synthetic_{c}" for c in range(n_classes)),
        meta={"name": "synthetic", "source": f"generator seed {seed}"},
    )


def _check_memory(n_images: int, pixels: int) -> None:
    """Refuse, before allocating, a dataset the host cannot hold: the uint8 images, and one chunk's
    float32 images, float64 noise and its float32 copy (16 bytes a value) while generating."""
    from cljax.devices.memory import host_available_bytes
    from cljax.units import fmt_bytes

    chunk = min(_images_per_chunk(pixels), n_images) * pixels
    need, free = n_images * pixels + 16 * chunk, host_available_bytes()
    if need > free:
        raise CljaxError(f"the synthetic dataset ({n_images:,} images of {pixels:,} values) needs about {fmt_bytes(need)} "
                         f"of memory to generate, {fmt_bytes(free)} are available: lower --synthetic-classes, "
                         f"--synthetic-size or the images per class.")


@register_dataset("synthetic", params=SyntheticParams, prefix="synthetic", data_dir="none (generated)",
                  ignores=("data_dir",))  # made, not read
def load_synthetic(params: SyntheticParams, config) -> ClassData:
    """Synthetic classes: smooth random prototypes, shifted, plus noise."""
    return make_synthetic(
        params.classes,
        config.n_train_per_class + (config.n_test_per_class if config.test_source == "train_holdout" else 0),
        config.n_test_per_class,
        size=params.size,
        channels=params.channels,
    )
