"""kill -9 of the storage process, between a write and its commit and under a steady stream:
after a restart nothing is lost and nothing is counted twice (exact counts with FINAL)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from infrastructure.local.errors import RuntimeSetupError
from infrastructure.local.process import wait_until
from services.storage.consumer import KILL_BEFORE_COMMIT_ENV
from shared.topics import METRIC_PARTITIONS
from tests.storage.conftest import (
    event_metric,
    produce_events,
    produce_metrics,
    raw_event,
    scalar,
    unique,
    wait_for,
    wait_ready,
)
from tests.topics import EVENTS

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]
BASE_MS = 1_767_398_400_000  # 2026-01-03
EVENTS_FINAL = "SELECT count() AS c FROM analytics_events FINAL WHERE session_id = {s:String}"
METRICS_FINAL = "SELECT count() AS c, sum(events) AS s FROM event_metrics FINAL WHERE event_type = {t:String}"


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return [
            tp.offset
            for tp in reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        ]
    finally:
        reader.close()


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> list[int]:
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("wm")})
    try:
        return [
            reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)
        ]
    finally:
        reader.close()


def test_killed_between_write_and_commit_then_restarted_is_exact(kafka, storage_service, api, monkeypatch):
    group = storage_service.settings.storage.consumer_group
    storage_service.stop()
    event_type, session = unique("k9"), unique("k9s")
    metrics = [event_metric(BASE_MS + i * 10_000, event_type, "desktop", i + 1, 1) for i in range(20)]
    events = [raw_event(session, str(uuid.uuid4())) for _ in range(30)]
    produce_metrics(kafka, "event_metrics", metrics)
    produce_events(kafka, events)

    monkeypatch.setenv(KILL_BEFORE_COMMIT_ENV, "1")
    try:
        storage_service.start()
    except (
        RuntimeSetupError
    ) as exc:  # on a busy machine the hook can fire before the service reported healthy
        assert "fault hook" in str(exc), exc
    assert wait_until(lambda: storage_service.pid() is None, 60, 0.3), "the fault hook never fired"
    monkeypatch.delenv(KILL_BEFORE_COMMIT_ENV)
    log = (storage_service.settings.state_path / "logs" / "storage.log").read_text()
    assert "fault hook: killing the process between write and commit" in log
    uncommitted = [
        c < h
        for c, h in zip(
            committed(kafka, group, "event_metrics", METRIC_PARTITIONS),
            high_watermarks(kafka, "event_metrics", METRIC_PARTITIONS),
            strict=True,
        )
    ]
    uncommitted += [
        c < h
        for c, h in zip(
            committed(kafka, group, EVENTS.name, EVENTS.partitions),
            high_watermarks(kafka, EVENTS.name, EVENTS.partitions),
            strict=True,
        )
    ]
    assert any(uncommitted), "offsets were committed although the process died before committing"

    storage_service.start()
    wait_ready(storage_service)
    assert wait_for(lambda: scalar(api, EVENTS_FINAL, s=session) == 30)
    row = wait_for(
        lambda: (
            (
                r := api.post("/v1/sql", json={"sql": METRICS_FINAL, "params": {"t": event_type}}).json()[
                    "rows"
                ][0]
            )["c"]
            == 20
            and r
        )
    )
    assert row["s"] == sum(range(1, 21))
    time.sleep(1)  # a late duplicate write would show up now
    assert scalar(api, EVENTS_FINAL, s=session) == 30


def test_kill9_under_a_steady_stream_then_restart_is_exact(kafka, storage_service, api):
    session, total = unique("stream"), 300
    events = [raw_event(session, str(uuid.uuid4())) for _ in range(total)]

    def stream() -> None:
        for i in range(0, total, 20):
            produce_events(kafka, events[i : i + 20])
            time.sleep(0.1)

    producer = threading.Thread(target=stream)
    producer.start()
    wait_for(lambda: scalar(api, EVENTS_FINAL, s=session) > 0, 30, 0.1)
    storage_service.kill9()
    producer.join(60)
    storage_service.start()
    wait_ready(storage_service)
    assert wait_for(lambda: scalar(api, EVENTS_FINAL, s=session) == total)
    time.sleep(1)
    assert scalar(api, EVENTS_FINAL, s=session) == total
    assert (
        scalar(
            api,
            "SELECT uniqExact(event_id) AS c FROM analytics_events WHERE session_id = {s:String}",
            s=session,
        )
        == total
    )
