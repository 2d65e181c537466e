"""Where the analysis writes: it replaces only what an analysis wrote (cljax/analysis/out_folder.py)."""

import hashlib
import json
import os

import numpy as np
import pytest

from cljax.analysis import analyze_run
from cljax.errors import CljaxError
from tests.run_folder_kit import assert_one_error, run_cli, state
from tests.test_analysis_driver import write_fake_run

FAST = {"glue": False, "make_plots": False}


def fake_run(algo, run_id=None):
    write_fake_run(algo)
    if run_id is not None:
        for d in sorted(algo.glob("task_*")):
            meta = json.loads((d / "metadata.json").read_text())
            files = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                     for p in d.iterdir() if p.name != "metadata.json"}  # a folder with a run id lists its files
            (d / "metadata.json").write_text(json.dumps({**meta, "run_id": run_id, "files": files}))
    return algo


def test_a_folder_that_is_no_analysis_keeps_a_file_of_an_analysis_name_and_gets_nothing(tmp_path, capsys):
    algo = fake_run(tmp_path / "run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.json").write_text("my notes")
    (mine / "notes.txt").write_text("kept")
    before = state(mine)
    rc, _, err = run_cli(["analyze", str(algo), "--no-glue", "--no-plots", "--out", str(mine)], capsys)
    assert_one_error(rc, err, f"{mine} (--out) holds summary.json", "no earlier cljax analysis", "nothing was written")
    assert state(mine) == before and (mine / "summary.json").read_text() == "my notes"
    (mine / "summary.json").unlink()  # no summary: a name only the write reaches is refused there, all the same
    (mine / "cl.npz").write_text("mine too")
    before = state(mine)
    with pytest.raises(CljaxError, match=r"holds cl\.npz, which this analysis would replace, and is no earlier"):
        analyze_run(algo, mine, **FAST)
    assert state(mine) == before  # no temporary file, no summary.json


def test_an_earlier_analysis_of_the_same_run_is_replaced_and_other_files_are_left(tmp_path):
    algo = fake_run(tmp_path / "run", run_id="aaaa")
    out = tmp_path / "out"
    first = analyze_run(algo, out, **FAST)
    assert first["run_id"] == "aaaa" and json.loads((out / "summary.json").read_text())["run_id"] == "aaaa"
    written = dict(np.load(out / "cl.npz"))
    (out / "notes.txt").write_text("kept")
    (out / "cl.npz").write_bytes(b"stale")  # an earlier analysis's file, whatever it holds now
    again = analyze_run(algo, out, **FAST)
    assert again["files"] == first["files"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*first["files"], "notes.txt"])
    assert (out / "notes.txt").read_text() == "kept"
    again_cl = np.load(out / "cl.npz")
    assert sorted(again_cl) == sorted(written) and written["initial_acc"].shape == (2, 3)
    for key, value in written.items():
        np.testing.assert_array_equal(again_cl[key], value)


def test_the_analysis_of_another_run_or_a_linked_file_is_refused(tmp_path):
    out = tmp_path / "out"
    analyze_run(fake_run(tmp_path / "a", run_id="aaaa"), out, **FAST)
    before = state(out)
    with pytest.raises(CljaxError, match=r"holds the analysis of another run \(.*run id aaaa\)"):
        analyze_run(fake_run(tmp_path / "b", run_id="bbbb"), out, **FAST)
    assert state(out) == before
    (out / "cl.npz").rename(tmp_path / "elsewhere.npz")
    os.symlink(tmp_path / "elsewhere.npz", out / "cl.npz")
    with pytest.raises(CljaxError, match=r"holds cl\.npz, which this analysis would replace, and no analysis writes "
                                         r"it \(.*a link\)"):
        analyze_run(tmp_path / "a", out, **FAST)
    assert (out / "cl.npz").is_symlink()


def test_a_summary_without_a_run_id_is_taken_as_this_runs(tmp_path):
    """Analyses written before the run id was recorded are replaced, as they were."""
    algo = fake_run(tmp_path / "run", run_id="aaaa")
    out = tmp_path / "out"
    analyze_run(algo, out, **FAST)
    old = json.loads((out / "summary.json").read_text())
    del old["run_id"], old["files"]
    (out / "summary.json").write_text(json.dumps(old))
    assert analyze_run(algo, out, **FAST)["run_id"] == "aaaa"


