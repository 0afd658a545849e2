"""The consumer pipeline's batch, as pure logic: every record moves the offsets, rows are kept per topic,
a skipped record is counted, a bad one becomes a dead letter with its reason; limits close the batch."""

from __future__ import annotations

import time

from shared.consumer_pipeline import SKIPPED, BadRecord, Batch, Limits, Sink


class Record:
    """The part of a confluent_kafka Message the batch reads."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes):
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value


def process(key: bytes | None, value: bytes | None, offset: int) -> dict | None:
    if value == b"bad":
        raise BadRecord("bad value")
    return None if value == b"heartbeat" else {"offset": offset}


def sink(limits: Limits) -> Sink:
    return Sink("unit", {"a": process, "b": process}, lambda rows: None, limits)


def test_every_record_moves_the_offsets_whatever_became_of_it():
    batch = Batch(sink(Limits(100, 1 << 20, 60.0)))
    skipped_before = SKIPPED.labels("unit", "a")._value.get()
    for record in (
        Record("a", 0, 5, b"row"),
        Record("a", 0, 6, b"heartbeat"),
        Record("a", 1, 9, b"bad"),
        Record("b", 0, 3, b"row"),
    ):
        batch.add(record)
    assert batch.rows == {"a": [{"offset": 5}], "b": [{"offset": 3}]}
    assert [(msg.offset(), reason) for msg, reason in batch.dead] == [(9, "bad value")]
    assert SKIPPED.labels("unit", "a")._value.get() - skipped_before == 1
    offsets = sorted((tp.topic, tp.partition, tp.offset) for tp in batch.offsets())
    assert offsets == [("a", 0, 7), ("a", 1, 10), ("b", 0, 4)]


def test_a_batch_closes_by_count_bytes_or_age():
    by_count = Batch(sink(Limits(2, 1 << 20, 60.0)))
    by_count.add(Record("a", 0, 0, b"row"))
    assert not by_count.ready()
    by_count.add(Record("a", 0, 1, b"row"))
    assert by_count.full()

    by_bytes = Batch(sink(Limits(100, 10, 60.0)))
    by_bytes.add(Record("a", 0, 0, b"x" * 9))  # 1 key byte + 9 value bytes
    assert by_bytes.full()

    by_age = Batch(sink(Limits(100, 1 << 20, 0.05)))
    assert not by_age.ready(), "an empty batch is never ready"
    by_age.add(Record("a", 0, 0, b"row"))
    assert not by_age.full()
    time.sleep(0.06)
    assert by_age.ready()
