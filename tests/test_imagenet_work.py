"""The preparation's output lock and its work folder OUT.partial: a second preparation into the
same --out is refused before it touches anything, and a work folder left beside a complete
output is removed when it is this preparation's, named when not. On the small hub-layout source
of tests/imagenet_kit.py."""

from __future__ import annotations

import errno
import json
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.out_lock import OutputLock, lock_path_for
from cljax.data.imagenet.prepare import prepare_imagenet, prepare_main
from cljax.data.imagenet.shards import DatasetsShard
from cljax.data.prepared import ARRAY_FILES, load_prepared
from cljax.errors import CljaxError

from tests.imagenet_kit import REPO, module_fixtures, write_parquet  # skips the module without datasets
from tests.test_imagenet_sources import _folder, _stopped_after_first_shard

source, prepared = module_fixtures()

_HOLD = ("import sys, time; from pathlib import Path; from cljax.data.imagenet.out_lock import OutputLock; "
         "lock = OutputLock(Path(sys.argv[1])).__enter__(); print('held', flush=True); time.sleep(120)")


def _lines(capsys) -> tuple[str, list[str]]:
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_a_second_preparation_into_the_same_out_is_refused_naming_the_holder(source, tmp_path, capsys):
    out = tmp_path / "out"
    work = imagenet.work_dir_for(out)
    work.mkdir()
    in_flight = work / ".train-00000.npz.tmp-4242"  # the other preparation's shard being written
    in_flight.write_bytes(b"half a shard")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]
        assert prepare_main(args) == 2
        _, err = _lines(capsys)
        assert len(err) == 1 and err[0].startswith(f"error: {out} is being prepared by another cljax prepare-imagenet "
                                                   f"(pid {holder.pid} on {socket.gethostname()}, since "), err
        assert in_flight.read_bytes() == b"half a shard" and not out.exists()  # nothing touched
        with pytest.raises(CljaxError, match=f"pid {holder.pid}"):  # the library call too
            prepare_imagenet(str(source["root"]), out, workers=1, progress=False)
    finally:
        holder.kill()
        holder.wait()
    # The holder has died: its lock is free.
    assert prepare_main([*args, "--overwrite"]) == 0
    assert not lock_path_for(out).exists() and not work.exists()


def test_the_lock_file_is_removed_and_a_file_of_that_name_not_ours_is_refused(source, tmp_path, capsys):
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(CljaxError, match="does not exist"):
        prepare_imagenet(str(tmp_path / "no_source"), out, progress=False)
    assert not (tmp_path / "deep").exists()  # the folders made to hold the lock are removed again
    lock = lock_path_for(tmp_path / "o2")
    lock.write_text("my notes")
    assert prepare_main(["--source", str(source["root"]), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    _, err = _lines(capsys)
    assert len(err) == 1 and f"{lock} is not cljax's lock file" in err[0]
    assert lock.read_text() == "my notes" and not (tmp_path / "o2").exists()
    with OutputLock(tmp_path / "o3"):
        assert lock_path_for(tmp_path / "o3").is_file()
    assert not lock_path_for(tmp_path / "o3").exists()


def _copy(prepared, out):
    out.mkdir()
    for fname in (*ARRAY_FILES, "meta.json"):
        shutil.copyfile(prepared / fname, out / fname)


def test_already_prepared_removes_its_own_stale_work_folder_and_names_another(source, prepared, tmp_path, capsys):
    out = tmp_path / "out"
    _copy(prepared, out)
    meta = load_prepared(out).meta
    work = imagenet.work_dir_for(out)
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"source": meta["source"], "preprocessing": meta["preprocessing"]}))
    (work / "train-00000.npz").write_bytes(b"a shard")
    (work / ".train-00001.npz.tmp-77").write_bytes(b"half a shard")
    args = ["--source", str(source["root"]), "--out", str(out)]
    assert prepare_main(args) == 0
    stdout, err = _lines(capsys)
    assert "already prepared" in stdout and not work.exists()
    assert err == [f"note: removed {work}, the work folder of this same preparation, left behind when it ended."]

    # Work of another preparation (other settings) is kept, and named.
    work.mkdir()
    other = {**meta["preprocessing"], "resample": "bilinear"}
    (work / "plan.json").write_text(json.dumps({"source": meta["source"], "preprocessing": other}))
    (work / "train-00000.npz").write_bytes(b"a shard")
    assert prepare_main(args) == 0
    stdout, err = _lines(capsys)
    assert "already prepared" in stdout and (work / "train-00000.npz").exists()
    assert err == [f"note: {work} is not used by {out} and is kept: it holds unfinished work of another preparation "
                   f"(of {meta['source']}, or with other settings); delete it if you do not need it."]
    # ... and so is one holding a file that is not cljax's.
    (work / "plan.json").write_text(json.dumps({"source": meta["source"], "preprocessing": meta["preprocessing"]}))
    (work / "notes.txt").write_text("mine")
    prepare_imagenet(str(source["root"]), out, progress=False)  # the library call: the same
    assert (work / "notes.txt").exists()
    assert "it holds files that are not cljax's (notes.txt)" in _lines(capsys)[1][0]


