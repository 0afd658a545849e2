"""Segment tracking-spec messages (track, page, screen) mapped onto our TrackEvent.

Mapping (Segment -> ours):
  messageId -> event.id; track `event` -> event.type (e-commerce spec names mapped, others snake_cased);
  page -> page_view; screen -> screen_view; userId (else anonymousId) -> user.id;
  context.userAgent, context.screen.{width,height} -> device (missing: "" and 0);
  context.page.{url,referrer} (else properties.url/referrer) -> context.url/referrer;
  context.ip -> ip_address;
  context.sessionId / context.session_id / properties.session_id (a string or number), else anonymousId,
  else userId -> session_id;
  properties: scalars kept, nested values JSON-encoded (at most MAX_NESTING levels), nulls dropped;
  properties.load_time/interaction_time -> metrics;
  timestamp (ISO-8601; without an offset: UTC) corrected by sentAt like Segment does:
  receive time - (sentAt - timestamp).
identify, group and alias carry no event for the jobs and are rejected per item, as is a message that
cannot be mapped.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import TRACK_EVENT, TrackEvent

SEGMENT_EVENT_TYPES = {
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Order Completed": "purchase",
    "Page Viewed": "page_view",
}
TYPE_FOR_MESSAGE = {"page": "page_view", "screen": "screen_view"}
SESSION_SOURCES = (("context", "sessionId"), ("context", "session_id"), ("properties", "session_id"))
MAX_NESTING = 254  # orjson encodes no deeper
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SegmentMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["track", "page", "screen", "identify", "group", "alias"] = "track"
    event: str | None = Field(None, max_length=128)
    userId: str | None = Field(None, max_length=256)
    anonymousId: str | None = Field(None, max_length=256)
    messageId: str | None = Field(None, min_length=1, max_length=128)
    properties: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    sentAt: datetime | None = None

    @field_validator("userId", "anonymousId", mode="before")
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch: list[dict[str, Any]] = Field(min_length=1)
    sentAt: datetime | None = None
    writeKey: str | None = None


class SegmentMappingError(ValueError):
    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def event_type(msg: SegmentMessage) -> str:
    if msg.type in TYPE_FOR_MESSAGE:
        return TYPE_FOR_MESSAGE[msg.type]
    if msg.type != "track":
        raise SegmentMappingError(f"type {msg.type!r} is not ingested; send track, page or screen", "type")
    if not msg.event:
        raise SegmentMappingError("track messages need an event name", "event")
    return (
        SEGMENT_EVENT_TYPES.get(msg.event)
        or re.sub(r"[^a-z0-9]+", "_", msg.event.strip().lower()).strip("_")
        or "event"
    )


def to_epoch_ms(value: datetime) -> int:
    """Epoch milliseconds; a timestamp without a UTC offset is UTC (never the server's local time)."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(milliseconds=1)


def corrected_timestamp(msg: SegmentMessage, batch_sent_at: datetime | None, received_at: int) -> int | None:
    if msg.timestamp is None:
        return None
    sent_at = msg.sentAt or batch_sent_at
    if sent_at is None:
        return to_epoch_ms(msg.timestamp)
    return received_at - (to_epoch_ms(sent_at) - to_epoch_ms(msg.timestamp))


def flat_properties(properties: dict[str, Any]) -> dict[str, Any]:
    """Scalars as they are, nested values as JSON text, nulls dropped;
    SegmentMappingError for a value nested too deep."""
    out = {}
    for name, value in properties.items():
        if value is None:
            continue
        out[str(name)] = (
            value if isinstance(value, (str, int, float, bool)) else _json_text(f"properties.{name}", value)
        )
    return out


def _json_text(field: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise SegmentMappingError(f"{field}: nested deeper than {MAX_NESTING} levels", field) from None


def session_id(msg: SegmentMessage, user_id: str) -> str:
    """The first session id the message carries, as text; SegmentMappingError for an object or array."""
    for part, name in SESSION_SOURCES:
        value = getattr(msg, part).get(name)
        if value:
            if isinstance(value, (dict, list)):
                raise SegmentMappingError(f"{part}.{name} must be a string or number", f"{part}.{name}")
            return str(value)
    return msg.anonymousId or user_id


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def to_track_event(msg: SegmentMessage, batch_sent_at: datetime | None, received_at: int) -> TrackEvent:
    """The Segment message as our event; raises SegmentMappingError or pydantic ValidationError."""
    user_id = msg.userId or msg.anonymousId
    if not user_id:
        raise SegmentMappingError("userId or anonymousId is required", "userId")
    ctx, props = msg.context, msg.properties
    page = _object(ctx.get("page"))
    screen = _object(ctx.get("screen"))
    return TRACK_EVENT.validate_python(
        {
            "event": {"type": event_type(msg), "id": msg.messageId},
            "user": {"id": user_id},
            "device": {
                "user_agent": ctx.get("userAgent") or "",
                "screen_width": screen.get("width") or 0,
                "screen_height": screen.get("height") or 0,
            },
            "context": {
                "url": page.get("url") or props.get("url") or "",
                "referrer": page.get("referrer") or props.get("referrer"),
                "ip_address": ctx.get("ip"),
                "session_id": session_id(msg, user_id),
            },
            "properties": flat_properties(props),
            "metrics": {
                "load_time": _number(props.get("load_time")),
                "interaction_time": _number(props.get("interaction_time")),
            },
            "timestamp": corrected_timestamp(msg, batch_sent_at, received_at),
        }
    )
