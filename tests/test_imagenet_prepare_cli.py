"""The ImageNet preparation's command lines: bad input in one line and nothing overwritten, a
complete output kept, --overwrite, the top-level script, data-info and a hub name offline. On a
small hub-layout source (tests/imagenet_kit.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from PIL import Image

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.prepare import prepare_main
from cljax.data.info import data_info_main
from cljax.data.prepared import ARRAY_FILES, SAMPLES, load_prepared

from tests.imagenet_kit import REPO, module_fixtures, write_parquet  # skips the module without datasets

import pyarrow as pa  # noqa: E402  (the imagenet extra, as datasets)


source, prepared = module_fixtures()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_give_one_clear_line(source, tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert prepare_main(["--source", str(missing), "--out", str(tmp_path / "o1")]) == 2
    assert str(missing) in _one_error_line(capsys)

    empty = tmp_path / "empty_src"
    empty.mkdir()
    assert prepare_main(["--source", str(empty), "--out", str(tmp_path / "o2")]) == 2
    assert "parquet" in _one_error_line(capsys)
    # "" was the current folder: --source read it as an image folder, --out crashed
    assert prepare_main(["--source", "", "--out", str(tmp_path / "o5")]) == 2
    assert "--source is empty" in _one_error_line(capsys) and not (tmp_path / "o5").exists()
    assert prepare_main(["--source", str(empty), "--out", " "]) == 2
    assert "--out is empty" in _one_error_line(capsys)
    for flags in (["--source", str(empty), "--out", str(tmp_path / "o6"), "--resample", "foo"], []):
        with pytest.raises(SystemExit) as exc:  # a bad flag: one line, as in the other commands
            prepare_main(flags)
        assert exc.value.code == 2 and "(see `cljax prepare-imagenet --help`)" in _one_error_line(capsys)

    garbage = tmp_path / "garbage" / "data"
    garbage.mkdir(parents=True)
    (garbage / "train-00000-of-00001.parquet").write_bytes(b"this is not parquet")
    assert prepare_main(["--source", str(garbage.parent), "--out", str(tmp_path / "o3")]) == 2
    assert "train-00000-of-00001.parquet" in _one_error_line(capsys)

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-00001-of-00002.parquet").write_bytes((source["root"] / "data" / "train-00001-of-00002.parquet").read_bytes())
    assert prepare_main(["--source", str(incomplete), "--out", str(tmp_path / "o4")]) == 2
    assert "train-00000-of-00002.parquet" in _one_error_line(capsys)

    broken = tmp_path / "broken"
    broken.mkdir()
    write_parquet(broken / "train-00000-of-00001.parquet", [source["train"][0], b"\xff\xd8 not a jpeg", source["train"][1]],
                  [0, 1, 2])
    args = ["--source", str(broken), "--out", str(tmp_path / "o5"), "--splits", "train", "--workers", "1", "--no-progress"]
    assert prepare_main(args) == 2
    line = _one_error_line(capsys)
    assert "train-00000-of-00001.parquet row 1" in line and "not a known image format" in line

    # The hub's unlabelled test split asked for explicitly.
    assert prepare_main(["--source", str(source["root"]), "--out", str(tmp_path / "o6"), "--splits", "test", "--no-progress"]) == 2
    assert "label -1" in _one_error_line(capsys)

    # A split the source does not have.
    assert prepare_main(["--source", str(source["root"]), "--out", str(tmp_path / "o7"), "--splits", "train", "val:test"]) == 2
    assert "no split 'val'" in _one_error_line(capsys)

    # An unrelated folder as --out is never overwritten.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "thesis.tex").write_text("precious")
    assert prepare_main(["--source", str(source["root"]), "--out", str(taken), "--overwrite"]) == 2
    assert "not a prepared dataset" in _one_error_line(capsys)
    assert (taken / "thesis.tex").read_text() == "precious"
    # ... nor one that only has a meta.json beside its own files (it was deleted whole before).
    (taken / "meta.json").write_text('{"foo": 1}')
    for extra in ([], ["--overwrite"]):
        assert prepare_main(["--source", str(source["root"]), "--out", str(taken), "--no-progress", *extra]) == 2
        assert "holds files that are not a prepared dataset's (thesis.tex)" in _one_error_line(capsys)
        assert (taken / "thesis.tex").read_text() == "precious"


def _plain_parquet(folder, blobs, labels):
    """A parquet file as other tools write it: an image struct column and a label column of any
    type, without the hub's features metadata (so no class names)."""
    import pyarrow.parquet as pq

    folder.mkdir()
    images = [{"bytes": b, "path": None} for b in blobs]
    pq.write_table(pa.table({"image": images, "label": pa.array(labels)}),
                   folder / "train-00000-of-00001.parquet")
    return folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_labels_that_are_not_class_ids_give_one_line(source, tmp_path, capsys, workers):
    """String or float labels, a missing label, a label too large for int32 or negative other than
    -1, and integer labels with gaps and no class names
    (every skipped id an empty class no run could use) are refused in one line, not a traceback,
    a silently truncated label or a folder every run then refuses; so is a source split named
    twice in --splits (the later entry dropped the earlier)."""
    blobs = source["train"][:4]
    cases = [
        (["c0", "c0", "c1", "c1"], "label column 'label' holds string, not integers"),
        ([0.2, 0.7, 1.2, 1.7], "label column 'label' holds double, not integers"),
        ([0, None, 1, 1], "row 1 has label None, not an integer class id"),
        ([0, 5, 7, 7], "has labels up to 7 but no image of class 1, 2, 3, 4, 6 and no class names"),
        # too large for the int32 labels (an OverflowError before), or negative but not -1 (unlabelled)
        ([0, 1, 2**40, 1], "row 2 has label 1099511627776, larger than a class id can be (at most 2147483647"),
        (pa.array([0, 1, 2**63 + 5, 1], pa.uint64()), "row 2 has label 9223372036854775813, larger than a class id"),
        ([0, 1, -5, 1], "row 2 has label -5, not a class id (0 or more) nor -1, the mark of an unlabelled row: the "
                        "source is damaged"),
    ]
    for i, (labels, expected) in enumerate(cases):
        src = _plain_parquet(tmp_path / f"src{i}", blobs, labels)
        out = tmp_path / f"out{i}"
        assert prepare_main(["--source", str(src), "--out", str(out), "--splits", "train", "--workers", workers,
                             "--no-progress"]) == 2
        assert expected in _one_error_line(capsys), labels
        assert not out.exists()
    ok = _plain_parquet(tmp_path / "ok", blobs, [0, 0, 1, 1])
    assert prepare_main(["--source", str(ok), "--out", str(tmp_path / "o"), "--splits", "train", "train:test"]) == 2
    assert "--splits names source split 'train' twice" in _one_error_line(capsys)
    assert prepare_main(["--source", str(ok), "--out", str(tmp_path / "o"), "--splits", "train", "--workers", workers,
                         "--no-progress"]) == 0
    assert load_prepared(tmp_path / "o").train_labels.tolist() == [0, 0, 1, 1]


