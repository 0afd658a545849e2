"""The three built-in jobs on the real Flink session cluster and Kafka, with explicit event times.

Phase 1 sends the first window's events (one out of order, within the watermark delay, and five sent twice
with the same event id) and heartbeats that close it. Phase 2 sends an event later than the watermark, the
second window's events, then only heartbeats (a pause in traffic): the last window and sessions still close.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import defaultdict

import httpx
import pytest

from services.loadgen.reconcile import Layers
from shared.events import IDENTIFY_TYPE
from shared.settings import Settings, settings_env
from tests.conftest import REPO_ROOT
from tests.processing.conftest import (
    IPHONE_UA,
    WINDOW_MS,
    Feed,
    event,
    job_diagnostics,
    read_metrics,
    window_base,
)

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.slow]

BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BASE = window_base()
PLACES = Settings().processing.top_pages
W0, W1 = BASE, BASE + WINDOW_MS


def at(seconds: float) -> int:
    return BASE + int(seconds * 1000)


def login_session() -> list[dict]:
    """A visitor who logs in mid-session: anonymous events, an identify record (never counted as an event),
    identified events. The anonymous id sorts after the user id, so the greatest user id is not the answer."""
    anonymous, user = "zz-anon-7", "u-login"
    before = [
        event("s-login", anonymous, "product_view", at(6.5)),
        event("s-login", anonymous, "product_view", at(7.0)),
    ]
    after = [event("s-login", user, "purchase", at(7.5), revenue="10.0")]
    for e in before + after:
        e["user"]["anonymous_id"] = anonymous
    identify = event("s-login", user, IDENTIFY_TYPE, at(7.2))
    identify["user"]["anonymous_id"] = anonymous
    return [*before, identify, *after]


def phase1_events() -> list[dict]:
    rng = random.Random(7)
    events = [
        event("s-a", "u1", "page_view", at(0.5), load=100.0),
        event("s-a", "u1", "product_view", at(1.5), load=200.0),
        event("s-a", "u1", "add_to_cart", at(3.0), load=300.0, interaction=40.0, price=12.5, quantity=3),
        event("s-a", "u1", "remove_from_cart", at(4.5), price="12.5"),
        event("s-a", "u1", "purchase", at(5.5), load=400.0, revenue="49.5"),
        event("s-b", "u2", "page_view", at(1.0), ua=IPHONE_UA, load=150.0),
        event("s-b", "u2", "page_view", at(2.0), ua=IPHONE_UA, load=250.0, interaction=10.0),
        event("s-c", "u3", "page_view", at(2.0), load=120.0),
        event("s-d", "u1", "page_view", at(4.0)),
        event("s-bot", "u-bot", "page_view", at(1.2), ua=BOT_UA, load=50.0),  # counted as bot, no session
        event("s-bot", "u-bot", "page_view", at(2.2), ua=BOT_UA, load=60.0),
    ]
    events += [
        event(
            "s-perf",
            "u4",
            "scroll",
            at(6.0 + i * 0.04),
            load=round(rng.uniform(50, 3000), 1),
            interaction=round(rng.uniform(1, 300), 1),
        )
        for i in range(50)
    ]
    events += login_session()
    events += [
        event("s-c", "u3", "page_view", at(11.0), load=130.0),  # window 1 ...
        event(
            "s-c", "u3", "click", at(9.5), load=500.0
        ),  # ... then window 0 out of order: watermark is 9.0 < 10
    ]
    return events


PHASE1 = phase1_events()
RETRIES = PHASE1[:4] + PHASE1[-1:]  # sent again with the same event ids: client retries, counted once
LATE = event("s-late", "u9", "page_view", at(5.0), load=99999.0)  # after the watermark passed 12 s
PHASE2 = [event("s-e", "u5", "page_view", at(15.0), ua=IPHONE_UA, load=80.0)]


def page_views_in_window_1() -> list[dict]:
    """Twelve pages viewed once, one of them twice more (under a query string and a fragment): more pages
    than the top pages job keeps, and one ahead of the rest."""
    urls = [f"https://shop.example/p{i}" for i in range(12)]
    urls += ["https://shop.example/p7?utm_source=news", "https://shop.example/p7#reviews"]
    views = [event("s-pages", f"u{6 + i % 2}", "page_view", at(16.0 + i * 0.05)) for i in range(len(urls))]
    for view, url in zip(views, urls, strict=True):
        view["context"]["url"] = url
    return views


PHASE2 += page_views_in_window_1()
TOUCHING = [event("s-touch", "u12", "click", at(13.0)), event("s-touch", "u12", "click", at(16.0))]
PHASE2 += TOUCHING  # the second exactly one session gap after the first


def enriched(e: dict, **values: str) -> dict:
    """The event with the enrichment ingestion would have given it (the rest of the group null)."""
    keys = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "referrer_host")
    e["enrichment"] = {key: values.get(key) for key in keys} | {"referrer_class": values["referrer_class"]}
    return e


EMAIL = {
    "utm_source": "newsletter",
    "utm_medium": "email",
    "utm_campaign": "spring",
    "referrer_class": "email",
}
SEARCH = {"referrer_host": "google.com", "referrer_class": "search"}
PHASE2 += [
    enriched(event("s-mail-1", "u10", "page_view", at(17.0)), **EMAIL, referrer_host="mail.example"),
    enriched(event("s-mail-1", "u10", "click", at(17.1)), **EMAIL, referrer_host="mail.example"),
    enriched(event("s-mail-2", "u11", "page_view", at(17.2)), **EMAIL),
    enriched(event("s-search", "u10", "page_view", at(17.3)), **SEARCH),
    enriched(event("s-bot-2", "u-bot", "page_view", at(17.4), ua=BOT_UA), **SEARCH),  # bots left out
]


def counted_events() -> list[dict]:
    """What the jobs count: identity records are not events."""
    return [e for e in PHASE1 + PHASE2 if e["event"]["type"] != IDENTIFY_TYPE]


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (what Flink's PERCENTILE computes)."""
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def category(e: dict) -> str:
    return {IPHONE_UA: "mobile", BOT_UA: "bot"}.get(e["device"]["user_agent"], "desktop")


