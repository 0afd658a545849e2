"""What every HTTP API of the pipeline starts from: its FastAPI app with the per-request HTTP metrics
(shared/http_metrics.py, outermost, so CORS answers are counted too), optional CORS, and Starlette's own
refusals (unknown route, method, undecodable body) in the one error shape (shared/api_errors.py)."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.api_errors import http_error_handler
from shared.http_metrics import HttpMetrics

App = TypeVar("App", bound=FastAPI)


def service_app(
    app_class: type[App], title: str, description: str, cors: dict[str, Any] | None = None, **options: Any
) -> App:
    """app_class(title=..., version="1", ...) with the shared parts; cors: CORSMiddleware options, or None for
    no CORS headers; options: further FastAPI arguments (lifespan...)."""
    app = app_class(title=title, version="1", description=description, **options)
    if cors:
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(HttpMetrics)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    return app
