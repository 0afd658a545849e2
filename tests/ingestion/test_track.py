"""Single events and batches against the real service and broker."""

from __future__ import annotations

import gzip
import time
import uuid

import orjson
import pytest

from services.ingestion.body import MAX_GZIP_MEMBERS
from services.ingestion.records import ORIGINAL_TIMESTAMP_HEADER
from shared.events import MAX_MILLIS, MAX_PROPERTY_NAME_CHARS
from tests.ingestion.conftest import event, problem, read_events, refused_at, with_ids

pytestmark = pytest.mark.kafka


def test_accepted_event_is_in_kafka_with_id_key_and_receive_time(client, kafka):
    body = event()
    before = int(time.time() * 1000)
    r = client.post("/v1/analytics/track", json=body)
    assert r.status_code == 202, r.text
    event_id = r.json()["id"]
    assert uuid.UUID(event_id).version == 7

    [rec] = read_events(kafka, with_ids({event_id}), 1)
    assert rec["key"] == body["context"]["session_id"].encode()
    value = rec["value"]
    assert value["event"] == {"type": "page_view", "id": event_id}
    assert before <= value["received_at"] <= int(time.time() * 1000)
    assert value["timestamp"] == body["timestamp"]
    assert value["properties"] == {"plan": "pro", "items": 2, "price": 9.5, "new": True}
    assert value["metrics"] == {"load_time": 120.5, "interaction_time": None}
    assert value["context"]["ip_address"] is None and value["context"]["referrer"] is None


def test_client_id_is_kept_and_skewed_timestamp_replaced_and_flagged(client, kafka):
    client_id = f"client-{uuid.uuid4()}"
    future = int(time.time() * 1000) + 3_600_000
    r = client.post(
        "/v1/analytics/track", json=event(event={"type": "click", "id": client_id}, timestamp=future)
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "id": client_id, "timestamp_adjusted": True}
    [rec] = read_events(kafka, with_ids({client_id}), 1)
    assert rec["value"]["timestamp"] == rec["value"]["received_at"]
    assert rec["headers"][ORIGINAL_TIMESTAMP_HEADER] == str(future).encode()


def test_batch_with_mixed_items_stores_exactly_the_good_ones(client, kafka):
    tag = uuid.uuid4().hex
    good = [event(event={"type": "page_view", "id": f"{tag}-{i}"}) for i in range(3)]
    bad_user = event(event={"type": "click", "id": f"{tag}-bad1"}, user={})
    bad_props = event(event={"type": "click", "id": f"{tag}-bad2"}, properties={"nested": {"x": 1}})
    r = client.post("/v1/analytics/batch", json={"events": [good[0], bad_user, good[1], bad_props, good[2]]})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], body["failed"]) == (3, 2, 0)
    assert [x["status"] for x in body["results"]] == [
        "accepted",
        "rejected",
        "accepted",
        "rejected",
        "accepted",
    ]
    assert body["results"][1]["field"] == "user.id"
    assert body["results"][3]["field"].startswith("properties.nested")

    records = read_events(kafka, lambda v: v["event"]["id"].startswith(tag), 5, timeout_s=10)
    assert sorted(r["value"]["event"]["id"] for r in records) == sorted(f"{tag}-{i}" for i in range(3))


def test_a_sessions_events_share_one_partition_whichever_produce_call_wrote_them(client, kafka):
    """Batches go through produce_batch(), records with a header (skewed timestamp) through produce(): same
    partitioner."""
    sessions = [f"partition-test-session-{i}" for i in range(12)]
    batch = [
        event(context={"url": "https://shop.example/", "session_id": s}) for s in sessions for _ in range(3)
    ]
    r = client.post("/v1/analytics/batch", json={"events": batch})
    assert r.status_code == 202, r.text
    ids = {x["id"] for x in r.json()["results"]}
    for s in sessions:
        skewed = client.post(
            "/v1/analytics/track",
            json=event(context={"url": "https://shop.example/", "session_id": s}, timestamp=1),
        )
        assert skewed.status_code == 202 and skewed.json()["timestamp_adjusted"], skewed.text
        ids.add(skewed.json()["id"])

    records = read_events(kafka, with_ids(ids), len(ids))
    partitions: dict[bytes, set[int]] = {}
    for rec in records:
        partitions.setdefault(rec["key"], set()).add(rec["partition"])
    assert len(records) == 48 and sorted(partitions) == sorted(s.encode() for s in sessions)
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert len(set.union(*partitions.values())) > 1, "12 sessions should spread over the 4 partitions"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"user": {"id": "u"}}, "event"),
        ("CHANGE:user.id", "user.id"),
        ("CHANGE:device.screen_width", "device.screen_width"),
        ("CHANGE:context.session_id", "context.session_id"),
        ("CHANGE:timestamp", "timestamp"),
    ],
)
def test_invalid_event_gets_400_naming_the_field(client, body, field):
    if isinstance(body, str):
        body = event()
        part, _, name = field.partition(".")
        if name:
            body[part] = {**body[part], name: "" if name != "screen_width" else "wide"}
        else:
            body[part] = "yesterday"
    r = client.post("/v1/analytics/track", json=body)
    assert refused_at(r) == (400, ["body", field]), r.text
    assert field in problem(r)["msg"] and problem(r)["type"] == "invalid"


