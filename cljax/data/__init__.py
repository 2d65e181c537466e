"""Data on disk: the prepared-folder format (``prepared``), its description (``info``) and the
ImageNet preparation (``imagenet``). The datasets a run can name are entries of the dataset
registry, one file each in ``cljax/datasets/``."""

from __future__ import annotations

from cljax.data.prepared import ClassData, load_prepared
from cljax.registry import DATASETS, register_dataset


def load_dataset(config) -> ClassData:
    """Load the dataset a config names, with its settings; raises CljaxError with the fix on any
    problem. Images are (N, H, W) or (N, H, W, C) uint8: the image shape comes from here."""
    return DATASETS[config.dataset].build(config.dataset_params, config)


__all__ = ["ClassData", "DATASETS", "load_dataset", "load_prepared", "register_dataset"]
