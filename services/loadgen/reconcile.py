"""Reconciliation: what each layer holds, compared with the independent recomputation from a load manifest.

Layers: the raw Kafka topic (event ids), each metric topic (last record per key), ClickHouse through the
storage API (metrics, raw rows and their enrichment columns per event id, and the identity tables:
persons, links, resolved sessions) and Redis through the cache API. Used by the end-to-end and fault
tests and by `rtap bench`.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.loadgen.manifest import (
    Entry,
    accepted,
    event_metrics,
    identity_links,
    performance_metrics,
    persons,
    resolved_sessions,
    session_metrics,
    top_pages,
    traffic_sources,
)
from shared.events import ENRICHMENT_KEYS, EVENT, HEARTBEAT_TYPE
from shared.metric_schema import MetricSchema
from shared.settings import Settings
from shared.topics import topics

Key = tuple[Any, ...]
IN_SPAN = (
    "{column} >= fromUnixTimestamp64Milli({{lo:Int64}}) AND {column} < fromUnixTimestamp64Milli({{hi:Int64}})"
)
# float columns (averages, interpolated percentiles, revenue): same formula, only rounding differs
REL_TOL = 1e-9
ABS_TOL = 1e-6


def by_key(schema: MetricSchema, records: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Records keyed by the schema key (later records replace earlier ones, as an upsert topic does)."""
    return {tuple(r[k] for k in schema.key): r for r in records}


