"""Segment's tracking API (POST /v1/batch, and one message to /v1/track, /v1/page, /v1/screen, /v1/identify,
/v1/alias or /v1/group: its `type` defaults to the path's), so Segment's libraries can send here unchanged.

Write key: a key outside the body (Basic auth username as Segment's libraries send it, X-Write-Key, Bearer,
?write_key=) is checked before the body is read, and a wrong one is a 401 with nothing parsed. Only a
request without one has its body parsed for Segment's body `writeKey`, which is then checked before anything
else of the body is validated. Success is 200 (Segment's status) with per-item results; errors as on our
own routes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.ingestion.body import batch_items, parse_json, read_body
from services.ingestion.errors import Rejection, bad_request, first_error
from services.ingestion.fast_path import IngestionApp, direct_post
from services.ingestion.models import SegmentResult
from services.ingestion.openapi import ERRORS, body_schema
from services.ingestion.records import now_ms, to_record
from services.ingestion.results import Items, ingest_items
from services.ingestion.segment import SegmentBatch, SegmentMappingError, SegmentMessage, to_track_event
from services.ingestion.state import Ingestion
from shared.logging import get_logger

log = get_logger("ingestion")
RESPONSES = {200: {"model": SegmentResult, "description": "every valid message durably written"}, **ERRORS}
SUCCESS = {"success": True}


def add_segment_routes(app: IngestionApp, ing: Ingestion) -> None:
    limits = ing.limits

    @direct_post(
        app, "/v1/batch", tags=["segment"], openapi_extra=body_schema("SegmentBatch"), responses=RESPONSES
    )
    async def segment_batch(request: Request) -> Response:
        """Segment-compatible batch (what Segment's libraries send); write key as the module says."""
        data = await keyed_body(ing, request, strict_key=True)
        try:
            envelope = SegmentBatch.model_validate(data if isinstance(data, dict) else {})
        except ValidationError as exc:
            raise bad_request(*first_error(exc)) from None
        messages = batch_items(data, limits.max_batch_events, "batch")
        valid, invalid = segment_records(ing, messages, envelope.sentAt)
        at = "" if isinstance(data, list) else "batch"
        return segment_status(await ingest_items(ing, "segment", valid, invalid, at, SUCCESS))

    for kind in ("track", "page", "screen", "identify", "alias", "group"):
        add_message_route(app, ing, kind)


def add_message_route(app: IngestionApp, ing: Ingestion, kind: str) -> None:
    @direct_post(
        app,
        f"/v1/{kind}",
        tags=["segment"],
        openapi_extra=body_schema("SegmentMessage"),
        responses=RESPONSES,
        name=f"segment_{kind}",
    )
    async def segment_message(request: Request) -> Response:
        """One Segment message, of the path's type unless it names its own; write key as for /v1/batch."""
        data = await keyed_body(ing, request, strict_key=False)
        if isinstance(data, dict):
            data.setdefault("type", kind)
        valid, invalid = segment_records(ing, [data], None)
        return segment_status(await ingest_items(ing, "segment", valid, invalid, None, SUCCESS))


async def keyed_body(ing: Ingestion, request: Request, strict_key: bool) -> Any:
    """The JSON body, read only after a key outside it was checked; without one, its writeKey is checked."""
    header_key_ok = ing.header_key_checked(request)
    data = parse_json(await read_body(request, ing.limits.max_body_bytes))
    if not header_key_ok:
        ing.check_body_key(body_write_key(data, strict_key))
    return data


def segment_records(
    ing: Ingestion, messages: list[Any], sent_at: datetime | None
) -> tuple[Items, list[Rejection]]:
    """Each message mapped to our record on its own; one that cannot be mapped is rejected with its reason."""
    received = now_ms()
    valid: Items = []
    invalid: list[Rejection] = []
    for i, raw in enumerate(messages):
        try:
            msg = SegmentMessage.model_validate(raw)
            valid.append(
                (i, to_record(to_track_event(msg, sent_at, received), received, ing.policy, ing.enricher))
            )
        except ValidationError as exc:
            invalid.append(Rejection(i, *first_error(exc)))
        except SegmentMappingError as exc:
            invalid.append(Rejection(i, str(exc), exc.field))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a case not named yet
            log.warning("segment message not mapped", index=i, error=repr(exc)[:200])
            invalid.append(Rejection(i, f"message cannot be mapped: {exc}", "body"))
    return valid, invalid


def body_write_key(data: Any, strict: bool) -> str | None:
    """Segment's body writeKey. Not a string: 400 when strict (the batch envelope's schema says string), else
    no key."""
    key = data.get("writeKey") if isinstance(data, dict) else None
    if key is None or isinstance(key, str):
        return key
    if strict:
        raise bad_request("writeKey: must be a string", "writeKey")
    return None


def segment_status(response: Response) -> Response:
    """Segment's API answers 200 on success; errors keep their status."""
    if response.status_code == 202:
        response.status_code = 200
    return response
