"""The per-event size limit: a record value longer than KafkaSettings.max_event_bytes is refused with 413
before anything is produced, naming what makes it too large, so Kafka never refuses a record a client sent.

The check is one len() per record; only a refused record is parsed again, to name its field.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.ingestion.errors import IngestError, Rejection, too_large
from services.ingestion.records import Record

SETTING = "RTAP_KAFKA__MAX_RECORD_BYTES"
MAX_NAME_IN_FIELD = 100


def check(record: Record, limit: int) -> None:
    """Raise 413 when the record's value is over limit bytes."""
    if len(record.value) > limit:
        raise record_too_large(record.value, limit)


def split(valid: list[tuple[int, Record]], limit: int) -> tuple[list[tuple[int, Record]], list[Rejection]]:
    """(items within the limit, a 413 rejection for each item over it)."""
    if all(len(record.value) <= limit for _, record in valid):
        return valid, []
    fits = [(i, record) for i, record in valid if len(record.value) <= limit]
    over = [
        record_too_large(record.value, limit).rejection(i) for i, record in valid if len(record.value) > limit
    ]
    return fits, over


def record_too_large(value: bytes, limit: int) -> IngestError:
    field = oversize_field(orjson.loads(value), len(value) - limit)
    return too_large(
        f"{field}: the event is {len(value)} bytes as a Kafka record; the limit is {limit} bytes "
        f"({SETTING} less room for the key and headers)",
        field,
    )


def oversize_field(event: dict[str, Any], excess: int) -> str:
    """properties.<name> when leaving out that one property makes the event fit; else 'properties', or 'event'
    when it has none (every other field has a bounded length)."""
    properties = event.get("properties") or {}
    if not properties:
        return "event"
    sizes = {name: len(orjson.dumps({name: value})) for name, value in properties.items()}
    name = max(sizes, key=sizes.__getitem__)
    return f"properties.{name[:MAX_NAME_IN_FIELD]}" if sizes[name] >= excess else "properties"
