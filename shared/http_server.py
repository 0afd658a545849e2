"""The uvicorn server of every HTTP service, with the bounds uvicorn itself lacks (settings section `http`).

uvicorn 0.54 bounds idle keep-alive time (`timeout_keep_alive`) and concurrency (`limit_concurrency`,
answered with a plain-text 503), but has no deadline for receiving a request: its keep-alive timer is armed
only after a response, so a client that connects and sends nothing, or trickles a header byte at a time,
holds its connection forever; and httptools does not limit the size of a request head. BoundedHttpTools
adds what is missing:

- the request head must arrive within `header_read_seconds` (counted from connect, or from the first byte
  of a later request on the same connection), else 408;
- the body must arrive within `body_read_seconds` after the head, else 408 (or the connection is closed
  when the app already answered);
- a head over `max_header_bytes` is refused with 431;
- over `limit_concurrency` open connections or running requests: 503 with Retry-After.

Deadlines are checked by one sweep per server, so a late head or body is refused up to a quarter of the
shorter deadline after it is due.

Every refusal is a JSON body in the APIs' error shape naming the setting, followed by closing the
connection, and is counted in rtap_http_server_refused_total{limit}.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import signal
import weakref
from collections.abc import Callable
from typing import Any

import orjson
import uvicorn
from prometheus_client import Counter
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from shared.logging import configure_logging
from shared.settings import HttpServerSettings, ServiceAddress, Settings

LIMITS = ("limit_concurrency", "header_read_seconds", "body_read_seconds", "max_header_bytes")
REFUSED = Counter(
    "rtap_http_server_refused_total",
    "Connections refused or closed by a server limit (settings section http)",
    ["limit"],
)
for _limit in LIMITS:
    REFUSED.labels(_limit)

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


def refusal(status: int, loc: str, msg: str, kind: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, its body in the APIs' error shape."""
    body = orjson.dumps({"detail": [{"loc": [loc], "msg": msg, "type": kind}]})
    head = [
        b"HTTP/1.1 %d %s" % (status, REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if retry_after is not None:
        head.append(b"retry-after: %d" % retry_after)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol plus a request-receipt deadline, a head size cap and a JSON
    over-capacity answer.

    A request only records when its head or body is due; one sweep per server (every `SWEEP_FRACTION` of
    the shorter deadline) refuses the connections past it, so no timer is armed or cancelled per request."""

    def __init__(self, *args: Any, limits: HttpServerSettings, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.limit_concurrency = None  # checked here, so the refusal is JSON with Retry-After
        self._due: float | None = None  # loop time by which the pending head or body must have arrived
        self._head_pending = True
        self._head_bytes = 0  # raw bytes received while the head is incomplete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._due = self.loop.time() + self.limits.header_read_seconds
        _ensure_sweep(self.server_state, self.loop, self.limits)

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused: the rest of the stream is not parsed
        if self._head_pending:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_pending
            and self._head_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse("max_header_bytes", refusal(431, "header", self._head_too_large(), "too_large"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._due is None:
            self._due = self.loop.time() + self.limits.header_read_seconds

    def on_headers_complete(self) -> None:
        # that read may also hold body bytes: parse to know
        over_cap = self._head_bytes > self.limits.max_header_bytes
        self._head_pending, self._head_bytes = False, 0
        self._due = self.loop.time() + self.limits.body_read_seconds
        if self.transport.is_closing():
            return
        if over_cap and self._parsed_head_size() > self.limits.max_header_bytes:
            self._refuse("max_header_bytes", refusal(431, "header", self._head_too_large(), "too_large"))
            return
        if self._over_capacity():
            msg = (
                f"the server is at its limit of {self.limits.limit_concurrency} open connections and "
                f"running requests (http.limit_concurrency); retry after {self.limits.retry_after_seconds} s"
            )
            self._refuse(
                "limit_concurrency",
                refusal(503, "connection", msg, "over_capacity", self.limits.retry_after_seconds),
            )
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._due = None
        self._head_pending = True
        if not self.transport.is_closing():
            super().on_message_complete()

    def _parsed_head_size(self) -> int:
        """The request target and header fields as parsed."""
        return (
            len(self.url)
            + sum(len(name) + len(value) for name, value in self.headers)
            + 4 * len(self.headers)
        )

    def _head_too_large(self) -> str:
        return f"the request head exceeds {self.limits.max_header_bytes} bytes (http.max_header_bytes)"

    def _over_capacity(self) -> bool:
        limit = self.limits.limit_concurrency
        return len(self.connections) > limit or len(self.tasks) >= limit

    def overdue(self, now: float) -> None:
        """Refuse the head or the body if it is past its deadline."""
        if self._due is None or now < self._due or self.transport.is_closing():
            return
        self._due = None
        if self._head_pending:
            # connected and never sent a byte: nothing to answer
            silent = self._head_bytes == 0 and self.cycle is None
            msg = (
                f"the request head did not arrive within {self.limits.header_read_seconds:g} s "
                "(http.header_read_seconds)"
            )
            self._refuse(
                "header_read_seconds", None if silent else refusal(408, "header", msg, "request_timeout")
            )
            return
        msg = (
            f"the request body did not arrive within {self.limits.body_read_seconds:g} s "
            "(http.body_read_seconds)"
        )
        self._refuse("body_read_seconds", refusal(408, "body", msg, "request_timeout"))

    def _refuse(self, limit: str, response: bytes | None) -> None:
        """Answer (unless the app already started its response) and close; a running app sees a disconnect."""
        REFUSED.labels(limit).inc()
        self._due = None
        answered = self.cycle is not None and self.cycle.response_started and self.cycle.scope is self.scope
        if response is not None and not answered:
            self.transport.write(response)
        self.transport.close()


# A late head or body is refused within its deadline plus this fraction of the shorter one.
SWEEP_FRACTION = 0.25
_sweeping: weakref.WeakSet[ServerState] = weakref.WeakSet()


def _ensure_sweep(state: ServerState, loop: asyncio.AbstractEventLoop, limits: HttpServerSettings) -> None:
    """Start the server's deadline sweep on its first connection; it runs for as long as the loop does."""
    if state in _sweeping:
        return
    _sweeping.add(state)
    interval = SWEEP_FRACTION * min(limits.header_read_seconds, limits.body_read_seconds)

    def sweep() -> None:
        now = loop.time()
        for connection in list(state.connections):
            if isinstance(connection, BoundedHttpTools):
                connection.overdue(now)
        loop.call_later(interval, sweep)

    loop.call_later(interval, sweep)


def serve(create_app: Callable[[Settings], ASGIApp], section: Callable[[Settings], ServiceAddress]) -> None:
    """A service's `python -m` entry: settings, logging, then its app on the section's host and port under
    these limits. `kill -USR1 <pid>` prints every thread's stack to the log."""
    faulthandler.register(signal.SIGUSR1)
    settings = Settings()
    configure_logging(settings.log_level, json=settings.env == "production")
    address = section(settings)
    uvicorn.run(create_app(settings), **uvicorn_options(settings, address))


def uvicorn_options(settings: Settings, address: ServiceAddress) -> dict[str, Any]:
    """uvicorn.run keyword arguments of every service: its address, quiet access logs, the HTTP limits."""
    return {
        "host": address.host,
        "port": address.port,
        "log_level": "warning",
        "access_log": False,
        **server_options(settings.http),
    }


def server_options(limits: HttpServerSettings) -> dict[str, Any]:
    """uvicorn.run keyword arguments for these limits
    (the HTTP protocol, keep-alive, graceful shutdown, no WebSocket)."""
    return {
        "http": functools.partial(BoundedHttpTools, limits=limits),
        "ws": "none",
        "timeout_keep_alive": limits.keep_alive_seconds,
        "timeout_graceful_shutdown": limits.shutdown_grace_seconds,
        "backlog": limits.backlog,
    }
