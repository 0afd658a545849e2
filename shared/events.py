"""The raw event as it sits in Kafka topic analytics_events (written by ingestion, read by the jobs).

Ingestion owns validation (see services/ingestion); this module fixes the wire format that
every reader relies on.

Key: context.session_id (UTF-8), so one session's events stay in one partition.
Value: a JSON object, RawEvent below: the event's identity and type, user, device, context, properties
(str -> str|int|float|bool), metrics (milliseconds), timestamp (event time, epoch ms: the client's value
bounded by the clock-skew policy, else the receive time), received_at (receive time, epoch ms) and
enrichment (UTM fields, referrer host and class, browser, OS and country: derived by ingestion, never
taken from the client; services/ingestion/enrichment.py).

EVENT is the only description of the event's values downstream: EVENT_FIELDS gives each value of
RawEvent its column name, logical type and nullability, and the Flink source, the jobs' events view,
the raw ClickHouse table and storage's row are derived from it (EventSchema checks at import that
EVENT_FIELDS covers RawEvent exactly). A new field: add it to TrackEvent and RawEvent (and to
complete() when clients may leave it out), append one EventField, then regenerate the JSON Schema
(`python -m shared.events`) and the documented column list (`python -m shared.event_doc --write`).

Identity records: Segment's identify, alias and group calls (and ingestion's own equivalents) travel on the
same topic as events of the reserved types in IDENTITY_TYPES: `user.id` is the (identified) user,
`user.anonymous_id` the id linked to it (identify: the anonymousId; alias: the previousId), `context.group_id`
the group (group), `properties` the traits. Storage derives persons, identity links and groups from them
(services/storage/identity.py); the jobs' events view leaves them out, like heartbeats. `user.anonymous_id`
is also on ordinary events: the client's anonymous id beside its user id (null when it sent none).

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
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NotRequired, Union, cast, get_args, get_origin, get_type_hints

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    with_config,
)
from pydantic.fields import FieldInfo
from typing_extensions import TypedDict, is_typeddict

HEARTBEAT_TYPE = "__heartbeat"
IDENTIFY_TYPE, ALIAS_TYPE, GROUP_TYPE = "__identify", "__alias", "__group"
IDENTITY_TYPES = (IDENTIFY_TYPE, ALIAS_TYPE, GROUP_TYPE)
RESERVED_TYPES = frozenset({HEARTBEAT_TYPE, *IDENTITY_TYPES})
EVENT_SCHEMA_VERSION = 1
EVENT_SCHEMA_FILE = Path(__file__).with_name(f"event_schema_v{EVENT_SCHEMA_VERSION}.json")

INT64_MAX = 2**63 - 1
Int64 = Annotated[StrictInt, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
PropertyValue = StrictBool | Int64 | StrictFloat | StrictStr
# Flink's JSON decoder (Jackson) refuses a field name over 50,000 characters and skips the whole event
MAX_PROPERTY_NAME_CHARS = 1024
PropertyName = Annotated[str, Field(max_length=MAX_PROPERTY_NAME_CHARS)]
Properties = dict[PropertyName, PropertyValue]
EventType = Annotated[
    str,
    Field(min_length=1, max_length=128, description="e.g. page_view, product_view, add_to_cart, purchase"),
]


def _not_reserved(event_type: str) -> str:
    if event_type in RESERVED_TYPES:
        raise ValueError(f"{event_type!r} is reserved for ingestion's heartbeats and identity calls")
    return event_type


ClientEventType = Annotated[EventType, AfterValidator(_not_reserved)]
EventId = Annotated[
    str, Field(min_length=1, max_length=128, description="client-supplied (de-duplication) or server UUIDv7")
]
Text = Annotated[str, Field(max_length=8192)]
MAX_UTM_CHARS = 256
MAX_HOST_CHARS = 253
REFERRER_CLASSES = ("direct", "internal", "search", "social", "email", "paid", "referral")


def _json_number(value: Any) -> Any:
    """Numbers only: "5" and true are not 5 (5.0 is, as in JSON Schema)."""
    if isinstance(value, (bool, str, bytes)):
        raise ValueError("must be a JSON number")
    return value


NUMBERS_ONLY = BeforeValidator(_json_number)
ScreenSize = Annotated[int, Field(ge=0, le=100_000), NUMBERS_ONLY]
EpochMs = Annotated[int, Field(ge=0, le=INT64_MAX, description="epoch milliseconds"), NUMBERS_ONLY]
# a day: a window's sum of durations then stays far below the largest float, so no client can make it infinite
MAX_MILLIS = 86_400_000
Millis = Annotated[
    float | None, Field(ge=0, le=MAX_MILLIS, strict=True, description="milliseconds, at most a day")
]
# NaN, Infinity and 1e400 (parsed as infinity) are not numbers.
IGNORE_EXTRA = ConfigDict(extra="ignore", allow_inf_nan=False)


@with_config(IGNORE_EXTRA)
class EventInfo(TypedDict):
    type: ClientEventType
    id: NotRequired[EventId | None]


UserId = Annotated[str, Field(min_length=1, max_length=256)]


@with_config(IGNORE_EXTRA)
class User(TypedDict):
    id: UserId
    anonymous_id: NotRequired[UserId | None]


@with_config(IGNORE_EXTRA)
class Device(TypedDict):
    user_agent: Annotated[str, Field(max_length=4096)]
    screen_width: ScreenSize
    screen_height: ScreenSize


GroupId = Annotated[
    str,
    Field(
        min_length=1, max_length=256, description="group calls: the group; events: Segment's context.groupId"
    ),
]


@with_config(IGNORE_EXTRA)
class Context(TypedDict):
    url: Text
    referrer: NotRequired[Text | None]
    ip_address: NotRequired[Annotated[str, Field(max_length=64)] | None]
    session_id: Annotated[
        str,
        Field(min_length=1, max_length=256, description="Kafka key: a session's events share a partition"),
    ]
    group_id: NotRequired[GroupId | None]


@with_config(IGNORE_EXTRA)
class Metrics(TypedDict):
    load_time: NotRequired[Millis]
    interaction_time: NotRequired[Millis]


@with_config(IGNORE_EXTRA)
class TrackEvent(TypedDict):
    """One event as a client sends it to POST /v1/analytics/track."""

    event: EventInfo
    user: User
    device: Device
    context: Context
    properties: NotRequired[Annotated[Properties, Field(max_length=256)]]
    metrics: NotRequired[Metrics]
    timestamp: NotRequired[
        Annotated[EpochMs, Field(description="event time; bounded by the clock-skew policy")] | None
    ]


class WireEventInfo(TypedDict):
    type: EventType
    id: EventId


class WireContext(TypedDict):
    url: Text
    referrer: Text | None
    ip_address: str | None
    session_id: str
    group_id: GroupId | None


class WireUser(TypedDict):
    id: UserId
    anonymous_id: Annotated[
        UserId | None,
        Field(description="the client's anonymous id; identify: the one linked, alias: the previous id"),
    ]


class WireMetrics(TypedDict):
    load_time: Millis
    interaction_time: Millis


class Enrichment(TypedDict):
    """Derived by ingestion from context.url, context.referrer, device.user_agent and context.ip_address
    (services/ingestion/enrichment.py); whatever a client sends under `enrichment` is replaced."""

    utm_source: Annotated[str, Field(max_length=MAX_UTM_CHARS)] | None
    utm_medium: Annotated[str, Field(max_length=MAX_UTM_CHARS)] | None
    utm_campaign: Annotated[str, Field(max_length=MAX_UTM_CHARS)] | None
    utm_term: Annotated[str, Field(max_length=MAX_UTM_CHARS)] | None
    utm_content: Annotated[str, Field(max_length=MAX_UTM_CHARS)] | None
    referrer_host: Annotated[str, Field(max_length=MAX_HOST_CHARS)] | None
    referrer_class: Annotated[str, Field(description=", ".join(REFERRER_CLASSES))]
    browser: Annotated[str, Field(description="user agent family (ua-parser), 'Other' when unknown")]
    browser_version: Annotated[str, Field(description="major version")] | None
    os: Annotated[str, Field(description="OS family (ua-parser), 'Other' when unknown")]
    os_version: Annotated[str, Field(description="major version")] | None
    country: Annotated[str, Field(description="ISO 3166-1 alpha-2, from the IP before truncation")] | None


ENRICHMENT_KEYS = tuple(Enrichment.__annotations__)  # the group's keys, in order (each also a raw column)


@with_config(
    ConfigDict(title="RawEvent", json_schema_extra={"$id": f"rtap:analytics_events:v{EVENT_SCHEMA_VERSION}"})
)
class RawEvent(TypedDict):
    """One record value in topic analytics_events (every key present)."""

    event: WireEventInfo
    user: WireUser
    device: Device
    context: WireContext
    properties: Properties
    metrics: WireMetrics
    timestamp: Annotated[int, Field(ge=0, description="event time, epoch ms")]
    received_at: Annotated[int, Field(ge=0, description="receive time at ingestion, epoch ms")]
    enrichment: Enrichment


@dataclass(frozen=True)
class FieldType:
    """A logical type of a raw event value: its Python, ClickHouse and Flink SQL types."""

    name: str
    python: type
    clickhouse: str
    flink: str

    def empty(self) -> Any:
        """The value an absent non-nullable field stands for: "", 0, 0.0 or {}."""
        return self.python()


STRING = FieldType("string", str, "String", "STRING")
CATEGORY = FieldType("category", str, "LowCardinality(String)", "STRING")  # few distinct values
INT32 = FieldType("int32", int, "Int32", "INT")
FLOAT64 = FieldType("float64", float, "Float64", "DOUBLE")
EPOCH_MS = FieldType("epoch_ms", int, "DateTime64(3, 'UTC')", "BIGINT")
PROPERTIES = FieldType("properties", dict, "Map(String, String)", "MAP<STRING, STRING>")  # values as text


@dataclass(frozen=True)
class EventField:
    """One value of RawEvent: where it sits in the Kafka value (`path`, dotted) and its column downstream.

    required: a record without it, or with it empty, can never be stored. in_view: whether the jobs' events
    view shows it, as `view` when given (else as `column`). leads_view: listed first there (the ids and the
    type, the view's order since before the schema: the same order keeps the same Flink plan).
    """

    column: str
    path: str
    type: FieldType
    nullable: bool = False
    required: bool = False
    in_view: bool = True
    view: str | None = None
    leads_view: bool = False

    @property
    def view_column(self) -> str:
        return self.view or self.column

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))


TYPE_PATH, ID_PATH, USER_PATH = "event.type", "event.id", "user.id"
EVENT_TIME_PATH, RECEIVED_PATH = "timestamp", "received_at"
ANONYMOUS_PATH, GROUP_PATH = "user.anonymous_id", "context.group_id"


@dataclass(frozen=True)
class EventSchema:
    """The raw event's fields in the raw table's column order (a new field goes last) and the wire TypedDict.

    Construction fails unless the fields cover the TypedDict's values exactly, with matching types and
    nullability. `wire_fields` is the TypedDict's order (the Kafka value's and the Flink source's).
    """

    fields: tuple[EventField, ...]
    wire: type
    wire_fields: tuple[EventField, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        leaves = dict(_leaves(self.wire))
        declared = {f.path: f for f in self.fields}
        if len(declared) != len(self.fields) or len({f.column for f in self.fields}) != len(self.fields):
            raise TypeError("event fields: a path or a column is declared twice")
        if set(declared) != set(leaves):
            unknown, undeclared = sorted(set(declared) - set(leaves)), sorted(set(leaves) - set(declared))
            raise TypeError(
                f"event fields {unknown} are not values of {self.wire.__name__}; "
                f"its values {undeclared} have no field"
            )
        for path, hint in leaves.items():
            _check_field(declared[path], hint)
        object.__setattr__(self, "wire_fields", tuple(declared[path] for path in leaves))
        for path in (TYPE_PATH, ID_PATH, USER_PATH, EVENT_TIME_PATH, RECEIVED_PATH):
            self.at(path)

    @property
    def view_fields(self) -> tuple[EventField, ...]:
        """The events view's columns: wire order, the leading ones first."""
        shown = [f for f in self.wire_fields if f.in_view]
        return tuple(sorted(shown, key=lambda f: not f.leads_view))

    def at(self, path: str) -> EventField:
        found = [f for f in self.fields if f.path == path]
        if not found:
            raise KeyError(f"the raw event has no field at {path!r}")
        return found[0]

    def description(self, path: str) -> str:
        """The wire TypedDict's description of the value at `path` ("" when it has none)."""
        return next((_description(hint) for p, hint in _leaves(self.wire) if p == path), "")

    def nest(self, values: dict[str, Any], fields: Iterable[EventField] | None = None) -> dict[str, Any]:
        """A Kafka value (nested, wire order) from one value per path: of every field, or of `fields` only
        (in wire order)."""
        out: dict[str, Any] = {}
        wire = self.wire_fields
        if fields is not None:
            chosen = set(fields)
            wire = tuple(f for f in wire if f in chosen)
        for f in wire:
            *groups, leaf = f.keys
            target = out
            for group in groups:
                target = target.setdefault(group, {})
            target[leaf] = values[f.path]
        return out

    def heartbeat(self, event_id: str, now: int) -> dict[str, Any]:
        """A heartbeat in the full wire shape: every value empty or null but its type, id and times."""
        values = {f.path: None if f.nullable else f.type.empty() for f in self.fields}
        values |= {TYPE_PATH: HEARTBEAT_TYPE, ID_PATH: event_id, EVENT_TIME_PATH: now, RECEIVED_PATH: now}
        return self.nest(values)


def _leaves(typed_dict: type, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, type hint) of every non-TypedDict value, in declaration order."""
    found: list[tuple[str, Any]] = []
    for name, hint in get_type_hints(typed_dict, include_extras=True).items():
        base, _ = _base(hint)
        if is_typeddict(base):
            found += _leaves(base, f"{prefix}{name}.")
        else:
            found.append((prefix + name, hint))
    return found


def _base(hint: Any) -> tuple[Any, bool]:
    """The type under Annotated and Optional, and whether it was Optional."""
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    if get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint):
        members = [arg for arg in get_args(hint) if arg is not type(None)]
        return (_base(members[0])[0] if len(members) == 1 else hint), True
    return hint, False


def _check_field(declared: EventField, hint: Any) -> None:
    base, nullable = _base(hint)
    if nullable != declared.nullable or (get_origin(base) or base) is not declared.type.python:
        raise TypeError(
            f"event field {declared.path!r}: declared {declared.type.name}"
            f"{' (nullable)' if declared.nullable else ''}, the wire type is {hint!r}"
        )


def _description(hint: Any) -> str:
    while get_origin(hint) in (Annotated, Union, types.UnionType):
        for item in getattr(hint, "__metadata__", ()):
            if isinstance(item, FieldInfo) and item.description:
                return item.description
        hint = get_args(hint)[0]
    return ""


EVENT_FIELDS = (
    EventField("event_id", ID_PATH, STRING, required=True, leads_view=True),
    EventField("event_type", TYPE_PATH, CATEGORY, required=True, leads_view=True),
    EventField("user_id", "user.id", STRING, leads_view=True),
    EventField("session_id", "context.session_id", STRING, required=True, leads_view=True),
    EventField("url", "context.url", STRING),
    EventField("referrer", "context.referrer", STRING, nullable=True),
    EventField("ip", "context.ip_address", STRING, nullable=True, in_view=False),  # no job needs it
    EventField("user_agent", "device.user_agent", STRING),
    EventField("screen_width", "device.screen_width", INT32),
    EventField("screen_height", "device.screen_height", INT32),
    EventField("properties", "properties", PROPERTIES),
    EventField("load_time", "metrics.load_time", FLOAT64, nullable=True),
    EventField("interaction_time", "metrics.interaction_time", FLOAT64, nullable=True),
    EventField("timestamp", EVENT_TIME_PATH, EPOCH_MS, required=True, view="ts"),
    EventField("received_at", RECEIVED_PATH, EPOCH_MS, required=True),
    EventField("utm_source", "enrichment.utm_source", STRING, nullable=True),
    EventField("utm_medium", "enrichment.utm_medium", STRING, nullable=True),
    EventField("utm_campaign", "enrichment.utm_campaign", STRING, nullable=True),
    EventField("utm_term", "enrichment.utm_term", STRING, nullable=True),
    EventField("utm_content", "enrichment.utm_content", STRING, nullable=True),
    EventField("referrer_host", "enrichment.referrer_host", STRING, nullable=True),
    EventField("referrer_class", "enrichment.referrer_class", CATEGORY),
    EventField("browser", "enrichment.browser", CATEGORY),
    EventField("browser_version", "enrichment.browser_version", CATEGORY, nullable=True),
    EventField("os", "enrichment.os", CATEGORY),
    EventField("os_version", "enrichment.os_version", CATEGORY, nullable=True),
    EventField("country", "enrichment.country", CATEGORY, nullable=True),
    EventField("anonymous_id", ANONYMOUS_PATH, STRING, nullable=True),
    EventField("group_id", GROUP_PATH, STRING, nullable=True, in_view=False),  # no job needs it
)
EVENT = EventSchema(EVENT_FIELDS, RawEvent)


TRACK_EVENT = TypeAdapter(TrackEvent)
TRACK_EVENTS = TypeAdapter(list[TrackEvent])


def complete(event: TrackEvent) -> dict[str, Any]:
    """A validated TrackEvent with every optional key present (None or empty), as the wire format wants."""
    event["event"].setdefault("id", None)
    event["user"].setdefault("anonymous_id", None)
    context = event["context"]
    context.setdefault("referrer", None)
    context.setdefault("ip_address", None)
    context.setdefault("group_id", None)
    event.setdefault("properties", {})
    metrics = event.setdefault("metrics", {})
    metrics.setdefault("load_time", None)
    metrics.setdefault("interaction_time", None)
    event.setdefault("timestamp", None)
    return cast(dict[str, Any], event)


def event_json_schema() -> dict[str, Any]:
    """The versioned JSON Schema of the Kafka record value."""
    return TypeAdapter(RawEvent).json_schema()


def write_event_schema(path: Path = EVENT_SCHEMA_FILE) -> Path:
    path.write_text(json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    print(write_event_schema())
