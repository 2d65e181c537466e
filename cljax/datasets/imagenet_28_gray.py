"""`imagenet_28_gray`: ImageNet-1k prepared by `cljax prepare-imagenet` into the folder format."""

from __future__ import annotations

from cljax.data.prepared import ClassData, load_prepared
from cljax.registry import NoParams, register_dataset
from cljax.errors import CljaxError

_HOW = "prepare it with `cljax prepare-imagenet --source ILSVRC/imagenet-1k --out DIR` and pass --data-dir DIR."


@register_dataset("imagenet_28_gray", params=NoParams,
                  data_dir="none, required (the folder of cljax prepare-imagenet)")
def load_imagenet_28_gray(params, config) -> ClassData:
    """ImageNet-1k as 28x28 gray, a folder prepared by `cljax prepare-imagenet`."""
    if not config.data_dir:
        raise CljaxError(f"--data-dir is required for imagenet_28_gray: {_HOW}")
    return load_prepared(config.data_dir, how_to_fix=_HOW)
