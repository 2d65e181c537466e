"""The preparation driver: workers, progress, resume, and the `prepare-imagenet` command line.

Data flow::

    SOURCE --plan--> shards --workers--> OUT.partial/{split}-NNNNN.npz --assemble--> OUT (write_prepared)

Each shard is written atomically into ``OUT.partial/``; a rerun skips the shards already there, so
an interrupted preparation resumes, and the output does not depend on where it stopped: rows are
ordered by split, then shard index, then row within the shard.
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cljax.data.imagenet.assemble import assemble, npz_rows
from cljax.data.imagenet.decode import DRAFT_FACTOR, RESAMPLE_FILTERS, SIZE, _pil_filter, image_to_gray
from cljax.data.imagenet.recorded import check_redo_allowed, check_same_preparation
from cljax.data.imagenet.shards import DatasetsShard, FilesShard, Shard, check_label, files_stamp
from cljax.data.imagenet.out_lock import OutputLock
from cljax.data.imagenet.out_place import check_not_mount_point, output_folder
from cljax.data.imagenet.sources import DEFAULT_SHARD_ROWS, OUTPUT_SPLITS, plan_source
from cljax.data.imagenet.stops import quiet_worker, signals_as_interrupt, stop_if_asked
from cljax.data.imagenet.work import (SOURCE_STAMP, clear_stale_work, discard_work, open_work_dir, remove_finished_work,
                                       work_dir_for, work_record)
from cljax.data.full_disk import full_disk_error
from cljax.data.prepared import check_replaceable, load_prepared
from cljax.errors import EXIT_PREEMPTED, CljaxError
from cljax.host import usable_cores

NAME = "imagenet_28_gray"
_TICK_EVERY = 32  # images between progress updates from a worker


# --------------------------------------------------------------------------------------------
# Workers


def process_shard(shard: Shard, work_dir: str, size: int, resample: str, tick=None, n_classes: int | None = None) -> int:
    """Decode every image of one shard and write `work_dir/{shard.name}.npz` atomically.

    `tick(n)` is called every few images with the number done since the last call (progress).
    A label that is not one of the source's `n_classes` (when it names them) is refused, naming
    its row. Returns the number of images written.
    """
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    pending = 0
    stamp = files_stamp(shard.source_files())  # before any image is read
    for blob, label, where in shard.rows():
        check_label(label, where, shard.source_split, n_classes)
        try:
            images.append(image_to_gray(blob, size, resample=resample))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            # UnidentifiedImageError's own text names a BytesIO object, which says nothing.
            why = "not a known image format" if isinstance(exc, UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
            raise CljaxError(f"cannot decode the image at {where} ({why}): {_undecodable_fix(shard)}") from None
        labels.append(label)
        pending += 1
        if tick is not None and pending >= _TICK_EVERY:
            tick(pending)
            pending = 0
    if shard.n_rows is not None and len(labels) != shard.n_rows:
        raise CljaxError(f"shard {shard.name} gave {len(labels)} images, its source said {shard.n_rows}; the source changed while reading.")
    if tick is not None:  # before the write: a stop (or an orphaned worker, _worker_tick) writes no shard
        tick(pending)
    images_nhw = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    labels_n = np.asarray(labels, dtype=np.int32)
    final = Path(work_dir) / f"{shard.name}.npz"
    tmp = Path(work_dir) / f".{shard.name}.npz.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=images_nhw, labels=labels_n, **({} if stamp is None else {SOURCE_STAMP: np.array(stamp)}))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)  # the half-written shard: its space back, before the free space is told
        full = full_disk_error(exc, final, images_nhw.nbytes + labels_n.nbytes,
                               "rerun the same command (the shards done are kept).")
        if full is None:
            raise
        raise full from None
    os.replace(tmp, final)  # a shard file exists whole or not at all
    return len(labels)


def _undecodable_fix(shard: Shard) -> str:
    """What to do about an image that cannot be decoded: a rerun keeps the shards done from
    the source files left as they were (work.py) and redoes those of the files changed."""
    if isinstance(shard, FilesShard):
        return ("replace it with a readable image, or remove it, and rerun the same command (the shards done "
                "before it are kept).")
    if isinstance(shard, DatasetsShard) and json.loads(shard.load_args)["path"] != "parquet":
        return ("the hub dataset cannot be prepared as it is: download its parquet files (docs/imagenet.md, 2b), "
                "replace or remove that row there, and prepare from the folder.")
    return ("replace that row's image with a readable one (or remove the row, or re-download the file) and rerun "
            "the same command (the shards done from the other files are kept).")


_WORKER_COUNTER = None
_PARENT = None  # the preparation's process: a worker whose parent changed was orphaned (os._exit below)


def _init_worker(counter) -> None:
    global _WORKER_COUNTER, _PARENT
    _WORKER_COUNTER, _PARENT = counter, os.getppid()
    quiet_worker()


def _worker_tick(n: int) -> None:
    if os.getppid() != _PARENT:
        # The preparation was killed (SIGKILL: no handler ran, the pool was not terminated): stop at
        # this image, without finishing the shard into the work folder after its lock is gone,
        # downloading on, or printing the broken pipe's tracebacks; a rerun redoes the shard.
        os._exit(1)
    with _WORKER_COUNTER.get_lock():
        _WORKER_COUNTER.value += n


def _process_shard_in_worker(shard: Shard, work_dir: str, size: int, resample: str, n_classes: int | None) -> int:
    return process_shard(shard, work_dir, size, resample, _worker_tick, n_classes)


def _run_shards(todo: Sequence[Shard], work_dir: Path, size: int, resample: str, workers: int, bar,
                n_classes: int | None) -> None:
    if workers <= 1 or len(todo) <= 1:
        def tick(n: int) -> None:
            stop_if_asked()
            bar.update(n)

        for shard in todo:
            process_shard(shard, str(work_dir), size, resample, tick, n_classes)
        return
    # "spawn": the caller may have started threads (JAX, the hub's HTTP pool) that fork would copy
    # in a locked state.
    ctx = mp.get_context("spawn")
    counter = ctx.Value("q", 0)
    seen = 0
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(counter,)) as pool:
        pending = [pool.apply_async(_process_shard_in_worker, (s, str(work_dir), size, resample, n_classes))
                   for s in todo]
        while pending:
            pending[0].wait(0.2)
            stop_if_asked()
            now = counter.value
            bar.update(now - seen)
            seen = now
            still = []
            for result in pending:
                if result.ready():
                    result.get()  # re-raises a worker's error here; leaving `with` terminates the rest
                else:
                    still.append(result)
            pending = still
        pool.close()  # done: the workers exit on their own (leaving `with` would terminate them)
        pool.join()
    bar.update(counter.value - seen)


# --------------------------------------------------------------------------------------------
# The whole preparation


def is_prepared(out: str | os.PathLike) -> bool:
    """True when `out` is a complete prepared folder."""
    try:
        load_prepared(out)
    except CljaxError:
        return False
    return True


def prepare_imagenet(
    source: str,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    split_map: Mapping[str, str] | None = None,
    reader: str = "auto",
    size: int = SIZE,
    resample: str = "area",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    overwrite: bool = False,
    progress: bool = True,
    log=None,
    revision: str | None = None,
) -> Path:
    """Prepare SOURCE as a 28x28 gray prepared folder at `out`; resumable; returns `out`.

    SOURCE: a hub dataset name, a local parquet export folder or an image folder (module doc).
    `split_map`: source split -> "train" | "test" (default train -> train, validation -> test).
    `workers`: processes (default: every core this process may use). `reader="datasets"` reads a
    local parquet folder through `datasets` streaming, as the hub path does. `revision`: a hub
    dataset's branch, tag or commit (default: its main branch). If `out` is already
    complete, from the same source, splits and preprocessing, it is returned untouched unless
    `overwrite` (from others: CljaxError). Work goes to OUT.partial/ shard by
    shard; rerunning after an interruption continues there and gives byte-identical output.
    Raises CljaxError on any problem with the source or the output location, and when another
    preparation into `out` is running (the lock of out_lock.py), and when `out` is a mount point; a
    symbolic link at `out` is followed (out_place.py).
    """
    out = output_folder(out)
    if overwrite or not is_prepared(out):  # before the lock beside it, and before OUT is looked at
        check_not_mount_point(out)
    with OutputLock(out):
        return _prepare_locked(source, out, workers=workers, split_map=split_map, reader=reader, size=size,
                               resample=resample, shard_rows=shard_rows, overwrite=overwrite, progress=progress,
                               log=log, revision=revision)


def _check_out_outside_image_folder(plan, out: Path) -> None:
    """An output inside an image-folder source becomes part of it: its samples.png (data-info's)
    a class folder's image on the next preparation."""
    if any(isinstance(s, FilesShard) for s in plan.shards) and out.resolve().is_relative_to(plan.source):
        raise CljaxError(f"--out {out} is inside the image folder --source {plan.source}: what it holds would be read "
                         f"as images of the source on the next preparation; choose an --out outside it.")


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _prepare_locked(source: str, out: Path, *, workers, split_map, reader, size, resample, shard_rows, overwrite,
                    progress, log, revision=None) -> Path:
    log = log or _to_stderr
    work = work_dir_for(out)
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            pass  # an empty folder made beforehand is fine
        elif not (out / "meta.json").is_file():
            # Never delete a folder this code did not write, even with overwrite.
            raise CljaxError(f"output {out} exists and is not a prepared dataset; choose another --out (nothing was deleted).")
        elif not overwrite and is_prepared(out):
            meta = load_prepared(out).meta
            check_same_preparation(out, meta, source, split_map, resample, size, revision)
            clear_stale_work(out, meta, log)
            return out
        else:
            check_replaceable(out)  # a meta.json alone does not make a folder ours
            if not overwrite:  # damaged: redone without --overwrite only as the same preparation
                recorded = check_redo_allowed(out, source, split_map, resample, size, revision)
                revision = revision or recorded  # the commit it was prepared from, not where main is now
    check_not_mount_point(out)  # before any work: the finished folder could not be renamed onto it
    _pil_filter(resample)  # fail on a bad filter name before any work
    plan = plan_source(source, split_map, reader=reader, shard_rows=shard_rows, revision=revision)
    _check_out_outside_image_folder(plan, out)
    if overwrite:  # after the source is found: a mistyped one loses no work
        discard_work(work)
    for note in plan.notes:
        log(f"note: {note}")
    # Recorded in meta.json and in the work folder's record: a resume with other settings is
    # refused instead of mixing shards.
    preprocessing = {
        "size": size,
        "geometry": "central square (side = short side) resampled to size x size = short side resized, centre crop",
        "resample": resample,
        "luma": "ITU-R 601: L = 0.299 R + 0.587 G + 0.114 B (PIL convert('L')), 8-bit",
        "jpeg_draft": f"DCT-scaled decode keeping the short side >= {DRAFT_FACTOR * size}",
        "exif_orientation": "applied",
        "alpha": "dropped",
        "splits": {dst: list(dict.fromkeys(s.source_split for s in plan.shards if s.split == dst)) for dst in OUTPUT_SPLITS},
    }
    open_work_dir(work, work_record(plan, preprocessing, out, reader, shard_rows), log, plan.shards)

    done = {p.stem for p in work.glob("*.npz")}
    todo = [s for s in plan.shards if s.name not in done]
    already = sum(s.n_rows if s.n_rows is not None else npz_rows(work, s) for s in plan.shards if s.name in done)
    n_workers = max(1, workers if workers is not None else usable_cores())
    if done:
        log(f"resuming: {len(plan.shards) - len(todo)} of {len(plan.shards)} shards already in {work}")
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    with tqdm(
        total=plan.expected_total, initial=already, unit="img", desc=f"{NAME} ({n_workers} workers)",
        disable=not progress, mininterval=0.5 if interactive else 30.0, smoothing=0.05,
    ) as bar:
        _run_shards(todo, work, size, resample, n_workers, bar, plan.n_classes)
    stop_if_asked()  # one whose raise was dropped: the shards are kept, the output is not written
    assemble(plan, work, out, size, preprocessing, name=NAME)
    remove_finished_work(work, log)
    return out


# --------------------------------------------------------------------------------------------
# Command line


def _parse_splits(items: Sequence[str]) -> dict[str, str]:
    """["train", "validation:test"] -> {"train": "train", "validation": "test"}."""
    mapping = {}
    for item in items:
        src, _, dst = item.partition(":")
        dst = dst or ("train" if src == "train" else "test")
        if not src or dst not in OUTPUT_SPLITS:
            raise CljaxError(f"--splits entry {item!r} is invalid: write SOURCE_SPLIT or SOURCE_SPLIT:train|test.")
        if src in mapping:  # the later entry would silently drop the earlier one
            raise CljaxError(f"--splits names source split {src!r} twice: a source split goes to one output split; keep one entry.")
        mapping[src] = dst
    return mapping


def prepare_main(argv: list[str]) -> int:
    """`prepare-imagenet --source SOURCE --out DIR [--workers N] [--splits ...] [--overwrite]`; exit code."""
    from cljax.settings import Parser  # a bad flag is one line, as in the other commands

    parser = Parser(
        prog="cljax prepare-imagenet",
        description="Prepare ImageNet-1k (hub name, local parquet export or image folder) as 28x28 8-bit gray, resumably.",
    )
    parser.add_argument("--source", required=True, help="hub dataset (ILSVRC/imagenet-1k), parquet export folder, or image folder")
    parser.add_argument("--out", required=True, help="output folder; work in progress goes to OUT.partial/")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all usable cores)")
    parser.add_argument(
        "--splits", nargs="+", default=None, metavar="SPLIT[:train|test]",
        help="source splits to keep (default: train validation:test; 'train' maps to train, others to test)",
    )
    parser.add_argument("--reader", choices=("auto", "datasets"), default="auto",
                        help="how a local parquet folder is read: auto (pyarrow; a hub name is read through HF datasets, "
                        "an image folder by its own reader) or datasets (HF datasets, the hub's code path) (default: auto)")
    parser.add_argument("--revision", default=None, help="a hub dataset's branch, tag or commit to prepare (default: "
                        "its main branch, resolved to a commit when the preparation starts and recorded in meta.json)")
    parser.add_argument("--resample", choices=RESAMPLE_FILTERS, default="area", help="filter of the final resize (default: exact area average)")
    parser.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS,
                        help=f"images per resumable shard (local parquet / image folders) (>=1; default: {DEFAULT_SHARD_ROWS})")
    parser.add_argument("--overwrite", action="store_true", help="prepare again even if OUT is complete; discards OUT.partial")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out = output_folder(args.out)
    with signals_as_interrupt():
        return _prepare_command(args, out)