def test_the_runs_own_analysis_folder_is_its_analysis_even_without_a_summary(tmp_path):
    algo = fake_run(tmp_path / "run")
    analyze_run(algo, **FAST)
    (algo / "analysis" / "summary.json").unlink()  # say, removed by hand
    (algo / "analysis" / "notes.txt").write_text("kept")
    summary = analyze_run(algo, **FAST)
    assert summary["run_id"] is None  # the fake run records none
    assert sorted(p.name for p in (algo / "analysis").iterdir()) == sorted([*summary["files"], "notes.txt"])


def test_files_an_analysis_killed_before_renaming_them_left_are_removed_by_the_next(tmp_path):
    # An analyze killed (SIGKILL) while writing left .tmp-PID-cl.npz and the like for good.
    import subprocess
    import sys

    from cljax.analysis.out_folder import remove_stale_temporaries

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    import socket

    here = socket.gethostname()
    kept = [f".tmp-{os.getppid()}@{here}@glue.npz", f".tmp-{dead}@another-host@cl.npz", f".tmp-{dead}-curves.npz",
            f".tmp-{dead}@{here}@notes.txt", f".tmp-{dead}-mydata", ".tmp-x-a.npz", "notes.txt",
            f".tmp-{dead}@{here}@cl.npz.tmp-{dead}", f"..tmp-{dead}@{here}@cl.npz"]
    # a plot's own temporary of its temporary (a stop while it is drawn: it was left for good)
    for name in [f".tmp-{dead}@{here}@cl.npz", f".tmp-{os.getpid()}@{here}@probe.png",
                 f"..tmp-{dead}@{here}@accuracy_matrix.png.tmp-{dead}", *kept]:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_temporaries(tmp_path)
    # this host's dead and own temporaries of an analysis's files go; a live process's (the
    # parent's), another host's (its pid means nothing here), an older cljax's (no host) and a
    # user's files (a name no analysis writes, though it starts as theirs) stay
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_files_an_earlier_analysis_wrote_and_this_one_does_not_are_removed_with_a_note(tmp_path, capsys):
    # A plugin's file, or GLUE's under --no-glue: removed so the folder is one analysis, but it was silent.
    algo = fake_run(tmp_path / "run", run_id="aaaa")
    out = tmp_path / "out"
    analyze_run(algo, out, glue=True, make_plots=False)
    assert (out / "glue.npz").is_file()
    capsys.readouterr()
    analyze_run(algo, out, **FAST)
    assert not (out / "glue.npz").exists()
    assert f"note: removed glue.npz from {out}: the earlier analysis there wrote it, and this one does not" in \
        capsys.readouterr().err


def test_a_stop_as_the_new_files_are_renamed_leaves_no_file_that_no_summary_lists(tmp_path, monkeypatch):
    # Killed just after the new summary.json was renamed into place, the earlier analysis's
    # glue.npz stayed for good: the next analysis removed only what that new summary listed.
    algo = fake_run(tmp_path / "run", run_id="aaaa")
    out = tmp_path / "out"
    analyze_run(algo, out, glue=True, make_plots=False)
    real_replace, renamed = os.replace, []

    def stop_after_the_summary(src, dst):
        real_replace(src, dst)
        renamed.append(dst)
        raise KeyboardInterrupt  # as a SIGKILL there would leave it

    monkeypatch.setattr(os, "replace", stop_after_the_summary)
    with pytest.raises(KeyboardInterrupt):
        analyze_run(algo, out, **FAST)
    monkeypatch.undo()
    assert [p.name for p in renamed] == ["summary.json"]
    listed = set(json.loads((out / "summary.json").read_text())["files"])
    on_disk = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert on_disk <= listed | {"summary.json"}, on_disk - listed  # glue.npz is not left beside them
    analyze_run(algo, out, **FAST)  # the rerun: the same analysis, whole
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} <= listed | {"summary.json"}


@pytest.mark.parametrize("files", [["cl.npz", ["x"], {"a": 1}, 5], "cl.npz", None])
def test_an_earlier_summary_whose_file_list_was_edited_is_replaced_without_a_traceback(tmp_path, files):
    # ["x"] in its "files": TypeError (unhashable list) after the new files were written, and their
    # temporaries left in the folder, on every rerun.
    algo = fake_run(tmp_path / "run", run_id="aaaa")
    out = tmp_path / "out"
    first = analyze_run(algo, out, **FAST)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps({**summary, "files": files}))
    again = analyze_run(algo, out, **FAST)
    assert again["files"] == first["files"] and sorted(p.name for p in out.iterdir()) == sorted(first["files"])
