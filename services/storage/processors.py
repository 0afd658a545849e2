"""Pure processors: one Kafka record (key, value, offset) in, one table row out; no I/O.

A record that can never become a row raises BadRecord with the reason (it goes to the dead-letter
topic). A heartbeat of the raw events topic becomes no row at all.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.storage.tables import DELETED, VERSION
from shared.consumer_pipeline import BadRecord
from shared.events import HEARTBEAT_TYPE
from shared.metrics import MetricSchema

Row = dict[str, Any]
Processor = Callable[[bytes | None, bytes | None, int], Row | None]


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _json_object(raw: bytes | None, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"{what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRecord(f"{what} is not a JSON object")
    return value


def metric_processor(schema: MetricSchema) -> Processor:
    timestamps = {c.name for c in schema.columns if c.type == "timestamp_ms"}

    def to_row(record: dict[str, Any], offset: int, deleted: int) -> Row:
        row = {name: ms_to_datetime(v) if name in timestamps and v is not None else v for name, v in record.items()}
        row[VERSION] = offset
        row[DELETED] = deleted
        return row

    def process(key: bytes | None, value: bytes | None, offset: int) -> Row:
        if value is None:  # upsert-kafka tombstone: the key names the row to retract
            key_columns = _json_object(key, "tombstone key")
            retracted = {**dict.fromkeys(schema.column_names), **{k: key_columns.get(k) for k in schema.key}}
            try:
                return to_row(schema.validate(retracted), offset, 1)
            except ValueError as exc:
                raise BadRecord(f"tombstone: {exc}") from None
        try:
            record = schema.validate(_json_object(value, "value"))
        except ValueError as exc:
            raise BadRecord(str(exc)) from None
        return to_row(record, offset, 0)

    return process


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(min_length=1)
    id: str = Field(min_length=1)


class _User(BaseModel):
    id: str = ""


class _Device(BaseModel):
    user_agent: str = ""
    screen_width: int = 0
    screen_height: int = 0


class _Context(BaseModel):
    url: str = ""
    referrer: str | None = None
    ip_address: str | None = None
    session_id: str = Field(min_length=1)


class _Metrics(BaseModel):
    load_time: float | None = None
    interaction_time: float | None = None


class RawEvent(BaseModel):
    """The wire format of shared/events.py, as storage reads it."""

    model_config = ConfigDict(extra="ignore")
    event: _Event
    user: _User = _User()
    device: _Device = _Device()
    context: _Context
    properties: dict[str, str | bool | int | float] = Field(default_factory=dict)
    metrics: _Metrics = _Metrics()
    timestamp: int
    received_at: int


def _property_text(value: str | bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def is_heartbeat(value: bytes) -> bool:
    try:
        event = orjson.loads(value).get("event")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(event, dict) and event.get("type") == HEARTBEAT_TYPE


def process_event(key: bytes | None, value: bytes | None, offset: int) -> Row | None:
    """A raw event into a row of the events table; a heartbeat into None."""
    if value is None:
        raise BadRecord("raw event without a value")
    try:
        event = RawEvent.model_validate_json(value)
    except ValidationError as exc:
        if is_heartbeat(value):  # ingestion's heartbeats carry empty ids, which no real event may
            return None
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "value"
        raise BadRecord(f"raw event field {field!r}: {first['msg']}") from None
    if event.event.type == HEARTBEAT_TYPE:
        return None
    return {
        "event_id": event.event.id,
        "event_type": event.event.type,
        "user_id": event.user.id,
        "session_id": event.context.session_id,
        "url": event.context.url,
        "referrer": event.context.referrer,
        "ip": event.context.ip_address,
        "user_agent": event.device.user_agent,
        "screen_width": event.device.screen_width,
        "screen_height": event.device.screen_height,
        "properties": {k: _property_text(v) for k, v in event.properties.items()},
        "load_time": event.metrics.load_time,
        "interaction_time": event.metrics.interaction_time,
        "timestamp": ms_to_datetime(event.timestamp),
        "received_at": ms_to_datetime(event.received_at),
        VERSION: offset,
    }
