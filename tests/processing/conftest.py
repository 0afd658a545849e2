"""Processing fixtures: a private events topic, private metric topics and a private job per test module.

Each module submits one job (through the real supervisor, `python -m services.processing`) to the
session's Flink cluster, feeds it events with explicit event times plus heartbeats to every
partition (what ingestion does), and reads the metric topics back as upserts (last value per key).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.processing.registry import load_schemas
from shared.events import HEARTBEAT_TYPE
from shared.kafka_admin import ensure_topics
from shared.settings import Settings
from shared.topics import topics

WINDOW_MS = 10_000
DESKTOP_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)


def processing_settings(settings: Settings, **overrides: Any) -> Settings:
    """The session's settings with private topics and a private job; `overrides` go to processing."""
    run = uuid.uuid4().hex[:8]
    names = {"events": f"events_{run}", "metric_prefix": f"t{run}_"}
    private_topics = settings.topics.model_copy(update=names)
    processing = settings.processing.model_copy(
        update={
            "port": free_ports(1)[0],
            "job_name": f"rtap-test-{run}",
            "consumer_group": f"processing-{run}",
            "parallelism": 1,
            "window_seconds": WINDOW_MS // 1000,
            "session_gap_seconds": 3,
            "watermark_delay_ms": 2_000,
            "idle_timeout_ms": 600_000,
            "checkpoint_interval_ms": 2_000,
            "watch_interval_seconds": 1.0,
            **overrides,
        }
    )
    return settings.model_copy(update={"processing": processing, "topics": private_topics})


def create_topics(s: Settings) -> None:
    ensure_topics(s.kafka.bootstrap, topics(s).all(load_schemas(s.processing.job_modules).values()))


def window_base() -> int:
    """An aligned event time ten minutes ago: recent enough for backfill's record-time range."""
    now = int(time.time() * 1000) - 600_000
    return now - now % WINDOW_MS


def event(
    session: str,
    user: str,
    event_type: str,
    ts: int,
    ua: str = DESKTOP_UA,
    load: float | None = None,
    interaction: float | None = None,
    **properties: Any,
) -> dict[str, Any]:
    return {
        "event": {"type": event_type, "id": uuid.uuid4().hex},
        "user": {"id": user},
        "device": {
            "user_agent": ua,
            "screen_width": 1920 if ua == DESKTOP_UA else 390,
            "screen_height": 1080 if ua == DESKTOP_UA else 844,
        },
        "context": {
            "url": "https://shop.example/",
            "referrer": None,
            "ip_address": None,
            "session_id": session,
        },
        "properties": properties,
        "metrics": {"load_time": load, "interaction_time": interaction},
        "timestamp": ts,
        "received_at": ts,
    }


class Feed:
    """Writes raw events (keyed by session) and heartbeats (one per partition) to the private events topic."""

    def __init__(self, s: Settings):
        self.topic = topics(s).events.name
        self.partitions = topics(s).events.partitions
        self.producer = Producer({"bootstrap.servers": s.kafka.bootstrap, "acks": "all", "linger.ms": 5})

    def send(self, *events: dict[str, Any]) -> None:
        for e in events:
            self.producer.produce(
                self.topic, key=e["context"]["session_id"], value=json.dumps(e), timestamp=e["timestamp"]
            )
        assert self.producer.flush(15) == 0

    def heartbeat(self, ts: int) -> None:
        value = json.dumps(
            {"event": {"type": HEARTBEAT_TYPE, "id": "hb"}, "timestamp": ts, "received_at": ts}
        )
        for partition in range(self.partitions):
            self.producer.produce(self.topic, value=value, partition=partition, timestamp=ts)
        assert self.producer.flush(15) == 0


def read_metrics(
    s: Settings,
    job: str,
    done: Callable[[dict[tuple[Any, ...], dict[str, Any]]], bool],
    timeout: float = 90.0,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Last value per key of a metric topic: read from the start up to the end of every partition, again
    until done(records) or timeout (a read that stopped mid-topic would see a key's earlier value)."""
    schema = load_schemas(s.processing.job_modules)[job]
    topic = topics(s).metric(schema)
    consumer = Consumer(
        {
            "bootstrap.servers": s.kafka.bootstrap,
            "group.id": f"read-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    partitions = [TopicPartition(topic.name, p, OFFSET_BEGINNING) for p in range(topic.partitions)]
    consumer.assign(partitions)  # no group coordinator needed
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    read_to = {tp.partition: 0 for tp in partitions}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=5)[1] for tp in partitions}
            while time.monotonic() < deadline and any(read_to[p] < end for p, end in ends.items()):
                for message in consumer.consume(500, timeout=0.5):
                    partition, offset = message.partition(), message.offset()
                    if message.error() or partition is None or offset is None:
                        continue
                    read_to[partition] = offset + 1
                    raw = message.value()
                    if raw is None:
                        continue
                    value = json.loads(raw)
                    records[tuple(value[k] for k in schema.key)] = value
            if done(records):
                break
            time.sleep(0.25)
    finally:
        consumer.close()
    return records


def flink_jobs(s: Settings) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = httpx.get(
        f"http://127.0.0.1:{s.flink.rest_port}/jobs/overview", timeout=5
    ).json()["jobs"]
    return jobs


def wait_for_running_job(s: Settings, timeout: float = 180.0, not_id: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in flink_jobs(s):
            if (
                job["name"].startswith(s.processing.job_name + ":")
                and job["state"] == "RUNNING"
                and job["jid"] != not_id
            ):
                jid: str = job["jid"]
                return jid
        time.sleep(1)
    raise AssertionError(f"job {s.processing.job_name} not RUNNING within {timeout}s: {flink_jobs(s)}")


def job_diagnostics(s: Settings) -> str:
    """Records and watermarks per vertex of the module's running job, for assertion messages."""
    base = f"http://127.0.0.1:{s.flink.rest_port}"
    lines = []
    for job in flink_jobs(s):
        if job["name"].startswith(s.processing.job_name + ":") and job["state"] == "RUNNING":
            detail = httpx.get(f"{base}/jobs/{job['jid']}", timeout=5).json()
            for v in detail["vertices"]:
                marks = httpx.get(f"{base}/jobs/{job['jid']}/vertices/{v['id']}/watermarks", timeout=5).json()
                lines.append(
                    f"{v['name'][:60]}: in={v['metrics'].get('read-records')}"
                    f" out={v['metrics'].get('write-records')} wm={marks}"
                )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def job_settings(settings: Settings, kafka: str, flink_cluster: str) -> Settings:
    s = processing_settings(settings)
    create_topics(s)
    return s


@pytest.fixture(scope="module")
def supervisor(job_settings: Settings) -> Iterator[Service]:
    service = Service(job_settings, "processing")
    service.start()
    try:
        wait_for_running_job(job_settings)
        yield service
    finally:
        service.stop()
