"""The traffic generator as pure functions: deterministic with a seed, plausible distributions,
agent table."""

from __future__ import annotations

import random
import re
import statistics
from collections import Counter, defaultdict

import orjson
import pytest

from services.ingestion.routes.events import item_event
from services.loadgen.agents import AGENTS, CATEGORY_BY_AGENT, expected_category
from services.loadgen.agents import SOFTWARE_BY_AGENT as AGENT_SOFTWARE
from services.loadgen.sender import LoadConfig, item_outcomes, plan_batches, worker_plans
from services.loadgen.traffic import EVENT_TYPES, LOAD_MEDIAN_MS, Traffic, TrafficSpec
from services.processing.device import load_rules
from shared.events import REFERRER_CLASSES, TRACK_EVENTS

START = 1_700_000_000_000


def events(n: int = 4_000, **spec) -> list[dict]:
    """Events only (no identity calls) unless the spec asks for them."""
    base = {"seed": 7, "start_ms": START, "rate": 1_000, "login_fraction": 0.0, "alias_fraction": 0.0}
    return Traffic(TrafficSpec(**{**base, **spec})).events(n)


def test_some_sessions_log_in_part_way_and_some_are_aliased_all_valid_batch_items():
    sample = events(4_000, login_fraction=0.2, alias_fraction=0.05)
    calls = [item for item in sample if "event" not in item]
    kinds = Counter(call["type"] for call in calls)
    assert kinds["identify"] > kinds["alias"] > 0
    for item in sample:
        item_event(orjson.loads(orjson.dumps(item)))  # what ingestion's batch route validates
    by_session: dict[str, list[dict]] = {}
    for item in sample:
        session = item["session_id"] if "event" not in item else item["context"]["session_id"]
        by_session.setdefault(session, []).append(item)
    for call in calls:
        items = by_session[call["session_id"]]
        at = items.index(call)
        before = {i["user"]["id"] for i in items[:at] if "event" in i}
        after = {i["user"]["id"] for i in items[at + 1 :] if "event" in i}
        if call["type"] == "identify":
            assert before <= {call["anonymous_id"]} and after <= {call["user_id"]}
            assert all(i["user"]["anonymous_id"] == call["anonymous_id"] for i in items if "event" in i)
        else:
            assert before == {call["previous_id"]} and not after


def pipeline_category(ua: str, width: int, height: int) -> str:
    """The processing job's device rules (services/processing/device.py, DeviceCategory.java) in Python."""
    rules, ua, short = load_rules(), ua.lower(), min(width, height)
    if any(m in ua for m in rules.bot):
        return "bot"
    if (
        any(m in ua for m in rules.tablet)
        or any(re.search(p, ua) for _, p in rules.tablet_models)
        or ("android" in ua and "mobile" not in ua)
    ):
        return "tablet"
    if any(m in ua for m in rules.phone):
        return "tablet" if short >= rules.tablet_min_side else "mobile"
    return "mobile" if ua == "" and 0 < short < rules.tablet_min_side else "desktop"


def test_same_seed_same_events_other_seed_other_ids():
    assert events(500) == events(500)
    assert {e["event"]["id"] for e in events(500)}.isdisjoint(e["event"]["id"] for e in events(500, seed=8))


def test_workers_of_one_run_do_not_share_ids_or_sessions():
    a, b = events(500, worker=0), events(500, worker=1)
    assert {e["event"]["id"] for e in a}.isdisjoint(e["event"]["id"] for e in b)
    assert {e["context"]["session_id"] for e in a}.isdisjoint(e["context"]["session_id"] for e in b)


def test_every_event_is_valid_for_ingestion_with_explicit_timestamp_and_id():
    sample = events(2_000)
    TRACK_EVENTS.validate_python(sample)
    assert all(isinstance(e["timestamp"], int) and e["event"]["id"] for e in sample)
    assert len({e["event"]["id"] for e in sample}) == len(sample)


def test_every_event_type_appears_and_page_views_lead():
    counts = Counter(e["event"]["type"] for e in events())
    assert set(counts) == set(EVENT_TYPES)
    assert counts["page_view"] > counts["product_view"] > counts["add_to_cart"] > counts["purchase"] > 0


