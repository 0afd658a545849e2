"""Each alert rule fires on a real stack that is made to fail the way the alert describes.

The module has a private stack (its own Kafka, Redis, ingestion, cache and Prometheus; no Flink), so stopping
Kafka or Redis here leaves the session's pipeline alone. Its Prometheus scrapes every 2 s, evaluates every
second and loads a copy of the production rules in which only each alert's `for:` is shortened to
FOR_SECONDS (2-5 minutes per alert is not a test); every expression is the production one, which
test_rules_differ_from_production_only_in_for checks.

Tests run in file order. NoWindowsEmitted comes first: its rule looks back 5 minutes at the metric topics,
and the consumer-lag test writes metric records. Every other test restores what it stopped.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import orjson
import pytest
import yaml
from confluent_kafka import Producer

from infrastructure.local.components import MONITORING_DIR, Prometheus
from infrastructure.local.isolated import Harness, free_ports, isolated_settings
from services.processing.registry import load_schemas
from shared.settings import Settings
from tests.monitoring.test_live_pipeline import events
from tests.topics import TOPICS

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

FOR_SECONDS = 10
FIRING_TIMEOUT = 90


def alert_rules(rules: dict) -> list[dict]:
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


class AlertTestPrometheus(Prometheus):
    """The production config and rules, on a fast clock, with every alert's `for:` set to FOR_SECONDS."""

    def prepare(self) -> None:
        super().prepare()
        directory = self.state / "prometheus"
        config = yaml.safe_load((directory / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="1s")
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        rules_file = directory / "rules" / "rtap.yml"
        rules = yaml.safe_load(rules_file.read_text())
        for rule in alert_rules(rules):
            if "for" in rule:
                rule["for"] = f"{FOR_SECONDS}s"
        rules_file.write_text(yaml.safe_dump(rules, sort_keys=False))


@dataclass
class FaultStack:
    settings: Settings
    harness: Harness
    prometheus: str

    def url(self, name: str) -> str:
        return self.harness.stack.component(name).url()

    def pid(self, name: str) -> int:
        pid = self.harness.stack.component(name).pid()
        assert pid, f"{name} is not running"
        return pid

    def stop(self, name: str) -> None:
        assert self.harness.stack.component(name).stop(), f"{name} was not running"

    def start(self, name: str) -> None:
        self.harness.stack.component(name).start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[FaultStack]:
    flink = free_ports(2)  # no Flink here; keeps this Prometheus off the session's Flink reporters
    settings = isolated_settings(
        tmp_path_factory.mktemp("alerts") / "state",
        RTAP_INGESTION__PRODUCE_TIMEOUT_MS="1500",
        RTAP_FLINK__JOBMANAGER_METRICS_PORT=str(flink[0]),
        RTAP_FLINK__TASKMANAGER_METRICS_PORT=str(flink[1]),
    )
    harness = Harness(settings)
    prometheus = AlertTestPrometheus(settings)
    try:
        harness.ensure("kafka", "redis", "ingestion", "cache")
        prometheus.start()
        yield FaultStack(settings, harness, prometheus.url())
    finally:
        prometheus.stop()
        harness.close()


def alerts(prometheus: str, alertname: str, state: str = "firing") -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/alerts", timeout=5).json()
    return [
        a for a in body["data"]["alerts"] if a["labels"]["alertname"] == alertname and a["state"] == state
    ]


def query(prometheus: str, expr: str) -> list[dict]:
    return httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=5).json()["data"]["result"]


def until_firing(
    prometheus: str,
    alertname: str,
    provoke: Callable[[], None] = lambda: None,
    labels: dict[str, str] | None = None,
) -> float:
    """Seconds until the alert fires (with these labels), calling provoke() about once a second meanwhile."""

    def found() -> list[dict]:
        return [
            a
            for a in alerts(prometheus, alertname)
            if labels is None or labels.items() <= a["labels"].items()
        ]

    assert not found(), f"{alertname} was firing before the test provoked it: {found()}"
    started = time.monotonic()
    while time.monotonic() - started < FIRING_TIMEOUT:
        provoke()
        if found():
            elapsed = time.monotonic() - started
            print(f"\n{alertname} firing after {elapsed:.0f} s: {found()[0]['labels']}")
            return elapsed
        time.sleep(1)
    pending = alerts(prometheus, alertname, "pending")
    pytest.fail(f"{alertname} {labels or ''} not firing within {FIRING_TIMEOUT} s; pending: {pending}")


