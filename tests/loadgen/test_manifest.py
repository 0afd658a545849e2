"""Recomputing expected metrics from a hand-made manifest."""

from __future__ import annotations

import numpy as np
import pytest

from services.loadgen.manifest import (
    cart_change,
    entry_for,
    event_metrics,
    identity_links,
    percentile,
    performance_metrics,
    persons,
    read_manifest,
    record_send,
    resolved_sessions,
    session_metrics,
    summary,
    top_pages,
    traffic_sources,
    window_start,
    write_manifest,
)
from services.loadgen.traffic import Traffic, TrafficSpec

W = 10_000  # window size, ms
T0 = 1_700_000_000_000  # a multiple of W


def entry(
    id: str,
    type: str = "page_view",
    user: str = "u1",
    ts: int = T0,
    device: str = "desktop",
    load: float | None = None,
    interaction: float | None = None,
    accepted: bool = True,
    sends: int = 1,
) -> dict:
    return {
        "id": id,
        "type": type,
        "user_id": user,
        "session_id": "s1",
        "timestamp": ts,
        "page": "https://shop.example/",
        "device_category": device,
        "load_time": load,
        "interaction_time": interaction,
        "revenue": None,
        **cart_change(type, {"price": 10.0, "quantity": 2}),
        "late": False,
        "sends": sends,
        "duplicate": sends > 1,
        "failed_sends": 0 if accepted else sends,
        "accepted": accepted,
        "status": 202 if accepted else 503,
        "timestamp_adjusted": False,
    }


MANIFEST = [
    entry("a", user="u1", ts=T0 + 1, load=100.0),
    entry("b", user="u1", ts=T0 + 9_999, load=200.0, sends=2),
    entry("c", user="u2", ts=T0 + 5, load=400.0),
    entry("d", type="click", user="u2", ts=T0 + 10, interaction=50.0),
    entry("e", user="u3", ts=T0 + 10_000, device="mobile", load=1_000.0),  # next window
    entry("f", user="u4", ts=T0 + 20, load=9_999.0, accepted=False),  # answered 503: not expected anywhere
    entry("a", user="u1", ts=T0 + 1, load=100.0),  # the same id listed twice counts once
]


def test_event_metrics_count_accepted_ids_once_per_window_type_and_device():
    assert event_metrics(MANIFEST, W) == {
        (T0, "page_view", "desktop"): {"events": 3, "unique_users": 2},
        (T0, "click", "desktop"): {"events": 1, "unique_users": 1},
        (T0 + W, "page_view", "mobile"): {"events": 1, "unique_users": 1},
    }


def test_performance_metrics_per_window_and_device():
    stats = performance_metrics(MANIFEST, W)
    assert set(stats) == {(T0, "desktop"), (T0 + W, "mobile")}
    desktop = stats[(T0, "desktop")]
    assert desktop["events"] == 4
    assert (desktop["load_time_count"], desktop["load_time_avg"]) == (3, pytest.approx(700 / 3))
    assert desktop["load_time_p50"] == 200.0
    assert desktop["load_time_p95"] == pytest.approx(380.0)  # 200 + 0.9 * (400 - 200)
    assert (desktop["interaction_time_count"], desktop["interaction_time_p99"]) == (1, 50.0)
    assert stats[(T0 + W, "mobile")]["interaction_time_avg"] is None


def test_percentile_matches_flink_examples_and_numpy_linear():
    assert percentile([0, 10, 10], 0.3) == pytest.approx(6.0)  # Flink's documented example
    assert percentile([10, 20, 30, 40], 0.25) == pytest.approx(17.5)
    values = [3.5, 1.0, 900.0, 42.0, 7.25, 7.25, 130.0]
    for q in (0, 0.5, 0.95, 0.99, 1):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q * 100, method="linear"))
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_window_start_aligns_to_the_epoch():
    assert window_start(T0 + 9_999, W) == T0 and window_start(T0 + W, W) == T0 + W


def test_entries_round_trip_and_record_sends(tmp_path):
    event = Traffic(TrafficSpec(seed=1, start_ms=T0)).events(1)[0]
    e = entry_for(event, late=True)
    record_send(e, 503, accepted=False)
    record_send(e, 202, accepted=True, adjusted=False)
    assert (e["sends"], e["duplicate"], e["accepted"], e["status"], e["late"]) == (2, True, True, 202, True)
    assert e["failed_sends"] == 1  # the 503; the retry that was accepted is not a failure
    assert e["device_category"] in {"mobile", "tablet", "desktop", "bot"}
    path = tmp_path / "m.jsonl"
    assert write_manifest(path, [e, *MANIFEST]) == 8
    assert read_manifest(path) == [e, *MANIFEST]
    assert summary(read_manifest(path))["not_accepted"] == 1


