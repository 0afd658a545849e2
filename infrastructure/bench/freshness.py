"""Freshness: from a window's close (window end + watermark delay, wall clock: the load generator stamps
events with its real-time schedule) until its final record is visible in the cache API (SSE stream), in
ClickHouse (the storage API, polled) and in its Kafka metric topic (the record's timestamp: Flink's emit
delay).

Each watcher records, per window key, every distinct value it saw and when (epoch ms); the final value of
a window is the one recomputed from the load manifest, so a window counts as visible when that exact value
is."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Self

import httpx
import numpy
import orjson

from services.loadgen.reconcile import Layers, same_value
from shared.metric_schema import MetricSchema
from shared.topics import topics

Arrivals = dict[tuple[Any, ...], list[tuple[float, dict[str, Any]]]]
PERCENTILES = (50, 95, 99)


def now_ms() -> float:
    return time.time() * 1000


def record_arrival(arrivals: Arrivals, schema: MetricSchema, record: dict[str, Any], at_ms: float) -> None:
    seen = arrivals.setdefault(tuple(record[k] for k in schema.key), [])
    if not seen or seen[-1][1] != record:
        seen.append((at_ms, record))


class Watcher:
    """A thread that runs `poll_once` until stop() (or its deadline), collecting arrivals per job."""

    def __init__(self, schemas: dict[str, MetricSchema], deadline_s: float):
        self.schemas = schemas
        self.arrivals: dict[str, Arrivals] = {job: {} for job in schemas}
        self.errors = 0
        self.deadline = time.monotonic() + deadline_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self.deadline

    def _run(self) -> None:
        raise NotImplementedError


class CacheStream(Watcher):
    """Follows `/v1/jobs/{job}/stream` of the cache API (one connection per job) and records each window's
    arrivals."""

    def __init__(
        self,
        base_url: str,
        schemas: dict[str, MetricSchema],
        deadline_s: float,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(schemas, deadline_s)
        self.base_url, self.headers = base_url, headers or {}
        self.subscribed = {job: threading.Event() for job in schemas}
        self._threads = [
            threading.Thread(target=self._follow, args=(job,), name=f"sse-{job}", daemon=True)
            for job in schemas
        ]

    def start(self) -> CacheStream:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)  # the stream sends a keep-alive at least every 15 s

    def wait_subscribed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(event.wait(max(0.0, deadline - time.monotonic())) for event in self.subscribed.values())

    def _follow(self, job: str) -> None:
        while self.running():
            try:
                self._read_stream(job)
            except (httpx.HTTPError, orjson.JSONDecodeError):
                self.errors += 1
                self._stop.wait(0.5)

    def _read_stream(self, job: str) -> None:
        timeout = httpx.Timeout(5.0, read=30.0)
        with httpx.stream(
            "GET", f"{self.base_url}/v1/jobs/{job}/stream", headers=self.headers, timeout=timeout
        ) as response:
            response.raise_for_status()
            event = None
            for line in response.iter_lines():
                if not self.running():
                    return
                if line.startswith(": subscribed") or line.startswith(":subscribed"):
                    self.subscribed[job].set()
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "window":
                    record_arrival(
                        self.arrivals[job], self.schemas[job], orjson.loads(line[5:].strip()), now_ms()
                    )
                elif not line:
                    event = None


class ClickHousePoller(Watcher):
    """Polls the storage API `/v1/jobs/{job}/windows` for the recent windows every `interval` seconds."""

    def __init__(
        self,
        base_url: str,
        schemas: dict[str, MetricSchema],
        deadline_s: float,
        lookback_ms: int,
        interval: float = 0.1,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(schemas, deadline_s)
        self.base_url, self.lookback_ms, self.interval, self.headers = (
            base_url,
            lookback_ms,
            interval,
            headers or {},
        )
        self.polls = 0

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10) as client:
            while self.running():
                for job, schema in self.schemas.items():
                    self._poll(client, job, schema)
                self.polls += 1
                self._stop.wait(self.interval)

    def _poll(self, client: httpx.Client, job: str, schema: MetricSchema) -> None:
        now = int(now_ms())
        try:
            response = client.get(
                f"/v1/jobs/{job}/windows",
                params={"from": now - self.lookback_ms, "to": now + 60_000, "limit": 10_000},
            )
            response.raise_for_status()
            rows = response.json()["rows"]
        except (httpx.HTTPError, ValueError, KeyError):
            self.errors += 1
            return
        seen = now_ms()
        for row in rows:
            record_arrival(self.arrivals[job], schema, row, seen)


def kafka_arrivals(layers: Layers, schema: MetricSchema) -> Arrivals:
    """Every record of the job's metric topic with its Kafka timestamp (the sink writes it when Flink
    emits)."""
    arrivals: Arrivals = {}
    topic = topics(layers.s).metric(schema)
    for message in layers.consume_all(topic.name, topic.partitions):
        if message.value() is not None:
            record_arrival(arrivals, schema, orjson.loads(message.value()), float(message.timestamp()[1]))
    return arrivals


def is_final(schema: MetricSchema, want: dict[str, Any], got: dict[str, Any]) -> bool:
    types = {c.name: c.type for c in schema.columns}
    return all(same_value(value, got.get(column), types[column]) for column, value in want.items())


def delays_ms(
    schema: MetricSchema,
    expected: dict[tuple[Any, ...], dict[str, Any]],
    arrivals: Arrivals,
    close_ms: Callable[[tuple[Any, ...]], float],
) -> tuple[list[float], int]:
    """(delay from close until the final value was first seen, for each window seen with it; windows never
    seen so)."""
    delays, missing = [], 0
    for key, want in expected.items():
        first = next((at for at, record in arrivals.get(key, []) if is_final(schema, want, record)), None)
        if first is None:
            missing += 1
        else:
            delays.append(first - close_ms(key))
    return delays, missing


def distribution(delays: list[float], missing: int) -> dict[str, Any]:
    """p50/p95/p99/max in ms of the delays, the window counts, and the delays themselves (for the plot)."""
    if not delays:
        return {
            "windows": 0,
            "missing": missing,
            "p50_ms": None,
            "p95_ms": None,
            "p99_ms": None,
            "max_ms": None,
            "delays_ms": [],
        }
    p50, p95, p99 = (float(v) for v in numpy.percentile(delays, PERCENTILES))
    return {
        "windows": len(delays),
        "missing": missing,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": max(delays),
        "delays_ms": [round(d, 1) for d in delays],
    }
