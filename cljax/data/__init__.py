"""Data on disk: the prepared-folder format (``prepared``), its description (``info``) and the
ImageNet preparation (``imagenet``). The datasets a run can name are entries of the dataset
registry, one file each in ``cljax/datasets/``."""

from __future__ import annotations

import numpy as np

from cljax.data.prepared import ClassData, load_prepared
from cljax.errors import CljaxError
from cljax.registry import DATASETS, register_dataset


def load_dataset(config) -> ClassData:
    """Load the dataset a config names, with its settings; raises CljaxError with the fix on any
    problem. Images are (N, H, W) or (N, H, W, C) uint8: the image shape comes from here."""
    data = DATASETS[config.dataset].build(config.dataset_params, config)
    check_class_data(data, config.dataset)
    return data


def check_class_data(data, name: str) -> None:
    """One CljaxError line naming the dataset and the fix when its loader broke the contract: a
    float image would be cast to uint8 and train on nothing, labels past n_classes would be
    dropped, a test image of another shape would fail after the run folder was written."""
    where = f"dataset {name!r}: its loader"
    if not isinstance(data, ClassData):
        raise CljaxError(f"{where} returned a {type(data).__name__}, not a cljax.data.ClassData: return one.")
    shapes = {}
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
            what = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise CljaxError(f"{where} gave {split} images as {what}: return uint8 (N, H, W) or (N, H, W, C) "
                             f"arrays of values 0-255.")
        if not (isinstance(labels, np.ndarray) and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
                and len(labels) == len(images)):
            what = f"{labels.dtype} {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
            raise CljaxError(f"{where} gave {split} labels as {what} for {len(images)} images: return one integer "
                             f"class per image, (N,).")
        if len(labels) and not 0 <= labels.min() <= labels.max() < data.n_classes:
            raise CljaxError(f"{where} gave {split} labels from {labels.min()} to {labels.max()} with n_classes = "
                             f"{data.n_classes}: labels are 0 .. n_classes - 1.")
        shapes[split] = images.shape[1:]
    if shapes["train"] != shapes["test"]:
        raise CljaxError(f"{where} gave train images of shape {shapes['train']} and test images of shape "
                         f"{shapes['test']}: both splits need one image shape.")
    if len(data.class_names) != data.n_classes:
        raise CljaxError(f"{where} gave {len(data.class_names)} class names for {data.n_classes} classes: one name "
                         f"per class.")


__all__ = ["ClassData", "DATASETS", "check_class_data", "load_dataset", "load_prepared", "register_dataset"]
