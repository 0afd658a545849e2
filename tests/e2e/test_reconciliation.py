"""End-to-end reconciliation on the full local stack: `rtap load` -> ingestion -> Kafka -> Flink -> metric topics
-> ClickHouse (storage API) and Redis (cache API), every layer checked against the recomputation from the manifest.

The stack runs on the module's own settings (2 s windows, 3 s session gap) so its timings do not affect other tests.
The workload repeats 5% of its sends with the same event id (client retries): every layer must count them once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from infrastructure.local.stack import Service, settings_env
from services.loadgen.manifest import accepted, event_metrics, performance_metrics, read_manifest, session_metrics
from shared.events import HEARTBEAT_TYPE
from shared.metrics import MetricSchema, load_schemas
from shared.settings import Settings
from shared.topics import EVENTS, metric_topic
from tests.conftest import Harness, isolated_settings
from tests.e2e.reconcile import by_key, reconcile

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.flink, pytest.mark.redis, pytest.mark.clickhouse]

WINDOW_S, GAP_S = 2, 3
WATERMARK_DELAY_MS = 2_000  # room for a busy 2-core machine: a sender behind its schedule must not make events late
EVENTS_SENT = 3_000
SETTLE_TIMEOUT_S = 120
RTAP = Path(sys.executable).with_name("rtap")
SERVICES = ("ingestion", "storage", "cache", "processing")


def wait_for_flink_job(s: Settings, timeout: float = 180.0) -> None:
    url = f"http://127.0.0.1:{s.flink.rest_port}/jobs/overview"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = httpx.get(url, timeout=5).json()["jobs"]
        if any(j["name"].startswith(s.processing.job_name + ":") and j["state"] == "RUNNING" for j in jobs):
            return
        time.sleep(1)
    raise AssertionError(f"Flink job {s.processing.job_name} not RUNNING within {timeout}s: {jobs}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Settings]:
    s = isolated_settings(
        tmp_path_factory.mktemp("e2e") / "state",
        RTAP_PROCESSING__WINDOW_SECONDS=str(WINDOW_S), RTAP_PROCESSING__SESSION_GAP_SECONDS=str(GAP_S),
        RTAP_PROCESSING__WATERMARK_DELAY_MS=str(WATERMARK_DELAY_MS), RTAP_PROCESSING__CHECKPOINT_INTERVAL_MS="2000",
        RTAP_CACHE__MAX_LIMIT="50000", RTAP_CACHE__WINDOWS_PER_KEY="100000")
    harness, services = Harness(s), []
    try:
        harness.ensure("kafka", "redis", "flink-jobmanager", "flink-taskmanager")
        for name in SERVICES:
            services.append(Service(s, name))
            services[-1].start()
        wait_for_flink_job(s)
        yield s
    finally:
        for svc in reversed(services):
            svc.stop()
        harness.close()


def rtap_load(s: Settings, manifest: Path, *args: str) -> list[dict[str, Any]]:
    env = {**os.environ, **settings_env(s)}
    result = subprocess.run([str(RTAP), "load", "--processes", "2", "--batch-size", "100", "--seed",
                             str(uuid.uuid4().int % 2**31), "--manifest", str(manifest), *args],
                            env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return read_manifest(manifest)


@pytest.fixture(scope="module")
def workload(stack: Settings, tmp_path_factory) -> list[dict[str, Any]]:
    entries = rtap_load(stack, tmp_path_factory.mktemp("e2e-load") / "run.jsonl",
                        "--events", str(EVENTS_SENT), "--rate", "1000", "--duplicate-fraction", "0.05")
    assert len(entries) == EVENTS_SENT and all(e["accepted"] and not e["timestamp_adjusted"] for e in entries)
    assert any(e["duplicate"] for e in entries)
    return entries


def expected_metrics(entries: list[dict[str, Any]]) -> dict[str, dict]:
    window_ms = WINDOW_S * 1000
    return {"event_metrics": event_metrics(entries, window_ms), "performance_metrics": performance_metrics(entries, window_ms),
            "session_metrics": session_metrics(entries, GAP_S * 1000)}


def poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = SETTLE_TIMEOUT_S, pause: float = 1.0) -> Any:
    """read() until done(value) or the timeout; returns the last value (the assertion shows what was missing)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(pause)
        value = read()
    return value


