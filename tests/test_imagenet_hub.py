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
