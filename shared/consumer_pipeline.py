"""One Kafka consumer pipeline for every sink: decode -> batch -> write -> commit.

A sink (storage, cache, a future one) supplies only a pure processor per topic and a writer (`Sink`); this
module runs them on confluent-kafka's consumer:

- decode: each record goes through its topic's processor, which returns a row, None (a record to skip,
  counted) or raises BadRecord (a dead letter, with the reason);
- batch: closed by record count, record bytes or age, whichever first (checked after each record, so a
  batch holds at most one record past its byte bound); every record moves the offsets, whatever became of it;
- write: the writer gets the rows per topic and is retried with backoff until it succeeds or the consumer
  stops; then the batch's dead letters are produced and flushed;
- commit: only then are the batch's offsets committed, synchronously (auto-commit is off). A crash anywhere
  replays at most the uncommitted batch, which idempotent writers absorb.

Lag comes from librdkafka's statistics (high watermark minus committed offset), so measuring it costs no
broker round trip in the loop. Sentry's arroyo was measured as the loop for this pipeline: storage wrote about
40% fewer rows per CPU-second (its per-message framework work), so the loop is ours (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from shared import dead_letters
from shared.logging import get_logger
from shared.retry import until_stopped

log = get_logger("consumer")

WRITTEN = Counter("rtap_consumer_records_written_total", "Records written to the sink", ["sink", "topic"])
SKIPPED = Counter(
    "rtap_consumer_records_skipped_total", "Records the processor skipped (heartbeats)", ["sink", "topic"]
)
DEAD = Counter("rtap_consumer_dead_letter_total", "Records sent to the dead-letter topic", ["sink", "topic"])
LAG = Gauge("rtap_consumer_lag_records", "Records in Kafka not yet written and committed", ["sink", "topic"])
BATCH_SECONDS = Histogram(
    "rtap_consumer_batch_seconds",
    "Write time of one batch (rows, then dead letters)",
    ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter(
    "rtap_consumer_write_retries_total", "Failed batch writes that were retried, by error", ["sink", "error"]
)
BLOCKED = Gauge(
    "rtap_consumer_write_blocked", "1 while a batch write fails and is retried (no commit)", ["sink"]
)

Processor = Callable[[bytes | None, bytes | None, int], Any]
"""Pure: (key, value, offset) of one record -> a row, None to skip it, or BadRecord."""
Writer = Callable[[dict[str, list[Any]]], None]
"""Writes the rows of one batch, per topic; raising means "retry the whole batch"."""


class BadRecord(ValueError):
    """A record that can never be written; the dead-letter topic gets it with this reason
    (shared/dead_letters.py)."""


@dataclass(frozen=True)
class Limits:
    records: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Sink:
    """What a sink supplies: its name (metric label, dead-letter header), processors per topic, its writer."""

    name: str
    processors: Mapping[str, Processor]
    writer: Writer
    limits: Limits
    retry_max_seconds: float = 5.0


@dataclass
class Batch:
    """Rows per topic, dead letters and the next offset per partition; closed by count, bytes or age."""

    sink: Sink
    rows: dict[str, list[Any]] = field(default_factory=dict)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    records: int = 0
    bytes: int = 0
    opened_at: float = 0.0

    def add(self, msg: Message) -> None:
        """Decode one record into the batch; every record moves the offsets, whatever became of it."""
        if not self.records:
            self.opened_at = time.monotonic()
        self.records += 1
        key, value, topic, offset = msg.key(), msg.value(), str(msg.topic()), int(msg.offset() or 0)
        self.bytes += len(key or b"") + len(value or b"")
        self.next_offsets[(topic, int(msg.partition() or 0))] = offset + 1
        try:
            row = self.sink.processors[topic](key, value, offset)
        except BadRecord as exc:
            self.dead.append((msg, str(exc)))
            return
        if row is None:
            SKIPPED.labels(self.sink.name, topic).inc()
        else:
            self.rows.setdefault(topic, []).append(row)

    def full(self) -> bool:
        return self.records >= self.sink.limits.records or self.bytes >= self.sink.limits.bytes

    def ready(self) -> bool:
        age = time.monotonic() - self.opened_at
        return self.full() or (self.records > 0 and age >= self.sink.limits.seconds)

    def offsets(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]


class ConsumerState:
    """What status() reports, filled by the consumer thread and librdkafka's statistics callback."""

    def __init__(self, sink: str):
        self.sink = sink
        self.last_loop = 0.0
        self.error: str | None = None
        self.lag: dict[str, int] | None = None
        self.assigned = 0

    def on_stats(self, stats_json: str) -> None:
        """Per assigned partition: high watermark minus committed offset (before the group's first commit
        there, minus the partition's start: auto.offset.reset is earliest)."""
        lag: dict[str, int] = {}
        assigned = 0
        for topic, stats in orjson.loads(stats_json).get("topics", {}).items():
            for p in stats["partitions"].values():
                if p["partition"] < 0 or p["fetch_state"] in ("none", "stopped"):
                    continue
                assigned += 1
                done = p["committed_offset"] if p["committed_offset"] >= 0 else p["lo_offset"]
                high = p["hi_offset"]
                lag[topic] = lag.get(topic, 0) + (max(0, high - done) if done >= 0 and high >= 0 else 0)
        for topic, value in lag.items():
            LAG.labels(self.sink, topic).set(value)
        self.lag, self.assigned = (lag if assigned else None), assigned


