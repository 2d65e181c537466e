"""A deterministic synthetic dataset with any number of classes, for scale tests and benchmarks.

Each class is a fixed random smooth prototype; an image is its prototype shifted by up to two
pixels plus pixel noise, so classes are learnable but not trivially. Never a real result.
"""

from __future__ import annotations

import numpy as np

from cljax.data import register_dataset
from cljax.data.prepared import ClassData


def make_synthetic(n_classes: int, n_train_per_class: int, n_test_per_class: int, seed: int = 1234) -> ClassData:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(n_classes, 7, 7)).astype(np.float32)
    protos = np.kron(coarse, np.ones((4, 4), np.float32))  # (C, 28, 28) smooth blobs

    def split(n_per: int, split_seed: int):
        r = np.random.default_rng(seed + split_seed)
        labels = np.repeat(np.arange(n_classes, dtype=np.int32), n_per)
        shifts = r.integers(-2, 3, size=(labels.size, 2))
        rows = (np.arange(28)[None, :] - shifts[:, :1]) % 28  # np.roll by dy, vectorised
        cols = (np.arange(28)[None, :] - shifts[:, 1:]) % 28
        imgs = protos[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
        imgs += r.normal(scale=0.8, size=imgs.shape).astype(np.float32)
        imgs = np.clip(128 + 40 * imgs, 0, 255).astype(np.uint8)
        return imgs, labels

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


@register_dataset("synthetic")
def load_synthetic(config) -> ClassData:
    return make_synthetic(
        config.synthetic_classes,
        config.n_train_per_class + (config.n_test_per_class if config.test_source == "train_holdout" else 0),
        config.n_test_per_class,
    )
