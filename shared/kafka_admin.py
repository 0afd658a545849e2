"""The one admin step that creates topics (never done per worker)."""

from __future__ import annotations

import contextlib

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from shared.topics import Topic


def ensure_topics(bootstrap: str, topics: list[Topic]) -> list[str]:
    """Create missing topics with their replication; return the names created. Existing topics are left as
    they are."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rtap-admin", request_timeout_ms=15_000)
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=t.replication.factor,
                topic_configs=t.config(),
            )
            for t in topics
            if t.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(new, timeout_ms=15_000)
        return [t.name for t in new]
    finally:
        admin.close()


def delete_topics(bootstrap: str, names: list[str]) -> None:
    """Delete the named topics; one already gone is no error."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="rtap-admin", request_timeout_ms=15_000)
    try:
        present = [name for name in names if name in set(admin.list_topics())]
        if present:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                admin.delete_topics(present, timeout_ms=15_000)
    finally:
        admin.close()
