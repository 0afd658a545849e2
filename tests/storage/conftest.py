"""Storage service fixtures: the real service (`python -m services.storage`) on real Kafka and chDB,
fed with metric records in Flink's upsert-kafka shape and raw events in ingestion's wire format.

Each test uses its own event types / session ids so the shared topics never mix its numbers with
another test's.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from infrastructure.local.stack import Service
from services.ingestion.records import heartbeat_value
from services.processing.registry import load_schemas
from shared.settings import Settings
from tests.topics import EVENTS, TOPICS

READ_KEY = "storage-test-read-key-41c9"
WINDOW_MS = 10_000


def storage_settings(settings: Settings, **overrides: Any) -> Settings:
    storage = settings.storage.model_copy(
        update={
            "batch_seconds": 0.2,
            "batch_rows": 500,
            "read_keys": [READ_KEY],
            "session_timeout_ms": 6_000,
            "consumer_group": f"storage-test-{uuid.uuid4().hex[:8]}",
            **overrides,
        }
    )
    return settings.model_copy(update={"storage": storage})


@pytest.fixture(scope="session")
def storage_service(kafka, settings) -> Any:
    s = storage_settings(settings)
    service = Service(s, "storage")
    service.start()
    wait_ready(service)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def api(storage_service) -> httpx.Client:
    with httpx.Client(base_url=storage_service.url(), headers={"X-Read-Key": READ_KEY}, timeout=30) as client:
        yield client


def wait_ready(service: Service, timeout: float = 90.0) -> None:
    """Ready = ClickHouse reachable and partitions assigned (a fresh broker's first group join is slow)."""
    wait_for(lambda: httpx.get(f"{service.url()}/readyz", timeout=10).status_code == 200, timeout, 0.5)


def produce_metrics(bootstrap: str, job: str, records: Iterable[dict[str, Any]]) -> None:
    """Like Flink's upsert-kafka sink: key = JSON of the key columns, value = flat JSON (None: tombstone)."""
    schema = load_schemas()[job]
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for record in records:
        key = orjson.dumps({k: record[k] for k in schema.key})
        value = None if record.get("__tombstone") else orjson.dumps(record)
        producer.produce(TOPICS.metric(schema).name, key=key, value=value)
    assert producer.flush(15) == 0


def produce_raw(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for key, value in items:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(15) == 0


def event_metric(ws: int, event_type: str, device: str, events: int, users: int) -> dict[str, Any]:
    return {
        "window_start": ws,
        "window_end": ws + WINDOW_MS,
        "event_type": event_type,
        "device_category": device,
        "events": events,
        "unique_users": users,
    }


def raw_event(
    session_id: str, event_id: str, event_type: str = "page_view", ts: int | None = None
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "event": {"type": event_type, "id": event_id},
        "user": {"id": f"u-{session_id}", "anonymous_id": None},
        "device": {
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
            "screen_width": 1920,
            "screen_height": 1080,
        },
        "context": {
            "url": "https://shop.example/p/1",
            "referrer": None,
            "ip_address": "203.0.113.9",
            "session_id": session_id,
            "group_id": None,
        },
        "properties": {"sku": "A-1", "qty": 2, "gift": True},
        "metrics": {"load_time": 812.5, "interaction_time": None},
        "timestamp": ts or now,
        "received_at": now,
        "enrichment": {
            "utm_source": "newsletter",
            "utm_medium": "email",
            "utm_campaign": None,
            "utm_term": None,
            "utm_content": None,
            "referrer_host": None,
            "referrer_class": "direct",
            "browser": "Other",
            "browser_version": None,
            "os": "Linux",
            "os_version": None,
            "country": None,
        },
    }


def produce_events(bootstrap: str, events: Iterable[dict[str, Any]]) -> None:
    produce_raw(
        bootstrap, EVENTS.name, ((e["context"]["session_id"].encode(), orjson.dumps(e)) for e in events)
    )


def heartbeat() -> dict[str, Any]:
    """Exactly what ingestion writes (empty user and session ids, which no client event may have)."""
    return orjson.loads(heartbeat_value(int(time.time() * 1000)))


def sql(api: httpx.Client, statement: str, **params: Any) -> httpx.Response:
    return api.post("/v1/sql", json={"sql": statement, "params": params})


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def scalar(api: httpx.Client, statement: str, **params: Any) -> Any:
    response = sql(api, statement, **params)
    assert response.status_code == 200, response.text
    row = response.json()["rows"][0]
    return next(iter(row.values()))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
