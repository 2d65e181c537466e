"""Shared fixtures: small real-data configs and a compile counter."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest


from cljax.config import Config

FASHION_DIR = Path(os.environ.get("CLJAX_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# One process runs configs of many R: whichever called `cljax run` first would otherwise fix the
# CPU device split for the rest. One device here; tests/test_sharding.py splits its subprocess.
os.environ.setdefault("CLJAX_CPU_DEVICES", "off")


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
    """The persistent compilation cache of this test session, in a temporary folder: the CLI
    tests (which turn the cache on) never read or fill the user's ~/.cache, so suite time does
    not depend on it. Subprocesses inherit it through CLJAX_COMPILATION_CACHE."""
    folder = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["CLJAX_COMPILATION_CACHE"] = folder
    yield folder


def apply_fn_of(program):
    """(params, images) -> (logits, hidden) of a built program's model, evaluation mode, for a
    model without mutable state."""
    net = program.parts.net
    return lambda params, images: net.apply(params, {}, images, False)[:2]


def init_params_of(program):
    """key -> params of a built program's model."""
    return lambda key: program.parts.net.init(key)[0]


def small_config(tmp_path: Path, **overrides) -> Config:
    """Fashion-MNIST, T=3, R=2, 40 steps per task, 4 snapshots: the real path, shrunk."""
    base = dict(
        dataset="fashion_mnist",
        num_tasks=3,
        n_repeats=2,
        n_train_per_class=100,
        n_test_per_class=50,
        n_subsamples=16,
        epochs=4,
        batch_size=20,
        log_frequency=10,
        lr=0.1,
        results_dir=str(tmp_path / "results"),
        data_dir=str(FASHION_DIR),
    )
    base.update(overrides)
    return Config.from_flat(base)


class CompileCounter:
    """Counts XLA backend compilations while installed."""

    def __init__(self):
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs):
        if "backend_compile" in event:
            self.count += 1


@pytest.fixture
def compile_counter():
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    yield counter
    jax.monitoring.unregister_event_duration_listener(counter)
