"""Per-request HTTP metrics of the FastAPI services: one ASGI middleware, the same metric names everywhere.

- rtap_http_requests_total{route, method, status}: route is the matched route template
  (/v1/jobs/{job}/latest), or "unmatched" for a path no route serves, so arbitrary paths and methods
  cannot create new series.
- rtap_http_request_seconds{route, method}: time until the response headers are sent (a stream's
  duration is not a latency).

An exception that escapes the app is counted as the 500 that Starlette's error middleware answers.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

REQUESTS = Counter("rtap_http_requests_total", "HTTP requests by route template, method and status", ["route", "method", "status"])
LATENCY = Histogram("rtap_http_request_seconds", "Time to the response headers by route template and method",
                    ["route", "method"], buckets=LATENCY_BUCKETS)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpMetrics:
    """ASGI middleware: app.add_middleware(HttpMetrics)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        headers_sent = False

        async def send_counted(message: dict[str, Any]) -> None:
            nonlocal status, headers_sent
            if message["type"] == "http.response.start":
                status, headers_sent = message["status"], True
                LATENCY.labels(route_of(scope), method_of(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not headers_sent:
                LATENCY.labels(route_of(scope), method_of(scope)).observe(time.perf_counter() - started)
            REQUESTS.labels(route_of(scope), method_of(scope), str(status)).inc()


def route_of(scope: Scope) -> str:
    """The router stores the matched route in the scope it shares with the middlewares."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def method_of(scope: Scope) -> str:
    method = scope.get("method", "")
    return method if method in METHODS else "other"
