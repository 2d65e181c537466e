"""Datasets behind one registry: name -> loader(config) -> ClassData (28x28 uint8 + int labels)."""

from __future__ import annotations

from typing import Callable

from cljax.data.prepared import ClassData, load_prepared

DATASETS: dict[str, Callable[..., ClassData]] = {}


def register_dataset(name: str):
    def wrap(loader: Callable[..., ClassData]):
        DATASETS[name] = loader
        return loader

    return wrap


def load_dataset(config) -> ClassData:
    """Load the dataset a config names; raises CljaxError with the fix on any problem."""
    from cljax.errors import CljaxError

    if config.dataset not in DATASETS:
        raise CljaxError(f"unknown dataset {config.dataset!r}: choose one of {', '.join(sorted(DATASETS))}.")
    return DATASETS[config.dataset](config)


# The entries register themselves on import.
from cljax.data import fashion_mnist, imagenet_folder, synthetic  # noqa: E402,F401

__all__ = ["ClassData", "DATASETS", "load_dataset", "load_prepared", "register_dataset"]
