"""Shared fixtures: small real-data configs and a compile counter."""

from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path

# Compilation is most of this suite's time on a 2-core CPU: the suite compiles at XLA's backend
# level 1 with XLA:CPU's older loop emitters where this XLA has them (cljax/fast_compile.py). The
# tests compare numbers within one process or against tolerances, never against a fully optimised
# build. Set CLJAX_TEST_XLA_OPT=full to test the optimised build (what `cljax run` uses).
# Subprocesses (and the xdist workers) inherit the flags.
if os.environ.get("CLJAX_TEST_XLA_OPT", "fast") != "full":
    from cljax.fast_compile import fast_compile_xla_flags

    _flags = fast_compile_xla_flags()
    if _flags is not None:
        os.environ["XLA_FLAGS"] = _flags

# On a GPU each JAX process takes 75% of the GPU's memory when it starts, so a subprocess that
# uses JAX there (the CLI, a pytest child, a benchmark) would find too little left beside this
# process: allocate as needed instead, here and in the subprocesses. No effect on the CPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# A suite started in the background of a shell without job control (`make test &` in a script)
# starts with SIGINT ignored, and its children inherit that: the tests that stop a child with
# SIGINT saw it go on (a stop signal ignored at start stays ignored, cljax/command.py). Python's
# own handler here: a child then starts with SIGINT at its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)

try:  # submitit configures logging when first imported, which closes the handlers there are: imported
    importlib.import_module("submitit")  # inside a test, it closed one whose stream was that test's capture
except ImportError:
    pass
import pytest  # noqa: E402

from cljax.config import Config  # noqa: E402

FASHION_DIR = Path(os.environ.get("CLJAX_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

# The references tests compute beside cljax's programs (a model applied by hand, a gradient by
# jax.grad) trace their matmuls here, outside the programs, which set their own precision
# (--matmul-precision, "highest" by default). Full float32 on every backend, so that on a GPU a
# reference is not TF32 (about 1e-3 relative) while the program it checks is float32. No effect
# on the CPU, and none on the programs (tests/test_precision.py).
jax.config.update("jax_default_matmul_precision", "highest")

# One process runs configs of many R: whichever called `cljax run` first would otherwise fix the
# CPU device split for the rest. One device here; tests/test_sharding.py splits its subprocess.
os.environ.setdefault("CLJAX_CPU_DEVICES", "off")


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory):
    """The persistent compilation cache of this test session, in a temporary folder, on for this
    process and (through CLJAX_COMPILATION_CACHE) its subprocesses: a program that several tests
    build (the same config, the same shapes) compiles once per session, and the suite never
    reads or fills the user's ~/.cache, so its time does not depend on that folder."""
    import cljax

    folder = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ["CLJAX_COMPILATION_CACHE"] = folder
    cljax.enable_compilation_cache(folder)
    yield folder
    cljax.disable_compilation_cache()


@pytest.fixture(scope="module", autouse=True)
def registrations_stay_in_their_module():
    """What a test module registers (a plugin's rule, model, option, dataset or analysis, and the
    plugin file as loaded) is gone after it: registration is per process, and a later module of
    the same worker saw it in --help's lists and in every config's settings (which modules share
    a worker, in which order, changes from run to run: the CI once failed on it)."""
    import cljax.analysis.registry as analyses
    import cljax.registry as registry

    boards = (registry.RULES, registry.OPTIONS, registry.MODELS, registry.DATASETS)
    for board in boards:
        board.names()  # the built-ins (and $CLJAX_PLUGINS) registered before the snapshot
    analyses._builtins()
    before = ([dict(board._entries) for board in boards], dict(registry._loaded_plugins), dict(analyses._ANALYSES))
    yield
    after = ([dict(board._entries) for board in boards], dict(registry._loaded_plugins), dict(analyses._ANALYSES))
    if after != before:
        for board, entries in zip(boards, before[0]):
            board._entries.clear()
            board._entries.update(entries)
        for now, then in ((registry._loaded_plugins, before[1]), (analyses._ANALYSES, before[2])):
            now.clear()
            now.update(then)
        registry._generation[0] += 1  # what was built from the module's entries is stale


@pytest.fixture(scope="module", autouse=True)
def compilation_cache_stays_on(session_compilation_cache):
    """No module leaves the session's cache off for the modules after it (which would then
    compile every program again: a module that once turned it off cost the suite about a minute)."""
    yield
    assert jax.config.jax_compilation_cache_dir == session_compilation_cache, \
        "a test module changed the session's persistent compilation cache"


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


PROGRAM_OBTAINED = ("backend_compile", "/jax/compilation_cache/cache_retrieval_time_sec")


def is_program_obtained(event: str) -> bool:
    """An XLA executable was compiled, or loaded from the persistent compilation cache (which the
    test session turns on, so a program another test compiled is loaded, not compiled)."""
    return any(name in event for name in PROGRAM_OBTAINED)


class CompileCounter:
    """Counts the executables compiled or loaded from the cache while installed."""

    def __init__(self):
        self.count = 0

    def __call__(self, event: str, duration: float, **kwargs):
        if is_program_obtained(event):
            self.count += 1


@pytest.fixture
def compile_counter():
    """Counts from an empty set of built programs: a run builds, and so compiles or loads, its own."""
    from cljax.program import clear_built_programs

    clear_built_programs()
    counter = CompileCounter()
    jax.monitoring.register_event_duration_secs_listener(counter)
    yield counter
    jax.monitoring.unregister_event_duration_listener(counter)


def distinct_colours(img) -> int:
    """The number of distinct 8-bit RGB colours of an image read by matplotlib (floats in 0..1):
    len(np.unique(rgb.reshape(-1, 3), axis=0)), counted on the colours packed into 24 bits (that
    row-wise unique took about a second per plot)."""
    import numpy as np

    rgb = (img[..., :3] * 255).astype(np.uint8).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return len(np.unique(packed))  # 1-d: a sort of integers, no 2**24 table


def load_script(path: Path, name: str):
    """A script of benchmarks/ imported as a module (they are not a package), with its folder on
    the path as when it runs (a script imports its neighbours: bench_args), whichever test ran first."""
    import importlib.util
    import sys

    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
