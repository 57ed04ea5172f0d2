"""Hub settings read from the environment at call time (huggingface_hub reads them once, at import)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub base URL: the argument, else ``HF_ENDPOINT`` now, else the public Hub."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is 1/on/yes/true now (huggingface_hub's rule)."""
    return any(
        os.environ.get(var, "").strip().upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The huggingface_hub cache folder, resolved with the library's precedence but from today's env."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var, below in (("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub")):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser() / below
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def endpoint_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Quick TCP probe of an endpoint, so a dead server fails in milliseconds instead of ~23 s of retries."""
    if any(os.environ.get(k) for k in _PROXY_VARS):
        return True  # behind a proxy a direct connect proves nothing; let the client try
    parts = urlsplit(endpoint)
    if parts.hostname is None:
        return False
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return port_open(parts.hostname, port, timeout=timeout)