def _assert_same_arrays(out, other) -> None:
    """The output folder's arrays are byte for byte another preparation's."""
    for fname in ARRAY_FILES:
        assert (out / fname).read_bytes() == (other / fname).read_bytes(), fname


def _recording(monkeypatch) -> list[str]:
    """The names of the shards processed from now on."""
    real, seen = imagenet.process_shard, []
    monkeypatch.setattr(imagenet, "process_shard", lambda shard, *a, **k: seen.append(shard.name) or real(shard, *a, **k))
    return seen


def test_a_bad_image_replaced_in_a_parquet_file_resumes_redoing_only_that_files_shards(source, prepared, tmp_path,
                                                                                          monkeypatch, capsys):
    # The advice "replace it and rerun the same command" was refused: the work's fingerprint
    # held the file's size, so the whole work folder was "from a different preparation".
    root = tmp_path / "src"
    shutil.copytree(source["root"], root)
    second = root / "data" / "train-00001-of-00002.parquet"
    good = second.read_bytes()
    write_parquet(second, [source["train"][7], b"\xff\xd8 not a jpeg", *source["train"][9:]], source["train_labels"][7:])
    out = tmp_path / "out"
    args = ["--source", str(root), "--out", str(out), "--workers", "1", "--shard-rows", "4", "--no-progress"]
    assert prepare_main(args) == 2
    _, err = _lines(capsys)
    assert len(err) == 1 and f"{second} row 1" in err[0] and err[0].endswith(
        "replace that row's image with a readable one (or remove the row, or re-download the file) and rerun the same "
        "command (the shards done from the other files are kept).")
    work = imagenet.work_dir_for(out)
    assert sorted(p.stem for p in work.glob("*.npz")) == ["train-00000", "train-00001"]  # the first file's
    second.write_bytes(good)
    seen = _recording(monkeypatch)
    assert prepare_main(args) == 0
    assert seen == ["train-00002", "test-00000"]
    _assert_same_arrays(out, prepared)


def test_a_bad_image_removed_from_an_image_folder_resumes_and_a_finished_shard_of_a_changed_file_is_redone(
        tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "src", {"train": {"ant": 3, "bee": 3}, "val": {"ant": 1, "bee": 1}})
    bad = root / "train" / "bee" / "01.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(CljaxError, match=re.escape(f"cannot decode the image at {bad} (not a known image format): "
                                                   f"replace it with a readable image, or remove it, and rerun the same "
                                                   f"command (the shards done before it are kept).")):
        prepare_imagenet(str(root), out, workers=1, shard_rows=2, progress=False)
    bad.unlink()
    seen = _recording(monkeypatch)
    prepare_imagenet(str(root), out, workers=1, shard_rows=2, progress=False)
    assert seen == ["train-00002", "test-00000"]  # train-00000 (ant 00, 01) and train-00001 (ant 02, bee 00) kept
    fresh = tmp_path / "fresh"
    prepare_imagenet(str(root), fresh, workers=1, shard_rows=2, progress=False)
    _assert_same_arrays(out, fresh)

    # A file of a finished shard removed: that shard and those after it are done again.
    out = tmp_path / "out2"
    _stopped_after_first_shard(root, out, monkeypatch)
    (root / "train" / "ant" / "00.png").unlink()
    seen = _recording(monkeypatch)
    capsys.readouterr()
    prepare_imagenet(str(root), out, workers=1, shard_rows=2, progress=False)
    assert seen == ["train-00000", "train-00001", "test-00000"]
    assert capsys.readouterr().err.splitlines()[0] == (
        f"note: 1 finished shard of {imagenet.work_dir_for(out)} (train-00000) came from source files that changed "
        f"since; it is prepared again, the others kept.")
    prepare_imagenet(str(root), fresh, workers=1, shard_rows=2, overwrite=True, progress=False)
    _assert_same_arrays(out, fresh)


