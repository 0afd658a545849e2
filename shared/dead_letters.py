"""The dead-letter record: how the consumer pipeline writes a record a processor refused, and how a reader
reads one back.

Key and value are the refused record's, unchanged; the headers (UTF-8 text) say why and where from:
REASON, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET and CONSUMER (the sink that refused it). The topic is
topics(settings).dead_letter. `rtap dlq replay` marks each record it re-produces to its source topic with
REPLAYED_FROM_DLQ_OFFSET (the dead letter's offset).

Anything may sit in the topic (another writer, a header that is not UTF-8, no headers at all), so reading
never fails: a missing or unreadable header becomes "" or None, and text is cut to TEXT_LIMIT characters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

REASON = "reason"
SOURCE_TOPIC = "source_topic"
SOURCE_PARTITION = "source_partition"
SOURCE_OFFSET = "source_offset"
CONSUMER = "consumer"
REPLAYED_FROM_DLQ_OFFSET = "replayed_from_dlq_offset"

TEXT_LIMIT = 2_000

Headers = list[tuple[str, str | bytes | None]]


def headers(reason: str, topic: str, partition: int, offset: int, consumer: str) -> Headers:
    """The headers of the dead letter of record `topic`/`partition`/`offset`, refused by `consumer`."""
    return [
        (REASON, reason.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (CONSUMER, consumer.encode()),
    ]


def header_text(raw: bytes | str | None, limit: int = TEXT_LIMIT) -> str:
    """A header value as text: undecodable bytes replaced, at most `limit` characters."""
    if raw is None:
        return ""
    text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "…"


def message_headers(msg: Message) -> Headers:
    """The record's headers; none when the client cannot read them (a name that is not UTF-8)."""
    try:
        found = msg.headers() or []
    except (UnicodeDecodeError, ValueError):
        return []
    return list(found.items() if isinstance(found, dict) else found)


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


@dataclass(frozen=True)
class DeadLetter:
    """One record of the dead-letter topic, without its key and value (their sizes only)."""

    partition: int
    offset: int
    timestamp_ms: int | None
    reason: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    consumer: str
    key_bytes: int
    value_bytes: int

    @classmethod
    def of(cls, msg: Message) -> DeadLetter:
        named: dict[str, bytes | str | None] = {}
        for name, value in message_headers(msg):
            named.setdefault(name, value)  # the pipeline writes each once; another writer's first counts
        text = {name: header_text(named.get(name)) for name in (REASON, SOURCE_TOPIC, CONSUMER)}
        kind, timestamp = msg.timestamp()
        return cls(
            partition=int(msg.partition() or 0),
            offset=int(msg.offset() or 0),
            timestamp_ms=None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
            reason=text[REASON],
            source_topic=text[SOURCE_TOPIC],
            source_partition=_int_or_none(header_text(named.get(SOURCE_PARTITION), 20)),
            source_offset=_int_or_none(header_text(named.get(SOURCE_OFFSET), 20)),
            consumer=text[CONSUMER],
            key_bytes=len(msg.key() or b""),
            value_bytes=len(msg.value() or b""),
        )

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
