"""Seconds that writing one task folder takes, as the task loop writes it (`cljax.results.write_task`:
every .npy hashed while written and fsynced, the pickles, metadata.json, the rename): the arrays of
an existing task folder written again into a scratch folder, several times, median and min
(docs/benchmark.md, "The next task trains while the last one is written"). The host does this once
per task; on a GPU it overlaps the next task's training.

    python benchmarks/task_write.py results/fashion_mnist/SL_T5/task_001 --times 7 --json /tmp/task_write.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules
from bench_args import one_line_errors, output_file, positive_int  # noqa: E402


def task_arrays_of(task_dir: Path) -> tuple[dict, dict]:
    """The arrays and metadata that ``write_task`` was given for this folder, read back."""
    from cljax import results
    from cljax.safe_files import load_npy

    def raw(name):  # weights as the loop hands them over: structured arrays
        path = task_dir / f"{name}.npy"
        return load_npy(path) if path.exists() else None

    arrays = {"representations": results.load_representations(task_dir, mmap=False),
              "binary_labels": results.load_binary_labels(task_dir), "weights": raw("weights"),
              "start_weights": raw("start_weights"), "model_state": raw("model_state"),
              "metrics": results.load_metrics(task_dir), "expert_metrics": results.load_expert_metrics(task_dir)}
    metadata = {k: v for k, v in results.load_metadata(task_dir).items()
                if k not in ("files", "representations_storage")}  # what write_task adds itself
    return arrays, metadata


def measure(task_dir: Path, times: int, scratch: Path) -> dict:
    from cljax.results import write_task

    arrays, metadata = task_arrays_of(task_dir)
    task = int(metadata.get("task_index", 0))
    out = Path(tempfile.mkdtemp(prefix="task_write-", dir=scratch))
    seconds = []
    try:
        for _ in range(times):
            start = time.perf_counter()
            written = write_task(out, task, arrays, metadata)
            seconds.append(time.perf_counter() - start)
        files = json.loads((written / "metadata.json").read_text())["files"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"task_dir": str(task_dir), "times": times, "seconds_median": statistics.median(seconds),
            "seconds_min": min(seconds), "seconds": seconds,
            "folder_bytes": sum(f["bytes"] for f in files.values()), "files": files,
            "machine": platform.processor() or platform.machine(), "scratch": str(scratch)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task_dir", help="a task folder of a run (task_NNN), read only")
    ap.add_argument("--times", type=positive_int, default=7, help="writes timed (default 7)")
    ap.add_argument("--scratch", default=tempfile.gettempdir(),
                    help="folder under which the copies are written and deleted (default the system's temp)")
    ap.add_argument("--json", type=output_file, help="write the figures here")
    args = ap.parse_args(argv)
    task_dir = Path(args.task_dir)
    from cljax.results import is_task_dir_name

    if not is_task_dir_name(task_dir.resolve().name) or not (task_dir / "metadata.json").is_file():  # not initial/
        ap.error(f"{task_dir} is not a task folder (a run's task_NNN, with its metadata.json): give one")
    if not Path(args.scratch).is_dir():
        ap.error(f"--scratch {args.scratch} is not a folder: create it or choose another")
    report = measure(task_dir, args.times, Path(args.scratch))
    print(f"{task_dir}: {report['folder_bytes'] / 2**20:.1f} MiB written in {report['seconds_median']:.3f} s "
          f"(median of {args.times}; min {report['seconds_min']:.3f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    one_line_errors(main)
