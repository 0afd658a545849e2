"""Operations routes: liveness, readiness (Kafka reachable), Prometheus exposition, the event JSON Schema."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from services.ingestion.errors import json_response
from services.ingestion.models import Health
from services.ingestion.state import Ingestion
from shared.events import event_json_schema


def add_ops_routes(app: FastAPI, ing: Ingestion) -> None:
    @app.get("/healthz", tags=["ops"], response_model=Health, response_model_exclude_none=True)
    @app.get("/v1/healthz", tags=["ops"], response_model=Health, response_model_exclude_none=True)
    async def healthz() -> dict[str, Any]:
        """The process is up (does not touch Kafka)."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    @app.get(
        "/v1/readyz",
        tags=["ops"],
        response_model=Health,
        responses={503: {"model": Health, "description": "Kafka unreachable"}},
    )
    async def readyz() -> Response:
        """Kafka reachable and the events topic known."""
        try:
            partitions = await asyncio.to_thread(ing.producer.partitions, 2.0)
        except Exception as exc:  # any Kafka failure means not ready
            retry = {"Retry-After": str(ing.limits.retry_after_seconds)}
            return json_response(503, {"status": "unavailable", "error": str(exc)}, retry)
        return json_response(200, {"status": "ready", "partitions": partitions})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition."""
        ing.metrics.queue_depth.set(ing.producer.queue_depth())
        data, content_type = ing.metrics.exposition()
        return Response(data, media_type=content_type)

    @app.get("/v1/schema/event.json", tags=["schema"])
    async def event_schema() -> Response:
        """JSON Schema (versioned) of the event record in Kafka topic analytics_events."""
        return json_response(200, event_json_schema())
