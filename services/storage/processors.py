"""Pure processors: one Kafka record (key, value, offset) in, one table row out; no I/O.

A record that can never become a row raises BadRecord with the reason (it goes to the dead-letter
topic). A heartbeat of the raw events topic becomes no row at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from keyword import iskeyword
from typing import Any

import orjson
from pydantic import BaseModel, Field, ValidationError, create_model

from services.storage.tables import DELETED, VERSION
from shared.consumer_pipeline import BadRecord
from shared.events import EPOCH_MS, EVENT, HEARTBEAT_TYPE, PROPERTIES, TYPE_PATH, EventField, EventSchema
from shared.metric_schema import MetricSchema

Row = dict[str, Any]
Processor = Callable[[bytes | None, bytes | None, int], Row | None]


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


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
        row = {
            name: ms_to_datetime(v) if name in timestamps and v is not None else v
            for name, v in record.items()
        }
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


def _property_text(value: str | bool | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _property_texts(properties: dict[str, str | bool | int | float]) -> dict[str, str]:
    return {k: _property_text(v) for k, v in properties.items()}


VALIDATED_TYPES: dict[str, Any] = {PROPERTIES.name: dict[str, str | bool | int | float]}  # by logical type
STORED_VALUES: dict[str, Callable[[Any], Any]] = {  # a validated value into its column's, by logical type
    EPOCH_MS.name: ms_to_datetime,
    PROPERTIES.name: _property_texts,
}


def event_model(event: EventSchema) -> type[BaseModel]:
    """A pydantic model of the Kafka value: lenient where a row can do without a value (an absent one is
    empty or null), strict where it cannot (a required one)."""
    tree = event.nest({f.path: f for f in event.fields})
    return _model("RawEvent", tree)


def _model(name: str, tree: dict[str, Any]) -> type[BaseModel]:
    members: dict[str, Any] = {}
    for key, node in tree.items():
        if isinstance(node, EventField):
            members[key] = _member(node)
            continue
        nested = _model(f"{name}_{key}", node)
        required = any(f.required for f in _fields(node))
        members[key] = (nested, ...) if required else (nested, Field(default_factory=nested))
    return create_model(name, **members)


def _fields(tree: dict[str, Any]) -> list[EventField]:
    return [f for node in tree.values() for f in (_fields(node) if isinstance(node, dict) else [node])]


def _member(f: EventField) -> tuple[Any, Any]:
    validated = VALIDATED_TYPES.get(f.type.name, f.type.python)
    if f.required:
        return validated, Field(min_length=1) if f.type.python is str else ...
    if f.nullable:
        return validated | None, None
    return validated, Field(default_factory=f.type.empty)


def row_builder(event: EventSchema) -> Callable[[Any, int], Row]:
    """`row(record, offset)`: a validated record's row, compiled once from the schema into one dict display
    (as fast as a hand-written one: the storage consumer calls it for every raw event)."""
    items = [f"{f.column!r}: {_stored_expression(f)}" for f in event.fields]
    source = f"def row(record, offset):\n    return {{{', '.join(items)}, {VERSION!r}: offset}}\n"
    namespace: dict[str, Any] = dict(STORED_VALUES)
    exec(compile(source, "<storage row builder>", "exec"), namespace)  # the source: the schema's, never input
    row: Callable[[Any, int], Row] = namespace["row"]
    return row


def _stored_expression(f: EventField) -> str:
    if not all(key.isidentifier() and not iskeyword(key) for key in f.keys):
        raise ValueError(f"event field path {f.path!r}: every key must be a Python identifier")
    value = f"record.{f.path}"
    if f.type.name not in STORED_VALUES:
        return value
    stored = f"{f.type.name}({value})"
    return f"(None if {value} is None else {stored})" if f.nullable else stored


def event_processor(event: EventSchema = EVENT) -> Processor:
    """Raw events into rows of the events table (a heartbeat into None)."""
    model = event_model(event)
    row = row_builder(event)
    event_type = event.at(TYPE_PATH).column

    def process(key: bytes | None, value: bytes | None, offset: int) -> Row | None:
        if value is None:
            raise BadRecord("raw event without a value")
        try:
            record = model.model_validate_json(value)
        except ValidationError as exc:
            if is_heartbeat(value):  # ingestion's heartbeats carry empty session ids, which no real event may
                return None
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "value"
            raise BadRecord(f"raw event field {field!r}: {first['msg']}") from None
        stored = row(record, offset)
        return None if stored[event_type] == HEARTBEAT_TYPE else stored

    return process


def is_heartbeat(value: bytes) -> bool:
    try:
        found: Any = orjson.loads(value)
        for key in TYPE_PATH.split("."):
            found = found.get(key)
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return bool(found == HEARTBEAT_TYPE)


process_event = event_processor()
