"""Segment's official Python library sends to our /v1/batch unchanged; events land in Kafka in our shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from segment.analytics import Client

from tests.ingestion.conftest import WRITE_KEY, problem, read_events, refused_at

pytestmark = pytest.mark.kafka


def segment_client(host: str, errors: list, **options) -> Client:
    return Client(
        write_key=WRITE_KEY, host=host, on_error=lambda e, batch: errors.append(e), max_retries=0, **options
    )


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_library_events_arrive_in_our_shape(keyed_ingestion, kafka, gzip):
    errors: list = []
    client = segment_client(keyed_ingestion, errors, gzip=gzip)
    tag = uuid.uuid4().hex
    sent = datetime.now(UTC) - timedelta(seconds=5)
    context = {
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        "screen": {"width": 390, "height": 844},
        "ip": "203.0.113.9",
        "page": {"url": "https://shop.example/p/1", "referrer": "https://search.example/"},
    }
    client.track(
        user_id="user-42",
        event="Product Viewed",
        properties={"sku": "p-1", "price": 19.99, "tags": ["a", "b"]},
        context=context,
        timestamp=sent,
        message_id=f"{tag}-view",
    )
    client.track(
        anonymous_id="anon-7", event="Order Completed", properties={"revenue": 59.5}, message_id=f"{tag}-buy"
    )
    client.page(
        user_id="user-42", name="Home", properties={"url": "https://shop.example/"}, message_id=f"{tag}-page"
    )
    client.identify(user_id="user-42", traits={"plan": "pro"}, message_id=f"{tag}-identify")
    client.flush()
    client.join()
    assert errors == []

    records = {
        r["value"]["event"]["id"]: r
        for r in read_events(kafka, lambda v: v["event"]["id"].startswith(tag), 3, timeout_s=15)
    }
    assert set(records) == {
        f"{tag}-view",
        f"{tag}-buy",
        f"{tag}-page",
    }  # identify carries no event: rejected per item
    view = records[f"{tag}-view"]
    assert view["key"] == b"user-42"
    v = view["value"]
    assert v["event"]["type"] == "product_view" and v["user"] == {"id": "user-42"}
    assert v["device"] == {"user_agent": context["userAgent"], "screen_width": 390, "screen_height": 844}
    assert v["context"] == {
        "url": "https://shop.example/p/1",
        "referrer": "https://search.example/",
        "ip_address": "203.0.113.0",  # RTAP_INGESTION__IP_TRUNCATION=network, the default
        "session_id": "user-42",
    }
    enriched = v["enrichment"]  # the Segment path is enriched like our own routes
    assert (enriched["os"], enriched["os_version"], enriched["country"]) == ("iOS", "17", None)
    assert (enriched["referrer_host"], enriched["referrer_class"]) == ("search.example", "referral")
    assert v["properties"] == {"sku": "p-1", "price": 19.99, "tags": '["a","b"]'}
    assert (
        abs((v["received_at"] - v["timestamp"]) - 5_000) < 2_000
    )  # Segment's sentAt correction keeps the 5 s age
    buy = records[f"{tag}-buy"]["value"]
    assert (
        buy["event"]["type"] == "purchase"
        and buy["user"]["id"] == "anon-7"
        and buy["properties"]["revenue"] == 59.5
    )
    assert records[f"{tag}-page"]["value"]["event"]["type"] == "page_view"


def test_segment_endpoints_refuse_wrong_key_and_name_fields(keyed_ingestion):
    import httpx

    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        r = c.post(
            "/v1/batch", json={"batch": [{"type": "track", "event": "x", "userId": "u"}], "writeKey": "nope"}
        )
        assert refused_at(r) == (401, ["header", "X-Write-Key"]) and problem(r)["type"] == "unauthorized"
        r = c.post("/v1/track", json={"type": "track", "event": "Signed Up", "writeKey": WRITE_KEY})
        assert refused_at(r) == (400, ["body", "userId"]) and r.json()["results"][0]["field"] == "userId"
        r = c.post("/v1/batch", json={"batch": [{"type": "identify", "userId": "u"}], "writeKey": WRITE_KEY})
        assert refused_at(r) == (400, ["body", "batch[0].type"]), r.text
        r = c.post(
            "/v1/track", json={"type": "track", "event": "Signed Up", "userId": "u-1", "writeKey": WRITE_KEY}
        )
        assert r.status_code == 200 and r.json()["success"] is True and r.json()["accepted"] == 1
