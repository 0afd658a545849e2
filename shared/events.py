"""The raw event as it sits in Kafka topic analytics_events (written by ingestion, read by the jobs).

Ingestion owns validation (see services/ingestion); this module fixes the wire format that
every reader relies on.

Key: context.session_id (UTF-8), so one session's events stay in one partition.
Value: JSON object
  event      {type: str, id: str}            id: client-supplied or server UUIDv7
  user       {id: str}
  device     {user_agent: str, screen_width: int, screen_height: int}
  context    {url: str, referrer: str|null, ip_address: str|null, session_id: str}
  properties {str: str|int|float|bool}
  metrics    {load_time: float|null, interaction_time: float|null}   milliseconds
  timestamp  int   event time, epoch ms (client value bounded by the clock-skew policy, else receive time)
  received_at int  receive time at ingestion, epoch ms

Heartbeat records keep event time moving when traffic pauses: ingestion writes one to every
partition each RTAP_INGESTION__HEARTBEAT_INTERVAL_MS with event.type == HEARTBEAT_TYPE and
timestamp == now. Jobs use them for watermarks only and filter them out before aggregating.

The models below are that format as code: TrackEvent is what a client sends (event.id and
timestamp optional), RawEvent is the Kafka value. RawEvent's JSON Schema is published as
event_schema_v{EVENT_SCHEMA_VERSION}.json beside this file and served by ingestion at
/v1/schema/event.json; tests keep the file equal to the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

HEARTBEAT_TYPE = "__heartbeat"
EVENT_SCHEMA_VERSION = 1
EVENT_SCHEMA_FILE = Path(__file__).with_name(f"event_schema_v{EVENT_SCHEMA_VERSION}.json")

PropertyValue = Union[StrictBool, StrictInt, StrictFloat, StrictStr]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class EventInfo(_Part):
    type: str = Field(min_length=1, max_length=128, description="event type, e.g. page_view, product_view, add_to_cart, purchase")
    id: str | None = Field(None, min_length=1, max_length=128, description="client-supplied id (de-duplication); server UUIDv7 when absent")


class User(_Part):
    id: str = Field(min_length=1, max_length=256)


class Device(_Part):
    user_agent: str = Field(max_length=4096)
    screen_width: int = Field(ge=0, le=100_000)
    screen_height: int = Field(ge=0, le=100_000)


class Context(_Part):
    url: str = Field(max_length=8192)
    referrer: str | None = Field(None, max_length=8192)
    ip_address: str | None = Field(None, max_length=64)
    session_id: str = Field(min_length=1, max_length=256, description="Kafka key: a session's events share a partition")


class Metrics(_Part):
    load_time: float | None = Field(None, ge=0, description="milliseconds")
    interaction_time: float | None = Field(None, ge=0, description="milliseconds")


class TrackEvent(_Part):
    """One event as a client sends it to POST /v1/analytics/track."""

    event: EventInfo
    user: User
    device: Device
    context: Context
    properties: dict[str, PropertyValue] = Field(default_factory=dict, max_length=256)
    metrics: Metrics = Field(default_factory=Metrics)
    timestamp: int | None = Field(None, ge=0, description="event time, epoch ms; bounded by the clock-skew policy")


class WireEventInfo(EventInfo):
    id: str = Field(min_length=1, max_length=128)


class RawEvent(TrackEvent):
    """One record value in topic analytics_events."""

    model_config = ConfigDict(title="RawEvent", json_schema_extra={"$id": f"rtap:analytics_events:v{EVENT_SCHEMA_VERSION}"})

    event: WireEventInfo
    timestamp: int = Field(ge=0, description="event time, epoch ms")
    received_at: int = Field(ge=0, description="receive time at ingestion, epoch ms")


def event_json_schema() -> dict[str, Any]:
    """The versioned JSON Schema of the Kafka record value."""
    return RawEvent.model_json_schema()


def write_event_schema(path: Path = EVENT_SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(write_event_schema())
