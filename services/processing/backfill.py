"""Backfill: recompute the metrics of an event-time range with the same jobs, in bounded mode.

The range is widened to whole tumbling windows; events are read from the retained Kafka records
whose record time falls within the range plus a margin (records arrive after their event time,
by up to the clock-skew/lateness margin); only windows the bounded read saw whole are written,
under the same keys as the streaming job, so a backfill repairs and never duplicates.

Kafka keeps the events topic for a week (shared/topics.py), the raw ClickHouse table for
storage.raw_events_ttl_days. When the read range starts before the oldest record Kafka still holds
(kafka_extent), the range's events are exported from the raw table into a topic of their own
(services/processing/raw_replay.py) and the same bounded jobs read that topic instead.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from services.processing.coordinator import Bounds
from shared.settings import Settings
from shared.topics import topics


def bounds_for(settings: Settings, start_ms: int, end_ms: int, now_ms: int | None = None) -> Bounds:
    if end_ms <= start_ms:
        raise ValueError(f"--to ({end_ms}) must be after --from ({start_ms})")
    p = settings.processing
    window_ms = p.window_seconds * 1000
    start = start_ms - start_ms % window_ms
    end = end_ms + (-end_ms % window_ms)
    lookaround = max(p.session_gap_seconds * 1000, window_ms)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return Bounds(
        start_ms=start,
        end_ms=end,
        read_from_ms=max(0, start - lookaround - p.backfill_margin_ms),
        read_to_ms=min(now_ms, end + lookaround + p.backfill_margin_ms),
        lookaround_ms=lookaround,
    )


@dataclass(frozen=True)
class KafkaExtent:
    """What the events topic still holds: oldest_ms is the record time of its oldest record in the partitions
    that lost any (retention, delete_records), None when none did (it holds every record ever written)."""

    oldest_ms: int | None

    def holds(self, bounds: Bounds) -> bool:
        """Whether every record of the bounded read's record-time range is still there."""
        return self.oldest_ms is None or self.oldest_ms <= bounds.read_from_ms

    def describe(self) -> str:
        if self.oldest_ms is None:
            return "Kafka holds every record of the events topic"
        return f"Kafka holds the events topic's records from {iso(self.oldest_ms)} ({self.oldest_ms}) on"


def kafka_extent(settings: Settings, timeout_s: float = 10.0) -> KafkaExtent:
    """Read from the topic's partitions: the earliest offset of each, and the record at it where older ones
    were removed. A partition whose every record was removed holds nothing older than now."""
    topic = topics(settings).events.name
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "group.id": f"rtap-backfill-extent-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"events topic {topic!r}: {metadata.error.str()}")
        oldest = [
            _oldest_record_ms(consumer, TopicPartition(topic, p), timeout_s)
            for p in sorted(metadata.partitions)
        ]
    finally:
        consumer.close()
    known = [ms for ms in oldest if ms is not None]
    return KafkaExtent(min(known) if known else None)


def _oldest_record_ms(consumer: Consumer, partition: TopicPartition, timeout_s: float) -> int | None:
    """None when the partition never lost a record; else the record time at its earliest offset."""
    low, high = consumer.get_watermark_offsets(partition, timeout=timeout_s)
    if low == 0:
        return None
    if low >= high:
        return int(time.time() * 1000)
    consumer.assign([TopicPartition(partition.topic, partition.partition, low)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            return int(message.timestamp()[1])
    raise RuntimeError(
        f"could not read the oldest record of {partition.topic}[{partition.partition}] within {timeout_s}s"
    )


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")


def choose_source(source: str, bounds: Bounds, extent: KafkaExtent) -> str:
    """ "kafka" or "raw": as asked, or for "auto" Kafka when it still holds the whole read range."""
    if source != "auto":
        return source
    return "kafka" if extent.holds(bounds) else "raw"
