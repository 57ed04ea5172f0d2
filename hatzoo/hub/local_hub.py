"""A real, self-hosted Hub (olah) on 127.0.0.1 over a folder of git repositories, for tests and demos.

olah serves every git repository under ``<mirror_root>/models/<org>/<name>`` through the Hugging Face
Hub HTTP API, so the real ``huggingface_hub`` client (``snapshot_download``, ``hf_hub_download``, timm's
``hf-hub:`` loader) works against it unchanged. Revisions (branch, tag, full or short commit sha) are
resolved by git itself, and a new commit is served at once. olah has no upload API: publish into the
mirror with :func:`hatzoo.hub.publish.publish_git`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from hatzoo.errors import HubError
from hatzoo.hub._env import port_open

__all__ = ["LocalHub", "free_port", "port_open", "repo_folder"]


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the OS for a TCP port that is free right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a child process: SIGTERM, then SIGKILL after ``grace`` seconds; always reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=grace)


def repo_folder(mirror_root: str | os.PathLike[str], repo_id: str) -> Path:
    """The git repository folder olah serves for a model repo id: ``<mirror_root>/models/<org>/<name>``."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise HubError(f"invalid repo id {repo_id!r}: expected 'org/name', e.g. 'hatzoo/hat-vit-small'")
    return Path(mirror_root) / "models" / parts[0] / parts[1]


def _death_signal_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the server when its parent dies (libc loaded up front)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


def _config_text(host: str, port: int, repos_path: Path, mirror_root: Path) -> str:
    """olah's TOML settings: offline (never reach the public Hub), one mirrors path, no metadata caching."""
    return (
        "[basic]\n"
        f"host = {json.dumps(host)}\n"
        f"port = {port}\n"
        f"repos-path = {json.dumps(str(repos_path))}\n"
        f"mirrors-path = [{json.dumps(str(mirror_root))}]\n"
        "metadata-cache-ttl = 0\n"
        "\n[accessibility]\n"
        "offline = true\n"
    )


class LocalHub:
    """Run an olah server on 127.0.0.1 over ``mirror_root`` while the ``with`` block lasts.

    ``mirror_root`` defaults to a fresh temporary folder that is deleted on exit. The server's own
    files (config, logs, olah's cache) live in the temporary folder ``work_dir``. The server is stopped
    by its PID (SIGTERM, then SIGKILL), also at interpreter exit and, on Linux, when the starting
    process dies.
    """

    def __init__(
        self,
        mirror_root: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.startup_timeout = startup_timeout
        self._own_mirror = mirror_root is None
        self.mirror_root: Path = Path(mirror_root).resolve() if mirror_root is not None else Path()
        self.work_dir = Path()  # made when the server starts
        self._proc: subprocess.Popen[bytes] | None = None
        self._console = None

    # ----------------------------------------------------------------------------------------- properties
    @property
    def endpoint(self) -> str:
        """The base URL to give huggingface_hub (``HF_ENDPOINT`` or ``endpoint=``)."""
        if self.port is None:
            raise HubError("LocalHub is not running: use it as a context manager or call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.pid is not None

    def repo_path(self, repo_id: str) -> Path:
        """The git working tree olah serves for ``repo_id`` (may not exist yet)."""
        return repo_folder(self.mirror_root, repo_id)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> LocalHub:
        """Start olah and wait until its port accepts connections; raise HubError with its log if not."""
        if self.running:
            return self
        try:
            return self._start()
        except BaseException:
            self.stop()  # also on Ctrl-C during startup: never leave a server behind
            raise

    def _start(self) -> LocalHub:
        """The body of start(); any failure is cleaned up by the caller."""
        if importlib.util.find_spec("olah") is None:
            raise HubError("the olah server is not installed: pip install 'olah>=0.5' (or hatzoo[test])")
        if self._own_mirror:
            self.mirror_root = Path(tempfile.mkdtemp(prefix="hatzoo-mirror-"))
        self.mirror_root.mkdir(parents=True, exist_ok=True)
        (self.mirror_root / "models").mkdir(exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="hatzoo-olah-"))
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.work_dir / "repos").mkdir(exist_ok=True)
        atexit.register(self.stop)

        if self._requested_port is not None and port_open(self.host, self._requested_port):
            raise HubError(
                f"port {self._requested_port} on {self.host} is already in use: stop what runs there, or "
                "leave port=None to pick a free one"
            )
        for retries_left in reversed(range(1 if self._requested_port is not None else 3)):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._launch()
                return self
            except HubError:  # a free port taken by another process meanwhile: try another one
                self._terminate()
                if not retries_left or "address already in use" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self) -> None:
        """Write the config, spawn ``python -m olah.server``, and wait for the TCP port."""
        assert self.port is not None
        config = self.work_dir / "olah.toml"
        config.write_text(_config_text(self.host, self.port, self.work_dir / "repos", self.mirror_root))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._console = open(self.work_dir / "logs" / "console.log", "wb")  # closed in _terminate()
        logs = str(self.work_dir / "logs")
        cmd = [sys.executable, "-m", "olah.server", "-c", str(config), "--log-path", logs]
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.work_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            preexec_fn=_death_signal_hook(),
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise HubError(
                    f"the olah server exited at startup (code {self._proc.returncode}) on "
                    f"{self.host}:{self.port}; its log ends with:\n{self.log_tail()}"
                )
            if port_open(self.host, self.port) and self._proc.poll() is None:
                return
            time.sleep(0.05)
        raise HubError(
            f"the olah server did not open {self.host}:{self.port} within {self.startup_timeout:.0f} s; "
            f"raise startup_timeout on a slow machine. Its log ends with:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 3000) -> str:
        """The last characters of olah's console output and log file, for error messages."""
        texts = []
        for name in ("console.log", "olah.log"):
            with contextlib.suppress(OSError):
                texts.append((self.work_dir / "logs" / name).read_text(errors="replace"))
        text = "\n".join(t for t in texts if t).strip()
        return text[-chars:] if text else "(olah wrote no log)"

    def _terminate(self, grace: float = 5.0) -> None:
        """Stop the server by PID: SIGTERM, then SIGKILL after ``grace`` seconds; always reap it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace)
        if self._console is not None:
            self._console.close()
            self._console = None

    def stop(self) -> None:
        """Stop the server and remove the temporary folders this object created; safe to call twice."""
        self._terminate()
        atexit.unregister(self.stop)
        if self.work_dir != Path():
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = Path()
        if self._own_mirror and self.mirror_root != Path():
            shutil.rmtree(self.mirror_root, ignore_errors=True)
            self.mirror_root = Path()
        self.port = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"{self.endpoint} pid={self.pid}" if self.running else "stopped"
        return f"LocalHub({str(self.mirror_root)!r}, {state})"