def window_of(e: dict) -> int:
    return e["timestamp"] - e["timestamp"] % WINDOW_MS


def expected_event_metrics() -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in counted_events():
        groups[(window_of(e), e["event"]["type"], category(e))].append(e)
    return {
        key: {"events": len(es), "unique_users": len({e["user"]["id"] for e in es})}
        for key, es in groups.items()
    }


@pytest.fixture(scope="module")
def outputs(job_settings, supervisor):
    feed = Feed(job_settings)
    feed.send(*PHASE1, *RETRIES)
    feed.heartbeat(at(14.0))
    first = read_metrics(job_settings, "event_metrics", lambda r: (W0, "click", "desktop") in r)
    assert (W0, "click", "desktop") in first, (
        f"window 0 did not close after heartbeats:\n{job_diagnostics(job_settings)}"
    )
    feed.send(LATE, *PHASE2)
    feed.heartbeat(at(30.0))  # then silence: only heartbeats move event time
    expected = expected_event_metrics()
    return {
        "event_metrics": read_metrics(job_settings, "event_metrics", lambda r: expected.keys() <= r.keys()),
        "performance_metrics": read_metrics(job_settings, "performance_metrics", lambda r: len(r) >= 4),
        "session_metrics": read_metrics(job_settings, "session_metrics", lambda r: len(r) >= 13),
        "top_pages": read_metrics(job_settings, "top_pages", lambda r: (W1, PLACES) in r),
        "traffic_sources": read_metrics(
            job_settings, "traffic_sources", lambda r: expected_traffic_sources().keys() <= r.keys()
        ),
    }


def test_event_counts_and_unique_users_per_window(outputs):
    got = {
        key: {"events": v["events"], "unique_users": v["unique_users"]}
        for key, v in outputs["event_metrics"].items()
    }
    assert got == expected_event_metrics()


def test_window_bounds_are_epoch_ms(outputs):
    record = outputs["event_metrics"][(W0, "page_view", "desktop")]
    assert (record["window_start"], record["window_end"]) == (W0, W0 + WINDOW_MS)


