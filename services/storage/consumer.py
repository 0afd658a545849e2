"""Metric topics and the raw events topic -> ClickHouse, as small steps: decode -> batch -> write -> commit.

- decode: a pure processor per topic turns a record into a row, None (heartbeat) or BadRecord.
- batch: rows per table plus the next offset per partition; closed by record count, record bytes or age,
  whichever first (a record is added before the check, so a batch holds at most one record past its byte bound).
- write: one insert per table, retried with exponential backoff until it succeeds (or the process
  stops); the consumer never moves past a batch that is not written.
- commit: dead letters flushed, then offsets committed synchronously. Auto-commit is off, so a crash
  anywhere replays at most the uncommitted batch, and the ReplacingMergeTree tables absorb replays.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from services.storage.backends import Backend
from services.storage.processors import BadRecord, Processor, Row, metric_processor, process_event
from shared.logging import get_logger
from shared.retry import until_stopped
from shared.metrics import MetricSchema
from shared.settings import Settings
from shared.topics import DEAD_LETTER, EVENTS

log = get_logger("storage.consumer")

ROWS = Counter("rtap_storage_rows_written_total", "Rows written to ClickHouse", ["table"])
BATCH_SECONDS = Histogram("rtap_storage_batch_seconds", "Write + commit time of one batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
LAG = Gauge("rtap_storage_consumer_lag_records", "Records in Kafka not yet written and committed, per topic", ["topic"])
DEAD = Counter("rtap_storage_dead_letter_total", "Records sent to the dead-letter topic", ["topic"])
RETRIES = Counter("rtap_storage_write_retries_total", "Failed ClickHouse writes that were retried", ["table"])
SKIPPED = Counter("rtap_storage_heartbeats_skipped_total", "Heartbeat records of the events topic, not stored")

# Test-only fault hook: SIGKILL this process after the Nth written batch, before its offsets are committed.
KILL_BEFORE_COMMIT_ENV = "RTAP_STORAGE_FAULT_KILL_BEFORE_COMMIT"


@dataclass(frozen=True)
class Route:
    table: str  # database.table
    process: Processor


def routes(settings: Settings, schemas: dict[str, MetricSchema]) -> dict[str, Route]:
    db = settings.clickhouse.database
    out = {s.topic: Route(f"{db}.{s.name}", metric_processor(s)) for s in schemas.values()}
    out[EVENTS.name] = Route(f"{db}.{settings.storage.events_table}", process_event)
    return out


@dataclass
class Batch:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    bytes: int = 0  # Kafka record bytes (key + value) of every record added
    opened_at: float = field(default_factory=time.monotonic)

    def add(self, msg: Message, table: str | None = None, row: Row | None = None) -> None:
        """Every consumed record moves the offset and counts its bytes; only rows are written."""
        if self.records == 0:
            self.opened_at = time.monotonic()
        self.records += 1
        self.bytes += len(msg.key() or b"") + len(msg.value() or b"")
        self.next_offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if table and row is not None:
            self.rows.setdefault(table, []).append(row)

    def full(self, max_rows: int, max_bytes: int) -> bool:
        return self.records >= max_rows or self.bytes >= max_bytes

    def ready(self, max_rows: int, max_bytes: int, max_seconds: float) -> bool:
        return self.full(max_rows, max_bytes) or (self.records > 0 and time.monotonic() - self.opened_at >= max_seconds)

    def topic_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]


class Writer:
    """Writes every table of a batch; a failed insert is retried with backoff until it succeeds or stop is set."""

    def __init__(self, backend: Backend, lock: threading.Lock, stop: threading.Event, max_wait: float):
        self.backend = backend
        self.lock = lock
        self.stop = stop
        self.max_wait = max_wait

    def write(self, batch: Batch) -> None:
        for table, rows in batch.rows.items():
            self._insert_with_retry(table, rows)
            ROWS.labels(table.rpartition(".")[2]).inc(len(rows))

    def _insert_with_retry(self, table: str, rows: list[Row]) -> None:
        short = table.rpartition(".")[2]
        for attempt in until_stopped(self.stop, f"write to {table}", self.max_wait,
                                     lambda exc: RETRIES.labels(short).inc()):
            with attempt, self.lock:
                self.backend.insert(table, rows)


class DeadLetters:
    def __init__(self, producer: Producer):
        self.producer = producer

    def send(self, msg: Message, reason: str) -> None:
        DEAD.labels(msg.topic()).inc()
        log.warning("dead letter", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), reason=reason)
        headers = [("reason", reason.encode()), ("source_topic", msg.topic().encode()),
                   ("source_partition", str(msg.partition()).encode()),
                   ("source_offset", str(msg.offset()).encode()), ("consumer", b"storage")]
        self.producer.produce(DEAD_LETTER.name, key=msg.key(), value=msg.value(), headers=headers)

    def flush(self) -> None:
        """Dead letters must be in Kafka before the offsets past them are committed."""
        remaining = self.producer.flush(30)
        if remaining:
            raise KafkaException(f"{remaining} dead letters not delivered")


class StorageConsumer:
    """Runs in a background thread of the storage process; `status()` feeds /readyz."""

    def __init__(self, settings: Settings, backend: Backend, lock: threading.Lock, schemas: dict[str, MetricSchema]):
        self.settings = settings
        self.routes = routes(settings, schemas)
        self.stop_event = threading.Event()
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": settings.storage.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": settings.storage.session_timeout_ms,
            # librdkafka's prefetch queue holds at most one batch's worth of record bytes.
            "queued.max.messages.kbytes": settings.storage.batch_bytes // 1024,
        })
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "acks": "all", "enable.idempotence": True})
        self.dead_letters = DeadLetters(producer)
        self.writer = Writer(backend, lock, self.stop_event, settings.storage.retry_max_seconds)
        self.batch = Batch()
        self.thread = threading.Thread(target=self._run, name="storage-consumer", daemon=True)
        self.lag: dict[str, int] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.assigned: set[tuple[str, int]] = set()
        self.last_loop = 0.0
        self.error: str | None = None
        self.batches_written = 0
        self.kill_after = int(os.environ.get(KILL_BEFORE_COMMIT_ENV, "0") or 0)

    def start(self) -> None:
        self.consumer.subscribe(list(self.routes), on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        alive = self.thread.is_alive() and time.monotonic() - self.last_loop < 15
        return {"running": alive, "assigned_partitions": len(self.assigned), "lag_records": dict(self.lag), "error": self.error}

    def _run(self) -> None:
        try:
            self._loop()
            self.flush()
        except Exception as exc:  # the thread dies; /readyz reports it and the supervisor restarts us
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("storage consumer stopped")
        finally:
            self.consumer.close()

    def _loop(self) -> None:
        next_lag = 0.0
        storage = self.settings.storage
        while not self.stop_event.is_set():
            self.last_loop = time.monotonic()
            room = max(1, storage.batch_rows - self.batch.records)
            for msg in self.consumer.consume(min(room, 5_000), timeout=min(0.2, storage.batch_seconds)):
                self.decode_into_batch(msg)
                if self.batch.full(storage.batch_rows, storage.batch_bytes):
                    self.flush()
            if self.batch.ready(storage.batch_rows, storage.batch_bytes, storage.batch_seconds):
                self.flush()
            if time.monotonic() >= next_lag:
                self.lag = self._measure_lag()
                next_lag = time.monotonic() + 2.0

    def decode_into_batch(self, msg: Message) -> None:
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error", error=str(msg.error()))
            return
        route = self.routes[msg.topic()]
        try:
            row = route.process(msg.key(), msg.value(), msg.offset())
        except BadRecord as exc:
            self.dead_letters.send(msg, str(exc))
            row = None
        else:
            if row is None:
                SKIPPED.inc()
        self.batch.add(msg, route.table, row)

    def flush(self) -> None:
        batch, self.batch = self.batch, Batch()
        if not batch.records:
            return
        started = time.perf_counter()
        self.writer.write(batch)
        for attempt in until_stopped(self.stop_event, "dead-letter delivery"):
            with attempt:
                self.dead_letters.flush()
        self._fault_hook()
        try:
            self.consumer.commit(offsets=batch.topic_partitions(), asynchronous=False)
            self.committed.update(batch.next_offsets)
        except KafkaException as exc:  # written but not committed: a replay rewrites the same rows, which is harmless
            log.warning("commit failed; the next commit covers these offsets", error=str(exc))
        BATCH_SECONDS.observe(time.perf_counter() - started)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned = {(tp.topic, tp.partition) for tp in partitions}

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Write and commit what we hold before the partitions move to another consumer."""
        if self.batch.records:
            self.flush()
        self.assigned -= {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self.committed.pop((tp.topic, tp.partition), None)

    def _fault_hook(self) -> None:
        self.batches_written += 1
        if self.kill_after and self.batches_written >= self.kill_after:
            log.warning("fault hook: killing the process between write and commit")
            os.kill(os.getpid(), signal.SIGKILL)

    def _measure_lag(self) -> dict[str, int]:
        """High watermark minus what is committed (or, before our first commit there, what is fetched).

        Watermarks come from the fetch responses (cached): a broker round trip per partition costs
        ~0.3 s and would stall the consumer loop.
        """
        lag: dict[str, int] = {}
        for tp in self.consumer.position(self.consumer.assignment()):
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            done = self.committed.get((tp.topic, tp.partition), tp.offset)
            lag[tp.topic] = lag.get(tp.topic, 0) + (max(0, high - done) if done >= 0 and high >= 0 else 0)
        for topic, value in lag.items():
            LAG.labels(topic).set(value)
        return lag
