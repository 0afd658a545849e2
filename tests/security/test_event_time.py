"""Event time that no client can poison (docs/operations.md, "Event time and clock skew").

One client stamps its events ahead of the clock, from half the future bound F to the largest timestamp the
API accepts; "another writer" puts a record stamped far ahead straight on the events topic; an ordinary client
sends events up to D - F old (D: watermark delay); then a slow client sends events behind the watermark the
window operators report. On the full local stack:
- ingestion keeps a timestamp at most F ahead of its receive time, replaces any later one by the receive time
  (flag, original in a header, counter), and raw storage holds the very value the jobs windowed by;
- every ordinary event is in its window: the raw table, the metric topics, ClickHouse and the cache API
  reconcile with the recomputation from the stored timestamps;
- the replaced and the late events are visible in ingestion's and Flink's counters, in Prometheus' figures,
  and the LateEventsDropped alert fires.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from pydantic import ValidationError

from infrastructure.local.isolated import isolated_settings
from services.ingestion.records import ORIGINAL_TIMESTAMP_HEADER
from services.loadgen.manifest import Entry, entry_for
from services.loadgen.reconcile import Layers, poll, reconcile_run
from services.loadgen.traffic import Traffic, TrafficSpec
from services.processing.registry import load_schemas
from shared.events import INT64_MAX
from shared.settings import Settings
from shared.topics import topics
from tests.e2e.stack import INFRASTRUCTURE, full_stack, reconciled_env
from tests.topics import EVENTS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.flink,
    pytest.mark.redis,
    pytest.mark.clickhouse,
]

WINDOW_S, GAP_S = 2, 3
WATERMARK_DELAY_MS = 4_000  # the future bound stays at its default
ROUNDS = 4
PER_OFFSET = 3
ORDINARY_PER_AGE = 10
LATE_EVENTS = 20
# An ordinary event is stamped this much younger than the allowance: its request's own way to ingestion on a
# busy machine.
TRAVEL_MARGIN_MS = 1_000
SETTLE_TIMEOUT_S = 180
READ_PAUSE_S = (
    1.0  # several periodic watermark intervals: Flink has read the attacker's events before the next batch
)
LIVE_LAG_MS = (
    3_000  # a live job's window watermark trails the clock by the delay plus about a heartbeat interval
)
ALERT_TIMEOUT_S = 90


def allowance_ms(s: Settings) -> int:
    """The documented bound: watermark delay minus the future skew ingestion keeps."""
    return s.processing.watermark_delay_ms - s.ingestion.max_future_skew_ms


def future_offsets_ms(s: Settings) -> list[int]:
    """Offsets ahead of the clock: within the future bound, at it, and beyond it up to days."""
    f = s.ingestion.max_future_skew_ms
    return [f // 2, f, f + 1, 2 * f + 1_000, s.processing.watermark_delay_ms, 60_000, 290_000, 86_400_000]


def ordinary_ages_ms(s: Settings) -> list[int]:
    return sorted({0, max(0, allowance_ms(s) // 2), max(0, allowance_ms(s) - TRAVEL_MARGIN_MS)})


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Sent:
    """What each client sent: events by id, and the timestamp each carried."""

    events: dict[str, dict[str, Any]] = field(default_factory=dict)
    attacker: set[str] = field(default_factory=set)
    ordinary: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    adjusted_in_response: set[str] = field(default_factory=set)
    foreign: set[str] = field(default_factory=set)  # records another writer put on the topic
    enrichment: dict[str, dict[str, Any]] = field(default_factory=dict)  # the generators' expectations


@dataclass
class Run:
    s: Settings
    sent: Sent
    raw: dict[str, dict[str, int]]  # event id -> {"ts", "received"} from ClickHouse's raw table
    adjusted_before: float
    late_before: float


def ingestion_counter(s: Settings, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{s.ingestion.port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def post_batch(s: Settings, events: list[dict[str, Any]], sent: Sent) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{s.ingestion.port}/v1/analytics/batch", json={"events": events}, timeout=30
    )
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    assert all(r["status"] == "accepted" for r in results), results
    for event, result in zip(events, results, strict=True):
        assert result["id"] == event["event"]["id"]
        sent.events[result["id"]] = event
        if result["timestamp_adjusted"]:
            sent.adjusted_in_response.add(result["id"])


def stamped(events: list[dict[str, Any]], timestamp: int, new_sessions: bool = False) -> list[dict[str, Any]]:
    for event in events:
        event["timestamp"] = timestamp
        if new_sessions:
            event["context"]["session_id"] = f"own-{uuid.uuid4().hex}"
    return events


def send_foreign_records(s: Settings, ahead_ms: int) -> set[str]:
    """Records written to every partition of the events topic by something other than ingestion, stamped
    ahead_ms into the future (every partition, so they would move the watermark of all of them)."""
    events = Traffic(
        TrafficSpec(seed=99, start_ms=now_ms(), worker=3, login_fraction=0, alias_fraction=0)
    ).events(EVENTS.partitions)
    producer = Producer({"bootstrap.servers": s.kafka.bootstrap, "acks": "all"})
    for partition, event in enumerate(events):
        received = now_ms()
        value = {**event, "timestamp": received + ahead_ms, "received_at": received}
        producer.produce(
            topics(s).events.name,
            key=event["context"]["session_id"].encode(),
            value=orjson.dumps(value),
            partition=partition,
        )
    assert producer.flush(15) == 0
    return {event["event"]["id"] for event in events}


def window_watermark(s: Settings) -> int | None:
    """The lowest watermark of the jobs' window operators (Flink's reporter), None until every one has one."""
    text = Layers(s).taskmanager_metrics() or ""
    marks = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flink_taskmanager_job_task_operator_currentInputWatermark")
        and "WindowAggregate" in line
    ]
    return int(min(marks)) if marks and min(marks) > 0 else None


def wait_until_live(s: Settings) -> None:
    """Until the window operators' watermark follows the clock: the job reads the topic as records arrive, so
    each batch below has moved the watermark (or not) before the next one is read."""

    def live() -> bool:
        return (window_watermark(s) or 0) >= now_ms() - s.processing.watermark_delay_ms - LIVE_LAG_MS

    assert poll(live, bool, timeout=120), (
        f"the window operators' watermark lags the clock: {window_watermark(s)}"
    )


def wait_until_watched(s: Settings) -> None:
    """Until Prometheus holds ingestion's replaced-timestamp counter and Flink's late-record counters, so it
    sees them rise."""
    names = (
        "rtap_ingestion_timestamps_adjusted_total",
        "flink_taskmanager_job_task_operator_numLateRecordsDropped",
    )
    watched = poll(lambda: all(prometheus_samples(s, name) for name in names), bool, timeout=90)
    assert watched, f"Prometheus does not scrape {names}; targets up: {prometheus_up(s)}"


def send_late(s: Settings, sent: Sent) -> None:
    """A slow client's events, each in a session of its own, stamped so far behind the watermark the window
    operators already passed that their tumbling windows and sessions are closed: late by policy, whenever
    Flink reads them."""
    watermark = poll(lambda: window_watermark(s), bool, timeout=60)
    assert watermark, "the window operators report no watermark"
    behind_ms = 2 * s.processing.window_seconds * 1000 + s.processing.session_gap_seconds * 1000
    slow = Traffic(TrafficSpec(seed=1, start_ms=now_ms(), worker=2, login_fraction=0, alias_fraction=0))
    stamp = min(watermark, now_ms() - s.processing.watermark_delay_ms) - behind_ms
    batch = stamped(slow.events(LATE_EVENTS), stamp, True)
    post_batch(s, batch, sent)
    sent.late |= {e["event"]["id"] for e in batch}


def send_all(s: Settings) -> Sent:
    """ROUNDS rounds: the attacker, a pause in which Flink reads its events, the ordinary client; then the
    slow client."""
    sent = Sent()
    start = now_ms()
    attacker = Traffic(TrafficSpec(seed=1, start_ms=start, worker=1, login_fraction=0, alias_fraction=0))
    ordinary = Traffic(TrafficSpec(seed=1, start_ms=start, worker=0, login_fraction=0, alias_fraction=0))
    for round_ in range(ROUNDS):
        t = now_ms()
        batch = [
            e
            for offset in future_offsets_ms(s)
            for e in stamped(attacker.events(PER_OFFSET), t + offset, True)
        ]
        batch += stamped(
            attacker.events(PER_OFFSET), INT64_MAX, True
        )  # the largest timestamp the API accepts
        post_batch(s, batch, sent)
        sent.attacker |= {e["event"]["id"] for e in batch}
        if round_ == 0:
            sent.foreign = send_foreign_records(s, 290_000)
        time.sleep(READ_PAUSE_S)
        t = now_ms()
        batch = [
            e for age in ordinary_ages_ms(s) for e in stamped(ordinary.events(ORDINARY_PER_AGE), t - age)
        ]
        post_batch(s, batch, sent)
        sent.ordinary |= {e["event"]["id"] for e in batch}
    send_late(s, sent)
    sent.enrichment = {**attacker.expected, **ordinary.expected}
    return sent


def raw_times(layers: Layers, since_ms: int) -> dict[str, dict[str, int]]:
    sql = (
        "SELECT event_id, toUnixTimestamp64Milli(timestamp) AS ts, "
        "toUnixTimestamp64Milli(received_at) AS received "
        "FROM analytics_events FINAL WHERE received_at >= fromUnixTimestamp64Milli({since:Int64})"
    )
    rows = layers.storage_sql(sql, since=since_ms)
    return {row["event_id"]: {"ts": int(row["ts"]), "received": int(row["received"])} for row in rows}


def prometheus_samples(s: Settings, expr: str) -> list[dict]:
    response = httpx.get(
        f"http://127.0.0.1:{s.prometheus.port}/api/v1/query", params={"query": expr}, timeout=10
    )
    return response.json()["data"]["result"]


def prometheus_value(s: Settings, expr: str) -> float:
    return sum(float(r["value"][1]) for r in prometheus_samples(s, expr))


def prometheus_up(s: Settings) -> dict[str, str]:
    return {r["metric"]["job"]: r["value"][1] for r in prometheus_samples(s, "up")}


def firing(s: Settings, alertname: str) -> bool:
    body = httpx.get(f"http://127.0.0.1:{s.prometheus.port}/api/v1/alerts", timeout=10).json()
    return any(
        a["labels"]["alertname"] == alertname and a["state"] == "firing" for a in body["data"]["alerts"]
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Settings]:
    with full_stack(
        tmp_path_factory.mktemp("event-time") / "state",
        INFRASTRUCTURE + ("prometheus",),
        **reconciled_env(WINDOW_S, GAP_S, WATERMARK_DELAY_MS),
    ) as (s, _, _):
        yield s


@pytest.fixture(scope="module")
def run(stack: Settings) -> Run:
    layers = Layers(stack)
    wait_until_live(stack)
    wait_until_watched(stack)
    adjusted_before = ingestion_counter(stack, "rtap_ingestion_timestamps_adjusted_total")
    late_before = layers.late_records_dropped() or 0.0
    since = now_ms()
    sent = send_all(stack)
    wanted = set(sent.events) | sent.foreign
    raw = poll(lambda: raw_times(layers, since), lambda r: wanted <= r.keys(), timeout=60)
    assert wanted <= raw.keys(), f"{len(wanted - raw.keys())} accepted events not in the raw table"
    return Run(stack, sent, raw, adjusted_before, late_before)


def expected_entries(run: Run) -> list[Entry]:
    """Every accepted event but the late ones, at the timestamp in raw storage (the one the jobs must use)."""
    entries = []
    for event_id, event in run.sent.events.items():
        if event_id not in run.sent.late:
            entry = entry_for(event, enrichment=run.sent.enrichment.get(event_id))
            entry.update(accepted=True, sends=1, timestamp=run.raw[event_id]["ts"])
            entries.append(entry)
    return entries


def test_settings_refuse_a_future_bound_above_half_the_watermark_delay():
    def settings(future_ms: int, delay_ms: int) -> Settings:
        s = Settings()
        return Settings(
            ingestion=s.ingestion.model_copy(update={"max_future_skew_ms": future_ms}),
            processing=s.processing.model_copy(update={"watermark_delay_ms": delay_ms}),
        )

    assert allowance_ms(settings(1_000, 2_000)) == 1_000
    with pytest.raises(ValidationError, match="MAX_FUTURE_SKEW_MS"):
        settings(1_001, 2_000)
    with pytest.raises(ValidationError, match="MAX_FUTURE_SKEW_MS"):
        settings(300_000, 2_000)


def test_the_defaults_leave_every_client_most_of_the_watermark_delay(tmp_path):
    s = isolated_settings(tmp_path / "state")
    assert allowance_ms(s) >= s.processing.watermark_delay_ms / 2


def test_a_timestamp_beyond_the_largest_the_api_accepts_is_refused_naming_the_field(stack):
    body = {
        **Traffic(TrafficSpec(seed=5, start_ms=now_ms(), login_fraction=0, alias_fraction=0)).events(1)[0],
        "timestamp": INT64_MAX + 1,
    }
    response = httpx.post(
        f"http://127.0.0.1:{stack.ingestion.port}/v1/analytics/track", json=body, timeout=10
    )
    [problem] = response.json()["detail"]
    assert response.status_code == 400 and problem["loc"] == ["body", "timestamp"], response.text


def test_ingestion_keeps_a_timestamp_within_the_future_bound_and_replaces_any_later_one(run):
    future_ms = run.s.ingestion.max_future_skew_ms
    for event_id in run.sent.attacker:
        client, stored = run.sent.events[event_id]["timestamp"], run.raw[event_id]
        beyond = client > stored["received"] + future_ms
        assert (event_id in run.sent.adjusted_in_response) == beyond, (event_id, client, stored)
        assert stored["ts"] == (stored["received"] if beyond else client), (event_id, client, stored)
    assert run.sent.adjusted_in_response <= run.sent.attacker
    assert (
        len(run.sent.adjusted_in_response) >= ROUNDS * PER_OFFSET * 6
    )  # 60 s, 290 s, 1 day, INT64_MAX at least
    for event_id in run.sent.ordinary | run.sent.late:
        assert run.raw[event_id]["ts"] == run.sent.events[event_id]["timestamp"]


def test_a_replaced_timestamp_keeps_the_client_value_in_a_header(run):
    layers = Layers(run.s)
    headers = {}
    for message in layers.consume_all(topics(run.s).events.name, EVENTS.partitions):
        value = orjson.loads(message.value())
        if value["event"]["id"] in run.sent.adjusted_in_response:
            headers[value["event"]["id"]] = (dict(message.headers() or []), value)
    assert headers.keys() == run.sent.adjusted_in_response
    for event_id, (record_headers, value) in headers.items():
        assert (
            record_headers[ORIGINAL_TIMESTAMP_HEADER] == str(run.sent.events[event_id]["timestamp"]).encode()
        )
        assert value["timestamp"] == value["received_at"] == run.raw[event_id]["ts"]


def test_every_ordinary_event_is_in_its_window_in_every_layer(run):
    problems = reconcile_run(Layers(run.s), load_schemas(), expected_entries(run), SETTLE_TIMEOUT_S)
    allowance = allowance_ms(run.s)
    beyond_bound = [i for i in run.sent.ordinary if run.raw[i]["received"] - run.raw[i]["ts"] > allowance]
    assert problems == [], (
        f"{len(problems)} differences ({len(beyond_bound)} of {len(run.sent.ordinary)} ordinary events "
        f"reached ingestion later than the bound of {allowance} ms):\n" + "\n".join(problems[:30])
    )


def test_replaced_and_late_events_are_counted_where_monitoring_sees_them(run):
    adjusted = ingestion_counter(run.s, "rtap_ingestion_timestamps_adjusted_total") - run.adjusted_before
    assert adjusted == len(run.sent.adjusted_in_response)
    layers = Layers(run.s)
    late = poll(
        lambda: (layers.late_records_dropped() or 0.0) - run.late_before,
        lambda n: n >= len(run.sent.late),
        60,
    )
    assert late >= len(run.sent.late), (
        f"Flink counted {late} late records for {len(run.sent.late)} late events"
    )
    window_ms = run.s.processing.window_seconds * 1000
    late_windows = {run.raw[i]["ts"] // window_ms * window_ms for i in run.sent.late}
    windows = {key[0] for key in layers.topic_metrics(load_schemas()["event_metrics"])}
    assert not late_windows & windows, "a late event reached a window"
    stamps = [run.raw[i]["ts"] for i in run.sent.late]
    explained = layers.explain_late(min(stamps), max(stamps) + 1)  # what a failed reconciliation says
    assert f"raw: {len(run.sent.late)} of the run's events reached ingestion more than" in explained[1]
    figures = ("rtap:timestamps_adjusted:increase5m", "rtap:late_records_dropped:increase5m")
    seen = poll(
        lambda: {f: prometheus_value(run.s, f) for f in figures}, lambda v: all(v.values()), ALERT_TIMEOUT_S
    )
    assert all(seen.values()), (
        f"Prometheus figures the dashboard shows: {seen}; targets up: {prometheus_up(run.s)}"
    )
    assert poll(lambda: firing(run.s, "LateEventsDropped"), bool, ALERT_TIMEOUT_S), (
        "LateEventsDropped did not fire"
    )