@pytest.mark.parametrize("name", ["load_time", "interaction_time"])
def test_a_duration_over_a_day_is_refused_so_no_client_can_make_a_window_sum_infinite(client, name):
    """Two durations near the largest float once made performance_metrics' sum infinite, and the window was
    dead-lettered for every client in it."""
    r = client.post("/v1/analytics/track", json=event(metrics={name: MAX_MILLIS + 1}))
    assert refused_at(r) == (400, ["body", f"metrics.{name}"]), r.text
    batch = [event(metrics={name: MAX_MILLIS}), event(metrics={name: 1e308})]
    r = client.post("/v1/analytics/batch", json={"events": batch})
    assert r.status_code == 202 and [x["status"] for x in r.json()["results"]] == ["accepted", "rejected"]
    assert r.json()["results"][1]["field"] == f"metrics.{name}", r.text


def test_a_property_name_flink_cannot_decode_is_refused(client):
    """Flink's JSON decoder skips an event with a field name over 50,000 characters: it was accepted, stored
    raw and never counted in the metrics."""
    longest = "k" * MAX_PROPERTY_NAME_CHARS
    r = client.post("/v1/analytics/track", json=event(properties={longest + "k": 1}))
    named = f"properties.{'k' * 64}...({MAX_PROPERTY_NAME_CHARS + 1} characters).[key]"
    assert refused_at(r) == (400, ["body", named]), r.text[:300]
    assert f"at most {MAX_PROPERTY_NAME_CHARS} characters" in problem(r)["msg"]
    assert len(r.content) < 1000, "the refusal names the long key by its start, not whole"
    assert client.post("/v1/analytics/track", json=event(properties={longest: 1})).status_code == 202


def test_malformed_json_and_wrong_batch_shape(client):
    r = client.post("/v1/analytics/track", content=b'{"event":', headers={"Content-Type": "application/json"})
    assert refused_at(r) == (400, ["body"])
    r = client.post("/v1/analytics/batch", json={"items": []})
    assert refused_at(r) == (400, ["body", "events"])
    r = client.post("/v1/analytics/batch", json={"events": [event(), {"user": {}}]})
    assert r.status_code == 202 and r.json()["results"][1]["field"] == "event"
    r = client.post("/v1/analytics/batch", json={"events": [{"user": {}}]})
    assert refused_at(r) == (400, ["body", "events[0].event"]) and r.json()["rejected"] == 1
    rejected = {"index": 0, "status": "rejected", "error": "event: Field required", "field": "event"}
    assert r.json()["results"] == [rejected]
    r = client.post("/v1/analytics/batch", json=[{**event(), "user": {}}])
    assert refused_at(r) == (400, ["body", "[0].user.id"]), r.text


def test_unknown_routes_answer_in_the_one_error_shape(client):
    assert refused_at(client.post("/v1/analytics/nope", json=event())) == (404, ["path"])
    assert refused_at(client.get("/v1/analytics/track")) == (405, ["path"])


