"""Metric records in Kafka become the cache API's exact answers; replays change nothing; bad input gets
named 4xx."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest
from confluent_kafka import Consumer

from services.cache.consumer import SINK
from shared import dead_letters
from tests.cache.conftest import (
    READ_KEY,
    WINDOW_MS,
    event_record,
    produce,
    session_record,
    wait_caught_up,
    wait_for,
    window_base,
)
from tests.topics import DEAD_LETTER

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def by_key(records):
    return sorted(records, key=lambda r: (r["window_start"], r["event_type"], r["device_category"]))


@pytest.fixture(scope="module")
def events(cache, kafka):
    base = window_base()
    records = [
        event_record(base, "page_view", "desktop", 10, 4),
        event_record(base, "page_view", "mobile", 7, 3),
        event_record(base, "click", "mobile", 5, 2),
        event_record(base + WINDOW_MS, "page_view", "desktop", 3, 1),
        event_record(base + WINDOW_MS, "purchase", "tablet", 1, 1),
    ]
    produce(kafka, "event_metrics", records)
    latest = base + WINDOW_MS
    wait_for(
        lambda: cache.client.get("/v1/jobs/event_metrics/latest").json()["window_start"] == latest,
        what="latest event window",
    )
    wait_for(
        lambda: (
            len(cache.client.get("/v1/jobs/event_metrics/windows", params={"from": base}).json()["records"])
            == 5
        ),
        what="all event windows",
    )
    return base, records


def test_jobs_lists_every_schema(cache):
    body = cache.client.get("/v1/jobs").json()
    names = {j["name"] for j in body["jobs"]}
    assert {"event_metrics", "session_metrics", "performance_metrics"} <= names
    session = next(j for j in body["jobs"] if j["name"] == "session_metrics")
    assert session["key"] == ["window_start", "session_id"]
    assert session["filters"] == ["session_id", "user_id"]


def test_latest_window_is_exact(cache, events):
    base, records = events
    body = cache.client.get("/v1/jobs/event_metrics/latest").json()
    assert body["window_start"] == base + WINDOW_MS
    assert by_key(body["records"]) == by_key(records[3:])


def test_latest_with_group_key_filter(cache, events):
    base, records = events
    body = cache.client.get("/v1/jobs/event_metrics/latest", params={"device_category": "mobile"}).json()
    assert body["window_start"] == base
    assert by_key(body["records"]) == by_key([records[1], records[2]])


def test_windows_range_limit_order_and_filters(cache, events):
    base, records = events

    def get(**p):
        return cache.client.get("/v1/jobs/event_metrics/windows", params=p).json()["records"]

    assert by_key(get(**{"from": base, "to": base + 2 * WINDOW_MS})) == by_key(records)
    assert by_key(get(**{"from": base, "to": base + WINDOW_MS})) == by_key(records[:3])
    assert get(**{"from": base, "limit": 2, "order": "desc"})[0]["window_start"] == base + WINDOW_MS
    assert len(get(**{"from": base, "limit": 2})) == 2
    assert get(**{"from": base, "event_type": "page_view", "device_category": "desktop"}) == [
        records[0],
        records[3],
    ]


def test_replay_changes_nothing(cache, events, kafka):
    base, records = events
    before = [
        cache.client.get(p).json()
        for p in ("/v1/jobs/event_metrics/latest", f"/v1/jobs/event_metrics/windows?from={base}")
    ]
    produce(kafka, "event_metrics", records + records)
    wait_caught_up(cache.client)
    after = [
        cache.client.get(p).json()
        for p in ("/v1/jobs/event_metrics/latest", f"/v1/jobs/event_metrics/windows?from={base}")
    ]
    assert after == before


def test_updated_window_overwrites(cache, kafka):
    base = window_base()
    produce(kafka, "event_metrics", [event_record(base, "signup", "bot", 1, 1)])
    produce(kafka, "event_metrics", [event_record(base, "signup", "bot", 9, 2)])
    url = "/v1/jobs/event_metrics/windows"
    params = {"from": base, "to": base + 1, "event_type": "signup"}
    wait_for(
        lambda: (
            cache.client.get(url, params=params).json()["records"]
            == [event_record(base, "signup", "bot", 9, 2)]
        ),
        what="updated window",
    )


def test_sessions_by_id_user_and_recent(cache, kafka):
    base = window_base()
    tag = uuid.uuid4().hex[:6]
    s1, s2, s3 = (
        session_record(base + i * 1000, f"s-{tag}-{i}", f"u-{tag}-{'a' if i < 2 else 'b'}", 3 + i)
        for i in range(3)
    )
    produce(kafka, "session_metrics", [s1, s2, s3])
    wait_for(
        lambda: cache.client.get(f"/v1/sessions/{s3['session_id']}").status_code == 200, what="session s3"
    )
    wait_for(
        lambda: len(cache.client.get(f"/v1/users/{s1['user_id']}/sessions").json()["sessions"]) == 2,
        what="user sessions",
    )
    assert cache.client.get(f"/v1/sessions/{s1['session_id']}").json() == {
        "session_id": s1["session_id"],
        "windows": [s1],
    }
    assert cache.client.get(f"/v1/users/{s1['user_id']}/sessions").json() == {
        "user_id": s1["user_id"],
        "sessions": [s2, s1],
    }
    recent = cache.client.get("/v1/sessions/recent", params={"limit": 3}).json()["sessions"]
    assert recent == [s3, s2, s1]


def test_overview_totals_latest_window(cache, events):
    base, _ = events
    body = cache.client.get("/v1/overview").json()
    event_jobs = body["jobs"]["event_metrics"]
    assert event_jobs["latest_window_start"] >= base + WINDOW_MS
    assert body["consumer"]["running"] is True
    assert isinstance(body["active_sessions"], int)


def test_active_sessions_counts_recent_session_ends(cache, kafka):
    import time

    now = int(time.time() * 1000)
    before = cache.client.get("/v1/overview").json()["active_sessions"]
    tag = uuid.uuid4().hex[:6]
    produce(
        kafka,
        "session_metrics",
        [session_record(now - 60_000, f"active-{tag}-{i}", "u", 1, end=now + 1_000) for i in range(3)],
    )
    wait_for(
        lambda: cache.client.get("/v1/overview").json()["active_sessions"] >= before + 3,
        what="3 more active sessions",
    )


@pytest.mark.parametrize(
    "path, params, status, parameter",
    [
        ("/v1/jobs/no_such_job/latest", {}, 404, "job"),
        ("/v1/jobs/event_metrics/windows", {"limit": 0}, 422, "limit"),
        ("/v1/jobs/event_metrics/windows", {"limit": 1_000_000}, 422, "limit"),
        ("/v1/jobs/event_metrics/windows", {"from": "yesterday"}, 422, "from"),
        ("/v1/jobs/event_metrics/windows", {"from": -5}, 422, "from"),
        ("/v1/jobs/event_metrics/windows", {"from": 20, "to": 10}, 422, "to"),
        ("/v1/jobs/event_metrics/windows", {"order": "sideways"}, 422, "order"),
        ("/v1/jobs/event_metrics/windows", {"colour": "red"}, 400, "colour"),
        ("/v1/jobs/event_metrics/latest", {"session_id": "x"}, 400, "session_id"),
        ("/v1/sessions/recent", {"limit": "many"}, 422, "limit"),
        ("/v1/sessions/no-such-session", {}, 404, "session_id"),
        ("/v1/no_such_route", {}, 404, "path"),
    ],
)
def test_bad_parameters_get_4xx_naming_them(cache, path, params, status, parameter):
    r = cache.client.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"][-1] == parameter, r.text


def test_read_key_required(cache):
    bare = httpx.Client(base_url=cache.url, timeout=5)
    try:
        missing = bare.get("/v1/jobs")
        assert missing.status_code == 401 and missing.json()["detail"] == [
            {
                "loc": ["header", "X-Read-Key"],
                "type": "unauthorized",
                "msg": "a valid read key is required (X-Read-Key header, Bearer token or ?key=)",
            }
        ]
        assert bare.get("/v1/jobs", headers={"X-Read-Key": "wrong"}).status_code == 401
        assert bare.get("/v1/jobs", headers={"Authorization": f"Bearer {READ_KEY}"}).status_code == 200
        assert bare.get("/v1/jobs", params={"key": READ_KEY}).status_code == 200
        assert bare.get("/", params={"key": READ_KEY}).status_code == 200
        assert bare.get("/healthz").status_code == 200
    finally:
        bare.close()


def test_bad_records_go_to_dead_letter_and_consumer_keeps_going(cache, kafka):
    base = window_base()
    marker = f"bad-{uuid.uuid4().hex[:8]}".encode()
    bad = [
        {"key": marker, "value": b"{not json"},
        {"key": marker, "value": orjson.dumps({"window_start": base, "event_type": "x"})},
    ]
    produce(kafka, "event_metrics", bad, raw=True)
    good = event_record(base, "after_bad", "desktop", 2, 1)
    produce(kafka, "event_metrics", [good])
    wait_for(
        lambda: (
            cache.client.get("/v1/jobs/event_metrics/latest", params={"event_type": "after_bad"}).json()[
                "records"
            ]
            == [good]
        ),
        what="good record after bad ones",
    )
    reasons = dead_letter_reasons(kafka, marker)
    assert len(reasons) == 2
    assert "not JSON" in reasons[0]
    assert "missing column 'window_end'" in reasons[1]


def dead_letter_reasons(bootstrap: str, marker: bytes) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"dlq-check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([DEAD_LETTER.name])
    found: list[str] = []
    try:

        def collect():
            for msg in consumer.consume(100, timeout=1.0):
                headers = dict(msg.headers() or []) if not msg.error() else {}
                if msg.key() == marker and headers.get(dead_letters.CONSUMER) == SINK.encode():
                    found.append(headers[dead_letters.REASON].decode())
            return len(found) >= 2

        wait_for(collect, 30, 0, "dead-letter records")
    finally:
        consumer.close()
    return found


def test_health_ready_and_metrics(cache):
    assert cache.client.get("/healthz").json() == {"status": "ok"}
    ready = cache.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metrics = cache.client.get("/metrics").text
    assert 'rtap_consumer_records_written_total{sink="cache",topic="event_metrics"}' in metrics
    assert 'rtap_consumer_lag_records{sink="cache"' in metrics