def same_value(expected: Any, actual: Any, column_type: str) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if column_type == "float64":
        return math.isclose(float(expected), float(actual), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return bool(expected == actual)


def reconcile(
    schema: MetricSchema, expected: dict[Key, dict[str, Any]], actual: dict[Key, dict[str, Any]]
) -> list[str]:
    """Every difference, one line each: missing windows, extra windows, and columns whose value differs."""
    problems = [f"{schema.name} missing {key}" for key in sorted(expected.keys() - actual.keys())]
    problems += [
        f"{schema.name} unexpected {key}: {actual[key]}" for key in sorted(actual.keys() - expected.keys())
    ]
    types = {c.name: c.type for c in schema.columns}
    for key in sorted(expected.keys() & actual.keys()):
        for column, want in expected[key].items():
            got = actual[key].get(column)
            if not same_value(want, got, types[column]):
                problems.append(f"{schema.name} {key} {column}: expected {want!r}, got {got!r}")
    return problems


def expected_metrics(entries: list[Entry], s: Settings) -> dict[str, dict[Key, dict[str, Any]]]:
    window_ms = s.processing.window_seconds * 1000
    bots = s.processing.session_bots == "include"
    return {
        "event_metrics": event_metrics(entries, window_ms),
        "performance_metrics": performance_metrics(entries, window_ms),
        "session_metrics": session_metrics(entries, s.processing.session_gap_seconds * 1000, bots),
        "top_pages": top_pages(entries, window_ms, s.processing.top_pages, bots),
        "traffic_sources": traffic_sources(entries, window_ms, bots),
    }


# the raw table's enrichment columns, then the stored (possibly truncated) IP
ENRICHED_COLUMNS = (
    *(EVENT.at(f"enrichment.{key}").column for key in ENRICHMENT_KEYS),
    EVENT.at("context.ip_address").column,
)


def expected_enrichment(entries: Iterable[Entry], s: Settings) -> dict[str, dict[str, Any]]:
    """event id -> the raw table's enrichment columns and ip, for accepted events the generator described."""
    truncated = s.ingestion.ip_truncation == "network"
    out: dict[str, dict[str, Any]] = {}
    for e in accepted(entries):
        if e.get("enrichment"):
            want = {k: v for k, v in e["enrichment"].items() if k in ENRICHED_COLUMNS}
            out[e["id"]] = want | {"ip": e["enrichment"]["ip_network" if truncated else "ip_sent"]}
    return out


def reconcile_raw(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[str]:
    """Every difference between the expected and the stored enrichment, one line per event id and column."""
    problems = [f"raw enrichment missing {event_id}" for event_id in sorted(expected.keys() - actual.keys())]
    for event_id in sorted(expected.keys() & actual.keys()):
        for column, want in expected[event_id].items():
            if actual[event_id].get(column) != want:
                problems.append(
                    f"raw {event_id} {column}: expected {want!r}, got {actual[event_id].get(column)!r}"
                )
    return problems


def within(actual: dict[Key, dict[str, Any]], start_ms: int, end_ms: int) -> dict[Key, dict[str, Any]]:
    """The records whose window starts in [start_ms, end_ms): one run's share of a layer holding several
    runs."""
    return {key: record for key, record in actual.items() if start_ms <= key[0] < end_ms}


def window_range(expected: dict[Key, dict[str, Any]]) -> tuple[int, int]:
    starts = [key[0] for key in expected]
    return min(starts), max(starts) + 1


def settled(
    schema: MetricSchema, expected: dict[Key, dict[str, Any]]
) -> Callable[[dict[Key, dict[str, Any]]], bool]:
    """A done() for poll: true once a layer's records reconcile with `expected`."""
    return lambda actual: not reconcile(schema, expected, actual)


def poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float, pause: float = 1.0) -> Any:
    """read() until done(value) or the timeout; returns the last value (the caller shows what was missing)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(pause)
        value = read()
    return value


class Layers:
    """Reads every layer of one running stack."""

    def __init__(self, s: Settings, read_key: str | None = None):
        self.s = s
        self.headers = {"X-Read-Key": read_key} if read_key else {}

    def consume_all(self, topic: str, partitions: int, timeout_s: float = 60.0) -> Iterator[Any]:
        """Every record of a topic from the beginning up to its end offsets at the time of the call
        (heartbeats keep the raw topic growing, so "until idle" would never end)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.s.kafka.bootstrap,
                "group.id": f"reconcile-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        try:
            while pending and time.monotonic() < deadline:
                for m in consumer.consume(1_000, timeout=0.5):
                    partition, offset = m.partition(), m.offset()
                    if m.error() or partition is None or offset is None:
                        continue
                    if offset >= ends[partition] - 1:
                        pending.discard(partition)
                    if offset < ends[partition]:
                        yield m
        finally:
            consumer.close()

    def raw_ids(self) -> list[str]:
        events = topics(self.s).events
        values = (orjson.loads(m.value()) for m in self.consume_all(events.name, events.partitions))
        return [v["event"]["id"] for v in values if v["event"]["type"] != HEARTBEAT_TYPE]

    def topic_metrics(self, schema: MetricSchema) -> dict[Key, dict[str, Any]]:
        """The final value per key of a metric topic (the last record of each Kafka key)."""
        topic = topics(self.s).metric(schema)
        records = (
            orjson.loads(m.value())
            for m in self.consume_all(topic.name, topic.partitions)
            if m.value() is not None
        )
        return by_key(schema, records)

    def storage_sql(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        response = httpx.post(
            f"{self.s.storage.url}/v1/sql",
            json={"sql": sql, "params": params},
            headers=self.headers,
            timeout=self.s.storage.sql_max_seconds + 30,
        )
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()["rows"]
        return rows

    def storage_metrics(self, schema: MetricSchema, start_ms: int, end_ms: int) -> dict[Key, dict[str, Any]]:
        response = httpx.get(
            f"{self.s.storage.url}/v1/jobs/{schema.name}/windows",
            headers=self.headers,
            params={"from": start_ms, "to": end_ms, "limit": self.s.storage.max_limit},
            timeout=30,
        )
        response.raise_for_status()
        return by_key(schema, response.json()["rows"])

    def cache_windows(self, schema: MetricSchema, start_ms: int, end_ms: int) -> dict[Key, dict[str, Any]]:
        response = httpx.get(
            f"{self.s.cache.url}/v1/jobs/{schema.name}/windows",
            headers=self.headers,
            params={"from": start_ms, "to": end_ms, "limit": self.s.cache.max_limit},
            timeout=30,
        )
        response.raise_for_status()
        return by_key(schema, response.json()["records"])

    def raw_rows_between(self, start_ms: int, end_ms: int) -> dict[str, int]:
        """Rows and distinct event ids in raw storage (FINAL) with start_ms <= timestamp < end_ms."""
        table = self.s.storage.events_table
        sql = (
            f"SELECT count() AS rows, uniqExact(event_id) AS ids FROM {table} FINAL "
            "WHERE timestamp >= fromUnixTimestamp64Milli({lo:Int64}) "
            "AND timestamp < fromUnixTimestamp64Milli({hi:Int64})"
        )
        return self.storage_sql(sql, lo=start_ms, hi=end_ms)[0]

    def arrivals_behind(self, start_ms: int, end_ms: int) -> dict[str, int]:
        """Of the raw rows with start_ms <= timestamp < end_ms: how many reached ingestion more than the
        watermark delay after their timestamp (`behind`), and the largest such lag (`max_lag_ms`)."""
        sql = (
            "SELECT countIf(lag > {delay:Int64}) AS behind, max(lag) AS max_lag_ms FROM ("
            "SELECT toUnixTimestamp64Milli(received_at) - toUnixTimestamp64Milli(timestamp) AS lag "
            f"FROM {self.s.storage.events_table} FINAL "
            "WHERE timestamp >= fromUnixTimestamp64Milli({lo:Int64}) "
            "AND timestamp < fromUnixTimestamp64Milli({hi:Int64}))"
        )
        row = self.storage_sql(sql, lo=start_ms, hi=end_ms, delay=self.s.processing.watermark_delay_ms)[0]
        return {key: int(value or 0) for key, value in row.items()}

    def raw_enrichment(self, start_ms: int, end_ms: int) -> dict[str, dict[str, Any]]:
        """event id -> its enrichment columns and ip in raw storage (FINAL), start_ms <= timestamp < end_ms,
        read in pages of the SQL row limit."""
        table, page = self.s.storage.events_table, self.s.storage.sql_max_rows
        sql = (
            f"SELECT event_id, {', '.join(ENRICHED_COLUMNS)} FROM {table} FINAL "
            "WHERE timestamp >= fromUnixTimestamp64Milli({lo:Int64}) "
            "AND timestamp < fromUnixTimestamp64Milli({hi:Int64}) "
            "ORDER BY event_id LIMIT {page:UInt32} OFFSET {offset:UInt64}"
        )
        rows: dict[str, dict[str, Any]] = {}
        while True:
            found = self.storage_sql(sql, lo=start_ms, hi=end_ms, page=page, offset=len(rows))
            rows |= {row.pop("event_id"): row for row in found}
            if len(found) < page:
                return rows

    def identities(self, start_ms: int, end_ms: int) -> dict[str, Any]:
        """One run's identity answers from ClickHouse: persons and links resolved by `_version` among the
        updates with event times in [start_ms, end_ms), and the resolved user of each session starting there
        (the resolved_sessions view), in the shapes of manifest.persons(), identity_links() and
        resolved_sessions()."""
        span = {"lo": start_ms, "hi": end_ms}
        traits = self.storage_sql(
            "SELECT user_id, key, argMax(value, _version) AS value FROM person_properties "
            f"WHERE {IN_SPAN.format(column='updated_at')} GROUP BY user_id, key",
            **span,
        )
        links = self.storage_sql(
            "SELECT anonymous_id, argMax(user_id, _version) AS user_id FROM identity_links "
            f"WHERE {IN_SPAN.format(column='linked_at')} GROUP BY anonymous_id",
            **span,
        )
        sessions = self.storage_sql(
            "SELECT toUnixTimestamp64Milli(window_start) AS ws, session_id, resolved_user_id "
            f"FROM resolved_sessions WHERE {IN_SPAN.format(column='window_start')}",
            **span,
        )
        people: dict[str, dict[str, str]] = {}
        for row in traits:
            people.setdefault(row["user_id"], {})[row["key"]] = row["value"]
        return {
            "persons": people,
            "identity_links": {row["anonymous_id"]: row["user_id"] for row in links},
            "resolved_sessions": {(int(r["ws"]), r["session_id"]): r["resolved_user_id"] for r in sessions},
        }

    def taskmanager_metrics(self) -> str | None:
        """Every TaskManager's Prometheus exposition, one after the other; None when an endpoint does not
        answer (a reporter drops the odd scrape while tasks register their metrics)."""
        try:
            return "".join(
                httpx.get(url, timeout=10).raise_for_status().text
                for url in self.s.flink.taskmanager_metrics_urls
            )
        except httpx.HTTPError:
            return None

    def late_records_dropped(self) -> float | None:
        """Flink's count of records left out of closed windows (late by policy), None when the TaskManager's
        metrics endpoint does not answer."""
        text = self.taskmanager_metrics()
        if text is None:
            return None
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("flink_taskmanager_job_task_operator_numLateRecordsDropped")
        )

    def explain_late(self, start_ms: int, end_ms: int) -> list[str]:
        """Lines for a failed reconciliation when Flink dropped late records (their windows differ by
        policy), with how many of the run's events reached ingestion later than the watermark delay allows."""
        late = self.late_records_dropped()
        if not late:
            return []
        behind = self.arrivals_behind(start_ms, end_ms)
        return [
            f"flink: {late:.0f} records arrived after their window closed (numLateRecordsDropped; late by "
            "policy and still in Kafka and raw storage)",
            f"raw: {behind['behind']} of the run's events reached ingestion more than the watermark delay "
            f"({self.s.processing.watermark_delay_ms} ms) after their timestamp; the largest lag was "
            f"{behind['max_lag_ms']} ms (a client or a machine too slow for the delay)",
        ]

    def metric_readers(
        self, schema: MetricSchema, expected: dict[Key, dict[str, Any]]
    ) -> dict[str, Callable[[], dict[Key, dict[str, Any]]]]:
        """One reader per layer that holds this job's metrics, each limited to the windows of `expected`."""
        start, end = window_range(expected)
        return {
            "kafka": lambda: within(self.topic_metrics(schema), start, end),
            "clickhouse": lambda: self.storage_metrics(schema, start, end),
            "cache": lambda: self.cache_windows(schema, start, end),
        }


def expected_identities(entries: list[Entry], s: Settings) -> dict[str, Any]:
    """What Layers.identities() should answer for a run, recomputed from its manifest."""
    return {
        "persons": persons(entries),
        "identity_links": identity_links(entries),
        "resolved_sessions": resolved_sessions(entries, s.processing.session_gap_seconds * 1000),
    }


def identity_differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """One line per person, link or session whose answer differs (missing, unexpected or another value)."""
    problems = []
    for table, want in expected.items():
        got = actual[table]
        for key in sorted(want.keys() | got.keys(), key=str):
            if want.get(key) != got.get(key):
                problems.append(f"{table} {key}: expected {want.get(key)!r}, got {got.get(key)!r}")
    return problems


def time_span(entries: list[Entry]) -> tuple[int, int]:
    stamps = [e["timestamp"] for e in entries]
    return min(stamps), max(stamps) + 1


def reconcile_run(
    layers: Layers, schemas: dict[str, MetricSchema], entries: list[Entry], timeout: float
) -> list[str]:
    """Every difference between the stack and the manifest once every layer settled, or as they are
    `timeout` seconds from now (the layers settle concurrently, so one deadline for all: a layer read
    after it is read once)."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    counted = list(accepted(entries))
    problems: list[str] = []
    wanted = {e["id"] for e in counted}
    seen = poll(lambda: set(layers.raw_ids()), lambda ids: wanted <= ids, left())
    problems += [f"raw topic: {len(wanted - seen)} accepted ids missing"] if wanted - seen else []
    rows = poll(
        lambda: layers.raw_rows_between(*time_span(counted)), lambda r: r["rows"] >= len(wanted), left()
    )
    if rows != {"rows": len(wanted), "ids": len(wanted)}:
        problems.append(f"clickhouse raw: {rows}, expected {len(wanted)} rows, one per id")
    enrichment = expected_enrichment(counted, layers.s)
    stored = layers.raw_enrichment(*time_span(counted))
    problems += [f"clickhouse: {p}" for p in reconcile_raw(enrichment, stored)]
    for job, expected in expected_metrics(counted, layers.s).items():
        for layer, read in layers.metric_readers(schemas[job], expected).items():
            actual = poll(read, settled(schemas[job], expected), left())
            problems += [f"{layer}: {p}" for p in reconcile(schemas[job], expected, actual)]
    identities = expected_identities(counted, layers.s)
    span = time_span(counted)
    found = poll(lambda: layers.identities(*span), lambda got: got == identities, left())
    problems += [f"clickhouse: {p}" for p in identity_differences(identities, found)]
    if problems:
        problems[:0] = layers.explain_late(*time_span(counted))
    return problems
