"""Our own event routes: POST /v1/analytics/track (one event), POST /v1/analytics/identify, /alias and /group
(one identity call, services/ingestion/identity.py) and POST /v1/analytics/batch (many events and identity
calls, with per-item results). All are DirectRoutes (services/ingestion/fast_path.py); 202 means durably in
Kafka."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.ingestion import fast_batch, record_size
from services.ingestion.body import batch_items, items_at, parse_json, read_body
from services.ingestion.errors import (
    IngestError,
    Rejection,
    bad_request,
    first_error,
    json_response,
    kafka_refusal,
)
from services.ingestion.fast_path import IngestionApp, direct_post
from services.ingestion.identity import IdentityCall, MappingError, from_call, is_identity_item
from services.ingestion.models import BatchRejected, BatchResult, TrackAccepted, TrackUnavailable
from services.ingestion.openapi import ERRORS, body_schema
from services.ingestion.records import Record, now_ms, to_record
from services.ingestion.results import Items, ingest_items
from services.ingestion.state import Ingestion
from shared.api_errors import ErrorBody
from shared.events import TRACK_EVENT, TrackEvent

TRACK_RESPONSES = {
    202: {"model": TrackAccepted, "description": "durably written to Kafka"},
    **ERRORS,
    503: {"model": TrackUnavailable, "description": "not written; retry with its `id` after Retry-After"},
}
BATCH_RESPONSES = {
    202: {"model": BatchResult, "description": "every valid item durably written; invalid items rejected"},
    **ERRORS,
    400: {"model": BatchRejected | ErrorBody, "description": "malformed body, or no valid item"},
    413: {"model": BatchRejected | ErrorBody, "description": ERRORS[413]["description"]},
    503: {"model": BatchRejected, "description": "Kafka unavailable; nothing (or not everything) written"},
}


def add_event_routes(app: IngestionApp, ing: Ingestion) -> None:
    limits = ing.limits

    @direct_post(
        app,
        "/v1/analytics/track",
        status_code=202,
        tags=["events"],
        openapi_extra=body_schema("TrackEvent"),
        responses=TRACK_RESPONSES,
        seconds=ing.metrics.request_seconds.labels("track"),
    )
    async def track(request: Request) -> Response:
        """One event. 202 once Kafka acknowledged it (acks=all); a 503 carries its id to retry with."""
        ing.check_key(request)
        record = track_record(ing, await read_body(request, limits.max_body_bytes))
        return await accept_one(ing, record, "track")

    for kind in ("identify", "alias", "group"):
        add_identity_route(app, ing, kind)

    @direct_post(
        app,
        "/v1/analytics/batch",
        status_code=202,
        tags=["events"],
        openapi_extra=body_schema("BatchRequest"),
        responses=BATCH_RESPONSES,
        seconds=ing.metrics.request_seconds.labels("batch"),
    )
    async def batch(request: Request) -> Response:
        """Many events with per-item results; a valid item is never dropped because a sibling is bad."""
        ing.check_key(request)
        body = await read_body(request, limits.max_body_bytes)
        valid, invalid = batch_records(ing, body)
        return await ingest_items(ing, "batch", valid, invalid, items_at(body, "events"))


def add_identity_route(app: IngestionApp, ing: Ingestion, kind: str) -> None:
    @direct_post(
        app,
        f"/v1/analytics/{kind}",
        status_code=202,
        tags=["identity"],
        openapi_extra=body_schema("IdentityCall"),
        responses=TRACK_RESPONSES,
        seconds=ing.metrics.request_seconds.labels(kind),
        name=kind,
    )
    async def identity(request: Request) -> Response:
        """One identity call (its `type` is the path's). 202 once Kafka acknowledged it, as for track."""
        ing.check_key(request)
        data = parse_json(await read_body(request, ing.limits.max_body_bytes))
        if not isinstance(data, dict):
            raise bad_request("body: must be a JSON object", "body")
        if data.setdefault("type", kind) != kind:
            raise bad_request(f"type: must be {kind!r} on this route (or left out)", "type")
        return await accept_one(ing, identity_record(ing, data, now_ms()), kind)


async def accept_one(ing: Ingestion, record: Record, endpoint: str) -> Response:
    """Write one record within the record limit and answer 202 with its id (or raise its IngestError)."""
    record_size.check(record, ing.max_event_bytes)
    await produce_one(ing, record)
    ing.metrics.accepted_total.labels(endpoint).inc()
    if record.timestamp_adjusted:
        ing.metrics.adjusted_total.inc()
    return json_response(
        202, {"status": "accepted", "id": record.id, "timestamp_adjusted": record.timestamp_adjusted}
    )


def identity_record(ing: Ingestion, data: Any, received: int) -> Record:
    """An identity call's record, or a 400 naming the field (IngestError)."""
    try:
        event = from_call(IdentityCall.model_validate(data))
    except ValidationError as exc:
        raise bad_request(*first_error(exc)) from None
    except MappingError as exc:
        raise bad_request(f"{exc.field}: {exc}", exc.field) from None
    return to_record(event, received, ing.policy, ing.enricher)


async def produce_one(ing: Ingestion, record: Record) -> None:
    """Write one event, or raise its IngestError (a 503 carries its id: a retry keeps it single)."""
    try:
        [err] = await ing.produce([record])
        if err is not None:
            raise kafka_refusal(err, ing.limits.retry_after_seconds)
    except IngestError as exc:
        if exc.status == 503:
            exc.extra = {"id": record.id}
        raise


def track_record(ing: Ingestion, body: bytes) -> Record:
    """Fast path: msgspec. A body it refuses is validated by pydantic, which names the offending field."""
    received = now_ms()
    fast = fast_batch.record(body, received, ing.policy, ing.enricher)
    if fast is not None:
        return fast
    try:
        return to_record(TRACK_EVENT.validate_json(body), received, ing.policy, ing.enricher)
    except ValidationError as exc:
        raise bad_request(*first_error(exc)) from None


def batch_records(ing: Ingestion, body: bytes) -> tuple[Items, list[Rejection]]:
    """Fast path: the whole batch valid in one msgspec call. Otherwise item by item: msgspec for each valid
    event, pydantic for identity calls and for the rest, naming each bad field."""
    received = now_ms()
    fast = fast_batch.records(body, ing.limits.max_batch_events, received, ing.policy, ing.enricher)
    if fast is not None:
        return list(enumerate(fast)), []
    split: list[tuple[Any, Record | None]] | None = fast_batch.each_record(
        body, ing.limits.max_batch_events, received, ing.policy, ing.enricher
    )
    if split is None:
        split = [(item, None) for item in batch_items(parse_json(body), ing.limits.max_batch_events)]
    valid: Items = []
    invalid: list[Rejection] = []
    for i, (item, fast_record) in enumerate(split):
        if fast_record is not None:
            valid.append((i, fast_record))
            continue
        try:
            parsed = parse_json(item) if isinstance(item, bytes) else item
            valid.append((i, to_record(item_event(parsed), received, ing.policy, ing.enricher)))
        except ValidationError as exc:
            invalid.append(Rejection(i, *first_error(exc)))
        except MappingError as exc:
            invalid.append(Rejection(i, f"{exc.field}: {exc}", exc.field))
    return valid, invalid


def item_event(item: Any) -> TrackEvent:
    """A batch item as its raw event: an identity call (identity.is_identity_item) or an event."""
    if is_identity_item(item):
        return from_call(IdentityCall.model_validate(item))
    return TRACK_EVENT.validate_python(item)
