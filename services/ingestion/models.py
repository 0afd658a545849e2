"""Request and response shapes as documented in the OpenAPI schema (the hot path parses bodies itself)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from services.ingestion.identity import IdentityCall
from shared.api_errors import ErrorBody
from shared.events import TrackEvent


class TrackAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    id: str = Field(description="event.id as stored: the client's or a server UUIDv7")
    timestamp_adjusted: bool = Field(
        description="true when the client timestamp broke the clock-skew policy and was replaced"
    )


class TrackUnavailable(ErrorBody):
    id: str = Field(
        description="event.id the event was given (the client's or a server UUIDv7): "
        "retry with it, and it is stored once"
    )


class ItemResult(BaseModel):
    index: int
    status: Literal["accepted", "rejected", "failed"] = Field(
        description="failed: valid but not acknowledged by Kafka (retry it)"
    )
    id: str | None = None
    timestamp_adjusted: bool | None = None
    error: str | None = Field(None, description="rejected or failed: what is wrong")
    field: str | None = Field(
        None, description="rejected: the offending field, dotted path relative to the item; failed: 'kafka'"
    )


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    failed: int = 0
    results: list[ItemResult]


class BatchRejected(BatchResult, ErrorBody):
    """No item written (400, 413: `detail` names the first rejected item's field by its path in the body), or
    some not acknowledged (503: those are `failed`, each with its id)."""


class BatchRequest(BaseModel):
    events: list[TrackEvent | IdentityCall] = Field(
        min_length=1,
        description="1 to RTAP_INGESTION__MAX_BATCH_EVENTS events and identity calls (an item with `type`, "
        "services/ingestion/identity.py); a bare JSON array is accepted too",
    )


class SegmentResult(BatchResult):
    success: bool = True


class Health(BaseModel):
    status: str
    partitions: int | None = None
    error: str | None = None
