"""Images/s of ImageNet preparation: the fast path against a naive baseline, per core and all cores.

    python benchmarks/prepare_imagenet.py [--images 400] [--repeats 3] [--json FILE]

Inputs are full-size-like JPEGs (500x375, a smooth random colour field plus pixel noise, quality
90, ~80 KB: the size and weight of an average ImageNet photo), made here from a fixed seed.

  naive : decode at full size, convert to RGB, resize the short side to 28 with Lanczos,
          centre-crop, convert to L (what a torchvision-style pipeline does).
  fast  : `cljax.data.imagenet.decode.image_to_gray`: DCT-scaled decode of the luma channel only
          (`Image.draft`), exact area average of the central square, no RGB at all; also with
          a coarser draft (short side >= 56 instead of 112), faster and a little less exact.
  end-to-end : `prepare_imagenet` on a parquet export of the same images (read, decode,
          shard files, assemble, checksums), with 1 worker and with every core.

Each figure is the best of --repeats runs, naive and fast taking turns so both see the same
load: on a shared machine the best run is the closest to an uncontended one. Beside wall-clock
images/s, the table gives images per CPU-second (CPU time of every process involved), which
waiting for a busy core does not dilute. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, features

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # cljax, siblings

from bench_args import output_file, positive_int  # noqa: E402
from cljax.data.imagenet.decode import image_to_gray  # noqa: E402
from cljax.data.imagenet.prepare import prepare_imagenet  # noqa: E402

WIDTH, HEIGHT, QUALITY = 500, 375, 90


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n photo-like 500x375 RGB JPEGs at quality 90."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, (HEIGHT // 25 + 2, WIDTH // 25 + 2, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=QUALITY)
        blobs.append(buf.getvalue())
    return blobs


def naive_gray(blob: bytes, size: int = 28) -> np.ndarray:
    """The baseline: full-size RGB decode, high-quality resize of the short side, centre crop, L."""
    rgb = Image.open(io.BytesIO(blob)).convert("RGB")
    w, h = rgb.size
    scale = size / min(w, h)
    rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.LANCZOS)
    w, h = rgb.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size)).convert("L"))


def fast_gray_56(blob: bytes) -> np.ndarray:
    """The fast path with a coarser draft (short side >= 56, not 112): the speed/fidelity trade."""
    return image_to_gray(blob, draft_factor=2)


FUNCTIONS = {"naive": naive_gray, "fast": image_to_gray, "fast-56": fast_gray_56}


def _run_chunk(args: tuple[str, list[bytes]]) -> float:
    """Convert the blobs; the CPU seconds this process spent."""
    name, blobs = args
    fn = FUNCTIONS[name]
    start = time.process_time()
    for blob in blobs:
        fn(blob)
    return time.process_time() - start


def time_in_process(blobs: list[bytes], repeats: int) -> dict[str, tuple[float, float]]:
    """{path: (best wall seconds, CPU seconds of that run)} for one core converting every blob."""
    for fn in FUNCTIONS.values():
        fn(blobs[0])  # imports, caches
    best = {name: (float("inf"), 0.0) for name in FUNCTIONS}
    for _ in range(repeats):
        for name in FUNCTIONS:  # taking turns: both see the same background load
            start = time.perf_counter()
            cpu = _run_chunk((name, blobs))
            wall = time.perf_counter() - start
            best[name] = min(best[name], (wall, cpu))
    return best


def time_pool(blobs: list[bytes], workers: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{path: (best wall seconds, CPU seconds of that run)} for `workers` processes (start-up excluded)."""
    chunks = [blobs[i::workers] for i in range(workers)]
    names = ("naive", "fast")
    best = {name: (float("inf"), 0.0) for name in names}
    with mp.get_context("spawn").Pool(workers) as pool:
        for name in names:  # warm up: imports in every worker
            pool.map(_run_chunk, [(name, c[:2]) for c in chunks])
        for _ in range(repeats):
            for name in names:
                start = time.perf_counter()
                cpu = sum(pool.map(_run_chunk, [(name, c) for c in chunks]))
                wall = time.perf_counter() - start
                best[name] = min(best[name], (wall, cpu))
    return best


