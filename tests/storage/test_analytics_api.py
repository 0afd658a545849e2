"""The analytics routes of the storage API and their CLI commands, on the real service (Kafka -> storage
-> chDB): answers equal the recomputation from a load manifest; hostile parameters get a precise 4xx, never
a 5xx.

The traffic here has users, sessions and event ids of its own (loadgen worker WORKER) and lies a week back,
where no other test writes raw events, so a retention cohort holds only its users.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from infrastructure.cli import app as cli
from services.loadgen.manifest import Entry, entry_for, record_send
from services.loadgen.traffic import Traffic, TrafficSpec
from services.storage.analytics import TimeRange
from tests.storage.conftest import READ_KEY, produce_events, scalar, wait_for
from tests.storage.test_analytics_sql import STEPS, expected_funnel, expected_retention

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]
runner = CliRunner()
DAY_MS = 86_400_000
WORKER = 7_316  # users u7316-*, sessions s16-7316-*
EVENTS = 1_500


def days_ago(days: int) -> int:
    today = datetime.now(UTC).date()
    return int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000) - days * DAY_MS


@pytest.fixture(scope="module")
def loaded(kafka, api) -> tuple[list[Entry], TimeRange]:
    """Six days of traffic from ten days ago, produced to Kafka; every 10th event twice (a retry)."""
    start = days_ago(10)
    spec = TrafficSpec(
        seed=16,
        start_ms=start,
        rate=EVENTS / (6 * 86_400),
        worker=WORKER,
        users=200,
        open_sessions=10,
        login_fraction=0,
        alias_fraction=0,
    )
    events = Traffic(spec).events(EVENTS)
    entries = [entry_for(e) for e in events]
    for entry in entries:
        record_send(entry, 202, True)
    now = int(time.time() * 1000)
    produce_events(kafka, ({**e, "received_at": now} for e in events + events[::10]))
    count = "SELECT count() AS n FROM analytics_events FINAL WHERE startsWith(user_id, {p:String})"
    wait_for(lambda: scalar(api, count, p=f"u{WORKER}-") == EVENTS, timeout=60)
    return entries, TimeRange(start, start + 7 * DAY_MS)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_funnel_answers_equal_the_recomputation_from_the_manifest(api, loaded):
    entries, span = loaded
    response = api.get(
        "/v1/analytics/funnel",
        params={"from": iso(span.start_ms), "to": str(span.end_ms), "step": STEPS, "window": 86_400},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_funnel(entries, STEPS, DAY_MS, span)
    assert {r["step"]: r["users"] for r in body["rows"]} == {n: expected.get(n, 0) for n in range(1, 5)}
    assert expected.get(4, 0) > 0
    assert [r["event_type"] for r in body["rows"]] == STEPS and body["breakdown"] == "none"


def test_retention_answers_equal_the_recomputation_from_the_manifest(api, loaded):
    entries, span = loaded
    later = TimeRange(span.start_ms + DAY_MS, span.end_ms)
    response = api.get(
        "/v1/analytics/retention",
        params={"from": str(later.start_ms), "to": str(later.end_ms), "period": "day"},
    )
    assert response.status_code == 200, response.text
    expected = expected_retention(entries, 1, later, None)
    cohorts = response.json()["cohorts"]
    assert {c["cohort"]: c["users"] for c in cohorts} == {c: o[0] for c, o in expected.items()}
    for cohort in cohorts:
        offsets = expected[cohort["cohort"]]
        assert cohort["returning"] == [offsets.get(k, 0) for k in range(1, len(cohort["returning"]) + 1)]
    assert any(any(c["returning"]) for c in cohorts)


def test_top_pages_count_each_retried_event_once(api, loaded):
    entries, span = loaded
    response = api.get(
        "/v1/analytics/top-pages", params={"from": span.start_ms, "to": span.end_ms, "limit": 3}
    )
    assert response.status_code == 200, response.text
    rows = response.json()["rows"]
    assert len(rows) == 3 and rows[0]["views"] >= rows[1]["views"] >= rows[2]["views"]
    page_views = sum(1 for e in entries if e["type"] == "page_view")
    every = api.get(
        "/v1/analytics/top-pages", params={"from": span.start_ms, "to": span.end_ms, "limit": 100}
    )
    assert sum(r["views"] for r in every.json()["rows"]) == page_views


def test_sources_count_every_event_once(api, loaded):
    """Events produced straight to Kafka carry no enrichment: all of them are one direct-less group, and the
    groups' events add up to the distinct events of the range."""
    entries, span = loaded
    response = api.get(
        "/v1/analytics/sources", params={"from": span.start_ms, "to": span.end_ms, "limit": 100}
    )
    assert response.status_code == 200, response.text
    assert sum(r["events"] for r in response.json()["rows"]) == len({e["id"] for e in entries})


def test_an_injected_step_is_just_an_event_type(api, loaded):
    _, span = loaded
    steps = ["page_view' OR 1=1 --", "purchase\\'); DROP TABLE analytics_events; --"]
    response = api.get(
        "/v1/analytics/funnel", params={"from": span.start_ms, "to": span.end_ms, "step": steps}
    )
    assert response.status_code == 200, response.text
    assert [r["users"] for r in response.json()["rows"]] == [0, 0]
    assert scalar(api, "SELECT count() AS n FROM analytics_events") > 0


