"""One Kafka consumer pipeline for every sink, on Sentry's arroyo: decode -> batch -> write -> commit.

A sink (storage, cache, a future one) supplies only a pure processor per topic and a writer; this module
assembles them into arroyo's StreamProcessor with the steps Buffer(Batch) -> RunTask(write) -> CommitOffsets:

- decode: each record goes through its topic's processor, which returns a row, None (a record to skip,
  counted) or raises BadRecord (a dead letter, with the reason);
- batch: closed by record count, record bytes or age, whichever first; every record moves the batch's offsets,
  whatever became of it;
- write: the writer gets the rows per topic and is retried with backoff until it succeeds or the consumer
  stops; then the batch's dead letters are produced and flushed;
- commit: only then are the batch's offsets committed (auto-commit is off). A crash anywhere replays at most
  the uncommitted batch, which idempotent writers absorb.

Dead letters travel in the batch rather than through arroyo's DLQ policy: that policy leaves a poison
record's offset uncommitted until a later valid record of its partition is committed (so the lag of a
partition that ends in one never reaches 0, and a restart dead-letters it twice); here it is committed with
its batch.
Lag comes from librdkafka's statistics (high watermark minus committed offset), so measuring it costs no
broker round trip in the consumer's loop.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.commit import IMMEDIATE
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy, ProcessingStrategyFactory, RunTask
from arroyo.processing.strategies.buffer import Buffer
from arroyo.types import BaseValue, BrokerValue, Commit, Message, Partition, Topic
from confluent_kafka import KafkaException, Producer
from prometheus_client import Counter, Gauge, Histogram

from shared.logging import get_logger
from shared.retry import until_stopped
from shared.topics import DEAD_LETTER

log = get_logger("consumer")

WRITTEN = Counter("rtap_consumer_records_written_total", "Records written to the sink", ["sink", "topic"])
SKIPPED = Counter("rtap_consumer_records_skipped_total", "Records the processor skipped (heartbeats)",
                  ["sink", "topic"])
DEAD = Counter("rtap_consumer_dead_letter_total", "Records sent to the dead-letter topic", ["sink", "topic"])
LAG = Gauge("rtap_consumer_lag_records", "Records in Kafka not yet written and committed", ["sink", "topic"])
BATCH_SECONDS = Histogram("rtap_consumer_batch_seconds", "Write time of one batch (rows, then dead letters)",
                          ["sink"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RETRIES = Counter("rtap_consumer_write_retries_total", "Failed batch writes that were retried, by error",
                  ["sink", "error"])
BLOCKED = Gauge("rtap_consumer_write_blocked", "1 while a batch write fails and is retried (no commit)",
                ["sink"])

Processor = Callable[[bytes | None, bytes | None, int], Any]
"""Pure: (key, value, offset) of one record -> a row, None to skip it, or BadRecord."""
Writer = Callable[[dict[str, list[Any]]], None]
"""Writes the rows of one batch, per topic; raising means "retry the whole batch"."""


class BadRecord(ValueError):
    """A record that can never be written; the dead-letter topic gets it with this reason."""


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
    """Arroyo's buffer protocol: decodes each record as it is appended; ready by count, bytes or age."""

    sink: Sink
    rows: dict[str, list[Any]] = field(default_factory=dict)
    dead: list[tuple[BrokerValue[KafkaPayload], str]] = field(default_factory=list)
    records: int = 0
    bytes: int = 0
    opened_at: float = 0.0

    @property
    def buffer(self) -> Batch:
        return self

    @property
    def is_empty(self) -> bool:
        return self.records == 0

    @property
    def is_ready(self) -> bool:
        return self.readiness_reason != ""

    @property
    def readiness_reason(self) -> str:
        limits = self.sink.limits
        if self.records >= limits.records or self.bytes >= limits.bytes:
            return "size"
        return "time" if self.records and time.monotonic() - self.opened_at >= limits.seconds else ""

    def append(self, message: BaseValue[KafkaPayload]) -> None:
        assert isinstance(message, BrokerValue)
        if not self.records:
            self.opened_at = time.monotonic()
        self.records += 1
        payload, topic = message.payload, message.partition.topic.name
        self.bytes += len(payload.key or b"") + len(payload.value)
        try:  # arroyo hands a null value (a tombstone) over as b""
            row = self.sink.processors[topic](payload.key, payload.value or None, message.offset)
        except BadRecord as exc:
            self.dead.append((message, str(exc)))
            return
        if row is None:
            SKIPPED.labels(self.sink.name, topic).inc()
        else:
            self.rows.setdefault(topic, []).append(row)

    def new(self) -> Batch:
        return Batch(self.sink)


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


class SinkConsumer(KafkaConsumer):
    """Arroyo's Kafka consumer, subscribed to every topic of the sink (StreamProcessor names one), with a
    short poll (a batch closes on time even when no record comes) and a failed commit logged, not fatal."""

    def __init__(self, configuration: Mapping[str, Any], topics: Sequence[str], state: ConsumerState,
                 poll_seconds: float):
        super().__init__(configuration)
        self.topics = [Topic(t) for t in topics]
        self.state = state
        self.poll_seconds = poll_seconds

    def subscribe(self, topics: Sequence[Topic], on_assign: Any = None, on_revoke: Any = None) -> None:
        super().subscribe(self.topics, on_assign=on_assign, on_revoke=on_revoke)

    def poll(self, timeout: float | None = None) -> BrokerValue[KafkaPayload] | None:
        self.state.last_loop = time.monotonic()
        return super().poll(self.poll_seconds if timeout is None else min(timeout, self.poll_seconds))

    def commit_offsets(self) -> Mapping[Partition, int] | None:
        try:
            return super().commit_offsets()
        except KafkaException as exc:  # written, not committed: a replay rewrites the same rows, harmlessly
            log.warning("commit failed; the next commit covers these offsets", sink=self.state.sink,
                        error=str(exc))
            return None


