"""The analytics queries (services/storage/analytics.py) on real chDB, against an independent recomputation
in Python: loadgen traffic over three weeks, stored as storage stores it (process_event rows, some events
twice in separate inserts, as retries land), its manifest written and read back; funnel and retention answers
must equal what the manifest says, top pages what the generated events say, and the sources query is
checked on a table that has the enrichment columns (added here: see test_sources_by_utm_referrer_and_direct).

chDB runs in this test process (its own state directory).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.loadgen.manifest import Entry, accepted, entry_for, read_manifest, record_send, write_manifest
from services.loadgen.traffic import Traffic, TrafficSpec
from services.storage.analytics import (
    SOURCE_COLUMNS,
    TimeRange,
    funnel_query,
    funnel_steps,
    retention_cohorts,
    retention_query,
    sources_query,
    top_pages_query,
)
from services.storage.backends import Backend, ChdbBackend
from services.storage.processors import process_event
from services.storage.tables import events_table, migrate
from shared.settings import Settings
from tests.storage.conftest import raw_event

pytestmark = pytest.mark.clickhouse

# The traffic below has fixed dates, so its rows must outlive the raw table's TTL (30 days by default): a
# merge drops expired rows, and a test inserting twice merges.
SETTINGS = Settings().model_copy(
    update={"storage": Settings().storage.model_copy(update={"raw_events_ttl_days": 3_650})}
)
TABLE = events_table(SETTINGS).name
DAY_MS = 86_400_000
START = datetime(2026, 11, 2, tzinfo=UTC)  # a Monday
START_MS = int(START.timestamp() * 1000)
EVENTS = 4_000
SPAN_MS = 21 * DAY_MS  # the traffic's three weeks
STEPS = ["page_view", "product_view", "add_to_cart", "purchase"]


@pytest.fixture(scope="module")
def chdb(tmp_path_factory) -> Backend:
    backend = ChdbBackend(Path(tmp_path_factory.mktemp("chdb-analytics")))
    yield backend
    backend.close()


def fresh_table(backend: Backend, prefix: str) -> str:
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    backend.command(f"CREATE DATABASE `{db}`")
    migrate(backend, db, [events_table(SETTINGS)])
    return db


def stored_rows(events: Iterable[dict[str, Any]], first_offset: int = 0) -> list[dict[str, Any]]:
    rows = []
    for offset, event in enumerate(events, first_offset):
        value = orjson.dumps({**event, "received_at": event["timestamp"]})
        row = process_event(event["context"]["session_id"].encode(), value, offset)
        assert row is not None
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def loaded(chdb, tmp_path_factory) -> tuple[str, list[Entry], list[dict[str, Any]]]:
    """Three weeks of traffic (300 users) in a fresh table; every 10th event stored twice (the retry in a
    later insert). Returns the database, the manifest as read back from its file, and the events sent."""
    traffic = Traffic(
        TrafficSpec(
            seed=16,
            start_ms=START_MS,
            rate=EVENTS / (SPAN_MS / 1000),
            users=300,
            open_sessions=10,
            login_fraction=0,
            alias_fraction=0,
        )
    )
    events = traffic.events(EVENTS)
    entries = [entry_for(e) for e in events]
    for n, entry in enumerate(entries):
        for _ in range(2 if n % 10 == 0 else 1):
            record_send(entry, 202, True)
    manifest = tmp_path_factory.mktemp("manifest") / "run.jsonl"
    write_manifest(manifest, entries)
    db = fresh_table(chdb, "analytics")
    chdb.insert(f"{db}.{TABLE}", stored_rows(events))
    chdb.insert(f"{db}.{TABLE}", stored_rows(events[::10], first_offset=EVENTS))
    return db, read_manifest(manifest), events


def expected_funnel(
    entries: Iterable[Entry], steps: list[str], window_ms: int, span: TimeRange
) -> dict[int, int]:
    """Step number -> users who reached it: events of steps 1..k in order of time (equal times allowed), the
    last at most window_ms after the first, all in the range. Tried from every step-1 event; from one, taking
    each next step's earliest event is best."""
    by_user: dict[str, list[Entry]] = defaultdict(list)
    for e in accepted(entries):
        if e["type"] in steps and span.start_ms <= e["timestamp"] < span.end_ms:
            by_user[e["user_id"]].append(e)
    reached: dict[int, int] = defaultdict(int)
    for rows in by_user.values():
        depth = max((chain_depth(rows, steps, start, window_ms) for start in rows), default=0)
        for number in range(1, depth + 1):
            reached[number] += 1
    return dict(reached)


