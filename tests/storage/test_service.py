"""The storage service against real Kafka and chDB: records arrive, replays do not double, poison goes to the
dead letter."""

from __future__ import annotations

import time
import uuid

import httpx
import orjson
import pytest
from confluent_kafka import Consumer

from services.processing.registry import load_schemas
from tests.storage.conftest import (
    WINDOW_MS,
    event_metric,
    heartbeat,
    produce_events,
    produce_metrics,
    produce_raw,
    raw_event,
    scalar,
    unique,
    wait_for,
)
from tests.topics import DEAD_LETTER, EVENTS

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]
BASE_MS = 1_767_225_600_000  # 2026-01-01


def metric_rows(
    api: httpx.Client, event_type: str, start: int = BASE_MS, end: int = BASE_MS + 3600_000
) -> list[dict]:
    response = api.get(
        "/v1/jobs/event_metrics/windows", params={"from": start, "to": end, "event_type": event_type}
    )
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def test_metric_records_arrive_in_their_table(kafka, api):
    event_type = unique("arrive")
    records = [event_metric(BASE_MS + i * WINDOW_MS, event_type, "desktop", 10 + i, 3) for i in range(5)]
    produce_metrics(kafka, "event_metrics", records)
    rows = wait_for(lambda: (r := metric_rows(api, event_type)) and len(r) == 5 and r)
    assert [r["events"] for r in rows] == [10, 11, 12, 13, 14]
    assert rows[0]["window_start"] == BASE_MS and rows[0]["window_end"] == BASE_MS + WINDOW_MS
    assert {r["device_category"] for r in rows} == {"desktop"}


def test_a_float_flink_wrote_as_infinity_is_stored_as_null_and_the_window_kept(kafka, api):
    """A sum that overflowed once sent the whole window, every client's events in it, to the dead letters."""
    device = unique("inf")
    record = {
        **{c.name: 1 for c in load_schemas()["performance_metrics"].columns},
        "window_start": BASE_MS,
        "window_end": BASE_MS + WINDOW_MS,
        "device_category": device,
        "load_time_avg": "Infinity",
        "load_time_p50": 2.5,
    }
    produce_metrics(kafka, "performance_metrics", [record])
    path = "/v1/jobs/performance_metrics/windows"
    params = {"from": BASE_MS, "to": BASE_MS + WINDOW_MS, "device_category": device}
    rows = wait_for(lambda: api.get(path, params=params).json()["rows"])
    assert len(rows) == 1 and rows[0]["load_time_avg"] is None, rows
    assert rows[0]["load_time_p50"] == 2.5 and rows[0]["events"] == 1


def test_replayed_window_does_not_double_and_the_latest_value_wins(kafka, api):
    event_type = unique("replay")
    first = [event_metric(BASE_MS + i * WINDOW_MS, event_type, "mobile", 7, 2) for i in range(3)]
    produce_metrics(kafka, "event_metrics", first)
    produce_metrics(kafka, "event_metrics", first)  # the same windows again, as after a Flink restart
    updated = event_metric(BASE_MS, event_type, "mobile", 9, 4)  # a late update of window 0
    produce_metrics(kafka, "event_metrics", [updated])
    total = "SELECT sum(events) AS s FROM event_metrics FINAL WHERE event_type = {t:String}"
    assert wait_for(lambda: scalar(api, total, t=event_type) == 9 + 7 + 7)
    assert [r["events"] for r in metric_rows(api, event_type)] == [9, 7, 7]


def test_tombstone_retracts_a_window(kafka, api):
    event_type = unique("tomb")
    records = [event_metric(BASE_MS + i * WINDOW_MS, event_type, "tablet", 5, 1) for i in range(2)]
    produce_metrics(kafka, "event_metrics", records)
    wait_for(lambda: len(metric_rows(api, event_type)) == 2)
    produce_metrics(kafka, "event_metrics", [{**records[0], "__tombstone": True}])
    rows = wait_for(lambda: (r := metric_rows(api, event_type)) and len(r) == 1 and r)
    assert rows[0]["window_start"] == records[1]["window_start"]


def test_raw_events_stored_once_per_event_id_and_heartbeats_skipped(kafka, api):
    session = unique("sess")
    events = [raw_event(session, str(uuid.uuid4())) for _ in range(4)]
    produce_events(kafka, [*events, heartbeat(), events[0], events[1]])  # two client retries of the same ids
    count = "SELECT count() AS c FROM analytics_events FINAL WHERE session_id = {s:String}"
    assert wait_for(lambda: scalar(api, count, s=session) == 4)
    row = api.post(
        "/v1/sql",
        json={
            "sql": "SELECT properties, load_time, ip FROM analytics_events FINAL "
            "WHERE event_id = {id:String}",
            "params": {"id": events[0]["event"]["id"]},
        },
    ).json()["rows"][0]
    assert row["properties"] == {"sku": "A-1", "qty": "2", "gift": "true"}
    assert row["load_time"] == 812.5 and row["ip"] == "203.0.113.9"
    heartbeats = "SELECT count() AS c FROM analytics_events WHERE event_type = '__heartbeat'"
    assert scalar(api, heartbeats) == 0