def test_oversized_bodies_get_413(client):
    big = event(properties={"blob": "x" * 70_000})
    r = client.post("/v1/analytics/track", json=big)
    assert refused_at(r) == (413, ["body"]) and problem(r)["type"] == "too_large"
    # no Content-Length: the streamed size is checked too
    r = client.post(
        "/v1/analytics/track", content=iter([orjson.dumps(big)]), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    r = client.post("/v1/analytics/batch", json={"events": [event()] * 101})
    assert refused_at(r) == (413, ["body", "events"])


def test_gzip_body_accepted_and_gzip_bomb_refused(client, kafka):
    body = event()
    r = client.post(
        "/v1/analytics/track",
        content=gzip.compress(orjson.dumps(body)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 202, r.text
    assert read_events(kafka, with_ids({r.json()["id"]}), 1)

    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")  # ~5 KB on the wire, 5 MB inflated
    r = client.post(
        "/v1/analytics/batch",
        content=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status_code == 413, r.text
    r = client.post("/v1/analytics/track", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert refused_at(r) == (400, ["header", "Content-Encoding"])


def test_a_gzip_body_of_several_members_is_read_whole_and_trailing_bytes_are_refused(client):
    text = orjson.dumps(event())
    gzipped = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    members = gzip.compress(text[:20]) + gzip.compress(text[20:])  # RFC 1952 allows several members
    r = client.post("/v1/analytics/track", content=members, headers=gzipped)
    assert r.status_code == 202, r.text  # was a 400: only the first member was read
    r = client.post("/v1/analytics/track", content=gzip.compress(text) + b"garbage", headers=gzipped)
    assert refused_at(r) == (400, ["header", "Content-Encoding"]), r.text  # was a 202
    many = b"".join(gzip.compress(text[i : i + 1]) for i in range(MAX_GZIP_MEMBERS + 1))
    r = client.post("/v1/analytics/track", content=many, headers=gzipped)
    assert refused_at(r) == (400, ["header", "Content-Encoding"]), r.text
    assert f"more than {MAX_GZIP_MEMBERS} members" in problem(r)["msg"]


def test_text_plain_beacon_body_is_accepted(client, kafka):
    r = client.post(
        "/v1/analytics/track",
        content=orjson.dumps(event()),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202, r.text
    r = client.post("/v1/analytics/track", content=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert refused_at(r) == (415, ["header", "Content-Type"]) and problem(r)["type"] == "unsupported"


def test_cors_preflight_allows_configured_origin_only(client):
    allowed = client.options(
        "/v1/analytics/track",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert allowed.headers.get("access-control-allow-origin") == "https://shop.example"
    other = client.options(
        "/v1/analytics/track",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_heartbeats_reach_every_partition(kafka, ingestion):
    since = int(time.time() * 1000)
    beats = read_events(
        kafka, lambda v: v["event"]["type"] == "__heartbeat" and v["timestamp"] >= since, 8, timeout_s=15
    )
    assert {b["partition"] for b in beats} == {0, 1, 2, 3}
    assert all(b["value"]["timestamp"] == b["value"]["received_at"] for b in beats)


def test_both_routes_write_the_enrichment_into_the_kafka_record_and_truncate_the_ip(client, kafka):
    tag = uuid.uuid4().hex
    enriched = {
        "device": {
            "user_agent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.6367.179 Mobile Safari/537.36",
            "screen_width": 412,
            "screen_height": 915,
        },
        "context": {
            "url": "https://shop.example/deals?utm_source=newsletter&utm_medium=email&utm_campaign=spring",
            "referrer": "https://mail.google.com/mail/u/0/",
            "ip_address": "8.8.8.8",
            "session_id": f"s-{tag}",
        },
        "enrichment": {"country": "ZZ", "browser": "forged by the client"},
    }
    single = event(event={"type": "page_view", "id": f"{tag}-track"}, **enriched)
    assert client.post("/v1/analytics/track", json=single).status_code == 202
    batch = [event(event={"type": "click", "id": f"{tag}-batch"}, **enriched)]
    assert client.post("/v1/analytics/batch", json={"events": batch}).status_code == 202

    records = read_events(kafka, with_ids({f"{tag}-track", f"{tag}-batch"}), 2)
    for rec in records:
        assert rec["value"]["enrichment"] == {
            "utm_source": "newsletter",
            "utm_medium": "email",
            "utm_campaign": "spring",
            "utm_term": None,
            "utm_content": None,
            "referrer_host": "mail.google.com",
            "referrer_class": "email",
            "browser": "Chrome Mobile",
            "browser_version": "124",
            "os": "Android",
            "os_version": "14",
            "country": "US",
        }
        assert rec["value"]["context"]["ip_address"] == "8.8.8.0"