def chain_depth(rows: list[Entry], steps: list[str], start: Entry, window_ms: int) -> int:
    if start["type"] != steps[0]:
        return 0
    depth, last = 1, start["timestamp"]
    for step in steps[1:]:
        times = [
            e["timestamp"]
            for e in rows
            if e["type"] == step and last <= e["timestamp"] <= start["timestamp"] + window_ms
        ]
        if not times:
            break
        depth, last = depth + 1, min(times)
    return depth


def test_funnel_equals_the_recomputation_from_the_manifest(chdb, loaded):
    db, entries, _ = loaded
    span = TimeRange(START_MS + DAY_MS, START_MS + 15 * DAY_MS)
    for window_ms in (600_000, 6 * 3_600_000, 3 * DAY_MS):
        sql, params = funnel_query(TABLE, db, STEPS, window_ms, span, "none")
        answer = funnel_steps(STEPS, chdb.query(sql, params))
        expected = expected_funnel(entries, STEPS, window_ms, span)
        assert {r["step"]: r["users"] for r in answer} == {
            n: expected.get(n, 0) for n in range(1, len(STEPS) + 1)
        }, window_ms
    assert expected.get(len(STEPS), 0) > 0  # with the longest window some bought: the whole funnel is covered
    assert answer[0]["conversion"] == 1.0


def test_funnel_needs_the_steps_in_order_and_within_the_window(chdb):
    """A hand-made case: each user's events and the depth they must reach."""
    db = fresh_table(chdb, "funnel_order")
    day = START_MS + 12 * 3_600_000
    users = {
        "in-order": [("page_view", 0), ("add_to_cart", 60_000), ("purchase", 120_000)],
        "wrong-order": [("add_to_cart", 0), ("page_view", 60_000), ("purchase", 120_000)],
        "too-slow": [("page_view", 0), ("add_to_cart", 60_000), ("purchase", 3_600_001)],
        "same-time": [("page_view", 0), ("add_to_cart", 0), ("purchase", 0)],
        "restart": [
            ("page_view", 0),
            ("page_view", 3_000_000),
            ("add_to_cart", 3_100_000),
            ("purchase", 3_700_000),
        ],
        "no-start": [("add_to_cart", 0), ("purchase", 1)],
    }
    events = [
        raw_event(f"s-{user}", f"{user}-{n}", event_type, day + at) | {"user": {"id": user}}
        for user, steps in users.items()
        for n, (event_type, at) in enumerate(steps)
    ]
    chdb.insert(f"{db}.{TABLE}", stored_rows(events))
    steps = ["page_view", "add_to_cart", "purchase"]
    sql, params = funnel_query(TABLE, db, steps, 3_600_000, TimeRange(START_MS, START_MS + DAY_MS), "none")
    answer = {r["step"]: r["users"] for r in funnel_steps(steps, chdb.query(sql, params))}
    # step 1: all but no-start; step 2: not wrong-order (its cart comes before its view); step 3: not
    # too-slow, but restart (its second view starts a window that holds the purchase)
    assert answer == {1: 5, 2: 4, 3: 3}


def test_funnel_breakdown_by_referrer_host(chdb):
    db = fresh_table(chdb, "funnel_breakdown")
    day = START_MS + 12 * 3_600_000
    events = []
    for n, (referrer, depth) in enumerate(
        [("https://www.google.com/x", 2), ("https://t.co/y", 1), (None, 2)]
    ):
        user = f"user-{n}"
        for step, event_type in enumerate(["page_view", "purchase"][:depth]):
            event = raw_event(f"s-{n}", f"{user}-{step}", event_type, day + step * 1_000)
            event["user"]["id"] = user
            event["context"]["referrer"] = referrer if step == 0 else "https://shop.example/"
            events.append(event)
    chdb.insert(f"{db}.{TABLE}", stored_rows(events))
    span = TimeRange(START_MS, START_MS + DAY_MS)
    sql, params = funnel_query(TABLE, db, ["page_view", "purchase"], 60_000, span, "referrer_host")
    answer = {
        (r["breakdown"], r["step"]): r["users"]
        for r in funnel_steps(["page_view", "purchase"], chdb.query(sql, params))
    }
    assert answer == {
        ("", 1): 1,
        ("", 2): 1,
        ("google.com", 1): 1,
        ("google.com", 2): 1,
        ("t.co", 1): 1,
        ("t.co", 2): 0,
    }