def _prepare_command(args, out: Path) -> int:
    try:
        if args.workers is not None and args.workers < 1:
            raise CljaxError(f"--workers must be >= 1, got {args.workers}.")
        for flag, value, fix in (("--source", args.source, "a hub dataset name or a folder"),
                                 ("--out", args.out, "the folder to write")):
            if not value.strip():
                raise CljaxError(f"{flag} is empty: pass {fix}.")
        split_map = _parse_splits(args.splits) if args.splits else None

        def already_prepared(clear: bool) -> bool:  # whole; "nothing to do" only for the data it prepared
            if args.overwrite or not is_prepared(out):
                return False
            data = load_prepared(out, verify_checksums=True, how_to_fix="Pass --overwrite to prepare it again.")
            check_same_preparation(out, data.meta, args.source, split_map, args.resample, SIZE, args.revision)
            if clear:
                clear_stale_work(out, data.meta, _to_stderr)
            print(f"{out} is already prepared ({len(data.train_labels)} train, {len(data.test_labels)} test images, "
                  f"{data.n_classes} classes); nothing to do. Pass --overwrite to prepare it again.")
            return True

        if args.overwrite or not is_prepared(out):  # its lock goes beside it: a volume's parent may be read-only
            check_not_mount_point(out)
        try:
            lock = OutputLock(out).__enter__()  # before OUT is looked at: another preparation may be replacing it
        except OSError as exc:  # a read-only data folder: its complete output is still checked, not refused
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and already_prepared(clear=False):
                return 0
            raise
        with contextlib.ExitStack() as held:
            held.push(lock)
            if already_prepared(clear=True):
                return 0
            started = time.perf_counter()
            _prepare_locked(
                args.source, out, workers=args.workers, split_map=split_map, reader=args.reader, size=SIZE,
                resample=args.resample, shard_rows=args.shard_rows, overwrite=args.overwrite,
                progress=not args.no_progress, log=_to_stderr, revision=args.revision,
            )
            data = load_prepared(out)
        seconds = time.perf_counter() - started
        print(
            f"wrote {out}: {len(data.train_labels)} train and {len(data.test_labels)} test images, "
            f"{data.n_classes} classes, in {seconds:.1f} s"
        )
        return 0
    except CljaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: the message names the path
        print(f"error: {exc.strerror or exc} ({exc.filename or out}); free space or fix permissions, then rerun to resume.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished shards are kept in {work_dir_for(out)}; rerun the same command to resume.", file=sys.stderr)
        return EXIT_PREEMPTED
