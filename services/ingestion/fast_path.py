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
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import Histogram
from starlette.requests import ClientDisconnect

from services.ingestion.errors import CLIENT_CLOSED, IngestError, ingest_error_handler, json_response
from shared.api_errors import error_body
from shared.http_metrics import record as record_http
from shared.logging import get_logger

log = get_logger("ingestion")
Endpoint = Callable[[Request], Awaitable[Response]]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI's per-request dependency solving and response-model handling are skipped; the OpenAPI entry is
    declared as for any route, and exceptions still reach the app's exception handlers.
    """

    def get_route_handler(self) -> Endpoint:
        return self.endpoint


def direct_post(app: FastAPI, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
    """Like @app.post(path, ...), registering a DirectRoute."""

    def register(endpoint: Endpoint) -> Endpoint:
        app.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=DirectRoute, **kwargs)
        return endpoint

    return register


def timed(seconds: Histogram) -> Callable[[Endpoint], Endpoint]:
    """Observe each call's duration (raised or not) in the histogram."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            try:
                return await endpoint(request)
            finally:
                seconds.observe(time.perf_counter() - started)

        return run

    return wrap


class IngestionApp(FastAPI):
    """The app, with POSTs to its DirectRoutes answered without the middleware stack (module docstring).
    use_direct_routes() is called once every route is added."""

    hot_routes: dict[str, APIRoute] = {}
    cors_configured = False

    def use_direct_routes(self, cors_configured: bool) -> None:
        """Match DirectRoutes first (stable sort); call them directly unless CORS needs the stack."""
        routes = self.router.routes
        routes.sort(key=lambda route: not isinstance(route, DirectRoute))
        self.hot_routes = {route.path: route for route in routes if isinstance(route, DirectRoute)}
        self.cors_configured = cors_configured

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        hot = scope["type"] == "http" and scope["method"] == "POST"
        route = self.hot_routes.get(scope["path"]) if hot else None
        if route is None or (self.cors_configured and any(name == b"origin" for name, _ in scope["headers"])):
            await super().__call__(scope, receive, send)
            return
        scope["app"], scope["route"] = self, route
        started = time.perf_counter()
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except IngestError as exc:
            response = await ingest_error_handler(request, exc)
        except ClientDisconnect:  # nobody to answer; counted, not an error of ours
            count_client_disconnect(self)
            record_http(scope, CLIENT_CLOSED, time.perf_counter() - started)
            return
        except Exception:  # what Starlette's error middleware would answer, in the APIs' error shape
            log.exception("ingestion request failed", path=scope["path"])
            response = json_response(500, error_body([], "internal error", "internal"))
        record_http(scope, response.status_code, time.perf_counter() - started)
        await response(scope, receive, send)


def count_client_disconnect(app: FastAPI) -> None:
    app.state.ingestion.metrics.rejected("client_disconnect")
    log.debug("client disconnected before its body was read")


async def client_disconnect_handler(request: Request, _exc: ClientDisconnect) -> Response:
    """The full middleware stack's answer (never sent: the client is gone), counted as CLIENT_CLOSED, not as a
    5xx."""
    count_client_disconnect(request.app)
    return Response(status_code=CLIENT_CLOSED)
