"""Backfill beyond Kafka: the raw table replays a range Kafka no longer holds, with the same windows.

One module run on real Kafka, Flink and chDB: the streaming job and the storage service (its own chDB state)
read one private events topic. Then `rtap backfill --source kafka` recomputes the range into fresh metric
topics; the events topic's records are deleted (the admin client's delete_records, as retention would);
`rtap backfill` (auto) must then find Kafka incomplete, read the raw table instead, and give every window the
original run gave, with the values the Kafka backfill gave.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.processing.backfill import bounds_for, kafka_extent
from shared.settings import Settings, settings_env
from shared.topics import topics
from tests.conftest import REPO_ROOT
from tests.processing.conftest import (
    IPHONE_UA,
    WINDOW_MS,
    Feed,
    create_topics,
    event,
    read_metrics,
    window_base,
)
from tests.storage.conftest import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.slow]

READ_KEY = "backfill-test-read-key-7f3a"
JOBS = ("event_metrics", "session_metrics", "performance_metrics")
BASE = window_base() - 4 * WINDOW_MS
END = BASE + 4 * WINDOW_MS


def at(seconds: float) -> int:
    return BASE + int(seconds * 1000)


def traffic() -> list[dict[str, Any]]:
    """Four windows of sessions over two devices, a client retry (one event id twice) and numeric, boolean
    and text properties, in event-time order as ingestion would write them."""
    events = []
    for i in range(40):
        ua = IPHONE_UA if i % 3 == 0 else None
        kwargs: dict[str, Any] = {"ua": ua} if ua else {}
        session, user = f"s{i % 7}-{i // 14}", f"u{i % 5}"
        kind = ("page_view", "product_view", "add_to_cart", "purchase")[i % 4]
        props: dict[str, Any] = {"revenue": 10.25 + i, "gift": i % 2 == 0} if kind == "purchase" else {}
        events.append(
            event(
                session,
                user,
                kind,
                at(0.3 + i * 0.9),
                load=100.0 + i * 7.5,
                interaction=i * 1.1 or None,
                **kwargs,
                **props,
            )
        )
    return events


EVENTS = traffic()
RETRY = EVENTS[5]


def metric_prefix_settings(s: Settings) -> Settings:
    """s with metric topics of their own (created), so a backfill's windows are read apart from the
    original run's."""
    fresh = s.model_copy(
        update={"topics": s.topics.model_copy(update={"metric_prefix": f"b{uuid.uuid4().hex[:8]}_"})}
    )
    create_topics(fresh)
    return fresh


