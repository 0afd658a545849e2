"""Every Kafka topic the pipeline uses, defined once. Metric topics derive from metric schemas."""

from __future__ import annotations

from dataclasses import dataclass

from shared.metrics import MetricSchema, load_schemas

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    retention_ms: int

    def config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": "delete"}


EVENTS = Topic("analytics_events", partitions=4, retention_ms=7 * DAY_MS)
DEAD_LETTER = Topic("dead_letter", partitions=1, retention_ms=14 * DAY_MS)
METRIC_PARTITIONS = 2
METRIC_RETENTION_MS = 30 * DAY_MS


def metric_topic(schema: MetricSchema) -> Topic:
    return Topic(schema.topic, partitions=METRIC_PARTITIONS, retention_ms=METRIC_RETENTION_MS)


def all_topics(schemas: dict[str, MetricSchema] | None = None) -> list[Topic]:
    schemas = load_schemas() if schemas is None else schemas
    return [EVENTS, DEAD_LETTER, *(metric_topic(s) for s in schemas.values())]
