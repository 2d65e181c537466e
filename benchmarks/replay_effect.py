"""How much replay keeps of the earlier tasks, at many seeds (``PROTOCOL``; the unit test
``tests/test_options.py::test_replay_reduces_forgetting`` runs this script at seed 1).

Fashion-MNIST, SL, T = 5, R = 6, 300 training and 100 test images per class, 2 epochs,
``--replay-size 1000``; each seed is run with and without replay (the same class pairs, data and
initialisation repeat by repeat). The measure is the test accuracy after the last task, on
tasks 0-3 (mean over the four) and on task 4. Prints each seed's line, then mean +- sd over all
repeats and the per-seed extremes that the unit test's bounds are set from (docs/rules.md).

    python benchmarks/replay_effect.py [--model mlp] [--seeds 1 16] [--fashion-dir DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cljax

from bench_args import one_line_errors, output_folder  # noqa: E402

PROTOCOL = dict(dataset="fashion_mnist", num_tasks=5, n_repeats=6, n_train_per_class=300, n_test_per_class=100,
                n_subsamples=2, epochs=2, log_frequency=36)


def seed_figures(common: dict, seed: int, out: Path) -> dict[str, np.ndarray]:
    """(R,) figures of one seed: tasks 0-3 and task 4 after the last task, without and with replay."""
    from cljax import results
    from cljax.config import Config
    from cljax.experiment import run_experiment

    figures = {}
    for name, extra in (("plain", {}), ("replay", {"use_replay": True, "replay_size": 1000})):
        config = Config.from_flat(common, seed=seed, results_dir=str(out / f"{seed}_{name}"), **extra)
        last = results.task_dirs(run_experiment(config, progress=False).algo_dir)[-1]
        acc = results.load_metrics(last)["test_acc"][-1]  # (R, T)
        figures[f"{name}_earlier"], figures[f"{name}_current"] = acc[:, :-1].mean(1), acc[:, -1]
    figures["gain"] = figures["replay_earlier"] - figures["plain_earlier"]
    return figures


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="replay_effect.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--seeds", type=int, nargs=2, default=[1, 16], metavar=("FIRST", "LAST"))
    p.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", type=output_folder, help="where the runs go (default: a temporary folder, deleted at "
                   "the end)")
    args = p.parse_args(argv)
    if not 0 <= args.seeds[0] <= args.seeds[1]:
        p.error(f"--seeds {args.seeds[0]} {args.seeds[1]}: give FIRST <= LAST, both at least 0")

    common = dict(PROTOCOL, data_dir=args.fashion_dir, model=args.model)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="replay_effect_"))
    per_seed = {}
    try:
        for seed in range(args.seeds[0], args.seeds[1] + 1):
            f = per_seed[seed] = seed_figures(common, seed, out)
            se = f["gain"].std(ddof=1) / np.sqrt(len(f["gain"]))
            print(f"seed {seed}: gain {f['gain'].mean():.3f} +- {se:.3f} (SE), {int((f['gain'] > 0).sum())} of "
                  f"{len(f['gain'])} positive; current task with replay {f['replay_current'].mean():.3f}", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    every = {k: np.concatenate([f[k] for f in per_seed.values()]) for k in next(iter(per_seed.values()))}
    n = len(every["gain"])
    for k, v in every.items():
        print(f"{k}: {v.mean():.3f} +- {v.std(ddof=1):.3f} (n = {n})")
    gain = every["gain"]
    print(f"gain SE {gain.std(ddof=1) / np.sqrt(n):.3f}; positive in {int((gain > 0).sum())} of {n}; per-seed mean "
          f"gain {min(f['gain'].mean() for f in per_seed.values()):.3f}-{max(f['gain'].mean() for f in per_seed.values()):.3f}; "
          f"fewest positive in a seed {min(int((f['gain'] > 0).sum()) for f in per_seed.values())}; lowest "
          f"per-seed current task with replay {min(f['replay_current'].mean() for f in per_seed.values()):.3f}")
    return {seed: {k: v.tolist() for k, v in f.items()} for seed, f in per_seed.items()}


if __name__ == "__main__":
    one_line_errors(main)
