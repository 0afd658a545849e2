"""Storage: rows/s written to chDB and the consumer's lag behind Kafka.

    .venv/bin/python benchmarks/storage.py [--backlog 100000] [--rate 10000] [--duration 20]

Starts a private Kafka broker (temporary state dir, free ports) and the real storage service
(`python -m services.storage`, embedded chDB) as its own process, then:

1. backlog: produces --backlog raw events (plus one event_metrics record per 20 events) as fast as
   possible and measures rows/s from the first to the last row written (the service's own
   rtap_consumer_records_written_total counter);
2. sustained: produces events at --rate per second for --duration seconds and samples the
   service's lag gauge (records in Kafka not yet written and committed) every 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import orjson  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.cpu import cpu_seconds  # noqa: E402
from infrastructure.local.components import Kafka  # noqa: E402
from infrastructure.local.stack import Service  # noqa: E402
from services.processing.registry import load_schemas  # noqa: E402
from shared.kafka_admin import ensure_topics  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402

EVENT_TYPES = ("page_view", "click", "add_to_cart", "purchase")
EVENTS = topics(Settings()).events  # private_settings changes ports, not topic names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def private_settings(state: Path, batch_rows: int, batch_seconds: float) -> Settings:
    kafka_port = free_port()
    os.environ.update(
        {
            "RTAP_STATE_DIR": str(state),
            "RTAP_KAFKA__PORT": str(kafka_port),
            "RTAP_KAFKA__BOOTSTRAP": f"127.0.0.1:{kafka_port}",
            "RTAP_KAFKA__CONTROLLER_PORT": str(free_port()),
            "RTAP_KAFKA__JMX_EXPORTER_PORT": str(free_port()),
            "RTAP_STORAGE__PORT": str(free_port()),
            "RTAP_STORAGE__BATCH_ROWS": str(batch_rows),
            "RTAP_STORAGE__BATCH_SECONDS": str(batch_seconds),
            "RTAP_LOG_LEVEL": "WARNING",
        }
    )
    return Settings()


def event(i: int, now_ms: int) -> tuple[bytes, bytes]:
    session = f"s{i % 5000}"
    value = {
        "event": {"type": EVENT_TYPES[i % 4], "id": str(uuid.uuid4())},
        "user": {"id": f"u{i % 20000}"},
        "device": {
            "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
            "screen_width": 390,
            "screen_height": 844,
        },
        "context": {
            "url": f"https://shop.example/p/{i % 500}",
            "referrer": None,
            "ip_address": "203.0.113.7",
            "session_id": session,
        },
        "properties": {"sku": f"A-{i % 300}", "qty": 1},
        "metrics": {"load_time": 400.0 + i % 900, "interaction_time": None},
        "timestamp": now_ms,
        "received_at": now_ms,
    }
    return session.encode(), orjson.dumps(value)


def metric(i: int) -> tuple[bytes, bytes]:
    ws = 1_767_225_600_000 + (i // 16) * 10_000
    record = {
        "window_start": ws,
        "window_end": ws + 10_000,
        "event_type": EVENT_TYPES[i % 4],
        "device_category": ("desktop", "mobile", "tablet", "bot")[(i // 4) % 4],
        "events": i,
        "unique_users": i // 2,
    }
    return orjson.dumps(
        {k: record[k] for k in ("window_start", "event_type", "device_category")}
    ), orjson.dumps(record)


def produce(producer: Producer, start: int, count: int) -> None:
    now_ms = int(time.time() * 1000)
    for i in range(start, start + count):
        key, value = event(i, now_ms)
        while True:
            try:
                producer.produce(EVENTS.name, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20 == 0:
            key, value = metric(i // 20)
            producer.produce("event_metrics", key=key, value=value)
    producer.poll(0)


def scrape(url: str) -> tuple[float, float]:
    """(rows written in total, lag records in total) from the service's /metrics."""
    rows = lag = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "rtap_consumer_records_written_total":
                rows += sample.value
            elif sample.name == "rtap_consumer_lag_records":
                lag += sample.value
    return rows, lag


