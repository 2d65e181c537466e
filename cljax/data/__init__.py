"""Data on disk: the prepared-folder format (``prepared``), its description (``info``) and the
ImageNet preparation (``imagenet``). The datasets a run can name are entries of the dataset
registry, one file each in ``cljax/datasets/``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from cljax.data.prepared import ClassData, load_prepared
from cljax.errors import CljaxError
from cljax.registry import DATASETS, register_dataset

META_MAX_BYTES = 1 << 20  # a dataset's meta, as JSON: recorded once per run


def load_dataset(config) -> ClassData:
    """Load the dataset a config names, with its settings; raises CljaxError with the fix on any
    problem. Images are (N, H, W) or (N, H, W, C) uint8: the image shape comes from here."""
    return check_class_data(DATASETS[config.dataset].build(config.dataset_params, config), config.dataset)


def check_class_data(data, name: str) -> ClassData:
    """``data`` (its class count a Python int) or one CljaxError line naming the dataset and the
    fix when its loader broke the contract: a float image would be cast to uint8 and train on
    nothing, labels past n_classes would be dropped, a test image of another shape would fail
    after the run folder was written, a ``meta`` JSON cannot hold could not be recorded."""
    where = f"dataset {name!r}: its loader"
    if not isinstance(data, ClassData):
        raise CljaxError(f"{where} returned a {type(data).__name__}, not a cljax.data.ClassData: return one.")
    n = data.n_classes
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 2:
        raise CljaxError(f"{where} gave n_classes = {n!r}: give the number of classes, an integer of at least 2 (a "
                         f"task is a pair of classes).")
    data = dataclasses.replace(data, n_classes=int(n))
    if not isinstance(data.meta, dict):
        raise CljaxError(f"{where} gave meta as a {type(data.meta).__name__}: give a dict (recorded in run.json; {{}} "
                         f"will do).")
    try:
        meta_bytes = len(json.dumps(data.meta, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CljaxError(f"{where} gave a meta that JSON cannot hold ({exc}): give a dict of strings, numbers, "
                         f"lists and dicts (it is recorded in run.json).") from None
    if meta_bytes > META_MAX_BYTES:
        raise CljaxError(f"{where} gave a meta of {meta_bytes} bytes as JSON, above {META_MAX_BYTES}: keep it to a "
                         f"description of where the data came from (it is recorded in run.json).")
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
    return data


__all__ = ["ClassData", "DATASETS", "check_class_data", "load_dataset", "load_prepared", "register_dataset"]
