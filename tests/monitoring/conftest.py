"""The whole pipeline running on the session's private ports, so the session's Prometheus scrapes it.

Every service keeps the session settings' port (those are Prometheus' scrape targets, the Redis exporter's
too); processing gets a private Flink job name and reads the real events topic, so its windows reach the
real metric topics that storage and cache consume.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from infrastructure.local.stack import Service
from shared.settings import Settings


def wait_for(check: Callable[[], object], timeout: float, interval: float = 1.0) -> object:
    """check()'s first truthy result; None after timeout. Exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def pipeline_settings(settings: Settings) -> Settings:
    run = uuid.uuid4().hex[:8]
    changes = {
        "ingestion": settings.ingestion.model_copy(update={"heartbeat_interval_ms": 500}),
        "processing": settings.processing.model_copy(
            update={
                "job_name": f"rtap-monitoring-{run}",
                "consumer_group": f"processing-{run}",
                "parallelism": 1,
                "checkpoint_interval_ms": 2_000,
                "watch_interval_seconds": 1.0,
                "session_gap_seconds": 3,
            }
        ),
        "storage": settings.storage.model_copy(
            update={"batch_seconds": 0.2, "consumer_group": f"storage-{run}", "session_timeout_ms": 6_000}
        ),
        "cache": settings.cache.model_copy(
            update={"consumer_group": f"cache-{run}", "session_timeout_ms": 6_000}
        ),
    }
    return settings.model_copy(update=changes)


@dataclass
class Pipeline:
    settings: Settings
    services: dict[str, Service]

    def url(self, name: str) -> str:
        return self.services[name].url()


# Package scope: the services' pid files are per name, so this pipeline must be gone before later
# test packages start their own processing service.
@pytest.fixture(scope="package")
def pipeline(settings, harness, kafka, redis_url, flink_cluster) -> Iterator[Pipeline]:
    s = pipeline_settings(settings)
    harness.ensure("redis-exporter")
    services = {name: Service(s, name) for name in ("ingestion", "storage", "cache", "processing")}
    started = []
    try:
        for service in services.values():
            service.start()
            started.append(service)
        yield Pipeline(s, services)
    finally:
        for service in reversed(started):
            service.stop()