def expected_retention(
    entries: Iterable[Entry], period_days: int, span: TimeRange, returning_event: str | None
) -> dict[str, dict[int, int]]:
    """Cohort (first day of the period of the user's first event overall) -> offset -> users."""
    events = list(accepted(entries))
    first: dict[str, int] = {}
    for e in events:
        first[e["user_id"]] = min(first.get(e["user_id"], e["timestamp"]), e["timestamp"])

    def period_of(ms: int) -> date:
        day = datetime.fromtimestamp(ms / 1000, UTC).date()
        return day - timedelta(days=day.weekday()) if period_days == 7 else day

    cohorts = {u: period_of(ms) for u, ms in first.items() if span.start_ms <= ms < span.end_ms}
    users: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for user, cohort in cohorts.items():
        users[cohort.isoformat()][0].add(user)
    for e in events:
        cohort = cohorts.get(e["user_id"])
        if cohort is None or not span.start_ms <= e["timestamp"] < span.end_ms:
            continue
        if returning_event is not None and e["type"] != returning_event:
            continue
        day = datetime.fromtimestamp(e["timestamp"] / 1000, UTC).date()
        offset = (day - cohort).days // period_days
        if offset >= 1:
            users[cohort.isoformat()][offset].add(e["user_id"])
    return {c: {k: len(v) for k, v in offsets.items()} for c, offsets in users.items()}


@pytest.mark.parametrize(
    ("period", "period_days", "returning_event"),
    [("day", 1, None), ("day", 1, "purchase"), ("week", 7, None)],
)
def test_retention_equals_the_recomputation_from_the_manifest(
    chdb, loaded, period, period_days, returning_event
):
    """The range starts on day 2: users first seen on day 1 are in no cohort though they come back in it."""
    db, entries, _ = loaded
    span = TimeRange(START_MS + DAY_MS + 3_600_000, START_MS + 20 * DAY_MS)
    sql, params = retention_query(TABLE, db, period, span, returning_event)
    answer = retention_cohorts(chdb.query(sql, params))
    expected = expected_retention(entries, period_days, span, returning_event)
    assert {r["cohort"]: r["users"] for r in answer} == {c: o[0] for c, o in expected.items()}
    for row in answer:
        offsets = expected[row["cohort"]]
        assert row["returning"] == [offsets.get(k, 0) for k in range(1, len(row["returning"]) + 1)]
        assert all(k <= len(row["returning"]) for k in offsets)
    assert sum(r["users"] for r in answer) > 0 and any(any(r["returning"]) for r in answer)


def test_top_pages_equal_the_recomputation_from_the_events(chdb, loaded):
    db, entries, events = loaded
    span = TimeRange(START_MS + 2 * DAY_MS, START_MS + 9 * DAY_MS)
    views: dict[str, int] = defaultdict(int)
    users: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["event"]["type"] == "page_view" and span.start_ms <= e["timestamp"] < span.end_ms:
            page = e["context"]["url"].split("?")[0].split("#")[0]
            views[page] += 1
            users[page].add(e["user"]["id"])
    ranked = sorted(views, key=lambda p: (-views[p], p))[:5]
    sql, params = top_pages_query(TABLE, db, span, 5)
    answer = chdb.query(sql, params)
    assert [(r["page"], r["views"], r["users"]) for r in answer] == [
        (p, views[p], len(users[p])) for p in ranked
    ]


def test_top_pages_strip_the_query_string_and_fragment(chdb):
    db = fresh_table(chdb, "top_pages")
    day = START_MS + 3_600_000
    urls = ["https://shop.example/a?utm_source=x", "https://shop.example/a#top", "https://shop.example/b"]
    events = [raw_event(f"s{n}", f"e{n}", "page_view", day + n) for n in range(3)]
    for event, url in zip(events, urls, strict=True):
        event["context"]["url"] = url
    chdb.insert(f"{db}.{TABLE}", stored_rows(events))
    sql, params = top_pages_query(TABLE, db, TimeRange(START_MS, START_MS + DAY_MS), 10)
    assert [(r["page"], r["views"]) for r in chdb.query(sql, params)] == [
        ("https://shop.example/a", 2),
        ("https://shop.example/b", 1),
    ]


