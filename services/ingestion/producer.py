"""The Kafka sink: confluent-kafka (librdkafka) with durable acks, resolved into asyncio futures.

A poll thread serves delivery callbacks and hands each poll's completions to the event loop in
one call, so a request awaits exactly its own records' acknowledgements. Nothing here decides
HTTP semantics: the app maps Unavailable to 503 and each per-record KafkaError by is_permanent().
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.ingestion.records import HEARTBEAT_KEY, Record, heartbeat_value, now_ms
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("ingestion.producer")


# Errors that retrying the same record can never fix: the record itself is refused.
PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_TIMESTAMP,
    }
)
SIZE_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.RECORD_LIST_TOO_LARGE}
)


class Unavailable(Exception):
    """Kafka did not acknowledge in time, or the producer queue is full."""


def is_permanent(err: KafkaError) -> bool:
    """True when Kafka refuses the record itself (a retry gets the same answer);
    False when a retry may succeed."""
    return err.code() in PERMANENT_ERRORS


Failures = list[tuple[KafkaError, bytes]]
Delivered = Callable[[KafkaError | None, Message], None]


class _Pending:
    """The acknowledgements a request awaits. Counted on the poll thread only; resolved once, on the loop."""

    __slots__ = ("future", "remaining", "failed", "done")

    def __init__(self, future: asyncio.Future[Failures], n: int, done: list[_Pending]):
        self.future, self.remaining, self.done = future, n, done
        self.failed: Failures = []

    def delivered(self, err: KafkaError | None, msg: Message) -> None:
        """The delivery callback of each record (count_off(1) inlined: one call fewer per record)."""
        if err is not None:
            self.failed.append((err, cast(bytes, msg.value())))  # every record's value is bytes
        self.remaining -= 1
        if self.remaining == 0:
            self.done.append(self)

    def count_off(self, n: int) -> None:
        self.remaining -= n
        if self.remaining == 0:
            self.done.append(self)

    def resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.failed)


def producer_config(settings: Settings) -> dict[str, Any]:
    s = settings.ingestion
    return {
        "bootstrap.servers": settings.kafka.bootstrap,
        "client.id": "rtap-ingestion",
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": s.compression,
        "linger.ms": s.linger_ms,
        "queue.buffering.max.messages": s.queue_max_messages,
        "message.max.bytes": settings.kafka.max_record_bytes,  # the broker's limit too: one setting
        "message.timeout.ms": max(s.produce_timeout_ms, s.linger_ms + 1),
        "request.timeout.ms": max(s.produce_timeout_ms, 1000),
        "socket.keepalive.enable": True,
        "logger": logging.getLogger("ingestion.librdkafka"),
    }


class EventProducer:
    def __init__(
        self, settings: Settings, topic: str, on_heartbeat_error: Callable[[], object] = lambda: None
    ):
        self.topic = topic
        self.timeout_s = settings.ingestion.produce_timeout_ms / 1000
        self.queue_max = settings.ingestion.queue_max_messages
        self._producer = Producer(producer_config(settings))
        self._done: list[_Pending] = []
        # counted off on the poll thread, like deliveries
        self._unqueued: deque[tuple[_Pending, int]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_heartbeat_error = on_heartbeat_error  # called on the poll thread too

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()

    def close(self, flush_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._producer.flush(flush_s)

    def queue_depth(self) -> int:
        return len(self._producer)

    async def send(self, records: Sequence[Record]) -> list[KafkaError | None]:
        """Per-record errors once every queued record is acknowledged (acks=all): None for a written record,
        else the KafkaError of its delivery report, or of librdkafka refusing to queue it. Unavailable when
        Kafka did not acknowledge in time or the queue is full before anything was queued."""
        if len(self._producer) + len(records) > self.queue_max:
            raise Unavailable("producer queue is full")
        pending = _Pending(self._started_loop().create_future(), len(records), self._done)
        refused = self._enqueue(records, pending.delivered)
        if len(refused) == len(records):
            return [refused[i] for i in range(len(records))]
        if refused:
            self._unqueued.append((pending, len(refused)))
        try:
            failed = await asyncio.wait_for(pending.future, self.timeout_s)
        except TimeoutError:
            raise Unavailable(f"Kafka did not acknowledge within {self.timeout_s:g}s") from None
        return per_record_errors(records, failed, refused)

    def _enqueue(self, records: Sequence[Record], delivered: Delivered) -> dict[int, KafkaError]:
        """Queue the records: one produce_batch() call (C loop, key partitioner) for records without headers,
        produce() for the rest. Returns the records librdkafka refused to queue (no delivery report comes for
        them), by index."""
        # produce_batch() adds "_error" (a KafkaError) to the dict of each record it refuses
        plain: list[dict[str, Any]] = [{"value": r.value, "key": r.key} for r in records if r.headers is None]
        refused: dict[int, KafkaError] = {}
        if plain and self._producer.produce_batch(self.topic, plain, on_delivery=delivered) < len(plain):
            plain_indexes = (i for i, r in enumerate(records) if r.headers is None)
            refused.update(
                (i, m["_error"]) for i, m in zip(plain_indexes, plain, strict=True) if "_error" in m
            )
        for i, r in enumerate(records):
            if r.headers is not None:
                try:
                    self._producer.produce(
                        self.topic,
                        r.value,
                        r.key,
                        headers=r.headers,  # type: ignore[arg-type]
                        on_delivery=delivered,
                    )
                except BufferError:
                    refused[i] = KafkaError(KafkaError._QUEUE_FULL)
                except KafkaException as exc:
                    refused[i] = exc.args[0]
        return refused

    def heartbeat(self, partitions: int) -> None:
        """A heartbeat record to every partition, fire and forget; on_heartbeat_error for each that fails."""
        value = heartbeat_value(now_ms())
        for p in range(partitions):
            try:
                self._producer.produce(
                    self.topic, value, HEARTBEAT_KEY, partition=p, on_delivery=self._heartbeat_delivered
                )
            except (BufferError, KafkaException):
                self._on_heartbeat_error()

    def partitions(self, timeout_s: float = 5.0) -> int:
        """Partition count of the topic from broker metadata (blocking: call in a thread)."""
        meta = self._producer.list_topics(self.topic, timeout=timeout_s).topics[self.topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        return len(meta.partitions)

    def _heartbeat_delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._on_heartbeat_error()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            while self._unqueued:
                pending, n = self._unqueued.popleft()
                pending.count_off(n)
            if self._done:
                done = self._done[:]  # callbacks append on this same thread, so copy-and-clear is safe
                self._done.clear()
                try:
                    self._started_loop().call_soon_threadsafe(_resolve, done)
                except RuntimeError:  # loop closed during shutdown
                    return

    def _started_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("EventProducer.start() was not called")
        return self._loop


def _resolve(done: list[_Pending]) -> None:
    for pending in done:
        pending.resolve()


def per_record_errors(
    records: Sequence[Record], failed: list[tuple[KafkaError, bytes]], refused: dict[int, KafkaError]
) -> list[KafkaError | None]:
    """Each record's error: its refusal to queue, or its failed delivery report (matched by value; equal
    values share their reports)."""
    errors: list[KafkaError | None] = [None] * len(records)
    if failed:
        by_value: dict[bytes, list[int]] = {}
        for i, r in enumerate(records):
            if i not in refused:
                by_value.setdefault(r.value, []).append(i)
        for err, value in failed:
            errors[by_value[value].pop()] = err
    for i, err in refused.items():
        errors[i] = err
    return errors