def write_parquet_export(blobs: list[bytes], root: Path, files: int) -> None:
    """The hub's layout: data/train-NNNNN-of-NNNNN.parquet, image struct {bytes, path} + label."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    per_file = -(-len(blobs) // files)
    for k in range(files):
        part = blobs[k * per_file : (k + 1) * per_file]
        table = pa.table(
            {
                "image": pa.array([{"bytes": b, "path": f"{k}_{i}.jpg"} for i, b in enumerate(part)],
                                  pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                "label": pa.array([i % 10 for i in range(len(part))], pa.int64()),
            }
        )
        pq.write_table(table, root / "data" / f"train-{k:05d}-of-{files:05d}.parquet", row_group_size=100)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_end_to_end(source: Path, workers: int, repeats: int) -> tuple[float, float]:
    """(best wall seconds, CPU seconds of that run) of a whole preparation, worker start-up included."""
    best = (float("inf"), 0.0)
    for r in range(repeats):
        out = source.parent / f"out_{workers}_{r}"
        cpu_before, start = _cpu_seconds(), time.perf_counter()
        prepare_imagenet(str(source), out, workers=workers, split_map={"train": "train"}, shard_rows=256, progress=False)
        best = min(best, (time.perf_counter() - start, _cpu_seconds() - cpu_before))
        shutil.rmtree(out)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=positive_int, default=400, help="distinct JPEGs per measurement")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per figure; the best is reported")
    parser.add_argument("--end-to-end", type=positive_int, default=4000, help="images in the end-to-end runs, rounded down to a multiple of --images (worker start-up is amortised over them)")
    parser.add_argument("--workers", type=positive_int, default=None, help="the all-cores figure's processes (default: all usable cores)")
    parser.add_argument("--json", type=output_file, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    cores = args.workers or len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    blobs = make_jpegs(args.images)
    rows = []

    def add(path: str, workers: int, n: int, timing: tuple[float, float]) -> None:
        wall, cpu = timing
        rows.append({"path": path, "workers": workers, "images": n, "seconds": wall, "cpu_seconds": cpu,
                     "images_per_s": n / wall, "images_per_s_per_core": n / wall / workers,
                     "images_per_cpu_s": n / cpu})

    for name, timing in time_in_process(blobs, args.repeats).items():
        add(name, 1, len(blobs), timing)
    if cores > 1:
        for name, timing in time_pool(blobs, cores, args.repeats).items():
            add(name, cores, len(blobs), timing)
    with tempfile.TemporaryDirectory(prefix="cljax_bench_") as tmp:
        source = Path(tmp) / "export"
        end_to_end = blobs * max(1, args.end_to_end // len(blobs))
        write_parquet_export(end_to_end, source, files=4)
        for workers in sorted({1, cores}):
            add("end-to-end", workers, len(end_to_end), time_end_to_end(source, workers, args.repeats))
    load_after = os.getloadavg()

    by = {(r["path"], r["workers"]): r for r in rows}
    speedup = by[("fast", 1)]["images_per_s"] / by[("naive", 1)]["images_per_s"]
    labels = {
        "naive": "naive: full-size RGB decode + Lanczos",
        "fast": "fast: draft luma decode + area (the default, short side >= 112)",
        "fast-56": "fast, coarser draft (short side >= 56)",
        "end-to-end": "end-to-end prepare_imagenet (parquet -> folder)",
    }
    print(f"{args.images} JPEGs {WIDTH}x{HEIGHT} q{QUALITY}; {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} usable cores; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
          f"best of {args.repeats}\n")
    print("| path | workers | images | seconds | images/s | images/s per core | images per CPU-second |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {labels[r['path']]} | {r['workers']} | {r['images']} | {r['seconds']:.2f} | "
              f"{r['images_per_s']:.0f} | {r['images_per_s_per_core']:.0f} | {r['images_per_cpu_s']:.0f} |")
    per_core = by[("fast", 1)]["images_per_s"]
    cpu_speedup = by[("fast", 1)]["images_per_cpu_s"] / by[("naive", 1)]["images_per_cpu_s"]
    print(f"\nfast / naive, one core: {speedup:.2f}x wall, {cpu_speedup:.2f}x CPU time (goal >= 3x); "
          f"fast per core: {per_core:.0f} images/s (goal >= 500)")
    if args.json:
        record = {
            "benchmark": "prepare_imagenet",
            "image": {"width": WIDTH, "height": HEIGHT, "jpeg_quality": QUALITY, "count": args.images},
            "repeats": args.repeats,
            "usable_cores": len(os.sched_getaffinity(0)),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "python": platform.python_version(),
            "pillow": Image.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo"),
            "rows": rows,
            "fast_over_naive_one_core": speedup,
            "fast_over_naive_one_core_cpu_time": cpu_speedup,
        }
        Path(args.json).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