def test_purchases_pay_for_what_is_left_in_the_cart():
    carts: dict[str, list[float]] = defaultdict(list)
    removed = 0
    for e in events():
        kind, props, cart = e["event"]["type"], e["properties"], carts[e["context"]["session_id"]]
        if kind == "add_to_cart":
            cart.append(props["price"] * props["quantity"])
        if kind == "remove_from_cart":
            assert cart.pop() == props["price"] * props["quantity"]
            removed += 1
        if kind == "purchase":
            assert props["revenue"] == round(sum(cart), 2) > 0
    assert removed > 0


def test_a_user_keeps_one_device_and_sessions_hold_one_user():
    devices, owners = {}, {}
    for e in events():
        assert devices.setdefault(e["user"]["id"], e["device"]["user_agent"]) == e["device"]["user_agent"]
        assert owners.setdefault(e["context"]["session_id"], e["user"]["id"]) == e["user"]["id"]


def test_load_time_has_a_long_tail_and_phones_load_slower_than_desktops():
    by_category: dict[str, list[float]] = {}
    for e in events(20_000):
        if e["metrics"]["load_time"] is not None:
            category = expected_category(
                e["device"]["user_agent"], e["device"]["screen_width"], e["device"]["screen_height"]
            )
            by_category.setdefault(category, []).append(e["metrics"]["load_time"])
    desktop, mobile = by_category["desktop"], by_category["mobile"]
    assert statistics.median(desktop) == pytest.approx(LOAD_MEDIAN_MS["desktop"], rel=0.15)
    assert statistics.median(mobile) > statistics.median(desktop)
    p99 = statistics.quantiles(mobile, n=100)[98]
    assert p99 > 4 * statistics.median(mobile)  # lognormal tail, not a bell


def test_interactions_have_interaction_time_and_views_have_load_time():
    for e in events(1_000):
        has_load = e["event"]["type"] in ("page_view", "product_view")
        assert (e["metrics"]["load_time"] is not None) is has_load
        assert (e["metrics"]["interaction_time"] is not None) is not has_load


def test_timestamps_follow_the_rate_and_stay_within_the_out_of_order_bound():
    plain = events(1_000, rate=100)
    assert [e["timestamp"] for e in plain] == sorted(e["timestamp"] for e in plain)
    assert plain[-1]["timestamp"] - plain[0]["timestamp"] == pytest.approx(9_990, abs=10)
    shuffled = events(1_000, rate=100, out_of_order_ms=2_000)
    drift = [p["timestamp"] - s["timestamp"] for p, s in zip(plain, shuffled, strict=True)]
    assert min(drift) >= 0 and max(drift) <= 2_000 and max(drift) > 1_000
    assert [e["timestamp"] for e in shuffled] != sorted(e["timestamp"] for e in shuffled)


def test_a_sender_behind_its_schedule_moves_the_rest_forward_and_never_back():
    """A lagging sender stamps its next events at the clock, so they do not trail the other senders'."""
    traffic = Traffic(TrafficSpec(seed=7, start_ms=START, rate=100, login_fraction=0, alias_fraction=0))
    first = traffic.events(10)
    assert first[-1]["timestamp"] == START + 90
    traffic.catch_up(START + 5_000)  # behind: the 11th event was due at START + 100
    behind = traffic.events(10)
    assert [e["timestamp"] for e in behind] == [START + 5_000 + 10 * i for i in range(10)]
    traffic.catch_up(START)  # ahead of the clock: the schedule stays
    assert traffic.events(1)[0]["timestamp"] == START + 5_100


def test_late_fraction_moves_that_share_back_by_late_ms_and_remembers_them():
    traffic = Traffic(
        TrafficSpec(
            seed=7,
            start_ms=START,
            rate=1_000,
            late_fraction=0.1,
            late_ms=60_000,
            login_fraction=0,
            alias_fraction=0,
        )
    )
    sample = traffic.events(5_000)
    late = [e for e in sample if e["event"]["id"] in traffic.late_ids]
    assert 350 < len(late) < 650
    assert all(e["timestamp"] <= START + 5_000 - 60_000 for e in late)


