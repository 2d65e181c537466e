"""The check that a rerun of a finished run, or a requeue's resume, makes of its task folders
(`inspect_run` with every file's sha256): seconds with the verified.json the run saved as it
trained, and with none (what every run never resumed had before a run noted its own writes), on
one folder in one process (docs/benchmark.md, "What a check of a finished run reads"). Each check is timed with
the folder in the page cache (warm) and, with --cold, read from the disk: the machine's whole
page cache is dropped before each check (root on Linux only). Synthetic data and a wide MLP,
so that the folders hold enough bytes to hash.

    sudo python benchmarks/check_record.py --num-tasks 8 --mlp-hidden 1024 --cold --out /tmp/check_record.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from bench_args import one_line_errors, output_file, positive_int  # noqa: E402
from flat_per_task import folder_bytes  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-tasks", type=positive_int, default=8)
    ap.add_argument("--n-repeats", type=positive_int, default=4)
    ap.add_argument("--mlp-hidden", type=positive_int, default=1024)
    ap.add_argument("--times", type=positive_int, default=3, help="checks of each kind, alternated")
    ap.add_argument("--cold", action="store_true", help="also from the disk: drops the machine's page cache (root)")
    ap.add_argument("--results-dir", default=None, help="where the run is written (default: a temporary folder)")
    ap.add_argument("--out", type=output_file, default=None)
    args = ap.parse_args(argv)
    if args.results_dir:
        report = measure(args, Path(args.results_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="cljax_check_") as tmp:
            report = measure(args, Path(tmp))
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


def drop_page_cache() -> bool:
    """Whether the kernel's page cache could be dropped (root on Linux), so that the next read
    comes from the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(args, root: Path) -> dict:
    from cljax.check_record import RECORD, CheckRecord
    from cljax.config import Config, algo_dir_of
    from cljax.data import load_dataset
    from cljax.data.prepared import data_identity
    from cljax.experiment import run_experiment
    from cljax.run_folder import inspect_run

    config = Config.from_flat(dataset="synthetic", synthetic_classes=2 * args.num_tasks, model="mlp",
                              mlp_hidden=args.mlp_hidden, num_tasks=args.num_tasks, n_repeats=args.n_repeats,
                              n_train_per_class=64, n_test_per_class=16, n_subsamples=16, epochs=1, batch_size=16,
                              log_frequency=2, results_dir=str(root))
    t0 = time.perf_counter()
    run_experiment(config, progress=False)
    train_s = time.perf_counter() - t0
    algo_dir, data_id = algo_dir_of(config), data_identity(load_dataset(config))
    record = (algo_dir / RECORD).read_bytes()

    def check(with_record: bool, cold: bool) -> float:
        (algo_dir / RECORD).write_bytes(record) if with_record else (algo_dir / RECORD).unlink()
        if cold:
            drop_page_cache()
        t0 = time.perf_counter()
        found = inspect_run(algo_dir, config, data_id, False, hashes=True, memo=CheckRecord(algo_dir))
        seconds = time.perf_counter() - t0
        assert found.finished, "the run was not found finished and whole"
        return seconds

    if args.cold and not drop_page_cache():
        raise SystemExit("--cold drops the page cache, which needs root on Linux: run it as root, or leave --cold out")
    seconds: dict[str, list[float]] = {}
    for _ in range(args.times):
        for cold in (False, True) if args.cold else (False,):
            for with_record in (True, False):
                kind = f"{'cold' if cold else 'warm'}_{'with' if with_record else 'without'}_record"
                seconds.setdefault(kind, []).append(check(with_record, cold))
    (algo_dir / RECORD).write_bytes(record)
    best = {kind: min(values) for kind, values in seconds.items()}
    ratios = {f"{cache}_without_over_with": round(best[f"{cache}_without_record"] / best[f"{cache}_with_record"], 1)
              for cache in ("warm", "cold") if f"{cache}_with_record" in best}
    return {"machine": platform.node(), "processor": platform.processor() or platform.machine(),
            "num_tasks": args.num_tasks, "n_repeats": args.n_repeats, "mlp_hidden": args.mlp_hidden,
            "run_bytes": folder_bytes(algo_dir), "record_bytes": len(record), "train_seconds": round(train_s, 2),
            "check_seconds": {k: [round(v, 4) for v in values] for k, values in seconds.items()},
            "best_ratios": ratios}


if __name__ == "__main__":
    one_line_errors(main)
