"""Metric topics and the raw events topic -> ClickHouse, on the shared pipeline (shared/consumer_pipeline.py).

Storage supplies a pure processor per topic (services/storage/processors.py) and a writer: one insert per
table, under the lock the storage API shares (a chDB connection runs one query at a time). The
ReplacingMergeTree tables absorb the replays that at-least-once delivery brings.
"""

from __future__ import annotations

import threading
from typing import Any

from services.storage.backends import Backend
from services.storage.identity import identity_rows
from services.storage.processors import metric_processor, process_event
from shared.consumer_pipeline import ConsumerPipeline, Limits, Processor, Sink, Writer
from shared.metric_schema import MetricSchema
from shared.settings import Settings
from shared.topics import topics

SINK = "storage"  # the consumer header of its dead letters
KILL_BEFORE_COMMIT_ENV = "RTAP_STORAGE_FAULT_KILL_BEFORE_COMMIT"  # the pipeline's hook, named by the sink


def tables(settings: Settings, schemas: dict[str, MetricSchema]) -> dict[str, str]:
    """database.table per topic read (topic names from topics(settings))."""
    db, named = settings.clickhouse.database, topics(settings)
    metric_tables = {named.metric(s).name: f"{db}.{s.name}" for s in schemas.values()}
    return {**metric_tables, named.events.name: f"{db}.{settings.storage.events_table}"}


def processors(settings: Settings, schemas: dict[str, MetricSchema]) -> dict[str, Processor]:
    """The pure processor per topic read: one per job's metric topic, and the raw events topic's."""
    named = topics(settings)
    return {
        **{named.metric(s).name: metric_processor(s) for s in schemas.values()},
        named.events.name: process_event,
    }


def table_writer(
    backend: Backend, lock: threading.Lock, table_of: dict[str, str], events_topic: str | None = None
) -> Writer:
    """One insert per table; the raw events topic's rows also give the identity tables' rows (written after
    the raw rows, in the same retried write: replays are absorbed by their versions)."""
    database = table_of[events_topic].rpartition(".")[0] if events_topic else ""

    def write(rows: dict[str, list[Any]]) -> None:
        for topic, topic_rows in rows.items():
            with lock:
                backend.insert(table_of[topic], topic_rows)
            if topic == events_topic:
                for table, derived in identity_rows(topic_rows).items():
                    with lock:
                        backend.insert(f"{database}.{table}", derived)

    return write


def storage_consumer(
    settings: Settings, backend: Backend, lock: threading.Lock, schemas: dict[str, MetricSchema]
) -> ConsumerPipeline:
    storage = settings.storage
    limits = Limits(storage.batch_rows, storage.batch_bytes, storage.batch_seconds)
    writer = table_writer(backend, lock, tables(settings, schemas), topics(settings).events.name)
    sink = Sink(SINK, processors(settings, schemas), writer, limits, storage.retry_max_seconds)
    return ConsumerPipeline(
        sink,
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": storage.consumer_group,
            "session.timeout.ms": storage.session_timeout_ms,
            # librdkafka's prefetch queue holds at most one batch's worth of record bytes.
            "queued.max.messages.kbytes": storage.batch_bytes // 1024,
        },
        topics(settings).dead_letter.name,
    )
