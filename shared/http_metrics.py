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
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

REQUESTS = Counter(
    "rtap_http_requests_total",
    "HTTP requests by route template, method and status",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "rtap_http_request_seconds",
    "Time to the response headers by route template and method",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)

Scope = MutableMapping[str, Any]
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
        recorded = False

        async def send_counted(message: dict[str, Any]) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                recorded = True
                record(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            if not recorded:
                record(scope, 500, time.perf_counter() - started)


@lru_cache(maxsize=4096)
def children(route: str, method: str, status: int) -> tuple[Any, Any]:
    """The labelled counter and histogram, looked up once per combination
    (labels() costs a lock and a dict)."""
    return REQUESTS.labels(route, method, str(status)), LATENCY.labels(route, method)


def record(scope: Scope, status: int, seconds: float) -> None:
    counter, histogram = children(route_of(scope), method_of(scope), status)
    counter.inc()
    histogram.observe(seconds)


def route_of(scope: Scope) -> str:
    """The router stores the matched route in the scope it shares with the middlewares."""
    return getattr(scope.get("route"), "path", None) or "unmatched"


def method_of(scope: Scope) -> str:
    method = scope.get("method", "")
    return method if method in METHODS else "other"
