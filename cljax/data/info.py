"""`data-info DIR [--png FILE]`: what a prepared folder holds (its arrays checked against the
checksums its meta.json recorded), and a PNG grid of sample images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cljax.data.prepared import SAMPLES, ClassData, check_unchanged, load_prepared
from cljax.datasets.fashion_mnist import holds_idx_files, read_folder as read_idx_folder
from cljax.errors import CljaxError
from cljax.safe_files import atomic_write

IDX_SAMPLES = "fashion_mnist_samples.png"  # the grid of a folder of IDX files, in the current folder
MAX_CLASSES_SHOWN = 20
IMAGES_PER_CLASS = 8


def describe(data: ClassData, folder: Path, max_listed: int = MAX_CLASSES_SHOWN) -> str:
    """A plain-text summary: source, classes, images per split and per class."""
    train_counts = np.bincount(np.asarray(data.train_labels), minlength=data.n_classes)
    test_counts = np.bincount(np.asarray(data.test_labels), minlength=data.n_classes)
    lines = [
        f"dataset: {data.meta.get('name', '?')}  ({folder})",
        f"source: {data.meta.get('source', '?')}" + (f" at commit {data.meta['revision']}" if data.meta.get("revision") else ""),
        f"images: {tuple(data.train_images.shape[1:])} {data.train_images.dtype}",
        f"classes: {data.n_classes}",
        f"train: {len(data.train_labels)} images, per class {_range(train_counts)}",
        f"test: {len(data.test_labels)} images, per class {_range(test_counts)}",
        "",
        f"{'id':>5}  {'train':>7}  {'test':>6}  name",
    ]
    for c in range(min(data.n_classes, max_listed)):
        lines.append(f"{c:>5}  {train_counts[c]:>7}  {test_counts[c]:>6}  {data.class_names[c]}")
    if data.n_classes > max_listed:
        lines.append(f"  ... and {data.n_classes - max_listed} more classes")
    return "\n".join(lines)


def _range(counts: np.ndarray) -> str:
    if counts.size == 0:
        return "-"
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}..{high}"


def write_sample_grid(
    data: ClassData,
    png: Path,
    *,
    max_classes: int = MAX_CLASSES_SHOWN,
    per_class: int = IMAGES_PER_CLASS,
) -> Path:
    """Save a grid (one row per class, the first `per_class` train images of each) as PNG.

    Only the first `max_classes` classes are drawn, so 1000-class ImageNet stays readable.
    Classes without train images are drawn from the test split, their label saying so; empty
    cells stay blank.
    """
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch in the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = max(1, min(data.n_classes, max_classes))
    labels_train = np.asarray(data.train_labels)
    labels_test = np.asarray(data.test_labels)
    fig = Figure(figsize=(1.0 + 0.9 * per_class, 0.9 * n_rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, per_class, squeeze=False)
    drawn = []
    for c in range(n_rows):
        images, picks, split = data.train_images, np.flatnonzero(labels_train == c)[:per_class], ""
        if picks.size == 0:
            images, picks, split = data.test_images, np.flatnonzero(labels_test == c)[:per_class], " (test)"
        drawn.append(picks.size)
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < picks.size:
                ax.imshow(np.asarray(images[picks[j]]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        name = data.class_names[c] if c < len(data.class_names) else str(c)
        axes[c, 0].set_ylabel(f"{c}: {name[:18]}{split}", rotation=0, ha="right", va="center", fontsize=7)
    shown = f"first {n_rows} of {data.n_classes} classes" if data.n_classes > n_rows else f"{data.n_classes} classes"
    each = f"{per_class} images each" if min(drawn) == per_class else f"up to {per_class} images each (fewer: all a class has)"
    # the title 0.08 in below the top edge, the images from 0.4 in: fixed in inches, whatever the rows
    height = fig.get_figheight()
    fig.suptitle(f"{data.meta.get('name', 'dataset')}: {shown}, {each}", fontsize=9, y=1 - 0.08 / height, va="top")
    fig.subplots_adjust(left=0.2, right=0.98, top=1 - 0.4 / height, bottom=0.02, wspace=0.05, hspace=0.05)
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(png, lambda f: fig.savefig(f, format="png"))  # this very path; a full disk keeps the old file
    return png


def _check_png_target(png: Path) -> None:
    """One CljaxError line unless the sample grid can be written at ``png``: a .png name, in a
    folder that is there or can be made, and that takes a new file."""
    from cljax.safe_files import cannot_create_in

    folder = png.parent
    while not folder.exists():  # made when the grid is written
        folder = folder.parent
    why = cannot_create_in(folder) if folder.is_dir() else "it is a file, not a folder"
    if why is not None:
        raise CljaxError(f"--png {png}: cannot write to {folder} ({why}): pass --png with a writable path.")
    from cljax.output_guard import check_png_name

    check_png_name("--png", png, "the sample grid")


def data_info_main(argv: list[str]) -> int:
    """`data-info DIR [--png FILE]`: print classes and counts per split, save a sample grid; exit code."""
    from cljax.settings import Parser  # a bad flag is one line, as in the other commands

    parser = Parser(prog="cljax data-info", description="Describe a prepared dataset folder and save sample images.")
    parser.add_argument("folder", help="a prepared folder (e.g. the --out of prepare-imagenet), or a folder of "
                        "Fashion-MNIST's four IDX files (/usr/share/datasets/fashion-mnist)")
    parser.add_argument("--png", default=None, help="where to save the sample grid (default FOLDER/samples.png; for "
                        f"a folder of IDX files, which a system package may own, ./{IDX_SAMPLES})")
    args = parser.parse_args(argv)
    folder = Path(args.folder).expanduser()
    how = ("prepare one with `cljax prepare-imagenet --source SOURCE --out DIR`, or give a folder of Fashion-MNIST's "
           "IDX files.")
    reading = True  # an OSError before the sample grid is written is the folder's, not --png's
    try:
        for name, value in (("the folder", args.folder), ("--png", args.png)):
            if value is not None and not value.strip():
                what = "a prepared folder" if name == "the folder" else "a file path"
                raise CljaxError(f"{name} is empty: give {what}.")
        if not folder.is_dir():  # the input first: its --png would be refused as unwritable
            raise CljaxError(f"{folder} {'is a file, not a folder' if folder.exists() else 'does not exist'}: {how}")
        idx = holds_idx_files(folder)
        png = Path(args.png).expanduser() if args.png else (Path.cwd() / IDX_SAMPLES if idx else folder / SAMPLES)
        if png.is_dir():
            raise CljaxError(f"--png {png} is a folder: pass a file path, e.g. {png / SAMPLES}.")
        from cljax.output_guard import check_not_a_run_result, check_replaces_only_its_own  # here: its modules load JAX

        check_not_a_run_result("--png", png)
        check_replaces_only_its_own("--png", png, "png")
        _check_png_target(png)  # before the folder is read and described, not after
        data = read_idx_folder(folder) if idx else load_prepared(folder, how_to_fix=how)
        if not idx:  # the docs' "check the result": each array against the sha256 meta.json recorded
            check_unchanged(data, resume=False)
        print(describe(data, folder))
        reading = False
        png = write_sample_grid(data, png)
        print(f"samples: {png}")
        return 0
    except CljaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # stdout's reader has gone (`| head`): the command line ends quietly
    except OSError as exc:
        if reading:
            print(f"error: cannot read {exc.filename or folder} ({exc.strerror or exc}): check its permissions.",
                  file=sys.stderr)
        else:
            print(f"error: cannot write {exc.filename or args.png} ({exc.strerror or exc}); pass --png with a writable "
                  f"path.", file=sys.stderr)
        return 2
