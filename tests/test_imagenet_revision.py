"""A hub dataset is prepared from one commit: the one its name (or --revision) names when the
preparation starts. Every shard streams that commit, meta.json records it, and a resume after
the dataset changed on the hub is refused in one line that says how to finish the work. The hub
is simulated: its API answers with a commit, and its name streams the test's parquet files."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.imagenet_kit import module_fixtures  # skips the module without datasets

import datasets  # noqa: E402  (after the kit, which skips without it)
import huggingface_hub  # noqa: E402

from cljax.data.imagenet import prepare as imagenet  # noqa: E402
from cljax.data.imagenet import sources  # noqa: E402
from cljax.data.imagenet.prepare import prepare_imagenet, prepare_main  # noqa: E402
from cljax.errors import CljaxError  # noqa: E402

source, prepared = module_fixtures()
NAME, OLD, NEW = "someone/tiny-imagenet", "a" * 40, "b" * 40


@pytest.fixture
def hub(source, monkeypatch):
    """The simulated hub: ``hub.commit`` is what its main branch names; ``hub.streamed`` the
    revisions each load_dataset of the name was given."""
    state = SimpleNamespace(commit=OLD, asked=[], streamed=[])
    files = {split: [str(p) for p in sorted((source["root"] / "data").glob(f"{split}-*.parquet"))]
             for split in ("train", "validation", "test")}
    real = datasets.load_dataset

    def dataset_info(self, name, revision=None, **kwargs):
        state.asked.append(revision)
        return SimpleNamespace(sha=revision if revision and len(revision) == 40 else state.commit)

    def load_dataset(path, *args, revision=None, **kwargs):
        if path != NAME:
            return real(path, *args, revision=revision, **kwargs)
        state.streamed.append(revision)
        return real("parquet", data_files=files, **kwargs)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(sources, "unreachable", lambda: None)
    return state


def test_every_shard_streams_the_commit_the_name_named_at_the_start_and_meta_records_it(hub, prepared, tmp_path):
    out = prepare_imagenet(NAME, tmp_path / "o", workers=1, progress=False)
    assert hub.asked == [None] and set(hub.streamed) == {OLD} and len(hub.streamed) >= 2  # the plan, then the shards
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == NAME and meta["revision"] == OLD
    from cljax.data.info import describe
    from cljax.data.prepared import load_prepared

    assert f"source: {NAME} at commit {OLD}\n" in describe(load_prepared(out), out)  # data-info's
    for fname in ("train_images.npy", "test_labels.npy"):  # the same arrays as the files read directly
        assert (out / fname).read_bytes() == (prepared / fname).read_bytes()
    assert "revision" not in json.loads((prepared / "meta.json").read_text())  # a folder has none


def test_a_resume_after_the_dataset_changed_on_the_hub_is_refused_and_finishes_on_its_commit(hub, tmp_path,
                                                                                            monkeypatch, capsys):
    out = tmp_path / "o"
    real = imagenet.process_shard
    done = []

    def crash_after_one(*args, **kwargs):
        if done:
            raise RuntimeError("simulated crash")
        done.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr(imagenet, "process_shard", crash_after_one)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_imagenet(NAME, out, workers=1, progress=False)
    monkeypatch.setattr(imagenet, "process_shard", real)
    work = imagenet.work_dir_for(out)
    kept = sorted(p.name for p in work.iterdir())
    hub.commit = NEW  # a new commit on the hub's main branch
    assert prepare_main(["--source", NAME, "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"holds work from a different preparation: it streamed commit {OLD} of the hub "
                                     f"dataset, and this command commit {NEW} (the dataset changed on the hub since, "
                                     f"or --revision names another): pass --revision {OLD} to finish it") in err, err
    assert sorted(p.name for p in work.iterdir()) == kept  # nothing deleted
    hub.streamed.clear()
    assert prepare_main(["--source", NAME, "--out", str(out), "--workers", "1", "--no-progress", "--revision", OLD]) == 0
    assert "resuming: 1 of" in capsys.readouterr().err and set(hub.streamed) == {OLD}
    assert json.loads((out / "meta.json").read_text())["revision"] == OLD
    # Finished: a commit named in full is held against the one recorded (a branch name needs the hub).
    assert prepare_main(["--source", NAME, "--out", str(out), "--revision", OLD]) == 0
    assert "is already prepared" in capsys.readouterr().out
    assert prepare_main(["--source", NAME, "--out", str(out), "--revision", NEW]) == 2
    assert f"this command asks for --revision {NEW} (it records {OLD}): pass --overwrite" in capsys.readouterr().err


def test_a_revision_for_a_folder_or_unknown_to_the_hub_is_one_line(hub, source, tmp_path, monkeypatch):
    with pytest.raises(CljaxError, match=r"--revision names a commit of a hub dataset, and .* is a folder: drop "):
        prepare_imagenet(str(source["root"]), tmp_path / "o", workers=1, progress=False, revision=OLD)

    class RevisionNotFoundError(Exception):
        pass

    def unknown(self, name, revision=None, **kwargs):
        raise RevisionNotFoundError(f"Invalid rev id: {revision}")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unknown)
    with pytest.raises(CljaxError, match=rf"cannot open hub dataset {NAME} \(RevisionNotFoundError: Invalid rev id: "
                                         rf"v9\); check --revision v9 \(a branch, tag or commit of {NAME}\)\."):
        prepare_imagenet(NAME, tmp_path / "o", workers=1, progress=False, revision="v9")
    assert not (tmp_path / "o").exists()


def test_a_damaged_output_is_prepared_again_from_the_commit_it_records(hub, tmp_path, capsys):
    # Redone without --overwrite (the same preparation), it streamed wherever the name's main branch was by then.
    out = prepare_imagenet(NAME, tmp_path / "o", workers=1, progress=False)
    images = out / "train_images.npy"
    whole = images.read_bytes()
    images.write_bytes(whole[:200])  # cut short
    hub.commit, hub.streamed = NEW, []
    assert prepare_main(["--source", NAME, "--out", str(out), "--workers", "1", "--no-progress",
                         "--revision", NEW]) == 2  # another commit, named in full: not the same preparation
    assert f"this command asks for --revision {NEW} (it records {OLD})" in capsys.readouterr().err
    assert prepare_main(["--source", NAME, "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert set(hub.streamed) == {OLD} and images.read_bytes() == whole
    assert json.loads((out / "meta.json").read_text())["revision"] == OLD