def _as_an_earlier_cljax_wrote_it(shard) -> None:
    """A finished shard file without the record of its image files (before it was kept)."""
    with np.load(shard) as z:
        arrays = {"images": z["images"], "labels": z["labels"]}
    np.savez(shard, **arrays)


def test_an_image_replaced_in_place_under_its_name_redoes_its_finished_shard(tmp_path, monkeypatch, capsys):
    # A shard's identity is its file list: a finished shard whose image was replaced under the
    # same name was kept, and the output mixed the old image's pixels with the new source.
    root = _folder(tmp_path / "src", {"train": {"ant": 3, "bee": 3}, "val": {"ant": 1, "bee": 1}})
    fresh = tmp_path / "fresh"
    for out, change, why in (
            (tmp_path / "out", lambda shard: (root / "train" / "ant" / "00.png").write_bytes(
                (root / "train" / "bee" / "02.png").read_bytes()), "came from source files that changed since"),
            (tmp_path / "old", _as_an_earlier_cljax_wrote_it,
             "came from an earlier cljax, which kept no record of its source files' times of change")):
        change(_stopped_after_first_shard(root, out, monkeypatch))
        seen = _recording(monkeypatch)
        capsys.readouterr()
        prepare_imagenet(str(root), out, workers=1, shard_rows=2, progress=False)
        assert seen == ["train-00000", "train-00001", "train-00002", "test-00000"]
        assert capsys.readouterr().err.splitlines()[0] == (
            f"note: 1 finished shard of {imagenet.work_dir_for(out)} (train-00000) {why}; it is prepared again, the "
            f"others kept.")
        prepare_imagenet(str(root), fresh, workers=1, shard_rows=2, overwrite=True, progress=False)
        _assert_same_arrays(out, fresh)
        monkeypatch.undo()


def test_a_parquet_file_replaced_in_place_redoes_its_finished_shard_under_the_datasets_reader(source, tmp_path,
                                                                                               monkeypatch, capsys):
    # Read through `datasets`, a shard's identity is the list of the split's files: a finished
    # shard whose file was re-exported under the same name was kept, mixing the old file's rows in.
    root = tmp_path / "src"
    shutil.copytree(source["root"], root)
    first = root / "data" / "train-00000-of-00002.parquet"
    fresh = tmp_path / "fresh"
    for out, change, why in (
            (tmp_path / "out", lambda shard: write_parquet(first, source["train"][6::-1], source["train_labels"][6::-1]),
             "came from source files that changed since"),
            (tmp_path / "old", _as_an_earlier_cljax_wrote_it,
             "came from an earlier cljax, which kept no record of its source files' times of change")):
        change(_stopped_after_first_shard(root, out, monkeypatch, reader="datasets"))
        seen = _recording(monkeypatch)
        capsys.readouterr()
        prepare_imagenet(str(root), out, workers=1, reader="datasets", progress=False)
        assert seen == ["train-00000", "train-00001", "test-00000"]
        assert capsys.readouterr().err.splitlines()[0] == (
            f"note: 1 finished shard of {imagenet.work_dir_for(out)} (train-00000) {why}; it is prepared again, the "
            f"others kept.")
        prepare_imagenet(str(root), fresh, workers=1, reader="datasets", overwrite=True, progress=False)
        _assert_same_arrays(out, fresh)
        monkeypatch.undo()
    # Unchanged files: a resume keeps the finished shard. A hub dataset's shards record no files.
    out = tmp_path / "kept"
    _stopped_after_first_shard(root, out, monkeypatch, reader="datasets")
    seen = _recording(monkeypatch)
    prepare_imagenet(str(root), out, workers=1, reader="datasets", progress=False)
    assert seen == ["train-00001", "test-00000"]
    hub = DatasetsShard("train-00000", "train", "train", None, json.dumps({"path": "ILSVRC/imagenet-1k"}), 0, 294,
                        "image", "label")
    assert hub.source_files() == ()