def test_complete_output_is_kept_and_overwrite_redoes_it(source, prepared, tmp_path, capsys):
    out = tmp_path / "copy"
    out.mkdir()
    for fname in (*ARRAY_FILES, "meta.json"):
        (out / fname).write_bytes((prepared / fname).read_bytes())
    assert prepare_main(["--source", str(source["root"]), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "already prepared" in captured.out and "--overwrite" in captured.out and captured.err == ""
    # ... the same with its source spelled relative to the current folder, or its default settings given
    relative = os.path.relpath(source["root"])
    assert prepare_main(["--source", relative, "--out", str(out), "--splits", "train", "validation:test",
                         "--resample", "area", "--workers", "1", "--reader", "datasets", "--shard-rows", "7"]) == 0
    assert "already prepared" in capsys.readouterr().out
    # ... but not for another source or other preprocessing than meta.json records ("nothing to do" before).
    for flags, asked in [
            (["--source", str(tmp_path)], f"this command asks for source {tmp_path}:"),
            (["--resample", "bilinear"], "this command asks for --resample bilinear:"),
            (["--splits", "train"], "this command asks for --splits train:"),
            (["--splits", "train", "test"], "this command asks for --splits train test:test:"),
            (["--source", "ILSVRC/imagenet-1k", "--splits", "validation:train"],
             "this command asks for source ILSVRC/imagenet-1k, --splits validation:train:")]:
        args = ["--source", str(source["root"]), "--out", str(out), *flags]
        assert prepare_main(args) == 2
        line = _one_error_line(capsys)
        assert line.startswith(f"error: {out} holds a preparation of {source['root'].resolve()} (--resample area, "
                               f"--splits train validation:test), and {asked} pass --overwrite to prepare it again, or "
                               f"choose another --out (nothing was changed).") and asked in line, line
    assert (out / "train_images.npy").read_bytes() == (prepared / "train_images.npy").read_bytes()
    # "Nothing to do" only for the data it prepared: a changed array is named, with the fix that works.
    images = np.load(out / "train_images.npy")
    np.save(out / "train_images.npy", 255 - images)
    assert prepare_main(["--source", str(source["root"]), "--out", str(out)]) == 2
    assert "train_images.npy does not match its checksum in meta.json. Pass --overwrite" in _one_error_line(capsys)
    (out / SAMPLES).write_bytes(b"drawn by data-info")  # cljax's own file does not block --overwrite
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--overwrite", "--workers", "1",
                         "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "train_images.npy").read_bytes() == (prepared / "train_images.npy").read_bytes()

    # A damaged folder of ours (an array missing) is prepared again without --overwrite.
    (out / "test_images.npy").unlink()
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (out / "test_images.npy").read_bytes() == (prepared / "test_images.npy").read_bytes()
    # ... but not when it may hold other data: its meta.json records another source, or cannot say.
    (out / "test_images.npy").unlink()
    assert prepare_main(["--source", str(tmp_path), "--out", str(out), "--no-progress"]) == 2
    assert f"{out} holds a preparation of {source['root'].resolve()}" in _one_error_line(capsys)
    (out / "test_images.npy").write_bytes((prepared / "test_images.npy").read_bytes())
    kept = (out / "train_images.npy").read_bytes()
    (out / "meta.json").write_text('{"format_version": ')  # cut short
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--no-progress"]) == 2
    assert _one_error_line(capsys) == (
        f"error: {out / 'meta.json'} is not valid JSON (Expecting value: line 1 column 20 (char 19)), and its meta.json "
        f"does not record what it was prepared from, so preparing it again could replace other data: pass "
        f"--overwrite to prepare it again, or choose another --out (nothing was changed).")
    assert (out / "train_images.npy").read_bytes() == kept
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--overwrite", "--workers", "1",
                         "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out and load_prepared(out).n_classes == load_prepared(prepared).n_classes

    # A work folder left by another preparation (other splits, say) is never mixed in.
    fresh = tmp_path / "fresh"
    stale = imagenet.work_dir_for(fresh)
    stale.mkdir()
    (stale / "plan.json").write_text(json.dumps({"fingerprint": "another run"}))
    (stale / "train-00000.npz").write_bytes(b"not ours")
    assert prepare_main(["--source", str(source["root"]), "--out", str(fresh), "--no-progress"]) == 2
    assert "a preparation started by an earlier cljax" in _one_error_line(capsys)  # a plan.json of a fingerprint
    assert prepare_main(["--source", str(source["root"]), "--out", str(fresh), "--overwrite", "--workers", "1", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    np.testing.assert_array_equal(load_prepared(fresh).train_images, load_prepared(prepared).train_images)




def test_a_folder_prepared_before_its_source_had_a_validation_split_is_not_already_prepared(source, tmp_path, capsys):
    # With the default splits the same command would now make test arrays of it: "already prepared"
    # said nothing to do.
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    for f in (source["root"] / "data").glob("train-*.parquet"):
        (src / "data" / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    args = ["--source", str(src), "--out", str(out), "--workers", "1", "--no-progress"]
    assert prepare_main(args) == 0 and load_prepared(out).test_labels.size == 0
    assert "no 'validation' split: the test arrays will be empty" in capsys.readouterr().err
    assert prepare_main(args) == 0 and "already prepared" in capsys.readouterr().out  # nothing changed: nothing to do
    validation = source["root"] / "data" / "validation-00000-of-00001.parquet"
    (src / "data" / validation.name).write_bytes(validation.read_bytes())
    kept = (out / "meta.json").read_bytes()
    assert prepare_main(args) == 2
    assert _one_error_line(capsys) == (
        f"error: {out} was prepared from {src} when it had no validation split (its test arrays are empty), and it has "
        f"one now (data/validation-00000-of-00001.parquet), which this command would prepare as the test arrays: pass "
        f"--overwrite to prepare the folder again so, or --splits train to keep it as it is (nothing was changed).")
    assert (out / "meta.json").read_bytes() == kept
    assert prepare_main([*args, "--splits", "train"]) == 0 and "already prepared" in capsys.readouterr().out
    assert prepare_main([*args, "--overwrite"]) == 0
    assert load_prepared(out).test_labels.tolist() == source["val_labels"]
    assert prepare_main(args) == 0 and "already prepared" in capsys.readouterr().out


def test_an_out_that_a_rename_cannot_replace(source, prepared, tmp_path, monkeypatch, capsys):
    # A symbolic link at --out failed after all the work ("Cannot call rmtree on a symbolic link"):
    # the folder it names is written, and the link still names it.
    target = tmp_path / "scratch" / "imagenet28"
    target.mkdir(parents=True)
    link = tmp_path / "imagenet28"
    link.symlink_to(target)
    assert prepare_main(["--source", str(source["root"]), "--out", str(link), "--workers", "1", "--no-progress"]) == 0
    assert f"wrote {target}: 11 train and 5 test images" in capsys.readouterr().out
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["imagenet28", "scratch"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["imagenet28"]  # no work folder or lock left
    assert (link / "train_images.npy").read_bytes() == (prepared / "train_images.npy").read_bytes()
    assert prepare_main(["--source", str(source["root"]), "--out", str(link)]) == 0
    assert "already prepared" in capsys.readouterr().out

    # A mount point (here one /proc/self/mountinfo would list: a bind mount, which os.path.ismount
    # misses) failed with "Device or resource busy" after all the work: refused before any.
    import cljax.data.imagenet.out_place as out_place

    mount_points = out_place._mount_points
    mounted = tmp_path / "volume"
    mounted.mkdir()
    monkeypatch.setattr(out_place, "_mount_points", lambda: {str(mounted.resolve())})
    monkeypatch.setattr(imagenet, "plan_source", lambda *a, **k: pytest.fail("planned the source"))
    assert prepare_main(["--source", str(source["root"]), "--out", str(mounted), "--no-progress"]) == 2
    assert _one_error_line(capsys) == (
        f"error: --out {mounted} is a mount point, which the finished folder cannot be renamed onto (it is written "
        f"beside --out, with the work folder, on the filesystem above): pass a folder inside it, e.g. --out "
        f"{mounted / 'imagenet28'} (nothing was written).")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imagenet28", "scratch", "volume"] and not any(mounted.iterdir())
    # ... also a volume that holds lost+found (it was "exists and is not a prepared dataset"), before the lock
    # beside it is taken (a volume's parent, /mnt, may not take the lock file)
    (mounted / "lost+found").mkdir()
    monkeypatch.setattr(imagenet, "OutputLock", lambda out: pytest.fail("took the lock"))
    assert prepare_main(["--source", str(source["root"]), "--out", str(mounted), "--no-progress"]) == 2
    assert f"error: --out {mounted} is a mount point" in _one_error_line(capsys)
    (mounted / "lost+found").rmdir()
    # ... and mountinfo's escapes are read: a space is \040.
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n36 22 98:0 /data /mnt/my\\040disk rw - ext3 /dev/sdb rw\n")
    assert mount_points(info) == {"/", "/mnt/my disk"}


def test_top_level_script_reports_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "prepare_imagenet.py"), "--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_parallel_workers_end_in_one_line_and_prepare_the_same_folder(source, prepared, tmp_path):
    """With several workers, as the installed command runs them: done, the folder is the one-worker one and
    nothing is printed; a worker's error, and a stop, print their one line. Each worker of
    `--reader datasets` made a multiprocessing lock for its progress bars (tqdm), which a worker
    stopped by SIGTERM left behind: Python's resource tracker then warned at exit of "leaked
    semaphore objects", two lines after the error line (under `python -m cljax` it did not show)."""
    # The command as pip installs it: a script file, so the spawned workers import it as their
    # main module (`python -m cljax`'s workers import none), written here so that a checkout on
    # PYTHONPATH runs it too.
    script = tmp_path / "cljax"
    script.write_text("import sys\nfrom cljax.command import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def prepare(src, out, *, stop_after=None, sig=signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, str(script), "prepare-imagenet", "--source", str(src), "--out", str(out), "--workers",
                                 "2", "--reader", "datasets", "--shard-rows", "3", "--splits", "train",
                                 "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        if stop_after is not None:
            deadline = time.monotonic() + 120
            while proc.poll() is None and not list(Path(f"{out}.partial").glob("*.npz")) and time.monotonic() < deadline:
                time.sleep(0.05)  # a shard written: the workers are at work
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)  # (until every process holding its stderr has exited)
        return proc.returncode, err

    code, err = prepare(source["root"], tmp_path / "two_workers")
    assert code == 0 and err == "", err
    ours, theirs = load_prepared(tmp_path / "two_workers"), load_prepared(prepared)
    assert np.array_equal(ours.train_images, theirs.train_images)
    assert np.array_equal(ours.train_labels, theirs.train_labels)

    bad = _plain_parquet(tmp_path / "bad", source["train"][:5] + [b"not an image"], [0, 1, 0, 1, 0, 1])
    code, err = prepare(bad, tmp_path / "bad_out")
    assert code == 2 and err.startswith("error: cannot decode the image at") and err.count("\n") == 1, err

    # Stopped by SIGTERM once a shard is written, with the others still to do (a file a shard here).
    photo = source["train"][source["train_kinds"].index("rgb 500x375")]
    many = _plain_parquet(tmp_path / "many", [photo] * 150, [0, 1, 2] * 50)
    for k in range(8):
        (many / f"train-0000{k}-of-00008.parquet").write_bytes((many / "train-00000-of-00001.parquet").read_bytes())
    (many / "train-00000-of-00001.parquet").unlink()
    code, err = prepare(many, tmp_path / "stopped", stop_after=True)
    assert code == 75 and err.startswith("interrupted: finished shards are kept in") and err.count("\n") == 1, err
    # Killed (SIGKILL: no handler runs, the pool is not terminated): its orphaned workers finished
    # their files' shards into the work folder, then printed a BrokenPipeError traceback each.
    # They now stop at their next image and write nothing; what is printed is Python's resource
    # tracker cleaning up the killed pool's semaphores (its one warning).
    code, err = prepare(many, tmp_path / "killed", stop_after=True, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL and "Traceback" not in err and "Error" not in err, err
    # a file of 150 rows is 50 shards, and 2 workers had reached about 1 of them each at the kill
    assert len(list(Path(f"{tmp_path / 'killed'}.partial").glob("*.npz"))) < 10


def test_a_stop_whose_raise_python_drops_still_stops_the_preparation(capsys):
    """A stop signal handled inside a garbage-collection callback (JAX registers one): Python drops
    the handler's KeyboardInterrupt with a printed traceback, and a preparation stopped by SIGTERM
    so went on to the end and exited 0. The stop is recorded and raised at the next check, and the
    dropped one is not printed."""
    import gc

    from cljax.data.imagenet import stops

    def callback(phase, info):
        if phase == "start" and not fired:
            fired.append(True)
            signal.raise_signal(signal.SIGTERM)  # handled here, before the callback returns

    fired = []
    with stops.signals_as_interrupt():
        stops.stop_if_asked()  # none yet
        gc.callbacks.append(callback)
        try:
            gc.collect()
        finally:
            gc.callbacks.remove(callback)
        with pytest.raises(KeyboardInterrupt):
            stops.stop_if_asked()
    assert fired and capsys.readouterr().err == ""
    try:  # the stop went with its preparation: prepare() called alone after it goes on
        stops.stop_if_asked()
    except KeyboardInterrupt:
        pytest.fail("a stop of an ended preparation stopped the next prepare() called alone")
    with stops.signals_as_interrupt():
        stops.stop_if_asked()  # a new preparation starts with no stop asked


def test_data_info_prints_counts_and_writes_png(prepared, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert data_info_main([str(prepared), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "classes: 3" in out and "train: 11 images, per class 3..4" in out and "test: 5 images, per class 1..2" in out
    assert "dog" in out and str(png) in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 150
        # Something was drawn: the grid is not one flat colour.
        assert np.asarray(im.convert("L")).std() > 10

    assert data_info_main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in _one_error_line(capsys)

    # "Check the result" checks the arrays too: a flipped byte passed before.
    changed = tmp_path / "changed"
    changed.mkdir()
    for fname in (*ARRAY_FILES, "meta.json"):
        (changed / fname).write_bytes((prepared / fname).read_bytes())
    images = bytearray((changed / "test_images.npy").read_bytes())
    images[-1] ^= 1  # the last pixel's lowest bit
    (changed / "test_images.npy").write_bytes(bytes(images))
    assert data_info_main([str(changed), "--png", str(tmp_path / "changed.png")]) == 2
    assert (f"{changed / 'test_images.npy'} does not match its checksum in meta.json: the dataset changed after it was "
            f"prepared. Restore the folder, or prepare it again") in _one_error_line(capsys)
    assert not (tmp_path / "changed.png").exists()


def test_hub_name_offline_gives_one_line(tmp_path):
    # A hub name goes through datasets.load_dataset(name, streaming=True); offline it must fail
    # with one line that says what to do, not a traceback.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, str(REPO / "prepare_imagenet.py"), "--source", "nobody-here/no-such-imagenet", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=120, env=env,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "nobody-here/no-such-imagenet" in errors[0] and "unreachable" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_stops_the_preparation_with_75_and_one_line(source, tmp_path, monkeypatch, capsys,
                                                                           sig):
    # Its first seconds (the imports) had no handler: SIGTERM killed it without a word, SIGINT
    # printed a traceback or was swallowed by JAX's gc callback (the preparation then ran on).
    from tests.test_run_folder_inputs import _catches_sigterm

    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, "-m", "cljax", "prepare-imagenet", "--source", str(source["root"]), "--out",
                             str(out), "--workers", "1", "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not _catches_sigterm(proc.pid):
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75 and "Traceback" not in err and f"stopped by {sig.name}" in err, err
    assert not out.exists()
    # ... and in the middle of the work: the workers stopped, the shards done kept (75, as every command).
    def stopped(*args):
        os.kill(os.getpid(), sig)
        time.sleep(5)

    monkeypatch.setattr(imagenet, "_run_shards", stopped)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]) == 75
    assert f"interrupted: finished shards are kept in {imagenet.work_dir_for(out)}" in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers and not out.exists()


def test_data_info_names_its_folder_not_the_png_when_the_folder_is_missing_a_file_or_unreadable(prepared, tmp_path,
                                                                                                 capsys, monkeypatch):
    # A file given as the folder: "--png .../samples.png: cannot write to ... (it is a file)"; an unreadable array:
    # "corrupt or truncated ... prepare one with prepare-imagenet"; an unreadable folder: "cannot write ... --png".
    afile = tmp_path / "afile"
    afile.write_text("x")
    for given, what in ((afile, "is a file, not a folder"), (tmp_path / "nothing", "does not exist")):
        assert data_info_main([str(given)]) == 2
        assert _one_error_line(capsys).startswith(f"error: {given} {what}: prepare one with `cljax prepare-imagenet ")
    real_load = np.load

    def denied(path, *args, **kwargs):
        if Path(path).name == "train_images.npy":
            raise PermissionError(13, "Permission denied", str(path))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", denied)
    assert data_info_main([str(prepared), "--png", str(tmp_path / "s.png")]) == 2
    assert _one_error_line(capsys) == (f"error: cannot read {prepared / 'train_images.npy'} (Permission denied): check "
                                       f"its permissions.")
    monkeypatch.undo()
    import cljax.data.info as info

    def unreadable(folder):
        raise PermissionError(13, "Permission denied", str(folder / "train-images-idx3-ubyte"))

    monkeypatch.setattr(info, "holds_idx_files", unreadable)
    assert data_info_main([str(prepared), "--png", str(tmp_path / "s.png")]) == 2
    assert _one_error_line(capsys) == (f"error: cannot read {prepared / 'train-images-idx3-ubyte'} (Permission "
                                       f"denied): check its permissions.")
    assert not (tmp_path / "s.png").exists()
