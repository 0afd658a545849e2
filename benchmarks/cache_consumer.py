"""Cache consumer: metric records written to Redis per second and per cache CPU-second.

    .venv/bin/python benchmarks/cache_consumer.py [--records 200000]

Starts a private Kafka broker and redis-server (temporary state, free ports) and the real cache service
(`python -m services.cache`) as its own process, then produces --records event_metrics records (16 keys
per window, as the job writes them) as fast as possible, and reads the service's own
rtap_consumer_records_written_total{sink="cache"} until all are written. Prints the cache process's CPU
time over that span and records per cache CPU-second, the figure that does not depend on what else runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from confluent_kafka import Producer  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.cpu import cpu_seconds  # noqa: E402
from benchmarks.storage import metric  # noqa: E402
from infrastructure.local.components import Kafka, Redis  # noqa: E402
from infrastructure.local.isolated import isolated_settings  # noqa: E402
from infrastructure.local.stack import Service  # noqa: E402
from services.processing.registry import load_schemas  # noqa: E402
from shared.kafka_admin import ensure_topics  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402

WRITTEN = "rtap_consumer_records_written_total"


def written(url: str) -> float:
    """Records the cache service has written to Redis, from its /metrics."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(s.value for f in families for s in f.samples if s.name == WRITTEN)


def produce(settings: Settings, n: int) -> float:
    """n event_metrics records into the job's topic; seconds until all are acknowledged."""
    topic = topics(settings).metric(load_schemas()["event_metrics"]).name
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka.bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
        }
    )
    started = time.perf_counter()
    for i in range(n):
        key, value = metric(i)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return time.perf_counter() - started


def measure(url: str, pid: int, settings: Settings, n: int) -> None:
    base, cpu_before = written(url), cpu_seconds(pid)
    started = time.perf_counter()
    produced_s = produce(settings, n)
    first = last = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and last is None:
        count, now = written(url) - base, time.perf_counter()
        first = now if first is None and count > 0 else first
        last = now if count >= n else None
        time.sleep(0.1)
    if first is None or last is None:
        print(f"cache: only {written(url) - base:.0f} of {n} records written within 300 s")
        return
    cpu = cpu_seconds(pid) - cpu_before
    print(f"cache: {n} event_metrics records produced in {produced_s:.1f} s")
    print(f"cache: the cache process used {cpu:.1f} CPU-s -> {n / cpu:,.0f} records per cache CPU-second")
    print(
        f"cache: written {last - started:.1f} s after the first produce -> "
        f"{n / max(last - first, 1e-9):,.0f} records/s while writing"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rtap-bench-cache-consumer-") as tmp:
        settings = isolated_settings(Path(tmp) / "state", RTAP_LOG_LEVEL="WARNING")
        settings.state_path.mkdir(parents=True)
        (settings.state_path / ".rtap-state").write_text('{"format": 1}')
        kafka, redis, cache = Kafka(settings), Redis(settings), Service(settings, "cache")
        try:
            kafka.start()
            ensure_topics(settings.kafka.bootstrap, topics(settings).all(load_schemas().values()))
            redis.start()
            cache.start()
            while httpx.get(f"{cache.url()}/readyz", timeout=10).status_code != 200:
                time.sleep(0.5)
            pid = cache.pid()
            if pid is None:
                raise RuntimeError("the cache service is not running")
            measure(cache.url(), pid, settings, args.records)
        finally:
            cache.stop()
            redis.stop()
            kafka.stop()


if __name__ == "__main__":
    main()
