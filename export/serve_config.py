"""The server's options in one place: ``ServeConfig`` feeds ``create_app``, the session pool and argparse."""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, dataclass, fields
from typing import Any

from hatzoo.errors import InputError
from hatzoo.schema import Schema, rule

API_KEY_ENV = "HATZOO_API_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _opt(
    help_text: str, default: Any, *, metavar: str | None = None, flag: str | None = None, **checks: Any
) -> Any:
    """A dataclass field carrying its checks (``hatzoo.schema.rule``: ``lo``, ``hi``, ...) and its
    command-line help (and its flag, when not the field's name)."""
    return rule(default, help=help_text, metavar=metavar, flag=flag, **checks)


class _OptionsSchema(Schema):
    error = InputError


@dataclass(frozen=True)
class ServeConfig:
    """Every option of ``hatzoo serve``; field metadata holds its checks and its command-line help."""

    host: str = _opt("interface to listen on; anything but loopback needs an API key", "127.0.0.1")
    port: int = _opt("TCP port", 8000, lo=0, hi=65535)
    log_level: str = _opt("uvicorn log level (the startup lines print at 'warning' too)", "warning")
    max_sessions: int | None = _opt(
        "most ONNX Runtime sessions kept open (least recently used closed)", 16, lo=1
    )
    max_session_bytes: int | None = _opt(
        "estimated bytes of open sessions before the least recently used is closed (none: no limit)",
        None,
        lo=1,
    )
    max_request_batch: int = _opt("most images one request may send", 256, lo=1)
    max_body_bytes: int | None = _opt(
        "largest request body; none: what --max-request-batch images take as JSON (or 64 MiB, if less)",
        None,
        lo=1,
    )
    max_image_values: int | None = _opt(
        "most values (width x height x channels x frames, read from the image headers before decoding) "
        "one request's images may hold; none: 16 times what --max-request-batch inputs of the task "
        "hold, and at least 4096 x 4096 x 4",
        None,
        lo=1,
    )
    max_concurrency: int = _opt("predict/infer requests handled at once; more answer 503", 64, lo=1)
    micro_batch: int = _opt("rows merged into one session run per task (1 turns merging off)", 32, lo=1)
    max_wait_ms: float = _opt(
        "how long the micro-batcher waits for more requests before a run that is not full (0: run at once; "
        "requests that arrive during a run form the next batch)",
        0.0,
        lo=0,
    )
    max_queue: int = _opt("requests queued per task before answering 503", 1024, lo=1)
    run_threads: int = _opt("threads running sessions", 4, lo=1)
    parse_workers: int = _opt("processes decoding request bodies (off the event loop and its GIL)", 2, lo=1)
    header_timeout_s: float = _opt(
        "seconds a client has to send its request line and headers", 10.0, lo=0, open_lo=True
    )
    body_timeout_s: float = _opt(
        "seconds a client has to send its whole body (408 after)", 30.0, lo=0, open_lo=True
    )
    api_key: str | None = _opt(
        f"require this key (header 'Authorization: Bearer KEY' or 'X-API-Key'); default: ${API_KEY_ENV}",
        None,
    )
    allowed_hosts: tuple[str, ...] = _opt(
        "without an API key, Host names accepted besides the bind address and loopback (repeatable; "
        "'*' accepts any); other Host or Origin headers answer 421 / 403 (DNS rebinding)",
        (),
        metavar="HOST",
        flag="--allowed-host",
    )
    allow_no_api_key: bool = _opt(
        "serve without a key on a non-loopback host (anyone who can reach the port can use it)", False
    )
    global_thread_pool: bool = _opt("one ONNX Runtime thread pool for every session", True)
    shared_allocator: bool = _opt("one CPU memory arena for every session", True)
    intra_op_threads: int = _opt(
        "ONNX Runtime intra-op threads per session run (0: one per core); the default shares the cores "
        "among the --run-threads runs that go on at once",
        max(1, (os.cpu_count() or 1) // 4),  # 4: run_threads' default
        lo=0,
    )
    providers: tuple[str, ...] | None = _opt(
        "ONNX Runtime execution providers in order (default: CUDA when usable, then CPU)",
        None,
        metavar="PROVIDER",
    )
    verify: bool = _opt("check every graph's sha256 at startup (also checked on every session load)", True)

    def __post_init__(self) -> None:
        _OptionsSchema("serve options").instance(self)

    def key(self) -> str | None:
        """The API key in force: the option, else the environment variable, else none."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None

    def body_limit(self, image_values: int) -> int:
        """Request body bound: the option, else ``max_request_batch`` images of ``image_values`` values
        as JSON (at most 24 bytes a number, plus 64 KiB of envelope), capped at 64 MiB."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return min(64 << 20, self.max_request_batch * image_values * 24 + (64 << 10))

    def pixel_limit(self, image_values: int) -> int:
        """Decoded image values one request may hold: the option, else 16 times ``max_request_batch``
        inputs of ``image_values`` values (a photo may be larger than the input it is resized to), and
        never below 4096 x 4096 x 4 (one large RGBA picture)."""
        if self.max_image_values is not None:
            return self.max_image_values
        return max(4096 * 4096 * 4, 16 * self.max_request_batch * image_values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line option per ServeConfig field, with its help and default."""
    for f in fields(ServeConfig):
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata["help"]
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.name == "providers":
            parser.add_argument(flag, nargs="+", default=None, metavar=f.metadata["metavar"], help=help_text)
        elif f.name == "allowed_hosts":
            parser.add_argument(
                flag,
                dest=f.name,
                action="append",
                default=None,
                metavar=f.metadata["metavar"],
                help=help_text,
            )
        else:
            kind = {"int": int, "float": float}.get(f.type.split(" ")[0], str)
            parse = _optional(kind) if "None" in f.type else kind
            parser.add_argument(flag, type=parse, default=default, help=help_text)


def _optional(kind: type) -> Any:
    """An argparse type that also takes 'none' for an unset limit."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__
    return parse


def from_namespace(ns: argparse.Namespace) -> ServeConfig:
    """The ServeConfig the parsed options describe."""
    values = {f.name: getattr(ns, f.name) for f in fields(ServeConfig)}
    if values["providers"] is not None:
        values["providers"] = tuple(values["providers"])
    values["allowed_hosts"] = tuple(values["allowed_hosts"] or ())
    return ServeConfig(**values)