def test_an_event_exactly_the_gap_after_the_previous_stays_in_its_session():
    """Flink merges session windows that only touch: [t, t + gap) and [t + gap, t + 2 gap) are one session."""
    rows = [
        {**entry("t1", ts=T0), "session_id": "A"},
        {**entry("t2", ts=T0 + 3_000), "session_id": "A"},
        {**entry("t3", ts=T0 + 6_001), "session_id": "A"},
    ]
    sessions = session_metrics(rows, gap_ms=3_000)
    assert set(sessions) == {(T0, "A"), (T0 + 6_001, "A")}
    assert (sessions[(T0, "A")]["events"], sessions[(T0, "A")]["window_end"]) == (2, T0 + 6_000)


def test_bot_sessions_are_left_out_unless_included_and_stay_in_event_and_performance_metrics():
    rows = [
        {**entry("h1", ts=T0), "session_id": "human"},
        {**entry("b1", user="crawler", ts=T0 + 1, device="bot", load=50.0), "session_id": "bot"},
        {**entry("b2", user="crawler", ts=T0 + 2, device="bot"), "session_id": "bot"},
    ]
    assert set(session_metrics(rows, gap_ms=3_000)) == {(T0, "human")}
    assert set(session_metrics(rows, gap_ms=3_000, bots=True)) == {(T0, "human"), (T0 + 1, "bot")}
    assert event_metrics(rows, W)[(T0, "page_view", "bot")] == {"events": 2, "unique_users": 1}
    assert performance_metrics(rows, W)[(T0, "bot")]["load_time_count"] == 1


def test_session_metrics_split_at_the_gap_and_sum_revenue():
    rows = [
        {**entry("s1", user="u1", ts=T0), "session_id": "A"},
        {**entry("s2", type="add_to_cart", user="u1", ts=T0 + 2_999), "session_id": "A"},
        {**entry("s3", type="purchase", user="u1", ts=T0 + 4_000), "session_id": "A", "revenue": 25.5},
        {**entry("s4", user="u1", ts=T0 + 7_001), "session_id": "A"},  # more than the gap later: new session
        {**entry("s5", type="product_view", user="u2", ts=T0 + 1, device="tablet"), "session_id": "B"},
        {**entry("s6", user="u2", ts=T0 + 2, device="tablet", accepted=False), "session_id": "B"},
    ]
    sessions = session_metrics(rows, gap_ms=3_000)
    assert set(sessions) == {(T0, "A"), (T0 + 7_001, "A"), (T0 + 1, "B")}
    first = sessions[(T0, "A")]
    assert (first["events"], first["page_views"], first["cart_adds"], first["purchases"]) == (3, 1, 1, 1)
    assert (first["duration_ms"], first["window_end"], first["revenue"]) == (4_000, T0 + 7_000, 25.5)
    assert (first["cart_items"], first["cart_value"]) == (2, 20.0)

    assert sessions[(T0 + 1, "B")] == {
        "window_end": T0 + 3_001,
        "user_id": "u2",
        "device_category": "tablet",
        "duration_ms": 0,
        "page_views": 0,
        "events": 1,
        "products_viewed": 1,
        "cart_adds": 0,
        "purchases": 0,
        "revenue": 0,
        "cart_items": 0,
        "cart_value": 0,
    }


def test_cart_changes_add_and_remove_quantity_times_price():
    assert cart_change("add_to_cart", {"price": 12.5, "quantity": 3}) == {"cart_items": 3, "cart_value": 37.5}
    assert cart_change("remove_from_cart", {"price": 12.5}) == {"cart_items": -1, "cart_value": -12.5}
    assert cart_change("add_to_cart", {"quantity": 2}) == {"cart_items": 2, "cart_value": 0.0}
    assert cart_change("purchase", {"price": 5.0, "quantity": 2}) == {"cart_items": 0, "cart_value": 0.0}


