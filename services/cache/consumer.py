"""Metric topics -> Redis. Decode and validate, write a batch in one pipeline, then commit its offsets.

Auto-commit is off: an offset is committed only after the records before it are in Redis, so a
crash at any point replays at most the uncommitted batch, and replays are idempotent writes.
Records that cannot be decoded or do not match their schema go to the dead-letter topic.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge

from services.cache.layout import JobLayout, delete_record, publish_record, write_record
from shared.logging import get_logger
from shared.retry import until_stopped
from shared.settings import Settings
from shared.topics import DEAD_LETTER

log = get_logger("cache.consumer")

RECORDS = Counter("rtap_cache_records_written_total", "Metric records written to Redis", ["job"])
DEAD = Counter("rtap_cache_dead_letter_total", "Metric records sent to the dead-letter topic", ["job"])
LAG = Gauge("rtap_cache_consumer_lag_records", "Records in the metric topics not yet written to Redis")
BATCH_SECONDS = Gauge("rtap_cache_last_batch_seconds", "Duration of the last Redis write + commit")
WRITE_RETRIES = Counter("rtap_cache_write_retries_total",
                        "Failed Redis batch writes that were retried, by error (OutOfMemoryError: Redis is at maxmemory)",
                        ["error"])
WRITE_BLOCKED = Gauge("rtap_cache_write_blocked", "1 while a batch write to Redis fails and is retried (offsets not committed)")


class BadRecord(ValueError):
    """A record that can never be written; it goes to the dead-letter topic with this reason."""


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


class CacheConsumer:
    """Runs in a background thread of the cache API process; `status()` feeds /readyz."""

    def __init__(self, settings: Settings, layouts: dict[str, JobLayout]):
        self.settings = settings
        self.layouts = layouts
        self.redis = redis.Redis.from_url(settings.redis.url)
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": settings.cache.consumer_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "session.timeout.ms": settings.cache.session_timeout_ms,
        })
        self.producer = Producer({"bootstrap.servers": settings.kafka.bootstrap, "acks": "all", "enable.idempotence": True})
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cache-consumer", daemon=True)
        self.lag: int | None = None
        self.last_loop = 0.0
        self.error: str | None = None

    def start(self) -> None:
        self.consumer.subscribe([layout.schema.topic for layout in self.layouts.values()])
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        alive = self.thread.is_alive() and self.error is None and time.monotonic() - self.last_loop < 15
        return {"running": alive, "lag_records": self.lag, "error": self.error}

    def _run(self) -> None:
        try:
            next_lag = 0.0
            while not self.stop_event.is_set():
                self.last_loop = time.monotonic()
                messages = self.next_batch()
                if messages:
                    self.process(messages)
                if time.monotonic() >= next_lag:
                    self.lag = self._measure_lag()
                    next_lag = time.monotonic() + 1.0
        except Exception as exc:  # the thread dies; /readyz reports it and the supervisor restarts us
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("cache consumer stopped")
        finally:
            self.consumer.close()

    def next_batch(self) -> list[Message]:
        """Wait up to 0.5 s for the first record, then take what is already fetched (up to batch_records): a record
        is written as soon as it arrives, never held back waiting for a full batch."""
        first = self.consumer.consume(1, timeout=0.5)
        room = self.settings.cache.batch_records - 1
        return first + self.consumer.consume(room, timeout=0) if first and room > 0 else first

    def process(self, messages: list[Message]) -> None:
        started = time.perf_counter()
        decoded: list[Decoded] = []
        written: dict[str, int] = {}
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka error", error=str(msg.error()))
                continue
            layout = self.layouts[msg.topic()]
            try:
                decoded.append(decode(layout, msg.key(), msg.value()))
                written[layout.schema.name] = written.get(layout.schema.name, 0) + 1
            except BadRecord as exc:
                self._dead_letter(msg, str(exc))
        self._write(decoded)
        for attempt in until_stopped(self.stop_event, "dead-letter delivery"):
            with attempt:
                if self.producer.flush(10):
                    raise KafkaException("dead letters not delivered")
        self._commit(messages)
        for job, n in written.items():
            RECORDS.labels(job).inc(n)
        BATCH_SECONDS.set(time.perf_counter() - started)

    def _write(self, decoded: list[Decoded]) -> None:
        """One pipeline per attempt (redis-py empties a pipeline that failed); Redis down or full (noeviction refuses
        writes at maxmemory): retry until it takes them, committing nothing meanwhile."""
        for attempt in until_stopped(self.stop_event, "redis write", on_retry=self._failing):
            with attempt:
                pipe = self.redis.pipeline(transaction=False)
                for d in decoded:
                    self._queue(pipe, d)
                pipe.execute()
                self._publish(decoded)
        self.error = None
        WRITE_BLOCKED.set(0)

    def _failing(self, exc: BaseException) -> None:
        """Readiness and metrics report the failing write while it is retried."""
        self.error = f"{type(exc).__name__}: {exc}"
        WRITE_RETRIES.labels(type(exc).__name__).inc()
        WRITE_BLOCKED.set(1)

    def _queue(self, pipe: Any, decoded: Decoded) -> None:
        cache = self.settings.cache
        if decoded.record is None:
            delete_record(pipe, decoded.layout, decoded.key)
        else:
            write_record(pipe, decoded.layout, decoded.record, cache.windows_per_key, cache.ttl_seconds, publish=False)

    def _publish(self, decoded: list[Decoded]) -> None:
        """Streams hear of a window only once all of the batch is stored (a refused write publishes nothing)."""
        pipe = self.redis.pipeline(transaction=False)
        for d in decoded:
            if d.record is not None:
                publish_record(pipe, d.layout, d.record)
        pipe.execute()

    def _dead_letter(self, msg: Message, reason: str) -> None:
        DEAD.labels(msg.topic()).inc()
        log.warning("dead letter", topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), reason=reason)
        headers = [("reason", reason.encode()), ("source_topic", msg.topic().encode()),
                   ("source_partition", str(msg.partition()).encode()), ("source_offset", str(msg.offset()).encode()),
                   ("consumer", b"cache")]
        self.producer.produce(DEAD_LETTER.name, key=msg.key(), value=msg.value(), headers=headers)

    def _commit(self, messages: list[Message]) -> None:
        last: dict[tuple[str, int], int] = {}
        for msg in messages:
            if not msg.error():
                last[(msg.topic(), msg.partition())] = msg.offset()
        if last:
            offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:  # written but not committed: a replay rewrites the same keys, which is harmless
                log.warning("commit failed; the next commit covers these offsets", error=str(exc))

    def _measure_lag(self) -> int | None:
        try:
            return self._lag_from_broker()
        except KafkaException as exc:  # broker unreachable: keep the last figure, keep consuming
            log.warning("lag measurement failed", error=str(exc))
            return self.lag

    def _lag_from_broker(self) -> int | None:
        assignment = self.consumer.assignment()
        if not assignment:
            return None
        total = 0
        for tp in self.consumer.position(assignment):
            _, high = self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            position = tp.offset if tp.offset >= 0 else self._committed_or_low(tp)
            total += max(0, high - position)
        LAG.set(total)
        return total

    def _committed_or_low(self, tp: TopicPartition) -> int:
        committed = self.consumer.committed([tp], timeout=2)[0].offset
        if committed >= 0:
            return committed
        low, _ = self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        return low
