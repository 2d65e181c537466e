"""A hub source with no network is one line at once: one connection attempt to the hub's
endpoint before ``datasets`` is imported, where its retries took about 25 s and printed 10
warning lines first."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cljax.data.imagenet.hub import unreachable
from cljax.data.imagenet.sources import plan_source
from cljax.errors import CljaxError

REPO = Path(__file__).resolve().parents[1]
QUIET = {v: "" for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                         "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}


def closed_port() -> int:
    """A local port nothing listens on (bound, then released): a connection there is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_proxy(monkeypatch):
    for var in QUIET:
        monkeypatch.delenv(var, raising=False)


def test_an_endpoint_that_refuses_is_named_with_why(monkeypatch, no_proxy):
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    why = unreachable(timeout=5)
    assert why is not None and why.startswith(f"127.0.0.1:{port}: ") and "refused" in why.lower()
    with pytest.raises(CljaxError) as err:
        plan_source("someone/some-imagenet")
    text = str(err.value)
    assert "\n" not in text and "someone/some-imagenet" in text and f"unreachable (127.0.0.1:{port}: " in text


def test_an_endpoint_that_listens_or_a_proxy_or_offline_mode_is_not_refused(monkeypatch, no_proxy):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert unreachable(timeout=5) is None
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    assert unreachable(timeout=5) is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the libraries connect through it
    assert unreachable(timeout=5) is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # they fail at once themselves
    assert unreachable(timeout=5) is None


def test_the_script_gives_one_line_and_no_retries():
    env = {**os.environ, **QUIET, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(REPO / "prepare_imagenet.py"), "--source", "someone/some-imagenet",
                             "--out", "unused"], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "someone/some-imagenet" in result.stderr and "unreachable" in result.stderr and "Retrying" not in result.stderr
    assert not (REPO / "unused").exists()


def _cache(root: Path, name: str, revisions=("0f1e2d",), main: str | None = "0f1e2d") -> Path:
    """A hub cache's folder of dataset `name` as huggingface_hub lays it out: blobs/, refs/main,
    snapshots/<revision>/data/*.parquet."""
    repo = root / f"datasets--{name.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "8675b00578c09dc7626a483ecf288749a9999e8f").write_bytes(b"")
    for revision in revisions:
        (repo / "snapshots" / revision / "data").mkdir(parents=True)
        (repo / "snapshots" / revision / "data" / "train-00000-of-00001.parquet").write_bytes(b"")
    if main is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(main)
    return repo


def test_a_hub_cache_s_folder_of_a_dataset_is_refused_naming_its_snapshot(tmp_path):
    # It was "neither parquet files nor class subfolders", with no word of the snapshot that works.
    repo = _cache(tmp_path, "ILSVRC/imagenet-1k", revisions=("0f1e2d", "aaaa"))
    for given in (repo, repo / "snapshots"):
        with pytest.raises(CljaxError) as err:
            plan_source(str(given))
        what = "the folder" if given == repo else "the snapshots/ folder"
        assert str(err.value) == (f"{given} is {what} of a dataset in the Hugging Face hub cache, which keeps its files "
                                  f"under snapshots/<revision>/: pass that snapshot, --source {repo}/snapshots/0f1e2d.")
    with pytest.raises(CljaxError, match=r"cannot read parquet file .*snapshots/0f1e2d/data/train-00000-of-00001"):
        plan_source(str(repo / "snapshots" / "0f1e2d"))  # the snapshot is planned as the parquet folder it is


def test_a_hub_name_that_cannot_be_opened_names_its_download_in_the_hub_cache(tmp_path, monkeypatch, no_proxy):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = _cache(tmp_path / "hf" / "hub", "someone/some-imagenet", main=None) / "snapshots" / "0f1e2d"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(CljaxError) as err:
        plan_source("someone/some-imagenet")
    assert str(err.value).endswith(f"; a download of it is in the hub cache: pass --source {snapshot}.")
    with pytest.raises(CljaxError) as err:
        plan_source("someone/other-imagenet")  # none in the cache: no hint
    assert "hub cache" not in str(err.value)
    pytest.importorskip("datasets", reason="the imagenet extra is not installed: pip install 'cljax[imagenet]'")
    # Offline mode: datasets' own refusal, with the hint. In a process of its own: the hub library
    # reads HF_HUB_OFFLINE when it is first imported.
    env = {**os.environ, **QUIET, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
           "PYTHONPATH": str(REPO)}
    env.pop("HF_ENDPOINT", None)
    result = subprocess.run([sys.executable, str(REPO / "prepare_imagenet.py"), "--source", "someone/some-imagenet",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "the hub is unreachable" in lines[0] and lines[0].endswith(f"pass --source {snapshot}.")