class BatchWriter:
    """Writes a batch until it is written (or the consumer stops), then its dead letters (to
    `dead_letter_topic`, through `producer`); only then may the batch's offsets be committed."""

    def __init__(
        self,
        sink: Sink,
        producer: Producer | None,
        state: ConsumerState,
        stop: threading.Event,
        dead_letter_topic: str,
    ):
        self.sink, self.producer, self.state, self.stop = sink, producer, state, stop
        self.dead_letter_topic = dead_letter_topic

    def write(self, batch: Batch) -> None:
        started = time.perf_counter()
        if batch.rows:
            for attempt in until_stopped(
                self.stop, f"{self.sink.name} write", self.sink.retry_max_seconds, self._failing
            ):
                with attempt:
                    self.sink.writer(batch.rows)
            self.state.error = None
            BLOCKED.labels(self.sink.name).set(0)
        for topic, rows in batch.rows.items():
            WRITTEN.labels(self.sink.name, topic).inc(len(rows))
        self._send_dead_letters(batch.dead)
        BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)

    def _failing(self, exc: BaseException) -> None:
        """Readiness and metrics report the failing write while it is retried."""
        self.state.error = f"{type(exc).__name__}: {exc}"
        RETRIES.labels(self.sink.name, type(exc).__name__).inc()
        BLOCKED.labels(self.sink.name).set(1)

    def _send_dead_letters(self, dead: list[tuple[Message, str]]) -> None:
        """Dead letters must be in Kafka before the offsets past them are committed."""
        if not dead:
            return
        assert self.producer is not None
        for msg, reason in dead:
            topic = str(msg.topic())
            DEAD.labels(self.sink.name, topic).inc()
            log.warning(
                "dead letter",
                sink=self.sink.name,
                topic=topic,
                partition=msg.partition(),
                offset=msg.offset(),
                reason=reason,
            )
            headers = dead_letters.headers(
                reason, topic, int(msg.partition() or 0), int(msg.offset() or 0), self.sink.name
            )
            self.producer.produce(self.dead_letter_topic, key=msg.key(), value=msg.value(), headers=headers)
        for attempt in until_stopped(self.stop, "dead-letter delivery"):
            with attempt:
                if self.producer.flush(30):
                    raise KafkaException("dead letters not delivered")


class ConsumerPipeline:
    """Runs a sink's pipeline in a background thread of its process; `status()` feeds /readyz.

    `kafka_config` is the consumer's librdkafka configuration (bootstrap.servers, group.id, ...);
    `dead_letter_topic` is where records the processors refuse go (topics(settings).dead_letter.name).
    """

    def __init__(self, sink: Sink, kafka_config: Mapping[str, Any], dead_letter_topic: str):
        self.sink = sink
        self.state = ConsumerState(sink.name)
        self.stop_event = threading.Event()
        self.consumer = Consumer(
            {
                **kafka_config,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "statistics.interval.ms": 1000,
                "stats_cb": self.state.on_stats,
            }
        )
        producer = Producer(
            {
                "bootstrap.servers": kafka_config["bootstrap.servers"],
                "acks": "all",
                "enable.idempotence": True,
            }
        )
        self.writer = BatchWriter(sink, producer, self.state, self.stop_event, dead_letter_topic)
        self.batch = Batch(sink)
        self.poll_seconds = min(0.2, sink.limits.seconds)
        self.kill_after = int(os.environ.get(f"RTAP_{sink.name.upper()}_FAULT_KILL_BEFORE_COMMIT", "0") or 0)
        self.batches_written = 0
        self.thread = threading.Thread(target=self._run, name=f"{sink.name}-consumer", daemon=True)

    @property
    def topics(self) -> list[str]:
        return list(self.sink.processors)

    def start(self) -> None:
        self.consumer.subscribe(self.topics, on_revoke=self._on_revoke)
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Write and commit the open batch, then leave the group (a write still failing is abandoned)."""
        self.stop_event.set()
        self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        state = self.state
        alive = self.thread.is_alive() and state.error is None and time.monotonic() - state.last_loop < 15
        lag = dict(state.lag) if state.lag is not None else None
        return {
            "running": alive,
            "assigned_partitions": state.assigned,
            "lag_records": lag,
            "error": state.error,
        }

    def _run(self) -> None:
        try:
            self._loop()
            self.flush()
        except Exception as exc:  # the thread dies; /readyz reports it and the supervisor restarts us
            self.state.error = f"{type(exc).__name__}: {exc}"
            log.exception("consumer stopped", sink=self.sink.name)
        finally:
            self.consumer.close()

    def _loop(self) -> None:
        """Consume what is fetched (up to the batch's room) and close the batch when it is full or old."""
        while not self.stop_event.is_set():
            self.state.last_loop = time.monotonic()
            room = max(1, self.sink.limits.records - self.batch.records)
            for msg in self.consumer.consume(min(room, 5_000), timeout=self.poll_seconds):
                if error := msg.error():
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("kafka error", sink=self.sink.name, error=str(error))
                    continue
                self.batch.add(msg)
                if self.batch.full():
                    self.flush()
            if self.batch.ready():
                self.flush()

    def flush(self) -> None:
        """decode -> batch is done; now write -> commit."""
        batch, self.batch = self.batch, Batch(self.sink)
        if not batch.records:
            return
        self.writer.write(batch)
        self._fault_hook()
        try:
            self.consumer.commit(offsets=batch.offsets(), asynchronous=False)
        except KafkaException as exc:  # written, not committed: a replay rewrites the same rows, harmlessly
            log.warning(
                "commit failed; the next commit covers these offsets", sink=self.sink.name, error=str(exc)
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Write and commit what we hold before the partitions move to another consumer."""
        self.flush()

    def _fault_hook(self) -> None:
        """Test-only: SIGKILL this process after the Nth written batch, before its offsets are committed."""
        self.batches_written += 1
        if self.kill_after and self.batches_written >= self.kill_after:
            log.warning("fault hook: killing the process between write and commit", sink=self.sink.name)
            os.kill(os.getpid(), signal.SIGKILL)
