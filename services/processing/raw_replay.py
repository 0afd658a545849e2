"""Backfill from the raw table: the range's events, exported by storage (GET /v1/events/export), into a topic
of their own in the events topic's exact shape (same key, same partition count), for the bounded jobs to read
whole; the topic is deleted after.

Heartbeats are not stored, and none are needed: the export is in event-time order, so no event is late,
and the bounded read's end moves the watermark past every window.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from confluent_kafka import KafkaException, Producer

from services.processing.coordinator import Bounds
from shared.events import EVENT_TIME_PATH
from shared.kafka_admin import delete_topics, ensure_topics
from shared.settings import Settings
from shared.topics import Topic, topics

KEY_PATH = "context.session_id"  # the events topic's record key (shared/events.py)
END, ERROR = "export_end", "export_error"
Progress = Callable[[int, int], None]  # (rows so far, event time reached)


class ExportError(RuntimeError):
    """Storage refused the export or ended it early; the message says why."""


@dataclass(frozen=True)
class ExportRange:
    """The event times the jobs' view keeps for the bounds: the range widened by the lookaround."""

    start_ms: int
    end_ms: int

    @classmethod
    def of(cls, bounds: Bounds) -> ExportRange:
        return cls(bounds.start_ms - bounds.lookaround_ms, bounds.end_ms + bounds.lookaround_ms)


def replay_topic(settings: Settings) -> Topic:
    """A fresh topic named after the events topic; its retention only matters if a run dies before the
    delete."""
    name = f"{topics(settings).events.name}-backfill-{uuid.uuid4().hex[:8]}"
    return dataclasses.replace(topics(settings).events, name=name)


def export_lines(settings: Settings, span: ExportRange, read_key: str | None) -> Iterator[str]:
    """The export's NDJSON lines as storage streams them; ExportError for a refusal (its message included)."""
    headers = {"X-Read-Key": read_key} if read_key else {}
    params = {"from": str(span.start_ms), "to": str(span.end_ms)}
    timeout = httpx.Timeout(30.0, read=settings.storage.export_max_seconds)
    url = f"{settings.storage.url}/v1/events/export"
    try:
        with httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise ExportError(
                    f"storage refused the export (HTTP {response.status_code}): {detail(response)}"
                )
            yield from response.iter_lines()
    except httpx.HTTPError as exc:
        raise ExportError(f"storage API at {settings.storage.url}: {type(exc).__name__}: {exc}") from None


def detail(response: httpx.Response) -> str:
    try:
        body: Any = response.json().get("detail")
    except ValueError:
        return response.text[:500]
    if isinstance(body, list):
        return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in body)
    return str(body)


def copy_export(lines: Iterator[str], producer: Producer, topic: str, progress: Progress) -> int:
    """Produce each exported value keyed by its session id; return the rows, checked against the end line."""
    rows, reached = 0, 0
    for line in lines:
        if not line:
            continue
        value = orjson.loads(line)
        if END in value:
            if value[END]["rows"] != rows:
                raise ExportError(f"storage sent {rows} rows but counted {value[END]['rows']}")
            progress(rows, reached)
            return rows
        if ERROR in value:
            raise ExportError(f"storage: {value[ERROR]}")
        _produce(producer, topic, str(at_path(value, KEY_PATH)).encode(), orjson.dumps(value))
        rows += 1
        reached = at_path(value, EVENT_TIME_PATH)
        if rows % 10_000 == 0:
            progress(rows, reached)
    raise ExportError(f"the export ended after {rows} rows without its end line (cut short)")


def at_path(value: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a Kafka value (context.session_id)."""
    found: Any = value
    for key in path.split("."):
        found = found[key]
    return found


def _produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:  # the local queue is full: let deliveries drain it
            producer.poll(0.5)


def replay_from_raw(
    settings: Settings, bounds: Bounds, topic: Topic, read_key: str | None, progress: Progress
) -> int:
    """Create `topic` and fill it with the bounds' events from the raw table; return how many."""
    ensure_topics(settings.kafka.bootstrap, [topic])
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "acks": "all",
            "enable.idempotence": True,  # keeps each partition in the export's (event-time) order
            "linger.ms": 20,
            "compression.type": "lz4",
            "on_delivery": delivered,
        }
    )
    rows = copy_export(
        export_lines(settings, ExportRange.of(bounds), read_key), producer, topic.name, progress
    )
    if producer.flush(60) != 0 or failures:
        raise KafkaException(f"{topic.name}: not every exported event was written: {failures[:3]}")
    return rows


def drop_topic(settings: Settings, topic: Topic) -> None:
    delete_topics(settings.kafka.bootstrap, [topic.name])
