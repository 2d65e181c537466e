"""Whether the Hugging Face hub can be reached, asked once before ``datasets`` is imported.

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