def test_sources_by_utm_referrer_and_direct(chdb):
    """On the raw table's enrichment columns: an empty value counts as none; a retried event (the same id in
    a later insert) counts once."""
    db = fresh_table(chdb, "sources")
    day = START_MS + 3_600_000
    rows = stored_rows(raw_event(f"s{n // 2}", f"e{n}", "page_view", day + n) for n in range(8))
    enrichment = [
        ("newsletter", "email", "winter", "t.co", "social"),
        ("newsletter", "email", "winter", "t.co", "social"),
        (None, None, None, "google.com", "search"),
        (None, None, None, "google.com", "search"),
        ("", "", "", "", ""),
        (None, None, None, None, "direct"),
        (None, None, None, "bing.com", "search"),
        (None, "cpc", None, "bing.com", "search"),
    ]
    for n, (row, values) in enumerate(zip(rows, enrichment, strict=True)):
        row.update(dict(zip(SOURCE_COLUMNS, values, strict=True)))
        row["user_id"] = f"u{n % 3}"
    chdb.insert(f"{db}.{TABLE}", rows)
    chdb.insert(f"{db}.{TABLE}", [{**rows[0], "_version": 100}])
    sql, params = sources_query(TABLE, db, TimeRange(START_MS, START_MS + DAY_MS), 100)
    answer = [
        (r["source"], r["medium"], r["campaign"], r["referrer_class"], r["events"], r["sessions"], r["users"])
        for r in chdb.query(sql, params)
    ]
    assert answer == [
        ("google.com", "search", None, "search", 2, 1, 2),
        ("newsletter", "email", "winter", "social", 2, 1, 2),
        ("(direct)", "direct", None, "direct", 1, 1, 1),
        ("(direct)", None, None, None, 1, 1, 1),
        ("bing.com", "cpc", None, "search", 1, 1, 1),
        ("bing.com", "search", None, "search", 1, 1, 1),
    ]


def rows_read(backend: ChdbBackend, sql: str, params: dict[str, Any]) -> int:
    """Rows ClickHouse read for the query (the statistics of its JSON output format)."""
    result = backend.session.query(sql, "JSON", params=params)
    return int(orjson.loads(result.bytes())["statistics"]["rows_read"])


def test_a_funnel_over_one_day_reads_a_small_fraction_of_the_raw_table(chdb):
    """300,000 events of 5 types over 10 days: a two-step funnel over one day reads the two types' rows of
    that day (about 2/50 of the table, in whole granules), not the table."""
    assert isinstance(chdb, ChdbBackend)
    db = fresh_table(chdb, "funnel_reads")
    total, days = 300_000, 10
    chdb.command(
        f"INSERT INTO `{db}`.`{TABLE}` (event_id, event_type, user_id, session_id, url, user_agent, "
        "screen_width, screen_height, properties, timestamp, received_at, _version) "
        "SELECT toString(number), "
        "['page_view', 'click', 'product_view', 'add_to_cart', 'purchase'][number % 5 + 1], "
        "concat('u', toString(number % 3000)), concat('s', toString(number % 9000)), "
        "'https://shop.example/', 'Mozilla/5.0', 1920, 1080, map(), "
        f"fromUnixTimestamp64Milli(toInt64({START_MS} + intDiv(number * {days * DAY_MS}, {total}))) AS ts, "
        "ts, "
        f"number FROM numbers({total})"
    )
    one_day = TimeRange(START_MS + 4 * DAY_MS, START_MS + 5 * DAY_MS)
    sql, params = funnel_query(TABLE, db, ["page_view", "purchase"], 3_600_000, one_day, "none")
    read = rows_read(chdb, sql, params)
    assert 2 * total / 50 <= read < total / 10, read
    every_day = TimeRange(START_MS, START_MS + days * DAY_MS)
    sql, params = funnel_query(TABLE, db, ["page_view", "purchase"], 3_600_000, every_day, "none")
    assert 2 * total / 5 <= rows_read(chdb, sql, params) < total  # still by type, in whole granules
