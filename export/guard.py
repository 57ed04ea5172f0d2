"""Protection around the app: an API key check, a Host and Origin check for keyless servers (DNS
rebinding), a concurrency limit, and a header timeout for slow clients."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from uvicorn.protocols.http.h11_impl import H11Protocol

from .docs import ASSET_PATHS

# Probes and docs answer without a key: they reveal no model, task or data.
OPEN_PATHS = (
    frozenset({"/healthz", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json"}) | ASSET_PATHS
)
UNCOUNTED_PATHS = OPEN_PATHS | {"/metrics"}  # answer even at the concurrency limit
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def allowed_host_names(bind: str, extra: Iterable[str]) -> frozenset[str] | None:
    """Host names a keyless server bound to ``bind`` answers: loopback, the bind address and ``extra``
    (None, no check, when ``extra`` holds '*'). A wildcard bind also answers any IP address (see
    ``host_allowed``)."""
    extra = {_bare_host(h) for h in extra}
    if "*" in extra:
        return None
    return frozenset(LOOPBACK_NAMES | extra | {_bare_host(bind)})


def _bare_host(value: str) -> str:
    """A Host header's name without its port or IPv6 brackets, lower-cased: '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":")[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(name: str, allowed: frozenset[str]) -> bool:
    """Whether a bare host name is one the server was started for. An IP address is accepted when the
    server listens on every interface: DNS rebinding needs a name the attacker controls, never an IP."""
    return name in allowed or (bool(allowed & WILDCARD_BINDS) and _is_ip(name))


async def _answer(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: requires the API key (compared in constant time) when one is set; without one,
    answers 421 to a Host and 403 to an Origin that are not in ``allowed_hosts`` (None: no check); and
    answers 503 beyond ``max_concurrency`` requests in flight (health, metrics and docs are not counted).
    """

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        max_concurrency: int,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_concurrency = max_concurrency
        self.allowed_hosts = None if self.key is not None else allowed_hosts
        self.in_flight = 0

    def _foreign_host(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        """(status, message) for a Host or Origin this keyless server was not started for, else None.

        Only requests that came over the network are checked: an in-process ASGI client (the test
        client) has no peer address, and a browser cannot reach it.
        """
        client = scope.get("client")
        if self.allowed_hosts is None or not client or not _is_ip(str(client[0])):
            return None
        headers = dict(scope.get("headers") or [])
        hint = "start the server with --allowed-host NAME (or set an API key)"
        host = headers.get(b"host")
        if host is not None and not host_allowed(_bare_host(host.decode("latin-1")), self.allowed_hosts):
            return 421, f"this server does not answer for Host {host.decode('latin-1')!r}; {hint}"
        origin = headers.get(b"origin")
        if origin is not None:
            name = urlsplit(origin.decode("latin-1")).hostname or ""
            if not host_allowed(_bare_host(name), self.allowed_hosts):
                return 403, f"cross-origin requests from {origin.decode('latin-1')!r} are refused; {hint}"
        return None

    def _authorized(self, scope: dict[str, Any]) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given, self.key)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if (foreign := self._foreign_host(scope)) is not None:
            return await _answer(send, *foreign)
        if self.key is not None and path not in OPEN_PATHS and not self._authorized(scope):
            return await _answer(
                send,
                401,
                "this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                [(b"www-authenticate", b"Bearer")],
            )
        if path in UNCOUNTED_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_concurrency:
            return await _answer(
                send,
                503,
                f"{self.max_concurrency} requests already in progress; retry later",
                [(b"retry-after", b"1")],
            )
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def http_protocol() -> type[H11Protocol]:
    """uvicorn's fastest HTTP/1.1 protocol here: httptools' C parser when installed, else h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is optional (uvicorn[standard])
        return H11Protocol
    return HttpToolsProtocol


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's HTTP protocol (see :func:`http_protocol`) that closes a connection whose next request
    line and headers do not arrive within ``seconds`` (from connecting, or from the end of the previous
    response)."""

    class HeaderTimeoutH11(http_protocol()):
        _timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._timer is not None and self.cycle is not self._waiting_after:
                self._timer.cancel()  # the request's headers are complete
                self._timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is None and not self.transport.is_closing():
                self._waiting_after = self.cycle
                self._timer = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self._timer = None
            if self.cycle is self._waiting_after:
                self.transport.close()

    return HeaderTimeoutH11