def test_out_of_order_event_within_delay_is_counted_and_late_event_is_not(outputs):
    assert outputs["event_metrics"][(W0, "click", "desktop")]["events"] == 1
    assert (
        outputs["event_metrics"][(W0, "page_view", "desktop")]["events"] == 3
    )  # not 4: the late one is dropped
    assert "s-late" not in {k[1] for k in outputs["session_metrics"]}


def test_last_window_closes_during_a_pause_in_traffic(outputs):
    assert outputs["event_metrics"][(W1, "page_view", "mobile")]["events"] == 1


def test_percentiles_match_an_independent_recomputation(outputs):
    for (window, device), record in outputs["performance_metrics"].items():
        es = [e for e in counted_events() if window_of(e) == window and category(e) == device]
        assert record["events"] == len(es)
        for metric in ("load_time", "interaction_time"):
            values = [e["metrics"][metric] for e in es if e["metrics"][metric] is not None]
            assert record[f"{metric}_count"] == len(values)
            if not values:
                assert record[f"{metric}_p50"] is None
                continue
            assert record[f"{metric}_avg"] == pytest.approx(sum(values) / len(values))
            for p in (50, 95, 99):
                assert record[f"{metric}_p{p}"] == pytest.approx(percentile(values, p / 100), rel=1e-9), (
                    window,
                    device,
                    metric,
                    p,
                )


def test_session_boundaries_and_ecommerce_stats(outputs):
    sessions = {key[1]: v for key, v in outputs["session_metrics"].items() if key[1] != "s-c"}
    s_a = sessions["s-a"]
    assert (s_a["window_start"], s_a["window_end"], s_a["duration_ms"]) == (at(0.5), at(5.5) + 3_000, 5_000)
    assert (s_a["events"], s_a["page_views"], s_a["products_viewed"], s_a["cart_adds"], s_a["purchases"]) == (
        5,
        1,
        1,
        1,
        1,
    )
    assert s_a["revenue"] == pytest.approx(49.5)
    assert (s_a["cart_items"], s_a["cart_value"]) == (2, pytest.approx(25.0))
    assert (sessions["s-d"]["cart_items"], sessions["s-d"]["cart_value"]) == (0, 0.0)
    assert (s_a["user_id"], s_a["device_category"]) == ("u1", "desktop")
    assert (sessions["s-b"]["events"], sessions["s-b"]["device_category"]) == (2, "mobile")
    assert sessions["s-perf"]["events"] == 50


def expected_top_pages() -> dict[tuple, dict]:
    views: dict[tuple[int, str], list[str]] = defaultdict(list)
    for e in counted_events():
        if e["event"]["type"] == "page_view" and category(e) != "bot":
            page = re.split(r"[?#]", e["context"]["url"])[0]
            views[(window_of(e), page)].append(e["user"]["id"])
    out = {}
    for window in {w for w, _ in views}:
        ranked = sorted(((-len(users), page) for (w, page), users in views.items() if w == window))
        for place, (_, page) in enumerate(ranked[:PLACES], start=1):
            users = views[(window, page)]
            out[(window, place)] = {"page": page, "page_views": len(users), "unique_users": len(set(users))}
    return out


def test_top_pages_rank_pages_by_views_without_query_or_fragment(outputs):
    got = {
        key: {c: r[c] for c in ("page", "page_views", "unique_users")}
        for key, r in outputs["top_pages"].items()
    }
    expected = expected_top_pages()
    assert got == expected
    p7 = [record for record in got.values() if record["page"] == "https://shop.example/p7"]
    assert p7 == [{"page": "https://shop.example/p7", "page_views": 3, "unique_users": 2}]
    assert len([key for key in expected if key[0] == W1]) == PLACES


def test_bots_are_counted_on_their_own_and_open_no_session(outputs):
    """Default RTAP_PROCESSING__SESSION_BOTS=exclude; event_metrics and performance_metrics keep bot rows."""
    bots = outputs["event_metrics"][(W0, "page_view", "bot")]
    assert (bots["events"], bots["unique_users"]) == (2, 1)
    assert outputs["performance_metrics"][(W0, "bot")]["load_time_count"] == 2
    assert "s-bot" not in {key[1] for key in outputs["session_metrics"]}
    assert "bot" not in {record["device_category"] for record in outputs["session_metrics"].values()}


