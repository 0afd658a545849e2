"""A bounded read of the dead-letter topic: from the first record at or after `since` (else the oldest
retained one) to the end offsets captured when the read starts, stopping after `limit` matches; records
dead-lettered meanwhile wait for the next read. Partitions are assigned, never joined as a group, and nothing
is committed; librdkafka prefetches at most PREFETCH_KBYTES and a caller keeps only what it selects, so
memory stays bounded whatever the topic holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from shared.dead_letters import DeadLetter
from shared.settings import Settings
from shared.topics import topics

PREFETCH_KBYTES = 8_192
BROKER_TIMEOUT_S = 15.0


class DlqError(Exception):
    """The dead-letter topic cannot be read; the message says what to check."""


@dataclass(frozen=True)
class Selection:
    """Which dead letters: every given condition holds (times: the dead letter's record time, epoch ms)."""

    reason: str | None = None  # a part of the reason, any case
    source_topic: str | None = None  # exactly
    since_ms: int | None = None  # at or after
    until_ms: int | None = None  # before
    limit: int | None = None  # the first this many that match, oldest first

    def matches(self, letter: DeadLetter) -> bool:
        at = letter.timestamp_ms
        return (
            (self.reason is None or self.reason.casefold() in letter.reason.casefold())
            and (self.source_topic is None or self.source_topic == letter.source_topic)
            and (self.since_ms is None or (at is not None and at >= self.since_ms))
            and (self.until_ms is None or (at is not None and at < self.until_ms))
        )


@dataclass(frozen=True)
class Span:
    """Offsets [start, end) of one partition."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


class DeadLetterReader:
    """Reads topics(settings).dead_letter; a context manager (closing the consumer)."""

    def __init__(self, settings: Settings, idle_timeout_s: float = 30.0):
        self.topic = topics(settings).dead_letter.name
        self.bootstrap = settings.kafka.bootstrap
        self.idle_timeout_s = idle_timeout_s
        self.consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "rtap-dlq",  # required by the client; the reader never joins it nor commits
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",  # a start that retention removed meanwhile: the oldest left
                "queued.max.messages.kbytes": PREFETCH_KBYTES,
                "log_level": 2,  # broker trouble becomes one DlqError, not librdkafka's log lines
            }
        )

    def __enter__(self) -> DeadLetterReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.consumer.close()

    def partitions(self) -> list[int]:
        try:
            metadata = self.consumer.list_topics(timeout=BROKER_TIMEOUT_S)
        except KafkaException as exc:
            raise DlqError(
                f"Kafka not reachable at {self.bootstrap} ({exc}); is it running? (rtap up)"
            ) from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise DlqError(f"topic {self.topic!r} does not exist at {self.bootstrap}")
        return sorted(topic.partitions)

    def spans(self, selection: Selection) -> list[Span]:
        """Per partition: the offsets a read of `selection` covers, from its `since` to the end offset now.
        Record times need not grow with offsets, so `until` filters and does not bound."""
        found = []
        for partition in self.partitions():
            low, high = self._watermarks(partition)
            since = selection.since_ms
            start = low if since is None else self._offset_at(partition, since, high)
            found.append(Span(partition, max(low, start), high))
        return found

    def select(
        self, selection: Selection, spans: list[Span], on_scanned: Callable[[int], None] = lambda _: None
    ) -> Iterator[tuple[DeadLetter, Message]]:
        """The dead letters of `spans` that match, oldest first per partition, at most `selection.limit`;
        `on_scanned(n)` after each n offsets read."""
        matched = 0
        for msg in self.records(spans, on_scanned):
            letter = DeadLetter.of(msg)
            if not selection.matches(letter):
                continue
            yield letter, msg
            matched += 1
            if selection.limit is not None and matched >= selection.limit:
                return

    def at(self, partition: int, offset: int) -> Message:
        """The record at `offset` of `partition`; DlqError when the topic holds none there."""
        if partition not in self.partitions():
            raise DlqError(f"topic {self.topic!r} has no partition {partition}")
        low, high = self._watermarks(partition)
        if not low <= offset < high:
            held = f"offsets {low} to {high - 1}" if high > low else "no records"
            raise DlqError(f"no offset {offset} in {self.topic!r} partition {partition}: it holds {held}")
        for msg in self.records([Span(partition, offset, offset + 1)]):
            return msg
        raise DlqError(f"no record at offset {offset} of {self.topic!r} partition {partition}")

    def records(
        self, spans: list[Span], on_scanned: Callable[[int], None] = lambda _: None
    ) -> Iterator[Message]:
        """Every record of `spans`, partition after partition."""
        for span in spans:
            if span.size:
                yield from self._partition_records(span, on_scanned)

    def _partition_records(self, span: Span, on_scanned: Callable[[int], None]) -> Iterator[Message]:
        self.consumer.assign([TopicPartition(self.topic, span.partition, span.start)])
        position, last_record, last_error = span.start, time.monotonic(), "none"
        try:
            while position < span.end:
                msg = self.consumer.poll(1.0)
                error = None if msg is None else msg.error()
                if error is not None and error.code() == KafkaError._PARTITION_EOF:
                    return
                if msg is None or error is not None:
                    last_error = last_error if error is None else str(error)
                    if time.monotonic() - last_record >= self.idle_timeout_s:
                        raise DlqError(self._stalled(span, position, last_error))
                    continue
                offset = int(msg.offset() or 0)
                if offset >= span.end:
                    return
                on_scanned(offset + 1 - position)
                position, last_record = offset + 1, time.monotonic()
                yield msg
        finally:
            self.consumer.unassign()

    def _stalled(self, span: Span, position: int, last_error: str) -> str:
        return (
            f"no record from {self.bootstrap} for {self.idle_timeout_s:.0f} s at {self.topic!r} partition "
            f"{span.partition} offset {position} (reading to {span.end}); last error: {last_error}"
        )

    def _watermarks(self, partition: int) -> tuple[int, int]:
        try:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=BROKER_TIMEOUT_S
            )
        except KafkaException as exc:
            raise DlqError(f"cannot read the offsets of {self.topic!r} at {self.bootstrap}: {exc}") from None
        return int(low), int(high)

    def _offset_at(self, partition: int, time_ms: int, high: int) -> int:
        """The first offset whose record time is at or after `time_ms` (none before it is), else `high`."""
        try:
            (found,) = self.consumer.offsets_for_times(
                [TopicPartition(self.topic, partition, time_ms)], timeout=BROKER_TIMEOUT_S
            )
        except KafkaException as exc:
            raise DlqError(f"cannot look up times in {self.topic!r} at {self.bootstrap}: {exc}") from None
        return high if found.offset < 0 else min(int(found.offset), high)