@pytest.fixture(scope="module")
def storage(job_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The storage service on the module's topics, with a chDB state of its own (one writer per path)."""
    state: Path = tmp_path_factory.mktemp("backfill-storage")
    section = job_settings.storage.model_copy(
        update={
            "port": free_ports(1)[0],
            "batch_seconds": 0.2,
            "read_keys": [READ_KEY],
            "consumer_group": f"storage-backfill-{uuid.uuid4().hex[:8]}",
            "session_timeout_ms": 6_000,
        }
    )
    s = job_settings.model_copy(update={"storage": section, "state_dir": state})
    service = Service(s, "storage")
    service.start()
    try:
        wait_for(lambda: httpx.get(f"{service.url()}/readyz", timeout=10).status_code == 200, 90, 0.5)
        yield s
    finally:
        service.stop()


def total_events(records: dict[tuple[Any, ...], dict[str, Any]]) -> int:
    return sum(v["events"] for v in records.values())


@pytest.fixture(scope="module")
def original(job_settings: Settings, supervisor: Any, storage: Settings) -> dict[str, dict[Any, Any]]:
    """The streaming run's windows, once every event is counted in each job and stored in the raw table."""
    feed = Feed(job_settings)
    feed.send(*EVENTS, RETRY)
    for t in range(1, 12):  # heartbeats past the last window and session gap, as ingestion sends them
        feed.heartbeat(END + t * 1000)
    windows = {
        job: read_metrics(job_settings, job, lambda r: total_events(r) == len(EVENTS), timeout=120)
        for job in JOBS
    }
    for job, records in windows.items():
        assert total_events(records) == len(EVENTS), f"{job}: {records}"
    with httpx.Client(base_url=storage.storage.url, headers={"X-Read-Key": READ_KEY}, timeout=30) as api:
        count = "SELECT count() AS n FROM analytics_events FINAL"
        wait_for(lambda: api.post("/v1/sql", json={"sql": count}).json()["rows"][0]["n"] == len(EVENTS), 60)
    return windows


def backfill(s: Settings, storage: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **settings_env(s),
        "RTAP_STORAGE__PORT": str(storage.storage.port),
        "RTAP_READ_KEY": READ_KEY,
    }
    argv = [
        sys.executable,
        "-m",
        "infrastructure.cli",
        "backfill",
        "--from",
        str(BASE),
        "--to",
        str(END),
        "--timeout",
        "300",
        *extra,
    ]
    result = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def windows_of(s: Settings, expected: dict[str, dict[Any, Any]]) -> dict[str, dict[Any, Any]]:
    return {
        job: read_metrics(s, job, lambda r, job=job: set(r) >= set(expected[job]), timeout=60) for job in JOBS
    }


def assert_same_windows(got: dict[str, dict[Any, Any]], want: dict[str, dict[Any, Any]]) -> None:
    """Equal keys and values per job; floats to 1e-9 relative (an average sums in arrival order)."""
    for job in JOBS:
        assert set(got[job]) == set(want[job]), f"{job}: keys differ"
        for key, row in want[job].items():
            assert got[job][key] == comparable(row), f"{job} {key}"


def comparable(row: dict[str, Any]) -> dict[str, Any]:
    return {name: pytest.approx(v, rel=1e-9) if isinstance(v, float) else v for name, v in row.items()}


def delete_every_record(s: Settings) -> None:
    """What retention does to old segments: every record of the events topic gone, offsets kept."""
    topic = topics(s).events
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap, "group.id": f"x-{uuid.uuid4().hex[:6]}"})
    try:
        ends = [
            TopicPartition(topic.name, p, consumer.get_watermark_offsets(TopicPartition(topic.name, p))[1])
            for p in range(topic.partitions)
        ]
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    for future in admin.delete_records(ends).values():
        future.result(timeout=30)


def test_raw_backfill_of_a_range_kafka_no_longer_holds_gives_the_original_windows(
    job_settings: Settings, storage: Settings, original: dict[str, dict[Any, Any]]
) -> None:
    bounds = bounds_for(job_settings, BASE, END)
    assert kafka_extent(job_settings).holds(bounds)  # nothing removed yet
    from_kafka = metric_prefix_settings(job_settings)
    result = backfill(from_kafka, storage, "--source", "kafka")
    assert "reading from kafka" in result.stdout
    kafka_windows = windows_of(from_kafka, original)
    assert_same_windows(kafka_windows, original)

    delete_every_record(job_settings)
    assert not kafka_extent(job_settings).holds(bounds)

    from_raw = metric_prefix_settings(job_settings)
    result = backfill(from_raw, storage)  # --source auto
    out = " ".join(result.stdout.split())
    assert "reading from raw" in out and f"exported {len(EVENTS)} events" in out, out
    raw_windows = windows_of(from_raw, original)
    assert_same_windows(raw_windows, original)
    assert_same_windows(raw_windows, kafka_windows)
    leftover = AdminClient({"bootstrap.servers": job_settings.kafka.bootstrap}).list_topics(timeout=10).topics
    assert not [name for name in leftover if name.startswith(f"{topics(job_settings).events.name}-backfill-")]


def test_a_range_beyond_the_raw_tables_ttl_is_refused_saying_what_is_kept(
    job_settings: Settings, storage: Settings
) -> None:
    env = {
        **os.environ,
        **settings_env(job_settings),
        "RTAP_STORAGE__PORT": str(storage.storage.port),
        "RTAP_READ_KEY": READ_KEY,
    }
    old = BASE - 40 * 86_400_000
    argv = [
        sys.executable,
        "-m",
        "infrastructure.cli",
        "backfill",
        "--from",
        str(old),
        "--to",
        str(old + WINDOW_MS),
        "--source",
        "raw",
    ]
    result = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert "older than the raw table keeps" in out and "raw_events_ttl_days = 30" in out, out
    assert "Kafka holds" in out, out  # and what Kafka has
