"""With the pipeline running and some traffic, every dashboard query returns data and alerts fire for real.

PromQL panels run against the session's Prometheus (scraping the services every 5 s); SQL panels run through
the storage service's read-only POST /v1/sql.
"""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from services.processing.registry import load_schemas
from tests.monitoring.conftest import wait_for
from tests.monitoring.test_dashboards import generator, targets
from tests.topics import TOPICS

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.flink,
    pytest.mark.clickhouse,
    pytest.mark.slow,
]

DEVICES = {
    "desktop": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    "mobile": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148",
}


def events(n: int) -> list[dict]:
    now = int(time.time() * 1000)
    types = ["page_view", "product_view", "add_to_cart", "purchase"]
    return [
        {
            "event": {"type": types[i % len(types)]},
            "user": {"id": f"mon-u{i % 3}"},
            "device": {
                "user_agent": list(DEVICES.values())[i % 2],
                "screen_width": 1280,
                "screen_height": 800,
            },
            "context": {"url": "https://shop.example/", "referrer": None, "session_id": f"mon-s{i % 3}"},
            "properties": {"revenue": 10.0},
            "metrics": {"load_time": 100.0 + i},
            "timestamp": now,
        }
        for i in range(n)
    ]


def query(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="module")
def traffic(pipeline, prometheus) -> None:
    """The Flink job is running, a few events went in, and later events keep watermarks and windows moving."""
    processing = pipeline.url("processing")
    running = wait_for(
        lambda: "rtap_processing_job_running 1.0" in httpx.get(f"{processing}/metrics", timeout=5).text, 150
    )
    assert running, "the processing supervisor did not get its Flink job RUNNING within 150 s"
    with httpx.Client(base_url=pipeline.url("ingestion"), timeout=15) as client:
        accepted = client.post("/v1/analytics/batch", json={"events": events(12)})
        assert accepted.status_code == 202, accepted.text
        assert (
            client.post("/v1/analytics/track", content=b"{not json").status_code == 400
        )  # a reject by reason


@pytest.mark.parametrize("title, expr", targets("prometheus"))
def test_promql_panel_returns_series(traffic, prometheus, title, expr):
    found = wait_for(lambda: query(prometheus, expr), 90, 2)
    assert found, f"panel {title!r}: {expr} returned no series within 90 s; up: {query(prometheus, 'up')}"


STORED_TIMEOUT_S = 300  # in a full session the fresh consumer groups first read every earlier test's records


@pytest.fixture(scope="module")
def stored(traffic, pipeline) -> None:
    """The traffic's own event_metrics windows are in ClickHouse: processing and storage worked through the
    backlog."""
    sql = (
        "SELECT count() AS n FROM event_metrics FINAL WHERE event_type = 'purchase' "
        "AND window_start >= now() - INTERVAL 1 HOUR"
    )

    def rows() -> int:
        response = httpx.post(f"{pipeline.url('storage')}/v1/sql", json={"sql": sql}, timeout=15)
        return response.status_code == 200 and response.json()["rows"][0]["n"]

    if not wait_for(rows, STORED_TIMEOUT_S, 2):
        ready = {
            name: httpx.get(f"{pipeline.url(name)}/readyz", timeout=5).text for name in ("storage", "cache")
        }
        pytest.fail(
            f"no event_metrics window of this module's traffic in ClickHouse within {STORED_TIMEOUT_S} s; "
            f"{ready}"
        )


@pytest.mark.parametrize("title, sql", targets("grafana-clickhouse-datasource"))
def test_sql_panel_returns_rows(stored, pipeline, title, sql):
    concrete = sql.replace(generator().TIME_FILTER, "window_start >= now() - INTERVAL 1 DAY")

    def rows() -> list[dict]:
        response = httpx.post(f"{pipeline.url('storage')}/v1/sql", json={"sql": concrete}, timeout=15)
        assert response.status_code == 200, f"panel {title!r}: {response.text}"
        return response.json()["rows"]

    assert wait_for(rows, 90, 2), f"panel {title!r} returned no rows within 90 s: {concrete}"


def produce_poison(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=orjson.dumps({"poison": uuid.uuid4().hex}), value=b"{not a metric record")
    assert producer.flush(15) == 0


DEAD_LETTER_SERIES = "rtap_consumer_dead_letter_total"


def firing(prometheus: str, alertname: str) -> list[dict]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


def test_dead_letter_alert_fires_on_a_poison_metric_record(traffic, pipeline, prometheus, kafka):
    produce_poison(kafka, TOPICS.metric(load_schemas()["event_metrics"]).name)
    both = wait_for(
        lambda: {a["labels"]["job"] for a in firing(prometheus, "DeadLetterRecords")} == {"storage", "cache"},
        60,
        2,
    )
    assert both, (
        "DeadLetterRecords not firing for storage and cache within 60 s: "
        f"{firing(prometheus, 'DeadLetterRecords')}; "
        f"{query(prometheus, DEAD_LETTER_SERIES)}"
    )


def alerts_in_state(prometheus: str, alertname: str, states: set[str]) -> list[dict]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] in states]


def test_scrape_target_down_alert_goes_pending_when_a_service_stops(traffic, pipeline, prometheus):
    """The alert waits 2 minutes (`for: 2m`) before firing; pending proves its expression caught the stop."""
    cache = pipeline.services["cache"]
    cache.stop()
    try:
        down = wait_for(
            lambda: [
                a
                for a in alerts_in_state(prometheus, "ScrapeTargetDown", {"pending", "firing"})
                if a["labels"]["job"] == "cache"
            ],
            40,
            2,
        )
        assert down, f"ScrapeTargetDown not pending for cache within 40 s: {query(prometheus, 'up')}"
    finally:
        cache.start()
