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

The TypedDicts below are that format as code (validated by pydantic; TypedDicts rather than
models because validating straight into dicts is about twice as fast on the ingestion hot path):
TrackEvent is what a client sends (event.id, timestamp and the nullable parts optional), RawEvent
is the Kafka value with every key present. RawEvent's JSON Schema is published as
event_schema_v{EVENT_SCHEMA_VERSION}.json beside this file and served by ingestion at
/v1/schema/event.json; tests keep the file equal to the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter
from typing_extensions import NotRequired, TypedDict

HEARTBEAT_TYPE = "__heartbeat"
EVENT_SCHEMA_VERSION = 1
EVENT_SCHEMA_FILE = Path(__file__).with_name(f"event_schema_v{EVENT_SCHEMA_VERSION}.json")

INT64_MAX = 2**63 - 1
Int64 = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
PropertyValue = Union[StrictBool, Int64, StrictFloat, StrictStr]
EventType = Annotated[str, Field(min_length=1, max_length=128, description="e.g. page_view, product_view, add_to_cart, purchase")]


def _not_reserved(event_type: str) -> str:
    if event_type == HEARTBEAT_TYPE:
        raise ValueError(f"{HEARTBEAT_TYPE!r} is reserved for ingestion's heartbeats")
    return event_type


ClientEventType = Annotated[EventType, AfterValidator(_not_reserved)]
EventId = Annotated[str, Field(min_length=1, max_length=128, description="client-supplied (de-duplication) or server UUIDv7")]
Text = Annotated[str, Field(max_length=8192)]


def _json_number(value: Any) -> Any:
    """Numbers only: "5" and true are not 5 (5.0 is, as in JSON Schema)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("must be a JSON number")
    return value


NUMBERS_ONLY = BeforeValidator(_json_number)
ScreenSize = Annotated[int, Field(ge=0, le=100_000), NUMBERS_ONLY]
EpochMs = Annotated[int, Field(ge=0, le=INT64_MAX, description="epoch milliseconds"), NUMBERS_ONLY]
Millis = Annotated[Optional[float], Field(ge=0, strict=True, description="milliseconds")]
# NaN, Infinity and 1e400 (parsed as infinity) are not numbers.
IGNORE_EXTRA = ConfigDict(extra="ignore", allow_inf_nan=False)


class EventInfo(TypedDict):
    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    type: ClientEventType
    id: NotRequired[Optional[EventId]]


class User(TypedDict):
    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    id: Annotated[str, Field(min_length=1, max_length=256)]


class Device(TypedDict):
    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    user_agent: Annotated[str, Field(max_length=4096)]
    screen_width: ScreenSize
    screen_height: ScreenSize


class Context(TypedDict):
    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    url: Text
    referrer: NotRequired[Optional[Text]]
    ip_address: NotRequired[Optional[Annotated[str, Field(max_length=64)]]]
    session_id: Annotated[str, Field(min_length=1, max_length=256, description="Kafka key: a session's events share a partition")]


class Metrics(TypedDict):
    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    load_time: NotRequired[Millis]
    interaction_time: NotRequired[Millis]


class TrackEvent(TypedDict):
    """One event as a client sends it to POST /v1/analytics/track."""

    __pydantic_config__ = IGNORE_EXTRA  # type: ignore[misc]
    event: EventInfo
    user: User
    device: Device
    context: Context
    properties: NotRequired[Annotated[dict[str, PropertyValue], Field(max_length=256)]]
    metrics: NotRequired[Metrics]
    timestamp: NotRequired[Optional[Annotated[EpochMs, Field(description="event time; bounded by the clock-skew policy")]]]


class WireEventInfo(TypedDict):
    type: EventType
    id: EventId


class WireContext(TypedDict):
    url: Text
    referrer: Optional[Text]
    ip_address: Optional[str]
    session_id: str


class WireMetrics(TypedDict):
    load_time: Millis
    interaction_time: Millis


class RawEvent(TypedDict):
    """One record value in topic analytics_events (every key present)."""

    __pydantic_config__ = ConfigDict(title="RawEvent", json_schema_extra={"$id": f"rtap:analytics_events:v{EVENT_SCHEMA_VERSION}"})  # type: ignore[misc]
    event: WireEventInfo
    user: User
    device: Device
    context: WireContext
    properties: dict[str, PropertyValue]
    metrics: WireMetrics
    timestamp: Annotated[int, Field(ge=0, description="event time, epoch ms")]
    received_at: Annotated[int, Field(ge=0, description="receive time at ingestion, epoch ms")]


TRACK_EVENT = TypeAdapter(TrackEvent)
TRACK_EVENTS = TypeAdapter(list[TrackEvent])


def complete(event: dict[str, Any]) -> dict[str, Any]:
    """A validated TrackEvent with every optional key present (None or empty), as the wire format wants."""
    event["event"].setdefault("id", None)
    context = event["context"]
    context.setdefault("referrer", None)
    context.setdefault("ip_address", None)
    event.setdefault("properties", {})
    metrics = event.setdefault("metrics", {})
    metrics.setdefault("load_time", None)
    metrics.setdefault("interaction_time", None)
    event.setdefault("timestamp", None)
    return event


def event_json_schema() -> dict[str, Any]:
    """The versioned JSON Schema of the Kafka record value."""
    return TypeAdapter(RawEvent).json_schema()


def write_event_schema(path: Path = EVENT_SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(write_event_schema())