def test_top_pages_rank_by_views_then_page_and_keep_the_first_places():
    views = [("/b", "u1"), ("/b", "u1"), ("/b", "u2"), ("/c", "u1"), ("/a", "u3"), ("/d", "u1")]
    rows = [{**entry(f"v{i}", user=user, ts=T0 + i), "page": page} for i, (page, user) in enumerate(views)]
    rows.append({**entry("click", type="click", ts=T0 + 50), "page": "/z"})
    rows.append({**entry("lost", accepted=False, ts=T0 + 51), "page": "/z"})
    rows.append({**entry("next", ts=T0 + 10_000), "page": "/z"})
    rows.append({**entry("bot", ts=T0 + 10_001, device="bot"), "page": "/bot"})
    assert top_pages(rows, 10_000, places=3) == {
        (T0, 1): {"page": "/b", "page_views": 3, "unique_users": 2},
        (T0, 2): {"page": "/a", "page_views": 1, "unique_users": 1},
        (T0, 3): {"page": "/c", "page_views": 1, "unique_users": 1},
        (T0 + 10_000, 1): {"page": "/z", "page_views": 1, "unique_users": 1},
    }
    assert top_pages(rows, 10_000, places=3, bots=True)[(T0 + 10_000, 1)]["page"] == "/bot"


def test_traffic_sources_prefer_utm_then_the_referrer_and_leave_bots_out():
    mail = {
        "utm_source": "news",
        "utm_medium": "email",
        "utm_campaign": None,
        "referrer_host": "mail.example",
    }
    rows = [
        {**entry("m1", user="u1"), "enrichment": {**mail, "referrer_class": "email"}},
        {**entry("m2", user="u2"), "session_id": "s2", "enrichment": {**mail, "referrer_class": "email"}},
        {
            **entry("g", user="u1"),
            "enrichment": {"utm_source": None, "referrer_host": "google.com", "referrer_class": "search"},
        },
        {**entry("d", user="u3"), "enrichment": {"referrer_class": "direct"}},
        {**entry("bot", user="b", device="bot"), "enrichment": {"referrer_class": "direct"}},
        {**entry("old", user="u4"), "enrichment": None},
    ]
    assert traffic_sources(rows, 10_000) == {
        (T0, "news", "email", "(none)", "email"): {"events": 2, "sessions": 2, "users": 2},
        (T0, "google.com", "search", "(none)", "search"): {"events": 1, "sessions": 1, "users": 1},
        (T0, "(direct)", "direct", "(none)", "direct"): {"events": 1, "sessions": 1, "users": 1},
        (T0, "(direct)", "(unknown)", "(none)", "(unknown)"): {"events": 1, "sessions": 1, "users": 1},
    }
    assert (
        traffic_sources(rows, 10_000, bots=True)[(T0, "(direct)", "direct", "(none)", "direct")]["events"]
        == 2
    )


def identity(id: str, kind: str, user: str, anonymous: str | None, ts: int, **traits) -> dict:
    call = {"type": kind, "id": id, "user_id": user, "session_id": "A", "timestamp": ts}
    call |= {"previous_id": anonymous} if kind == "alias" else {"anonymous_id": anonymous, "traits": traits}
    entry = entry_for(call)
    record_send(entry, 202, accepted=True)
    return entry


def test_identity_calls_give_persons_links_and_resolved_sessions_but_no_events():
    anonymous = {**entry("e1", user="anon-1", ts=T0), "session_id": "A", "anonymous_id": "anon-1"}
    identified = {**entry("e2", user="zed", ts=T0 + 2_000), "session_id": "A", "anonymous_id": "anon-1"}
    other = {**entry("e3", user="anon-2", ts=T0 + 100), "session_id": "B", "anonymous_id": "anon-2"}
    calls = [
        identity("i2", "identify", "zed", "anon-1", T0 + 1_500, plan="pro", seats=3),
        identity("i1", "identify", "zed", "anon-1", T0 + 1_000, plan="free", admin=True),  # older: loses plan
        identity("l1", "alias", "yan", "anon-2", T0 + 200),
    ]
    rows = [anonymous, identified, other, *calls]
    assert persons(rows) == {"zed": {"plan": "pro", "seats": "3", "admin": "true"}}
    assert identity_links(rows) == {"anon-1": "zed", "anon-2": "yan"}
    sessions = session_metrics(rows, gap_ms=3_000)
    assert sessions[(T0, "A")]["user_id"] == "zed"  # identified mid-session, though "anon-1" < "zed" is not
    assert sessions[(T0, "A")]["events"] == 2  # identity calls are not events
    assert resolved_sessions(rows, gap_ms=3_000) == {(T0, "A"): "zed", (T0 + 100, "B"): "yan"}
    assert event_metrics(rows, W)[(T0, "page_view", "desktop")]["events"] == 3
