"""Every Kafka topic the pipeline uses, built in one place from the topic settings (names), the Kafka settings
(replication) and the constants here (partitions, retention). Metric topics derive from metric schemas."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.metric_schema import MetricSchema
from shared.settings import Settings

DAY_MS = 24 * 3600 * 1000
EVENTS_PARTITIONS = 4
EVENTS_RETENTION_MS = 7 * DAY_MS
DEAD_LETTER_PARTITIONS = 1
DEAD_LETTER_RETENTION_MS = 14 * DAY_MS
METRIC_PARTITIONS = 2
METRIC_RETENTION_MS = 30 * DAY_MS


@dataclass(frozen=True)
class Replication:
    """Copies of each partition, and how many must hold a record before an acks=all write succeeds."""

    factor: int = 1
    min_insync: int = 1


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int
    replication: Replication = Replication()

    def config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": "delete",
            "min.insync.replicas": str(self.replication.min_insync),
        }


@dataclass(frozen=True)
class Topics:
    """The topics of one configuration: every reader and writer of a topic takes its name from here."""

    events: Topic
    dead_letter: Topic
    metric_prefix: str
    replication: Replication

    def metric(self, schema: MetricSchema) -> Topic:
        """The topic a job writes its metric records to."""
        return Topic(
            self.metric_prefix + schema.name, METRIC_PARTITIONS, METRIC_RETENTION_MS, self.replication
        )

    def all(self, schemas: Iterable[MetricSchema]) -> list[Topic]:
        """Every topic to create: events, dead letters and one per job schema."""
        return [self.events, self.dead_letter, *(self.metric(s) for s in schemas)]


def topics(settings: Settings) -> Topics:
    t = settings.topics
    replication = Replication(settings.kafka.replication_factor, settings.kafka.min_insync_replicas)
    return Topics(
        events=Topic(t.events, EVENTS_PARTITIONS, EVENTS_RETENTION_MS, replication),
        dead_letter=Topic(t.dead_letter, DEAD_LETTER_PARTITIONS, DEAD_LETTER_RETENTION_MS, replication),
        metric_prefix=t.metric_prefix,
        replication=replication,
    )