def expected_traffic_sources() -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in counted_events():
        if category(e) == "bot":
            continue
        x = e.get("enrichment") or {"referrer_class": "(unknown)"}
        source = x.get("utm_source") or x.get("referrer_host") or "(direct)"
        medium = x.get("utm_medium") or x["referrer_class"]
        campaign = x.get("utm_campaign") or "(none)"
        groups[(window_of(e), source, medium, campaign, x["referrer_class"])].append(e)
    return {
        key: {
            "events": len(es),
            "sessions": len({e["context"]["session_id"] for e in es}),
            "users": len({e["user"]["id"] for e in es}),
        }
        for key, es in groups.items()
    }


def test_traffic_sources_group_by_utm_then_referrer_and_leave_bots_out(outputs):
    got = {
        key: {c: r[c] for c in ("events", "sessions", "users")}
        for key, r in outputs["traffic_sources"].items()
    }
    assert got == expected_traffic_sources()
    assert got[(W1, "newsletter", "email", "spring", "email")] == {"events": 3, "sessions": 2, "users": 2}
    assert got[(W1, "google.com", "search", "(none)", "search")] == {"events": 1, "sessions": 1, "users": 1}
    assert {key[4] for key in got} == {"email", "search", "(unknown)"}


def test_a_session_with_a_login_carries_the_identified_user(outputs):
    [login] = [v for key, v in outputs["session_metrics"].items() if key[1] == "s-login"]
    assert (login["user_id"], login["events"], login["purchases"]) == ("u-login", 3, 1)


def test_a_gap_longer_than_the_session_gap_splits_the_session(outputs):
    s_c = sorted(
        (k[0], v["events"], v["window_end"]) for k, v in outputs["session_metrics"].items() if k[1] == "s-c"
    )
    assert s_c == [(at(2.0), 1, at(5.0)), (at(9.5), 2, at(14.0))]


def test_an_event_exactly_one_gap_after_the_previous_stays_in_its_session(job_settings, outputs):
    """Flink merges session windows that only touch; the load manifest's recomputation must agree."""
    assert job_settings.processing.session_gap_seconds == 3
    touch = sorted(
        (k[0], v["events"], v["window_end"])
        for k, v in outputs["session_metrics"].items()
        if k[1] == "s-touch"
    )
    assert touch == [(at(13.0), 2, at(19.0))]


def test_late_events_are_counted_by_flink(job_settings, outputs):
    metrics = httpx.get(
        f"http://127.0.0.1:{job_settings.flink.taskmanager_metrics_port}/metrics", timeout=5
    ).text
    job = re.sub(
        r"[^a-zA-Z0-9_]", "_", job_settings.processing.job_name
    )  # the reporter's label-value escaping
    dropped = [
        line
        for line in metrics.splitlines()
        if line.startswith("flink_taskmanager_job_task_operator_numLateRecordsDropped")
        and f'job_name="{job}' in line
    ]
    assert dropped, "no numLateRecordsDropped series for the job"
    assert sum(float(line.rsplit(" ", 1)[1]) for line in dropped) >= 1
    assert Layers(job_settings).late_records_dropped() >= 1  # what a failed reconciliation reports


def test_backfill_recomputes_the_range_with_the_same_keys_including_late_events(job_settings, outputs):
    """Policy: a late event is left out of its closed window but stays in Kafka; a backfill counts it."""
    env = {**os.environ, **settings_env(job_settings)}
    argv = [
        sys.executable,
        "-m",
        "infrastructure.cli",
        "backfill",
        "--from",
        str(W0),
        "--to",
        str(W1 + WINDOW_MS),
        "--timeout",
        "240",
    ]
    result = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    key = (W0, "page_view", "desktop")
    got = read_metrics(job_settings, "event_metrics", lambda r: r.get(key, {}).get("events") == 4, timeout=30)
    assert got[key]["events"] == 4 and got[key]["unique_users"] == 3
    unchanged = {k: (v["events"], v["unique_users"]) for k, v in got.items() if k != key}
    assert unchanged == {
        k: (v["events"], v["unique_users"]) for k, v in expected_event_metrics().items() if k != key
    }
