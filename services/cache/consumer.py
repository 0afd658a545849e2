"""Metric topics -> Redis, on the shared consumer pipeline (shared/consumer_pipeline.py).

Cache supplies a pure processor per topic (`decode`: validate a record or read a tombstone's key) and a
writer: one Redis pipeline per batch (records written, each index they touch added to and trimmed once,
tombstones deleted), then a second that publishes the written windows to the streams. Redis down or full
(noeviction refuses writes at maxmemory): the pipeline retries the whole batch, committing nothing meanwhile;
replays are idempotent writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from services.cache.layout import JobLayout, delete_record, publish_record, write_records
from shared.consumer_pipeline import BadRecord, ConsumerPipeline, Limits, Processor, Sink, Writer
from shared.settings import CacheSettings, Settings
from shared.topics import topics

SINK = "cache"  # the consumer header of its dead letters


@dataclass
class Decoded:
    layout: JobLayout
    record: dict[str, Any] | None  # None: a tombstone, `key` names the window to delete
    key: dict[str, Any] = field(default_factory=dict)


def decode(layout: JobLayout, key: bytes | None, value: bytes | None) -> Decoded:
    """Pure: one Kafka record of a metric topic into a validated record (or a tombstone)."""
    if value is None:
        try:
            key_columns = orjson.loads(key or b"null")
        except orjson.JSONDecodeError as exc:
            raise BadRecord(f"tombstone key is not JSON: {exc}") from None
        if not isinstance(key_columns, dict) or any(k not in key_columns for k in layout.schema.key):
            raise BadRecord(f"tombstone key must be an object with {list(layout.schema.key)}")
        return Decoded(layout, None, key_columns)
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadRecord(f"value is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRecord("value is not a JSON object")
    try:
        return Decoded(layout, layout.schema.validate(raw))
    except ValueError as exc:
        raise BadRecord(str(exc)) from None


def processor(layout: JobLayout) -> Processor:
    return lambda key, value, offset: decode(layout, key, value)


def redis_writer(client: redis.Redis, cache: CacheSettings) -> Writer:
    """One pipeline per attempt (redis-py empties a pipeline that failed); streams hear of a window only once
    all of the batch is stored (a refused write publishes nothing)."""

    def write(rows: dict[str, list[Decoded]]) -> None:
        pipe = client.pipeline(transaction=False)
        for decoded in rows.values():
            written: list[tuple[JobLayout, dict[str, Any]]] = []
            for d in decoded:
                if d.record is None:  # the records before a tombstone are queued before it
                    write_records(pipe, written, cache.windows_per_key, cache.ttl_seconds)
                    written = []
                    delete_record(pipe, d.layout, d.key)
                else:
                    written.append((d.layout, d.record))
            write_records(pipe, written, cache.windows_per_key, cache.ttl_seconds)
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for decoded in rows.values():
            for d in decoded:
                if d.record is not None:
                    publish_record(pipe, d.layout, d.record)
        pipe.execute()

    return write


def processors(settings: Settings, layouts: dict[str, JobLayout]) -> dict[str, Processor]:
    """The processor per metric topic read (topic names from topics(settings))."""
    metric = topics(settings).metric
    return {metric(layout.schema).name: processor(layout) for layout in layouts.values()}


def cache_consumer(settings: Settings, layouts: dict[str, JobLayout]) -> ConsumerPipeline:
    cache = settings.cache
    writer = redis_writer(redis.Redis.from_url(settings.redis.url), cache)
    sink = Sink(
        SINK,
        processors(settings, layouts),
        writer,
        Limits(cache.batch_records, cache.batch_bytes, cache.batch_seconds),
    )
    return ConsumerPipeline(
        sink,
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": cache.consumer_group,
            "session.timeout.ms": cache.session_timeout_ms,
        },
        topics(settings).dead_letter.name,
    )
