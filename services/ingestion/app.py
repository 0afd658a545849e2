"""The ingestion API, wired: validated events into Kafka, 202 only after durable acknowledgement.

Where each part lives: state.py (what the routes share, write-key checks), routes/ (one module per API
family), results.py (per-item batch results), fast_path.py (event POSTs without the middleware stack),
openapi.py, errors.py (every refusal and its body), body.py (reading a body within limits).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect

from services.ingestion.errors import IngestError, ingest_error_handler, request_validation_handler
from services.ingestion.fast_path import IngestionApp, client_disconnect_handler
from services.ingestion.openapi import openapi_schema
from services.ingestion.routes.events import add_event_routes
from services.ingestion.routes.ops import add_ops_routes
from services.ingestion.routes.segment import add_segment_routes
from services.ingestion.state import Ingestion
from shared.api_app import service_app
from shared.api_keys import WRITE_KEY
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("ingestion")
NO_OPENTELEMETRY = {"tracing": False, "metrics": False, "logs": False}  # Prometheus only: no provider lookups
DESCRIPTION = "Validated analytics events into Kafka; 202 means durably written (acks=all)."
CORS_HEADERS = ["Content-Type", "Content-Encoding", WRITE_KEY.header, "Authorization"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ing = Ingestion(settings)
    origins = settings.ingestion.cors_origins
    cors = (
        {
            "allow_origins": origins,
            "allow_methods": ["POST", "GET", "OPTIONS"],
            "allow_headers": CORS_HEADERS,
            "max_age": 600,
        }
        if origins
        else None
    )
    app = service_app(
        IngestionApp, "rtap ingestion", DESCRIPTION, cors, lifespan=lifespan(ing), telemetry=NO_OPENTELEMETRY
    )
    app.state.ingestion = ing
    app.add_exception_handler(IngestError, ingest_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, request_validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_disconnect_handler)  # type: ignore[arg-type]
    add_event_routes(app, ing)
    add_segment_routes(app, ing)
    add_ops_routes(app, ing)
    app.use_direct_routes(cors_configured=bool(origins))
    app.openapi = lambda: openapi_schema(app, settings.ingestion.max_batch_events)  # type: ignore[method-assign]
    return app


def lifespan(ing: Ingestion) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the producer and the heartbeats; on shutdown stop them and flush what the producer holds."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        ing.producer.start()
        beats = asyncio.create_task(ing.heartbeats())
        gc.freeze()  # startup objects (modules, schemas, routes) leave the cyclic GC's scans
        log.info("ingestion started", port=ing.limits.port, topic=ing.producer.topic)
        yield
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats
        await asyncio.to_thread(ing.producer.close)

    return run
