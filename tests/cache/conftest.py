"""Cache service fixtures: a private key prefix and consumer group per service, metric records in
Flink's shape.

Windows start in the year 2100 (plus a random offset) so that "latest" and "recent" are this test's
records even when other tests write real metric records to the same shared topics.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from infrastructure.local.stack import Service
from services.processing.registry import load_schemas
from shared.metric_schema import MetricSchema
from shared.settings import Settings
from tests.topics import TOPICS

READ_KEY = "test-read-key-7f3a"
YEAR_2100_MS = 4_102_444_800_000
WINDOW_MS = 10_000


def cache_settings(settings: Settings, **overrides: Any) -> Settings:
    run = uuid.uuid4().hex[:8]
    cache = settings.cache.model_copy(
        update={
            "key_prefix": f"t{run}",
            "consumer_group": f"cache-test-{run}",
            "session_timeout_ms": 6_000,
            **overrides,
        }
    )
    return settings.model_copy(update={"cache": cache})


def window_base() -> int:
    return YEAR_2100_MS + random.randrange(1, 10**6) * 1_000 * WINDOW_MS


def schema(name: str) -> MetricSchema:
    return load_schemas()[name]


def produce(bootstrap: str, job: str, records: Iterable[dict[str, Any]], raw: bool = False) -> None:
    """Write metric records as Flink's upsert-kafka sink does: key = JSON of the key columns,
    value = flat JSON."""
    s = schema(job)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for record in records:
        if raw:
            key, value = record["key"], record["value"]
        else:
            key, value = orjson.dumps({k: record[k] for k in s.key}), orjson.dumps(record)
        producer.produce(TOPICS.metric(s).name, key=key, value=value)
    assert producer.flush(15) == 0


def event_record(ws: int, event_type: str, device: str, events: int, users: int) -> dict[str, Any]:
    return {
        "window_start": ws,
        "window_end": ws + WINDOW_MS,
        "event_type": event_type,
        "device_category": device,
        "events": events,
        "unique_users": users,
    }


def perf_record(ws: int, device: str, p50: float, p95: float, p99: float) -> dict[str, Any]:
    return {
        "window_start": ws,
        "window_end": ws + WINDOW_MS,
        "device_category": device,
        "events": 10,
        "load_time_count": 10,
        "load_time_avg": p50 + 1,
        "load_time_p50": p50,
        "load_time_p95": p95,
        "load_time_p99": p99,
        "interaction_time_count": 0,
        "interaction_time_avg": None,
        "interaction_time_p50": None,
        "interaction_time_p95": None,
        "interaction_time_p99": None,
    }


def session_record(
    ws: int, session_id: str, user_id: str, events: int, end: int | None = None
) -> dict[str, Any]:
    return {
        "window_start": ws,
        "window_end": end if end is not None else ws + 60_000,
        "session_id": session_id,
        "user_id": user_id,
        "device_category": "desktop",
        "duration_ms": 30_000,
        "page_views": 2,
        "events": events,
        "products_viewed": 1,
        "cart_adds": 1,
        "purchases": 1,
        "revenue": 12.5,
        "cart_items": 0,
        "cart_value": 0.0,
    }


def wait_for(check, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def wait_ready(client: httpx.Client, timeout: float = 60.0) -> dict[str, Any]:
    def ready():
        r = client.get("/readyz")
        return r.json() if r.status_code == 200 else None

    return wait_for(ready, timeout, 0.3, "cache /readyz")


def wait_caught_up(client: httpx.Client) -> None:
    """Lag 0 measured after everything produced so far: the consumer measures lag once a second."""
    time.sleep(1.2)
    wait_for(lambda: client.get("/readyz").json().get("lag_records") == 0, 30, 0.3, "consumer lag 0")


class RunningCache:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.service = Service(settings, "cache")
        self.url = self.service.url()
        headers = {"X-Read-Key": settings.cache.read_keys[0]} if settings.cache.read_keys else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def start(self) -> RunningCache:
        self.service.start()
        wait_ready(self.client)
        return self

    def stop(self) -> None:
        self.client.close()
        self.service.stop()


@pytest.fixture(scope="module")
def cache(settings, kafka, redis_url):
    running = RunningCache(cache_settings(settings, read_keys=[READ_KEY])).start()
    yield running
    running.stop()