@contextmanager
def background(action: Callable[[], None], interval: float) -> Iterator[None]:
    """Run action() every interval seconds in a thread while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            action()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_rules_differ_from_production_only_in_for(stack):
    production = alert_rules(
        yaml.safe_load((MONITORING_DIR / "prometheus" / "rules" / "rtap.yml").read_text())
    )
    loaded_file = stack.settings.state_path / "prometheus" / "rules" / "rtap.yml"
    loaded = alert_rules(yaml.safe_load(loaded_file.read_text()))
    without_for = [{k: v for k, v in rule.items() if k != "for"} for rule in production]
    assert [{k: v for k, v in rule.items() if k != "for"} for rule in loaded] == without_for
    served = {
        rule["name"]: rule["duration"]
        for group in httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        for rule in group["rules"]
        if rule["type"] == "alerting"
    }
    assert served == {rule["alert"]: FOR_SECONDS if "for" in rule else 0 for rule in production}


def test_no_windows_emitted_fires_while_events_arrive_and_no_flink_job_runs(stack):
    """The stack has no Flink job: ingestion accepts events, no record reaches a *_metrics topic."""

    def send_events() -> None:
        response = httpx.post(
            f"{stack.url('ingestion')}/v1/analytics/batch", json={"events": events(5)}, timeout=10
        )
        assert response.status_code == 202, response.text

    until_firing(stack.prometheus, "NoWindowsEmitted", send_events)


def test_timestamps_adjusted_fires_while_a_client_sends_future_timestamps(stack):
    """Events stamped an hour ahead: ingestion replaces every timestamp, far over 5% of accepted events."""

    def send_future_events() -> None:
        future = [{**e, "timestamp": e["timestamp"] + 3_600_000} for e in events(5)]
        response = httpx.post(
            f"{stack.url('ingestion')}/v1/analytics/batch", json={"events": future}, timeout=10
        )
        assert response.status_code == 202 and all(
            r["timestamp_adjusted"] for r in response.json()["results"]
        ), response.text

    until_firing(stack.prometheus, "TimestampsAdjusted", send_future_events)


def test_api_5xx_errors_fires_when_the_cache_loses_redis(stack):
    latest = f"{stack.url('cache')}/v1/jobs/event_metrics/latest"
    assert httpx.get(latest, timeout=5).status_code == 200  # the ratio's denominator has successes too
    stack.stop("redis")
    statuses: list[int] = []
    try:
        until_firing(
            stack.prometheus,
            "Api5xxErrors",
            lambda: statuses.append(httpx.get(latest, timeout=10).status_code),
            {"job": "cache"},
        )
    finally:
        stack.start("redis")
    assert statuses and all(s >= 500 for s in statuses), statuses


def metric_records(n: int) -> list[tuple[bytes, bytes]]:
    window = 4_102_444_800_000 + int(time.time() * 1000) // 10_000 * 10_000  # year 2100: never a real window
    records = [
        {
            "window_start": window,
            "window_end": window + 10_000,
            "event_type": f"lag-{uuid.uuid4().hex[:8]}",
            "device_category": "desktop",
            "events": 1,
            "unique_users": 1,
        }
        for _ in range(n)
    ]
    key = load_schemas()["event_metrics"].key
    return [(orjson.dumps({k: r[k] for k in key}), orjson.dumps(r)) for r in records]


def test_consumer_lag_growing_fires_while_the_cache_consumer_is_stuck_on_redis(stack):
    """Redis hangs (SIGSTOP): the cache consumer blocks on its first write as metric records keep coming."""
    topic = TOPICS.metric(load_schemas()["event_metrics"]).name
    producer = Producer({"bootstrap.servers": stack.settings.kafka.bootstrap, "acks": "all"})

    def produce() -> None:
        for key, value in metric_records(200):
            producer.produce(topic, key=key, value=value)
        producer.flush(10)

    redis_pid = stack.pid("redis")
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        with background(produce, 1.0):
            until_firing(stack.prometheus, "ConsumerLagGrowing", labels={"job": "cache"})
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    # The consumer's own gauge is measured inside its blocked loop, so it stays where it was.
    own_lag = 'sum(rtap_consumer_lag_records{sink="cache"})'
    print(
        f"broker-side lag {query(stack.prometheus, 'rtap:consumer_lag_records')}, "
        f"consumer's own gauge {query(stack.prometheus, own_lag)}"
    )


def test_scrape_target_down_fires_when_a_service_stops(stack):
    stack.stop("cache")
    try:
        until_firing(stack.prometheus, "ScrapeTargetDown", labels={"job": "cache"})
    finally:
        stack.start("cache")


def test_kafka_produce_failures_fires_when_the_broker_is_down(stack):
    """Last: the broker stays stopped (the module's stack stops after it)."""
    stack.stop("kafka")
    statuses: list[int] = []

    def send_event() -> None:
        statuses.append(
            httpx.post(
                f"{stack.url('ingestion')}/v1/analytics/track", json=events(1)[0], timeout=15
            ).status_code
        )

    until_firing(stack.prometheus, "KafkaProduceFailures", send_event)
    assert statuses and all(s == 503 for s in statuses), statuses