RANGE = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}
HOSTILE = [
    ("funnel", {**RANGE, "step": ["a"]}, "step"),
    ("funnel", {**RANGE, "step": [f"t{n}" for n in range(11)]}, "step"),
    ("funnel", {**RANGE, "step": ["a", "a"]}, "step"),
    ("funnel", {**RANGE, "step": ["a", ""]}, "step"),
    ("funnel", {**RANGE, "step": ["a", "b" * 129]}, "step"),
    ("funnel", {**RANGE, "step": ["a", "b"], "window": "0"}, "window"),
    ("funnel", {**RANGE, "step": ["a", "b"], "window": str(32 * 86_400)}, "window"),
    ("funnel", {**RANGE, "step": ["a", "b"], "window": "1e3"}, "window"),
    ("funnel", {**RANGE, "step": ["a", "b"], "window": "99999999999999999999999"}, "window"),
    ("funnel", {**RANGE, "step": ["a", "b"], "breakdown": "user_id); DROP"}, "breakdown"),
    ("funnel", {"to": RANGE["to"], "step": ["a", "b"]}, "from"),
    ("funnel", RANGE, "step"),
    ("retention", {"from": "2026-01-01", "to": "2026-03-01"}, "to"),
    ("retention", {"from": "2026-01-02", "to": "2026-01-01"}, "to"),
    ("retention", {"from": "2026-01-01", "to": "2026-01-01"}, "to"),
    ("retention", {"from": "yesterday", "to": "2026-01-01"}, "from"),
    ("retention", {"from": "1" * 30, "to": "2026-01-01"}, "from"),
    ("retention", {**RANGE, "period": "month"}, "period"),
    ("retention", {**RANGE, "event": ""}, "event"),
    ("retention", {**RANGE, "event": "x" * 129}, "event"),
    ("top-pages", {**RANGE, "limit": "0"}, "limit"),
    ("top-pages", {**RANGE, "limit": "10001"}, "limit"),
    ("top-pages", {**RANGE, "limit": "-1"}, "limit"),
    ("sources", {**RANGE, "limit": "ten"}, "limit"),
]


@pytest.mark.parametrize(("kind", "params", "names"), HOSTILE)
def test_hostile_parameters_get_a_422_naming_them(api, kind, params, names):
    response = api.get(f"/v1/analytics/{kind}", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", names], response.text


@pytest.mark.parametrize("kind", ["funnel", "retention", "top-pages", "sources"])
def test_analytics_need_the_read_key(storage_service, kind):
    response = httpx.get(f"{storage_service.url()}/v1/analytics/{kind}", params=RANGE, timeout=10)
    assert response.status_code == 401
    wrong = httpx.get(
        f"{storage_service.url()}/v1/analytics/{kind}", params=RANGE, headers={"X-Read-Key": "no"}, timeout=10
    )
    assert wrong.status_code == 401


def test_odd_bytes_in_parameters_are_never_a_5xx(api):
    """Percent-encoded bytes that are not UTF-8, NULs, a lone surrogate's UTF-8 bytes: 200 or 422."""
    for raw in ("%ED%A0%80", "%00", "%FF%FE", "%C0%AF", "a%0Ab"):
        for query in (
            f"/v1/analytics/funnel?from=0&to=1000&step={raw}&step=b",
            f"/v1/analytics/retention?from=0&to=1000&event={raw}",
            f"/v1/analytics/top-pages?from={raw}&to=1000",
        ):
            response = api.get(query)
            assert response.status_code in (200, 422), (query, response.text)


def test_the_openapi_document_lists_every_analytics_route(api):
    paths = api.get("/openapi.json").json()["paths"]
    for kind in ("funnel", "retention", "top-pages", "sources"):
        operation = paths[f"/v1/analytics/{kind}"]["get"]
        assert "analytics" in operation["tags"] and "422" in operation["responses"]
    names = {p["name"] for p in paths["/v1/analytics/funnel"]["get"]["parameters"] if p["in"] == "query"}
    assert names == {"from", "to", "step", "window", "breakdown"}


def invoke(*args: str) -> Any:
    return runner.invoke(cli, [*args, "--key", READ_KEY])


def test_rtap_funnel_and_retention_print_tables(loaded):
    entries, span = loaded
    result = invoke(
        "funnel",
        *(x for s in STEPS for x in ("--step", s)),
        "--from",
        iso(span.start_ms),
        "--to",
        iso(span.end_ms),
        "--window",
        "86400",
    )
    assert result.exit_code == 0, result.output
    expected = expected_funnel(entries, STEPS, DAY_MS, span)
    for number, event_type in enumerate(STEPS, 1):
        line = next(line for line in result.output.splitlines() if f" {event_type} " in line)
        assert f" {expected.get(number, 0)} " in line, result.output
    result = invoke("retention", "--from", str(span.start_ms), "--to", str(span.end_ms), "--period", "week")
    assert result.exit_code == 0, result.output
    assert "cohort" in result.output and "week 1" in result.output


def test_rtap_top_pages_prints_a_table(loaded):
    _, span = loaded
    result = invoke("top-pages", "--from", str(span.start_ms), "--to", str(span.end_ms), "--limit", "2")
    assert result.exit_code == 0, result.output
    assert "https://shop.example/" in result.output and "2 row(s)" in result.output


def test_rtap_analytics_commands_report_a_refusal(loaded):
    result = invoke("funnel", "--step", "a", "--from", "2026-01-01", "--to", "2026-01-02")
    assert result.exit_code == 2
    assert "query.step" in result.output and "2..10 steps" in result.output
    result = invoke("sources", "--from", "2026-01-01", "--to", "2026-01-03", "--limit", "0")
    assert result.exit_code == 2 and "limit" in result.output
