"""Segment tracking-spec messages (track, page, screen, identify, alias, group) mapped onto our TrackEvent.

Mapping (Segment -> ours):
  messageId -> event.id; track `event` -> event.type (e-commerce spec names mapped, others snake_cased);
  page -> page_view; screen -> screen_view; userId (else anonymousId) -> user.id;
  anonymousId -> user.anonymous_id; context.groupId -> context.group_id;
  context.userAgent, context.screen.{width,height} -> device (missing: "" and 0);
  context.page.{url,referrer} (else properties.url/referrer) -> context.url/referrer;
  context.ip -> ip_address;
  context.sessionId / context.session_id / properties.session_id (a string or number), else anonymousId,
  else userId -> session_id;
  properties: scalars kept, nested values JSON-encoded (at most MAX_NESTING levels), nulls dropped;
  properties.load_time/interaction_time -> metrics;
  timestamp (ISO-8601; without an offset: UTC) corrected by sentAt like Segment does:
  receive time - (sentAt - timestamp).
identify, alias and group become identity records (services/ingestion/identity.py: which ids each needs and
where they go): userId, anonymousId, previousId (alias) and groupId (group) as there, traits (else
context.traits) -> properties like track's properties; context, timestamp and session as for track.
A message that cannot be mapped is rejected per item, naming its field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.ingestion.identity import MappingError, identity_event, identity_user
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
    previousId: str | None = Field(None, max_length=256)
    groupId: str | None = Field(None, max_length=256)
    traits: dict[str, Any] | None = None
    messageId: str | None = Field(None, min_length=1, max_length=128)
    properties: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    timestamp: datetime | None = None
    sentAt: datetime | None = None

    @field_validator("userId", "anonymousId", "previousId", "groupId", mode="before")
    @classmethod
    def _ids_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class SegmentBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    batch: list[dict[str, Any]] = Field(min_length=1)
    sentAt: datetime | None = None
    writeKey: str | None = None


SegmentMappingError = MappingError
IDENTITY_MESSAGES = ("identify", "alias", "group")


def event_type(msg: SegmentMessage) -> str:
    if msg.type in TYPE_FOR_MESSAGE:
        return TYPE_FOR_MESSAGE[msg.type]
    if not msg.event:
        raise SegmentMappingError("track messages need an event name", "event")
    mapped = SEGMENT_EVENT_TYPES.get(msg.event) or re.sub(r"\W+", "_", msg.event.lower()).strip("_")
    if not mapped:  # distinct names of symbols alone would all become one type
        raise SegmentMappingError("event: the name has no letter or digit to make an event type of", "event")
    return mapped


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


def flat_properties(properties: dict[str, Any], field: str = "properties") -> dict[str, Any]:
    """Scalars as they are, nested values as JSON text, nulls dropped;
    SegmentMappingError for a value nested too deep."""
    out = {}
    for name, value in properties.items():
        if value is None:
            continue
        out[str(name)] = (
            value if isinstance(value, (str, int, float, bool)) else _json_text(f"{field}.{name}", value)
        )
    return out


def _json_text(field: str, value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        raise SegmentMappingError(f"{field}: nested deeper than {MAX_NESTING} levels", field) from None


def session_id(msg: SegmentMessage, user_id: str) -> str:
    """The first session id the message carries, as text; SegmentMappingError for an object, array or
    boolean (an empty object too: it is not an absent id)."""
    for part, name in SESSION_SOURCES:
        value = getattr(msg, part).get(name)
        if value is None or value == "":
            continue
        if isinstance(value, (dict, list, bool)):
            raise SegmentMappingError(f"{part}.{name} must be a string or number", f"{part}.{name}")
        return str(value)
    return msg.anonymousId or user_id


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def to_track_event(msg: SegmentMessage, batch_sent_at: datetime | None, received_at: int) -> TrackEvent:
    """The Segment message as our event; raises SegmentMappingError or pydantic ValidationError."""
    if msg.type in IDENTITY_MESSAGES:
        return to_identity_event(msg, batch_sent_at, received_at)
    user_id = msg.userId or msg.anonymousId
    if not user_id:
        raise SegmentMappingError("userId or anonymousId is required", "userId")
    event = common_values(msg, user_id, batch_sent_at, received_at)
    return TRACK_EVENT.validate_python(
        {
            **event,
            "event": {"type": event_type(msg), "id": msg.messageId},
            "user": {"id": user_id, "anonymous_id": msg.anonymousId},
            "properties": flat_properties(msg.properties),
            "metrics": {
                "load_time": _number(msg.properties.get("load_time")),
                "interaction_time": _number(msg.properties.get("interaction_time")),
            },
        }
    )


def to_identity_event(msg: SegmentMessage, batch_sent_at: datetime | None, received_at: int) -> TrackEvent:
    """identify, alias or group as our identity record (services/ingestion/identity.py)."""
    try:
        user = identity_user(msg.type, msg.userId, msg.anonymousId, msg.previousId)
    except MappingError as exc:
        raise segment_names(exc) from None
    traits = msg.traits if msg.traits is not None else _object(msg.context.get("traits"))
    common = common_values(msg, user["anonymous_id"] or user["id"], batch_sent_at, received_at)
    common["event_id"] = msg.messageId
    try:
        return identity_event(msg.type, user, msg.groupId, flat_properties(traits, "traits"), common)
    except MappingError as exc:
        raise segment_names(exc) from None


def segment_names(exc: MappingError) -> MappingError:
    """The error with Segment's field names (userId, not user_id)."""
    message = str(exc)
    for ours, theirs in SEGMENT_NAMES.items():
        message = message.replace(ours, theirs)
    return SegmentMappingError(message, SEGMENT_NAMES[exc.field])


SEGMENT_NAMES = {
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "previous_id": "previousId",
    "group_id": "groupId",
}


def common_values(
    msg: SegmentMessage, fallback_session: str, batch_sent_at: datetime | None, received_at: int
) -> dict[str, Any]:
    """The device, context and timestamp of any message, from its context (the module docstring)."""
    ctx, props = msg.context, msg.properties
    page = _object(ctx.get("page"))
    screen = _object(ctx.get("screen"))
    group = ctx.get("groupId")
    return {
        "device": {
            "user_agent": ctx.get("userAgent") or "",
            "screen_width": screen.get("width") or 0,
            "screen_height": screen.get("height") or 0,
        },
        "context": {
            "url": page.get("url") or props.get("url") or "",
            "referrer": page.get("referrer") or props.get("referrer"),
            "ip_address": ctx.get("ip"),
            "session_id": session_id(msg, fallback_session),
            "group_id": group if isinstance(group, str) and group else None,
        },
        "timestamp": corrected_timestamp(msg, batch_sent_at, received_at),
    }
