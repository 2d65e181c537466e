"""Whether the Hugging Face hub can be reached, asked once before ``datasets`` is imported; and
where the hub's cache keeps a dataset's files, for the refusals that point to them.

Without a network, ``datasets.load_dataset(name, streaming=True)`` retries each request with
back-off: 10 lines of warnings and about 25 s before it gives up (measured where name
resolution fails at once; longer where connections time out). A hub source is streamed, never
read from a local cache, so it cannot be prepared offline at all. One connection attempt to the
hub's endpoint, made first, tells that in at most ``TIMEOUT_S`` (the hub library's own timeout
for a request).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT_S = 10.0


def _set(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def unreachable(timeout: float = TIMEOUT_S) -> str | None:
    """Why the hub's endpoint (``HF_ENDPOINT`` or huggingface.co) takes no connection within
    ``timeout`` seconds, or None: it does, offline mode is asked for (the libraries then fail at
    once themselves), or a proxy is set (they connect through it, so a direct attempt says
    nothing)."""
    if any(_set(os.environ.get(v)) for v in OFFLINE_VARS) or any(os.environ.get(v) for v in PROXY_VARS):
        return None
    url = urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    if not url.hostname:
        return None  # not a URL to try; the libraries report it
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except ValueError:
        return None  # a port out of range: the libraries report it
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or type(exc).__name__}"
    return None


def resolve_revision(name: str, revision: str | None) -> str | None:
    """The commit of hub dataset ``name`` that ``revision`` (a branch, tag or commit; None: its
    main branch) names now. The preparation streams that commit, so its workers, and a resume days
    later, read the same files however the dataset changes on the hub; meta.json records it."""
    from huggingface_hub import HfApi

    return HfApi().dataset_info(name, revision=revision).sha


def hub_cache() -> Path:
    """The hub's cache folder, found as huggingface_hub finds it: HF_HUB_CACHE (or its older name
    HUGGINGFACE_HUB_CACHE), else HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub (~/.cache)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface" / "hub"


def cached_snapshot(repo_folder: Path) -> Path | None:
    """The folder to prepare from in a hub cache's folder of one dataset (``datasets--OWNER--NAME``,
    whose blobs/ are named by hash): its snapshot of the revision refs/main names, else its newest
    snapshot; None without one."""
    snapshots = repo_folder / "snapshots"
    try:
        main = (repo_folder / "refs" / "main").read_text().strip()
    except (OSError, UnicodeDecodeError):
        main = ""
    if main and (snapshots / main).is_dir():
        return snapshots / main
    try:
        found = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def cache_folder_refusal(path: Path) -> str | None:
    """The refusal of a SOURCE folder that is a hub cache's folder of a dataset (or its
    snapshots/), which holds its files under snapshots/<revision>/ only; None for another folder."""
    repo = path.parent if path.name == "snapshots" else path
    if not (repo.name.startswith("datasets--") and (repo / "snapshots").is_dir()):
        return None
    snapshot = cached_snapshot(repo)
    where = f"--source {snapshot}" if snapshot else f"--source {repo / 'snapshots'}/<revision> once a download has finished"
    what = "the snapshots/ folder" if path != repo else "the folder"
    return (f"{path} is {what} of a dataset in the Hugging Face hub cache, which keeps its files under "
            f"snapshots/<revision>/: pass that snapshot, {where}.")


def cached_hint(name: str) -> str:
    """For a hub name that cannot be opened: the snapshot of it in the hub cache to prepare from
    instead ("" when there is none)."""
    snapshot = cached_snapshot(hub_cache() / f"datasets--{name.replace('/', '--')}")
    return f"; a download of it is in the hub cache: pass --source {snapshot}" if snapshot else ""
