"""The ingestion service as a real process against the session's real Kafka broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from shared.settings import Settings
from tests.topics import EVENTS

WRITE_KEY = "ingestion-test-key-7f3a"


def problem(response: httpx.Response) -> dict[str, Any]:
    """The one problem of an error body in the APIs' shape: {"detail": [{"loc", "msg", "type"}], ...}."""
    [only] = response.json()["detail"]
    assert set(only) == {"loc", "msg", "type"} and only["msg"], response.text
    return only


def refused_at(response: httpx.Response) -> tuple[int, list[Any]]:
    """(status, loc) of a refusal."""
    return response.status_code, problem(response)["loc"]


def expected_loc(field: str) -> list[str]:
    """The `loc` that names a field: a header, the whole body, or a dotted path in the body."""
    if field in ("Content-Type", "Content-Encoding", "X-Write-Key"):
        return ["header", field]
    return ["body"] if field == "body" else ["body", field]


def ingestion_settings(settings: Settings, **changes: Any) -> Settings:
    """The session settings with a tighter ingestion section (short timeouts keep the fault test quick)."""
    base = dict(
        produce_timeout_ms=2_000,
        heartbeat_interval_ms=500,
        max_body_bytes=64 * 1024,
        max_batch_events=100,
        retry_after_seconds=2,
    )
    section = settings.ingestion.model_copy(update={**base, **changes})
    return settings.model_copy(update={"ingestion": section})


@pytest.fixture(scope="module")
def ingestion(settings: Settings, kafka: str) -> Iterator[str]:
    svc = Service(ingestion_settings(settings, cors_origins=["https://shop.example"]), "ingestion")
    svc.start()
    yield svc.url()
    svc.stop()


@pytest.fixture(scope="module")
def keyed_ingestion(settings: Settings, kafka: str, tmp_path_factory) -> Iterator[str]:
    """A second instance on its own port (and own run dir) that requires a write key."""
    keyed = ingestion_settings(settings, write_keys=[WRITE_KEY], port=free_ports(1)[0])
    keyed = keyed.model_copy(update={"state_dir": tmp_path_factory.mktemp("keyed-ingestion")})
    svc = Service(keyed, "ingestion")
    svc.start()
    yield svc.url()
    svc.stop()


@pytest.fixture
def client(ingestion: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingestion, timeout=15) as c:
        yield c


def event(**overrides: Any) -> dict[str, Any]:
    """A valid event in the reference shape; overrides replace top-level parts."""
    body = {
        "event": {"type": "page_view"},
        "user": {"id": "u-1"},
        "device": {
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "screen_width": 1920,
            "screen_height": 1080,
        },
        "context": {
            "url": "https://shop.example/",
            "referrer": None,
            "session_id": f"s-{uuid.uuid4().hex[:8]}",
        },
        "properties": {"plan": "pro", "items": 2, "price": 9.5, "new": True},
        "metrics": {"load_time": 120.5},
        "timestamp": int(time.time() * 1000),
    }
    body.update(overrides)
    return body


def read_events(
    bootstrap: str, wanted: Callable[[dict], bool], count: int, timeout_s: float = 20
) -> list[dict]:
    """Records of the events topic (from the beginning) that satisfy wanted, with key/headers/partition, until
    count found."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"ingestion-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([EVENTS.name])
    found: list[dict] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            value = orjson.loads(msg.value())
            if event_id(value) is not None and wanted(value):
                found.append(
                    {
                        "key": msg.key(),
                        "value": value,
                        "headers": dict(msg.headers() or []),
                        "partition": msg.partition(),
                    }
                )
    finally:
        consumer.close()
    return found


def event_id(value: Any) -> str | None:
    """The record's event id; None for records without one (other suites write malformed ones on purpose)."""
    event = value.get("event") if isinstance(value, dict) else None
    return event.get("id") if isinstance(event, dict) else None


def with_ids(ids: set[str]) -> Callable[[dict], bool]:
    return lambda v: v["event"]["id"] in ids