def test_agent_table_has_every_category_and_agrees_with_the_pipeline_classifier():
    assert set(AGENTS) == {"mobile", "tablet", "desktop", "bot"}
    assert all(len(agents) >= 4 for agents in AGENTS.values())
    for (ua, width, height), category in CATEGORY_BY_AGENT.items():
        assert pipeline_category(ua, width, height) == category, ua


def test_category_mix_is_mostly_phones_with_some_bots():
    users = {e["user"]["id"]: e["device"] for e in events(20_000)}
    mix = Counter(
        expected_category(d["user_agent"], d["screen_width"], d["screen_height"]) for d in users.values()
    )
    total = sum(mix.values())
    assert mix["mobile"] / total == pytest.approx(0.55, abs=0.08)
    assert 0 < mix["bot"] < mix["tablet"] + mix["bot"] < mix["desktop"]


def test_duplicates_repeat_only_ids_of_earlier_batches():
    traffic = Traffic(TrafficSpec(seed=3, start_ms=START, login_fraction=0, alias_fraction=0))
    batches = list(plan_batches(traffic, 2_000, 100, 0.1, random.Random(1)))
    seen: set[str] = set()
    fresh = duplicates = 0
    for batch in batches:
        assert len(batch) <= 100
        ids = [e["event"]["id"] for e in batch]
        repeated = [i for i in ids if i in seen]
        duplicates += len(repeated)
        fresh += len(ids) - len(repeated)
        seen.update(ids)
    assert fresh == 2_000
    assert 100 < duplicates < 300


def test_item_outcomes_from_per_item_results_and_from_bodiless_errors():
    body = {
        "results": [
            {"index": 0, "status": "accepted", "timestamp_adjusted": True},
            {"index": 1, "status": "rejected"},
            {"index": 2, "status": "failed"},
        ]
    }
    ok, bad, failed = item_outcomes(202, body, 3)
    assert (ok.accepted, ok.adjusted, bad.accepted, bad.retryable, failed.retryable) == (
        True,
        True,
        False,
        False,
        True,
    )
    assert all(not o.accepted and not o.retryable for o in item_outcomes(401, {"error": "x"}, 2))
    assert all(o.retryable for o in item_outcomes(0, None, 2))


def test_worker_plans_split_events_and_rate_exactly(tmp_path):
    config = LoadConfig(
        url="http://127.0.0.1:1",
        events=1_001,
        rate=300,
        processes=3,
        batch_size=10,
        seed=1,
        manifest=tmp_path / "m.jsonl",
    )
    plans = worker_plans(config, START)
    assert sum(p.events for p in plans) == 1_001
    assert [p.spec.worker for p in plans] == [0, 1, 2]
    assert all(p.rate == 100 for p in plans)
    assert len({p.manifest_part for p in plans}) == 3


def test_sources_cover_every_referrer_class_with_utm_urls_and_expectations_from_the_tables():
    traffic = Traffic(TrafficSpec(seed=11, start_ms=1_700_000_000_000, login_fraction=0, alias_fraction=0))
    sample = traffic.events(2_000)
    expected = [traffic.expected[e["event"]["id"]] for e in sample]
    assert {x["referrer_class"] for x in expected} == set(REFERRER_CLASSES)
    assert {x["country"] for x in expected} == {None, "US", "JP"}
    for event, want in zip(sample, expected, strict=True):
        url, referrer = event["context"]["url"], event["context"]["referrer"]
        assert ("utm_source=" in url) == (want["utm_source"] is not None)
        assert (referrer is None) == (want["referrer_host"] is None)
        assert want["browser"] == AGENT_SOFTWARE[event["device"]["user_agent"]].browser
        assert event["context"]["ip_address"].startswith(want["ip_network"].removesuffix("0"))


def test_the_agent_table_names_the_browser_and_os_of_every_agent():
    for agents in AGENTS.values():
        for agent in agents:
            software = agent.software
            assert software.browser and software.os, agent
            assert software.browser_version is None or software.browser_version.isdigit(), agent