def test_a_resume_made_otherwise_says_what_differs(tmp_path, monkeypatch):
    root = _folder(tmp_path / "src", {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    _stopped_after_first_shard(root, tmp_path / "out", monkeypatch)
    work = imagenet.work_dir_for(tmp_path / "out")
    for kwargs, what in [({"resample": "bilinear"}, "--resample area there, bilinear in this command"),
                         ({"split_map": {"train": "train"}}, "--splits train validation:test there, train in this "
                                                             "command"),
                         ({"shard_rows": 3}, "--shard-rows 2 there, 3 in this command")]:
        with pytest.raises(CljaxError, match=re.escape(
                f"{work} holds work from a different preparation: {what}; rerun with the arguments it was made with "
                f"to finish it, or pass --overwrite to discard it and start again.")):
            prepare_imagenet(str(root), tmp_path / "out", workers=1, **{"shard_rows": 2, **kwargs}, progress=False)
    (root / "train" / "cat").mkdir()
    (root / "val" / "cat").mkdir()
    for split in ("train", "val"):
        shutil.copyfile(root / "train" / "ant" / "00.png", root / split / "cat" / "00.png")
    with pytest.raises(CljaxError, match=re.escape("different preparation: the source's classes changed (new: cat);")):
        prepare_imagenet(str(root), tmp_path / "out", workers=1, shard_rows=2, progress=False)
    # A mistyped source with --overwrite loses no work.
    with pytest.raises(CljaxError, match="does not exist"):
        prepare_imagenet(str(tmp_path / "typo"), tmp_path / "out", workers=1, shard_rows=2, overwrite=True,
                         progress=False)
    assert (work / "train-00000.npz").exists()


@pytest.mark.parametrize("failure, why", [
    (OSError("188160 requested and 24448 written"), "a short write: 188160 requested and 24448 written"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device")])
def test_a_full_disk_is_said_so_naming_the_file(source, tmp_path, monkeypatch, capsys, failure, why):
    # It was numpy's bare "188160 requested and 24448 written (OUT); free space or fix permissions".
    def full(*args, **kwargs):
        raise failure

    import cljax.data.full_disk as full_disk

    told = []  # the free space is told once the half-written file is gone (it said "0 bytes free")
    monkeypatch.setattr(full_disk.shutil, "disk_usage", lambda folder: told.append(
        sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)) or shutil._ntuple_diskusage(9, 9, 9))
    out = tmp_path / "out"
    args = ["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--shard-rows", "4", "--no-progress"]
    monkeypatch.setattr(np, "savez", lambda f, **arrays: (f.write(b"half"), full()))  # a work shard, half written
    assert prepare_main(args) == 2
    _, err = _lines(capsys)
    shard = imagenet.work_dir_for(out) / "train-00000.npz"
    assert len(err) == 1 and err[0].startswith(f"error: the disk is full ({why}) while writing {shard} (about 4.6 KiB "
                                               f"needed, "), err
    assert err[0].endswith("free there): free space or choose a folder on another disk, then rerun the same command "
                           "(the shards done are kept).")
    assert not list(imagenet.work_dir_for(out).glob(".*.tmp-*"))  # the half-written shard is removed
    assert told == [[]] and err[0].endswith("(about 4.6 KiB needed, 9 B free there): free space or choose a "
                                            "folder on another disk, then rerun the same command (the shards done "
                                            "are kept).")
    monkeypatch.undo()
    monkeypatch.setattr(np, "save", full)  # the assembly
    assert prepare_main(args) == 2
    _, err = _lines(capsys)
    written = tmp_path / "out.tmp-write" / "train_images.npy"
    assert len(err) == 1 and err[0].startswith(f"error: the disk is full ({why}) while writing {written} (about "), err
    assert not written.parent.exists() and not out.exists() and len(list(imagenet.work_dir_for(out).glob("*.npz"))) == 4


def test_work_of_an_earlier_cljax_is_named_as_such(source, tmp_path, capsys):
    # Its plan.json has a fingerprint and no record of how it was made: "rerun with the arguments it
    # was made with" could not finish it.
    out = tmp_path / "out"
    work = imagenet.work_dir_for(out)
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"source": "x", "out": str(out), "shards": 3, "fingerprint": "ab" * 32}))
    before = sorted(p.name for p in work.iterdir())
    assert prepare_main(["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    _, err = _lines(capsys)
    assert err == [f"error: {work} holds work of a preparation started by an earlier cljax, whose plan.json this one "
                   f"cannot compare: finish it with the cljax that started it, or pass --overwrite to discard it and "
                   f"start again."]
    assert sorted(p.name for p in work.iterdir()) == before


def test_a_complete_output_on_a_read_only_folder_is_still_already_prepared(source, prepared, tmp_path, monkeypatch,
                                                                          capsys):
    # The lock file cannot be made there: an idempotent prepare before `run` on a shared
    # read-only data folder was refused ("Read-only file system (OUT.lock)"), where it said "nothing to do".
    out = tmp_path / "out"
    shutil.copytree(prepared, out)

    def read_only(self):
        raise OSError(errno.EROFS, "Read-only file system", str(lock_path_for(out)))

    monkeypatch.setattr(OutputLock, "__enter__", read_only)
    args = ["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]
    assert prepare_main(args) == 0
    assert "is already prepared" in capsys.readouterr().out
    assert prepare_main([*args[:3], str(tmp_path / "new"), *args[4:]]) == 2  # nothing there: still refused
    assert "Read-only file system" in capsys.readouterr().err


def test_a_work_folder_without_record_or_shard_is_new_and_one_with_a_user_s_file_is_kept(source, tmp_path, capsys):
    # An OUT.partial holding only an empty .plan.json.tmp (a full disk, or a stop, before the record)
    # was refused as "a different preparation" for good; a resume then deleted a user's notes in it.
    out = tmp_path / "out"
    work = imagenet.work_dir_for(out)
    work.mkdir()
    (work / ".plan.json.tmp").write_text("")
    args = ["--source", str(source["root"]), "--out", str(out), "--workers", "1", "--no-progress"]
    assert prepare_main(args) == 0 and not work.exists()
    assert prepare_main([*args, "--overwrite"]) == 0
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert prepare_main([*args, "--overwrite"]) == 2  # --overwrite refuses to delete it ...
    capsys.readouterr()
    shutil.rmtree(out)
    (work / "plan.json").unlink(missing_ok=True)
    assert prepare_main(args) == 2  # ... a folder with a user's file and no record is not taken as new either
    assert (work / "notes.txt").read_text() == "mine"


def test_finished_work_with_a_user_s_file_is_kept_and_named(tmp_path):
    from cljax.data.imagenet.work import remove_finished_work

    work = tmp_path / "out.partial"
    work.mkdir()
    (work / "train-00000.npz").write_bytes(b"shard")
    (work / "notes.txt").write_text("mine")
    said = []
    remove_finished_work(work, said.append)
    assert (work / "notes.txt").read_text() == "mine" and said == [
        f"note: {work} holds files that are not cljax's (notes.txt); it is kept: delete it when you no longer need them."]
    (work / "notes.txt").unlink()
    remove_finished_work(work, said.append)
    assert not work.exists()


def test_a_lock_whose_record_cannot_be_written_lets_its_file_go(tmp_path, monkeypatch):
    # A full disk at the holder's record: the descriptor stayed open (the lock held) until exit.
    import os

    from cljax.run_lock import RunLock

    before = len(os.listdir("/proc/self/fd"))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(OSError, match="No space left"):
        RunLock(tmp_path).__enter__()
    assert len(os.listdir("/proc/self/fd")) == before