class WriteStep:
    """Writes a batch until it is written (or the consumer stops), then its dead letters; only then does
    the batch move on to CommitOffsets."""

    def __init__(self, sink: Sink, producer: Producer, state: ConsumerState, stop: threading.Event):
        self.sink, self.producer, self.state, self.stop = sink, producer, state, stop
        self.kill_after = int(os.environ.get(f"RTAP_{sink.name.upper()}_FAULT_KILL_BEFORE_COMMIT", "0") or 0)
        self.batches_written = 0

    def __call__(self, message: Message[Batch]) -> Batch:
        batch = message.payload
        started = time.perf_counter()
        if batch.rows:
            for attempt in until_stopped(self.stop, f"{self.sink.name} write", self.sink.retry_max_seconds,
                                         self._failing):
                with attempt:
                    self.sink.writer(batch.rows)
            self.state.error = None
            BLOCKED.labels(self.sink.name).set(0)
        for topic, rows in batch.rows.items():
            WRITTEN.labels(self.sink.name, topic).inc(len(rows))
        self._send_dead_letters(batch.dead)
        BATCH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)
        self._fault_hook()
        return batch

    def _failing(self, exc: BaseException) -> None:
        """Readiness and metrics report the failing write while it is retried."""
        self.state.error = f"{type(exc).__name__}: {exc}"
        RETRIES.labels(self.sink.name, type(exc).__name__).inc()
        BLOCKED.labels(self.sink.name).set(1)

    def _send_dead_letters(self, dead: list[tuple[BrokerValue[KafkaPayload], str]]) -> None:
        """Dead letters must be in Kafka before the offsets past them are committed."""
        if not dead:
            return
        for value, reason in dead:
            topic = value.partition.topic.name
            DEAD.labels(self.sink.name, topic).inc()
            log.warning("dead letter", sink=self.sink.name, topic=topic, partition=value.partition.index,
                        offset=value.offset, reason=reason)
            headers = [("reason", reason.encode()), ("source_topic", topic.encode()),
                       ("source_partition", str(value.partition.index).encode()),
                       ("source_offset", str(value.offset).encode()), ("consumer", self.sink.name.encode())]
            self.producer.produce(DEAD_LETTER.name, key=value.payload.key, value=value.payload.value or None,
                                  headers=headers)
        for attempt in until_stopped(self.stop, "dead-letter delivery"):
            with attempt:
                if self.producer.flush(30):
                    raise KafkaException("dead letters not delivered")

    def _fault_hook(self) -> None:
        """Test-only: SIGKILL this process after the Nth written batch, before its offsets are committed."""
        self.batches_written += 1
        if self.kill_after and self.batches_written >= self.kill_after:
            log.warning("fault hook: killing the process between write and commit", sink=self.sink.name)
            os.kill(os.getpid(), signal.SIGKILL)



class StrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, sink: Sink, write: WriteStep):
        self.sink, self.write = sink, write

    def create_with_partitions(self, commit: Commit,
                               partitions: Mapping[Partition, int]) -> ProcessingStrategy[KafkaPayload]:
        return Buffer(Batch(self.sink), RunTask(self.write, CommitOffsets(commit)))


class ConsumerPipeline:
    """Runs a sink's pipeline in a background thread of its process; `status()` feeds /readyz."""

    def __init__(self, sink: Sink, kafka_config: Mapping[str, Any], poll_seconds: float = 0.1):
        self.sink = sink
        self.state = ConsumerState(sink.name)
        self.stop_event = threading.Event()
        self.consumer = SinkConsumer({
            **kafka_config,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "statistics.interval.ms": 1000,
            "stats_cb": self.state.on_stats,
        }, list(sink.processors), self.state, poll_seconds)
        producer = Producer({"bootstrap.servers": kafka_config["bootstrap.servers"], "acks": "all",
                             "enable.idempotence": True})
        self.factory = StrategyFactory(sink, WriteStep(sink, producer, self.state, self.stop_event))
        self.processor: StreamProcessor[KafkaPayload] | None = None
        self.thread = threading.Thread(target=self._run, name=f"{sink.name}-consumer", daemon=True)

    @property
    def topics(self) -> list[str]:
        return list(self.sink.processors)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Write and commit the open batch, then leave the group (a write still failing is abandoned)."""
        self.stop_event.set()
        if self.processor:
            self.processor.signal_shutdown()
        self.thread.join(timeout)

    def status(self) -> dict[str, Any]:
        state = self.state
        alive = self.thread.is_alive() and state.error is None and time.monotonic() - state.last_loop < 15
        lag = dict(state.lag) if state.lag is not None else None
        return {"running": alive, "assigned_partitions": state.assigned, "lag_records": lag,
                "error": state.error}

    def _run(self) -> None:
        try:
            self.processor = StreamProcessor(self.consumer, Topic(self.topics[0]), self.factory,
                                             commit_policy=IMMEDIATE)
            if self.stop_event.is_set():
                self.processor.signal_shutdown()
            self.processor.run()
        except Exception as exc:  # the thread dies; /readyz reports it and the supervisor restarts us
            self.state.error = f"{type(exc).__name__}: {exc}"
            log.exception("consumer stopped", sink=self.sink.name)