def consume_all(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60.0) -> Iterator[Any]:
    """Every record of a topic from the beginning up to its end offsets at the time of the call (heartbeats keep the
    raw topic growing, so "until idle" would never end)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}", "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    pending = {p for p, end in ends.items() if end > 0}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
    deadline = time.monotonic() + timeout_s
    try:
        while pending and time.monotonic() < deadline:
            for m in consumer.consume(1_000, timeout=0.5):
                if m.error():
                    continue
                if m.offset() >= ends[m.partition()] - 1:
                    pending.discard(m.partition())
                if m.offset() < ends[m.partition()]:
                    yield m
    finally:
        consumer.close()


def topic_metrics(s: Settings, schema: MetricSchema) -> dict[tuple, dict]:
    """The final value per key of a metric topic (the last record of each Kafka key)."""
    records = (orjson.loads(m.value()) for m in consume_all(s.kafka.bootstrap, schema.topic, metric_topic(schema).partitions)
               if m.value() is not None)
    return by_key(schema, records)


def raw_ids(s: Settings) -> list[str]:
    values = (orjson.loads(m.value()) for m in consume_all(s.kafka.bootstrap, EVENTS.name, EVENTS.partitions))
    return [v["event"]["id"] for v in values if v["event"]["type"] != HEARTBEAT_TYPE]


def window_range(expected: dict[tuple, dict]) -> tuple[int, int]:
    starts = [key[0] for key in expected]
    return min(starts), max(starts) + 1


def storage_sql(s: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.post(f"http://127.0.0.1:{s.storage.port}/v1/sql", json={"sql": sql, "params": params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def storage_metrics(s: Settings, schema: MetricSchema, expected: dict) -> dict[tuple, dict]:
    start, end = window_range(expected)
    response = httpx.get(f"http://127.0.0.1:{s.storage.port}/v1/metrics/{schema.name}",
                         params={"from": start, "to": end, "limit": s.storage.max_limit}, timeout=30)
    assert response.status_code == 200, response.text
    return by_key(schema, response.json()["rows"])


def cache_windows(s: Settings, schema: MetricSchema, expected: dict) -> dict[tuple, dict]:
    start, end = window_range(expected)
    response = httpx.get(f"http://127.0.0.1:{s.cache.port}/v1/jobs/{schema.name}/windows",
                         params={"from": start, "to": end, "limit": s.cache.max_limit}, timeout=30)
    assert response.status_code == 200, response.text
    return by_key(schema, response.json()["records"])


def reconciled(schema: MetricSchema, expected: dict, read: Callable[[], dict]) -> list[str]:
    """The differences left once the layer has settled (or the timeout passed)."""
    return reconcile(schema, expected, poll(read, lambda actual: not reconcile(schema, expected, actual)))


JOBS = ("event_metrics", "performance_metrics", "session_metrics")


def test_raw_topic_holds_every_accepted_id(stack, workload):
    wanted = {e["id"] for e in accepted(workload)}
    seen = poll(lambda: set(raw_ids(stack)), lambda ids: wanted <= ids, timeout=30)
    assert len(wanted - seen) == 0, f"{len(wanted - seen)} accepted ids not in {EVENTS.name}"


@pytest.mark.parametrize("job", JOBS)
def test_metric_topic_final_values_equal_the_recomputation(stack, workload, job):
    schema = load_schemas()[job]
    expected = expected_metrics(workload)[job]
    problems = reconciled(schema, expected, lambda: topic_metrics(stack, schema))
    assert problems == [], f"{len(problems)} differences of {len(expected)} windows:\n" + "\n".join(problems[:20])


def raw_rows_between(s: Settings, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Rows and distinct event ids in raw storage (FINAL) with start_ms <= timestamp < end_ms."""
    sql = ("SELECT count() AS rows, uniqExact(event_id) AS ids FROM analytics_events FINAL "
           "WHERE timestamp >= fromUnixTimestamp64Milli({lo:Int64}) AND timestamp < fromUnixTimestamp64Milli({hi:Int64})")
    return storage_sql(s, sql, lo=start_ms, hi=end_ms)


def time_span(entries: list[dict[str, Any]]) -> tuple[int, int]:
    stamps = [e["timestamp"] for e in entries]
    return min(stamps), max(stamps) + 1


def test_clickhouse_raw_rows_are_the_accepted_distinct_ids(stack, workload):
    distinct = len({e["id"] for e in accepted(workload)})
    rows = poll(lambda: raw_rows_between(stack, *time_span(workload)), lambda r: r[0]["rows"] >= distinct, timeout=60)
    assert rows == [{"rows": distinct, "ids": distinct}]


@pytest.mark.parametrize("job", JOBS)
def test_clickhouse_metrics_equal_the_recomputation(stack, workload, job):
    schema = load_schemas()[job]
    expected = expected_metrics(workload)[job]
    problems = reconciled(schema, expected, lambda: storage_metrics(stack, schema, expected))
    assert problems == [], f"{len(problems)} differences of {len(expected)} windows:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("job", JOBS)
def test_cache_windows_equal_the_recomputation(stack, workload, job):
    schema = load_schemas()[job]
    expected = expected_metrics(workload)[job]
    problems = reconciled(schema, expected, lambda: cache_windows(stack, schema, expected))
    assert problems == [], f"{len(problems)} differences of {len(expected)} windows:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("job", JOBS)
def test_cache_latest_window_equals_the_recomputation(stack, workload, job):
    schema = load_schemas()[job]
    expected = expected_metrics(workload)[job]
    newest = max(key[0] for key in expected)
    want = {key: values for key, values in expected.items() if key[0] == newest}

    def latest() -> dict[tuple, dict]:
        response = httpx.get(f"http://127.0.0.1:{stack.cache.port}/v1/jobs/{job}/latest", timeout=30)
        assert response.status_code == 200, response.text
        return by_key(schema, response.json()["records"])

    assert reconciled(schema, want, latest) == []


def test_duplicate_sends_are_one_row_in_raw_storage(stack, workload, tmp_path):
    """Runs after the reconciliation tests (its events land in later windows): re-sent ids stay single in ClickHouse."""
    entries = rtap_load(stack, tmp_path / "dups.jsonl", "--events", "400", "--rate", "1000", "--duplicate-fraction", "0.2")
    duplicated = [e for e in entries if e["duplicate"]]
    assert duplicated and all(e["accepted"] for e in entries)
    sent_ids = raw_ids(stack)
    assert all(sent_ids.count(e["id"]) == e["sends"] for e in duplicated)  # every duplicate send reached Kafka
    distinct = len(entries)
    rows = poll(lambda: raw_rows_between(stack, *time_span(entries)), lambda r: r[0]["ids"] >= distinct, timeout=60)
    assert rows == [{"rows": distinct, "ids": distinct}]
