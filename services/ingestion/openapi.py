"""The ingestion API's OpenAPI schema: the event routes read their own bodies, so their request bodies, error
answers and this deployment's batch limit are declared here rather than inferred from endpoint signatures."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from services.ingestion.identity import IdentityCall
from services.ingestion.models import BatchRequest
from services.ingestion.segment import SegmentBatch, SegmentMessage
from shared.api_errors import ErrorBody
from shared.events import TRACK_EVENT

REF = "#/components/schemas/{model}"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid body; `loc` names the offending field"},
    401: {
        "model": ErrorBody,
        "description": "write key missing or wrong (only when write keys are configured)",
    },
    413: {
        "model": ErrorBody,
        "description": "body (or decompressed body, or batch, or one event's Kafka record) too large",
    },
    415: {"model": ErrorBody, "description": "unsupported Content-Type or Content-Encoding"},
    503: {
        "model": ErrorBody,
        "description": "Kafka unavailable or producer queue full; retry after Retry-After seconds",
    },
}


def body_schema(model: str) -> dict[str, Any]:
    """openapi_extra of a route whose JSON (or text/plain, for sendBeacon) body is the component `model`."""
    ref = {"$ref": REF.format(model=model)}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ref}, "text/plain": {"schema": ref}},
        }
    }


def openapi_schema(app: FastAPI, max_batch_events: int) -> dict[str, Any]:
    """FastAPI's schema plus the request-body components, with this deployment's batch limit (more: 413)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    _, defs = models_json_schema(
        [(m, "validation") for m in (BatchRequest, IdentityCall, SegmentBatch, SegmentMessage)],
        ref_template=REF,
    )
    track = TRACK_EVENT.json_schema(ref_template=REF)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update({**defs.get("$defs", {}), **track.pop("$defs", {}), "TrackEvent": track})
    components["BatchRequest"]["properties"]["events"]["maxItems"] = max_batch_events
    components["SegmentBatch"]["properties"]["batch"]["maxItems"] = max_batch_events
    app.openapi_schema = schema
    return schema