def backlog_phase(producer: Producer, url: str, n: int, pid: int) -> None:
    expected = n + (n + 19) // 20
    base, _ = scrape(url)
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    produce(producer, 0, n)
    producer.flush(120)
    produced_s = time.perf_counter() - started
    first = last = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows, _ = scrape(url)
        now = time.perf_counter()
        if rows > base and first is None:
            first = now
        if rows - base >= expected:
            last = now
            break
        time.sleep(0.1)
    if last is None or first is None:
        print(f"backlog: only {rows - base:.0f} of {expected} rows written within 120 s")
        return
    cpu = cpu_seconds(pid) - cpu_before
    print(
        f"backlog: {expected} rows ({n} raw events + {expected - n} metric records)"
        f" produced in {produced_s:.1f} s"
    )
    print(
        f"backlog: storage process used {cpu:.1f} CPU-s -> {expected / cpu:,.0f} rows per storage CPU-second"
    )
    print(
        f"backlog: written in {last - started:.1f} s after the first produce -> "
        f"{expected / (last - started):,.0f} rows/s end to end, "
        f"{expected / max(last - first, 1e-9):,.0f} rows/s while writing"
    )


def sustained_phase(producer: Producer, url: str, rate: int, duration: float) -> None:
    lags: list[float] = []
    tick, sent = 0.1, 0
    started = time.perf_counter()
    next_sample = started
    while (elapsed := time.perf_counter() - started) < duration:
        due = int(rate * elapsed) - sent
        if due > 0:
            produce(producer, 10_000_000 + sent, due)
            sent += due
        if time.perf_counter() >= next_sample:
            lags.append(scrape(url)[1])
            next_sample += 0.5
        time.sleep(tick)
    producer.flush(60)
    drained_at = None
    while drained_at is None and time.perf_counter() - started < duration + 120:
        if scrape(url)[1] == 0:
            drained_at = time.perf_counter() - started - duration
        else:
            time.sleep(0.2)
    lags.sort()
    p50, p95, peak = lags[len(lags) // 2], lags[int(len(lags) * 0.95)], lags[-1]
    print(
        f"sustained: {sent / duration:,.0f} events/s offered for {duration:.0f} s; "
        "lag (records not yet written+committed): "
        f"p50 {p50:,.0f}, p95 {p95:,.0f}, max {peak:,.0f}; "
        f"drained {drained_at if drained_at is not None else float('nan'):.1f} s after the producer stopped"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--batch-rows", type=int, default=Settings().storage.batch_rows)
    parser.add_argument("--batch-seconds", type=float, default=Settings().storage.batch_seconds)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtap-bench-storage-") as tmp:
        settings = private_settings(Path(tmp) / "state", args.batch_rows, args.batch_seconds)
        settings.state_path.mkdir(parents=True)
        (settings.state_path / ".rtap-state").write_text('{"format": 1}')
        kafka, storage = Kafka(settings), Service(settings, "storage")
        try:
            kafka.start()
            ensure_topics(settings.kafka.bootstrap, topics(settings).all(load_schemas().values()))
            storage.start()
            while httpx.get(f"{storage.url()}/readyz", timeout=10).status_code != 200:
                time.sleep(0.5)
            print(
                f"storage: chDB, batch_rows={args.batch_rows}, batch_seconds={args.batch_seconds}; "
                f"cores: {os.cpu_count()}"
            )
            producer = Producer(
                {
                    "bootstrap.servers": settings.kafka.bootstrap,
                    "linger.ms": 20,
                    "compression.type": "lz4",
                    "queue.buffering.max.messages": 500_000,
                }
            )
            pid = storage.pid()
            if pid is None:
                raise RuntimeError("the storage service is not running")
            backlog_phase(producer, storage.url(), args.backlog, pid)
            sustained_phase(producer, storage.url(), args.rate, args.duration)
        finally:
            storage.stop()
            kafka.stop()


if __name__ == "__main__":
    main()
