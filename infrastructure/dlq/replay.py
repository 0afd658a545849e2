"""Replaying dead letters through the validation the consumers run now.

A selected dead letter goes through the processor of every consumer that reads its source topic: storage's
and cache's own processors, built as their consumers build them. A record every one of them accepts is
produced again to its source topic and partition with its original key and value, marked with the header
REPLAYED_FROM_DLQ_OFFSET (acks=all, idempotent producer, flushed before the summary); any other record is
reported with the reason and left where it is. Nothing is removed from the dead-letter topic.

Repeating a replay is safe: a raw event keeps its event id, which raw storage and the jobs de-duplicate, and
a metric record is an upsert of its key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.cache import consumer as cache
from services.cache.layout import layouts
from services.processing.registry import load_schemas
from services.storage import consumer as storage
from shared.consumer_pipeline import BadRecord, Processor
from shared.dead_letters import REPLAYED_FROM_DLQ_OFFSET, DeadLetter
from shared.settings import Settings

EXAMPLES = 20  # still-invalid records and produce failures a summary lists one by one (all are counted)
REASONS, REASON_CHARS = 100, 300  # distinct reasons a summary counts apart, and of how many characters
OTHER_REASONS = "(other reasons)"
DELIVERY_TIMEOUT_MS = 30_000
QUEUE_KBYTES = 65_536

ConsumerProcessors = Mapping[str, Mapping[str, Processor]]
"""Per consumer (the dead letters' consumer header), the processor per topic it reads."""


def consumer_processors(settings: Settings) -> ConsumerProcessors:
    """What the storage and cache consumers of `settings` run, built by their own modules."""
    schemas = load_schemas()
    cache_layouts = layouts(settings.cache.key_prefix, schemas.values(), settings.cache.index_columns)
    return {
        storage.SINK: storage.processors(settings, schemas),
        cache.SINK: cache.processors(settings, cache_layouts),
    }


def refusal(processors: ConsumerProcessors, letter: DeadLetter, msg: Message) -> str | None:
    """Why the record of `letter` cannot be replayed now; None when every consumer of its source topic
    accepts it."""
    if letter.source_partition is None:
        return "no source_partition header: the record's partition is unknown"
    readers = {
        name: by_topic[letter.source_topic]
        for name, by_topic in processors.items()
        if letter.source_topic in by_topic
    }
    if not readers:
        return f"no consumer reads source topic {letter.source_topic!r}"
    for name, process in readers.items():
        try:
            process(msg.key(), msg.value(), letter.source_offset or 0)
        except BadRecord as exc:
            return f"{name}: {exc}"
        except Exception as exc:  # a processor failing otherwise would stop its consumer: not replayable
            return f"{name}: {type(exc).__name__}: {exc}"
    return None


@dataclass
class Summary:
    """What a replay did; `replayed` counts delivered records (a dry run: the ones that would be)."""

    dry_run: bool
    selected: int = 0
    replayed: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[DeadLetter, str]] = field(default_factory=list)
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def refused(self, letter: DeadLetter, reason: str) -> None:
        counted = reason[:REASON_CHARS]
        if counted not in self.invalid and len(self.invalid) >= REASONS:
            counted = OTHER_REASONS
        self.invalid[counted] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append((letter, reason))

    def failed_to_produce(self, count: int, why: str) -> None:
        self.failed += count
        if len(self.failures) < EXAMPLES:
            self.failures.append(why)

    def as_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "selected": self.selected,
            "replayed": self.replayed,
            "still_invalid": sum(self.invalid.values()),
            "still_invalid_by_reason": dict(self.invalid.most_common()),
            "still_invalid_examples": [
                {**letter.as_json(), "refusal": reason} for letter, reason in self.examples
            ],
            "produce_failures": self.failed,
            "produce_failure_examples": self.failures,
        }


class Replayer:
    """Offer it each selected dead letter; `finish()` waits for every delivery and returns the summary."""

    def __init__(self, settings: Settings, processors: ConsumerProcessors, dry_run: bool = False):
        self.processors = processors
        self.summary = Summary(dry_run)
        self.producer = None if dry_run else Producer(producer_config(settings))

    def offer(self, letter: DeadLetter, msg: Message) -> None:
        self.summary.selected += 1
        reason = refusal(self.processors, letter, msg)
        if reason is not None:
            self.summary.refused(letter, reason)
        elif self.producer is None:
            self.summary.replayed += 1
        else:
            self._produce(self.producer, letter, msg)

    def finish(self) -> Summary:
        if self.producer is not None and (undelivered := self.producer.flush(DELIVERY_TIMEOUT_MS / 1000)):
            self.summary.failed_to_produce(undelivered, f"{undelivered} record(s) not delivered in time")
        return self.summary

    def _produce(self, producer: Producer, letter: DeadLetter, msg: Message) -> None:
        assert letter.source_partition is not None  # refusal() refuses a dead letter without one

        def delivered(error: KafkaError | None, _: Message) -> None:
            if error is None:
                self.summary.replayed += 1
            else:
                self.summary.failed_to_produce(1, f"dead letter {letter.offset}: {error.str()}")

        while True:
            try:
                producer.produce(
                    letter.source_topic,
                    key=msg.key(),
                    value=msg.value(),
                    partition=letter.source_partition,
                    headers=[(REPLAYED_FROM_DLQ_OFFSET, str(letter.offset).encode())],
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.5)
            except KafkaException as exc:
                self.summary.failed_to_produce(1, f"dead letter {letter.offset}: {exc}")
                break
        producer.poll(0)


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "message.max.bytes": settings.kafka.max_record_bytes,  # the broker's limit: what was refused fits
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "queue.buffering.max.kbytes": QUEUE_KBYTES,
        "log_level": 2,
    }
