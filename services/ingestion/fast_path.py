"""The short path for event POSTs: DirectRoute endpoints called straight from the ASGI app.

Starlette sends every request through its middleware stack (error, telemetry, body-limit, metrics,
exception and exit-stack layers, each wrapping receive and send). For the DirectRoute endpoints that stack
only adds CPU, so IngestionApp calls them directly and does what the skipped layers would do for them: the
HTTP metrics, IngestError as its JSON error, a disconnected client counted as CLIENT_CLOSED, a crash as a
logged 500. Browser requests when CORS is configured (they carry Origin), and every other route, take the
full stack.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import Histogram
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from services.ingestion.errors import CLIENT_CLOSED, IngestError, ingest_error_handler, json_response
from shared.api_errors import error_body
from shared.http_metrics import record as record_http
from shared.logging import get_logger

log = get_logger("ingestion")
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI's per-request dependency solving and response-model handling are skipped; the OpenAPI entry is
    declared as for any route, and exceptions still reach the app's exception handlers.
    """

    def get_route_handler(self) -> Endpoint:
        return self.endpoint


@dataclass(frozen=True, slots=True)
class HotRoute:
    """A DirectRoute as the short path calls it: the route, its endpoint, the histogram of its durations."""

    route: APIRoute
    endpoint: Endpoint
    seconds: Histogram | None


class IngestionApp(FastAPI):
    """The app, with POSTs to its DirectRoutes answered without the middleware stack (module docstring).
    use_direct_routes() is called once every route is added."""

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.hot_routes: dict[str, HotRoute] = {}
        self.cors_configured = False

    def use_direct_routes(self, cors_configured: bool) -> None:
        """Match DirectRoutes first (stable sort); call them directly unless CORS needs the stack."""
        self.router.routes.sort(key=lambda route: not isinstance(route, DirectRoute))
        self.cors_configured = cors_configured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        hot = self.hot_routes.get(scope["path"]) if post else None
        if hot is None or (self.cors_configured and any(name == b"origin" for name, _ in scope["headers"])):
            await super().__call__(scope, receive, send)
            return
        scope["app"], scope["route"] = self, hot.route
        started = time.perf_counter()
        request = Request(scope, receive)
        try:
            response = await hot.endpoint(request)
        except IngestError as exc:
            response = await ingest_error_handler(request, exc)
        except ClientDisconnect:  # nobody to answer; counted, not an error of ours
            count_client_disconnect(self)
            observe(hot, scope, CLIENT_CLOSED, started)
            return
        except Exception:  # what Starlette's error middleware would answer, in the APIs' error shape
            log.exception("ingestion request failed", path=scope["path"])
            response = json_response(500, error_body([], "internal error", "internal"))
        observe(hot, scope, response.status_code, started)
        await response(scope, receive, send)


def direct_post(
    app: IngestionApp, path: str, seconds: Histogram | None = None, **kwargs: Any
) -> Callable[[Endpoint], Endpoint]:
    """Like @app.post(path, ...), registering a DirectRoute; seconds: the histogram of its request durations,
    observed on the short path and through the middleware stack alike."""

    def register(endpoint: Endpoint) -> Endpoint:
        stacked = timed(seconds, endpoint) if seconds else endpoint
        app.router.add_api_route(path, stacked, methods=["POST"], route_class_override=DirectRoute, **kwargs)
        app.hot_routes[path] = HotRoute(cast(DirectRoute, app.router.routes[-1]), endpoint, seconds)
        return endpoint

    return register


def timed(seconds: Histogram, endpoint: Endpoint) -> Endpoint:
    """The endpoint as the middleware stack calls it: each call's duration (raised or not) observed."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await endpoint(request)
        finally:
            seconds.observe(time.perf_counter() - started)

    return run


def observe(hot: HotRoute, scope: Scope, status: int, started: float) -> None:
    """What the skipped middleware and timed() would measure: the route's histogram, the HTTP metrics."""
    elapsed = time.perf_counter() - started
    if hot.seconds is not None:
        hot.seconds.observe(elapsed)
    record_http(scope, status, elapsed)


def count_client_disconnect(app: FastAPI) -> None:
    app.state.ingestion.metrics.rejected("client_disconnect")
    log.debug("client disconnected before its body was read")


async def client_disconnect_handler(request: Request, _exc: ClientDisconnect) -> Response:
    """The full middleware stack's answer (never sent: the client is gone), counted as CLIENT_CLOSED, not as a
    5xx."""
    count_client_disconnect(request.app)
    return Response(status_code=CLIENT_CLOSED)
