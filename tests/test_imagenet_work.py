"""The preparation's output lock and its work folder OUT.partial: a second preparation into the
same --out is refused before it touches anything, and a work folder left beside a complete
output is removed when it is this preparation's, named when not. On the small hub-layout source
of tests/imagenet_kit.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys

import pytest

import cljax.data.imagenet.prepare as imagenet
from cljax.data.imagenet.out_lock import OutputLock, lock_path_for
from cljax.data.imagenet.prepare import prepare_imagenet, prepare_main
from cljax.data.prepared import ARRAY_FILES, load_prepared
from cljax.errors import CljaxError

from tests.imagenet_kit import REPO, module_fixtures  # skips the module without datasets

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