def dead_letters_for(bootstrap: str, marker: bytes, timeout: float = 20.0) -> list:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": unique("dlq-reader"), "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([DEAD_LETTER.name])
    found, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not found:
            for msg in consumer.consume(100, timeout=0.5):
                if (
                    not msg.error()
                    and msg.key() == marker
                    and dict(msg.headers() or []).get("consumer") == b"storage"
                ):
                    found.append(msg)
    finally:
        consumer.close()
    return found


@pytest.mark.parametrize(
    "topic,value,reason_part",
    [
        ("event_metrics", b"{not json", "not JSON"),
        ("event_metrics", orjson.dumps({"window_start": BASE_MS, "event_type": "x"}), "missing column"),
        (EVENTS.name, orjson.dumps({"event": {"type": "click"}}), "event.id"),
    ],
)
def test_poison_record_goes_to_dead_letter_and_the_next_record_is_stored(
    kafka, api, topic, value, reason_part
):
    marker = unique("poison").encode()
    produce_raw(kafka, topic, [(marker, value)])
    event_type = unique("after-poison")
    produce_metrics(kafka, "event_metrics", [event_metric(BASE_MS, event_type, "desktop", 1, 1)])
    wait_for(lambda: len(metric_rows(api, event_type)) == 1)
    letters = dead_letters_for(kafka, marker)
    assert len(letters) == 1, "the poison record was not dead-lettered"
    headers = dict(letters[0].headers())
    assert reason_part in headers["reason"].decode()
    assert headers["source_topic"].decode() == topic
    assert int(headers["source_offset"]) >= 0 and int(headers["source_partition"]) >= 0
    assert letters[0].value() == value


def test_readyz_and_metrics(api):
    ready = wait_for(lambda: (r := api.get("/readyz")).status_code == 200 and r.json())
    assert ready["clickhouse"]["ok"] and ready["consumer"]["assigned_partitions"] > 0
    text = api.get("/metrics").text
    names = (
        "records_written_total",
        "batch_seconds",
        "lag_records",
        "dead_letter_total",
        "write_retries_total",
    )
    for name in names:
        assert f"rtap_consumer_{name}" in text, name
    assert 'rtap_consumer_records_written_total{sink="storage",topic="event_metrics"}' in text


def test_query_api_requires_the_read_key(storage_service):
    url = f"{storage_service.url()}/v1/jobs/event_metrics/windows?from=0&to=1"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"X-Read-Key": "wrong"}).status_code == 401
    from tests.storage.conftest import READ_KEY

    assert httpx.get(url, headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
    assert httpx.get(f"{storage_service.url()}/healthz").status_code == 200


@pytest.mark.parametrize(
    "params,name",
    [
        ({"to": "1"}, "from"),
        ({"from": "yesterday", "to": "1"}, "from"),
        ({"from": "10", "to": "5"}, "to"),
        ({"from": "0", "to": "1", "limit": "0"}, "limit"),
        ({"from": "0", "to": "1", "colour": "red"}, "colour"),
    ],
)
def test_metric_query_errors_name_the_parameter(api, params, name):
    response = api.get("/v1/jobs/event_metrics/windows", params=params)
    assert response.status_code in (400, 422)
    assert response.json()["detail"][0]["loc"][-1] == name


def test_the_earlier_route_name_answers_the_same(kafka, api):
    event_type = unique("alias")
    produce_metrics(kafka, "event_metrics", [event_metric(BASE_MS, event_type, "desktop", 7, 2)])
    rows = wait_for(lambda: metric_rows(api, event_type))
    params = {"from": BASE_MS, "to": BASE_MS + 3600_000, "event_type": event_type}
    old = api.get("/v1/metrics/event_metrics", params=params)
    assert old.status_code == 200 and old.json()["rows"] == rows


def test_unknown_job_is_404(api):
    response = api.get("/v1/jobs/no_such_job/windows", params={"from": 0, "to": 1})
    assert response.status_code == 404 and response.json()["detail"][0]["loc"] == ["path", "job"]


def test_an_unknown_route_is_a_404_in_the_one_error_shape(api):
    response = api.get("/v1/no_such_route")
    assert response.status_code == 404 and response.json() == {
        "detail": [{"loc": ["path"], "msg": "Not Found", "type": "not_found"}]
    }


def test_clickhouse_health_asks_the_storage_service_while_it_owns_chdb(storage_service, api):
    from infrastructure.local.components import ClickHouse

    wait_for(lambda: api.get("/readyz").status_code == 200)
    ok, detail = ClickHouse(storage_service.settings).healthy()
    assert ok and detail.startswith("via storage:"), detail
