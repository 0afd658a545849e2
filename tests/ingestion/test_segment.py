"""Segment's official Python library sends to our /v1/batch unchanged; events land in Kafka in our shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from segment.analytics import Client

from services.ingestion.segment import SegmentMessage, event_type
from shared.events import ALIAS_TYPE, GROUP_TYPE, IDENTIFY_TYPE
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
    client.identify(
        user_id="user-42",
        anonymous_id="anon-7",
        traits={"plan": "pro", "address": {"city": "Oslo"}},
        message_id=f"{tag}-identify",
    )
    client.alias(previous_id="anon-8", user_id="user-42", message_id=f"{tag}-alias")
    client.group(user_id="user-42", group_id="acme", traits={"name": "Acme"}, message_id=f"{tag}-group")
    client.flush()
    client.join()
    assert errors == []

    records = {
        r["value"]["event"]["id"]: r
        for r in read_events(kafka, lambda v: v["event"]["id"].startswith(tag), 6, timeout_s=15)
    }
    assert set(records) == {f"{tag}-{name}" for name in ("view", "buy", "page", "identify", "alias", "group")}
    view = records[f"{tag}-view"]
    assert view["key"] == b"user-42"
    v = view["value"]
    assert v["event"]["type"] == "product_view" and v["user"] == {"id": "user-42", "anonymous_id": None}
    assert v["device"] == {"user_agent": context["userAgent"], "screen_width": 390, "screen_height": 844}
    assert v["context"] == {
        "url": "https://shop.example/p/1",
        "referrer": "https://search.example/",
        "ip_address": "203.0.113.0",  # RTAP_INGESTION__IP_TRUNCATION=network, the default
        "session_id": "user-42",
        "group_id": None,
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
    assert buy["user"]["anonymous_id"] == "anon-7"
    identify = records[f"{tag}-identify"]["value"]
    assert (identify["event"]["type"], identify["user"]) == (
        IDENTIFY_TYPE,
        {"id": "user-42", "anonymous_id": "anon-7"},
    )
    assert identify["properties"] == {"plan": "pro", "address": '{"city":"Oslo"}'}
    assert records[f"{tag}-identify"]["key"] == b"anon-7"  # the anonymous visitor's session
    alias = records[f"{tag}-alias"]["value"]
    assert (alias["event"]["type"], alias["user"]) == (
        ALIAS_TYPE,
        {"id": "user-42", "anonymous_id": "anon-8"},
    )
    group = records[f"{tag}-group"]["value"]
    assert (group["event"]["type"], group["context"]["group_id"], group["properties"]) == (
        GROUP_TYPE,
        "acme",
        {"name": "Acme"},
    )


def test_segment_endpoints_refuse_wrong_key_and_name_fields(keyed_ingestion):
    import httpx

    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        r = c.post(
            "/v1/batch", json={"batch": [{"type": "track", "event": "x", "userId": "u"}], "writeKey": "nope"}
        )
        assert refused_at(r) == (401, ["header", "X-Write-Key"]) and problem(r)["type"] == "unauthorized"
        r = c.post("/v1/track", json={"type": "track", "event": "Signed Up", "writeKey": WRITE_KEY})
        assert refused_at(r) == (400, ["body", "userId"]) and r.json()["results"][0]["field"] == "userId"
        r = c.post("/v1/batch", json={"batch": [{"type": "shout", "userId": "u"}], "writeKey": WRITE_KEY})
        assert refused_at(r) == (400, ["body", "batch[0].type"]), r.text
        r = c.post(
            "/v1/track", json={"type": "track", "event": "Signed Up", "userId": "u-1", "writeKey": WRITE_KEY}
        )
        assert r.status_code == 200 and r.json()["success"] is True and r.json()["accepted"] == 1


HOSTILE_SEGMENT = [
    ({"type": "identify", "traits": {"plan": "pro"}}, "userId", "needs userId or anonymousId"),
    ({"type": "alias", "userId": "u-1"}, "previousId", "previousId"),
    ({"type": "alias", "previousId": "a-1"}, "userId", "userId"),
    ({"type": "group", "userId": "u-1", "traits": {}}, "groupId", "groupId"),
    ({"type": "identify", "userId": "u-1", "traits": "pro"}, "traits", "dictionary"),
    ({"type": "identify", "userId": ["u"]}, "userId", "string"),
    ({"type": "group", "userId": "u-1", "groupId": {"id": 1}}, "groupId", "string"),
    ({"type": "identify", "userId": "u" * 257}, "userId", "at most 256"),
    ({"type": "identify", "userId": "u-1", "traits": {f"t{i}": i for i in range(300)}}, "properties", "256"),
    ({"type": "track", "event": "!!! ###", "userId": "u-1"}, "event", "no letter or digit"),  # was "event"
    # an empty object or a boolean is not a session id (they became the user's session, or "True")
    (
        {"type": "track", "event": "x", "userId": "u-1", "context": {"sessionId": {}}},
        "context.sessionId",
        "string",
    ),
    (
        {"type": "track", "event": "x", "userId": "u-1", "context": {"sessionId": True}},
        "context.sessionId",
        "string",
    ),
]


def test_segment_identity_messages_refused_per_item_naming_the_field(keyed_ingestion):
    import httpx

    good = {"type": "identify", "userId": "u-ok", "traits": {"plan": "pro"}}
    with httpx.Client(base_url=keyed_ingestion, timeout=15) as c:
        r = c.post(
            "/v1/batch", json={"batch": [good, *(m for m, _, _ in HOSTILE_SEGMENT)], "writeKey": WRITE_KEY}
        )
        assert r.status_code == 200, r.text  # the valid one is written, every other one refused on its own
        body = r.json()
        assert (body["accepted"], body["rejected"]) == (1, len(HOSTILE_SEGMENT))
        for result, (_, field, words) in zip(body["results"][1:], HOSTILE_SEGMENT, strict=True):
            assert (result["status"], result["field"]) == ("rejected", field), result
            assert words in result["error"], result
        r = c.post(
            "/v1/identify", json={"userId": "u-1", "traits": {"huge": "x" * 200_000}, "writeKey": WRITE_KEY}
        )
        assert r.status_code == 413, r.text
        r = c.post("/v1/alias", json={"userId": "u-1", "previousId": "a-1", "writeKey": WRITE_KEY})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def test_segment_event_names_keep_their_letters_in_any_script():
    """Only ASCII letters and digits were kept: "Ünïcödé Évent" became "n_c_d_vent"."""
    names = {"Ünïcödé Évent": "ünïcödé_évent", "Заказ оформлен": "заказ_оформлен", "Signed Up": "signed_up"}
    for name, expected in names.items():
        assert event_type(SegmentMessage(type="track", event=name)) == expected
