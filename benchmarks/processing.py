"""Sustained throughput of the three built-in jobs together on this machine.

Starts a private Kafka + Flink (state in a temp dir, free ports), preloads N events into a fresh
topic, runs the jobs bounded over that topic (the backfill path: same SQL, same sinks), and prints
events/s = N / (job end - job start) as measured by Flink (submission time excluded).

    .venv/bin/python benchmarks/processing.py [--events 500000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psutil
from confluent_kafka import Producer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infrastructure.local.isolated import Harness, isolated_settings  # noqa: E402
from infrastructure.local.stack import settings_env  # noqa: E402
from services.processing.supervisor import submit_job  # noqa: E402
from shared.events import HEARTBEAT_TYPE  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402
from tests.processing.conftest import DESKTOP_UA, IPHONE_UA, create_topics, processing_settings  # noqa: E402

TYPES = ["page_view"] * 6 + ["product_view"] * 2 + ["click", "add_to_cart", "purchase"]
# what ingestion's enrichment adds to a record (the code before it ignores the group): a few sources
ENRICHMENTS = [
    {
        "utm_source": source,
        "utm_medium": medium,
        "utm_campaign": campaign,
        "utm_term": None,
        "utm_content": None,
        "referrer_host": host,
        "referrer_class": referrer_class,
        "browser": "Chrome",
        "browser_version": "124",
        "os": "Windows",
        "os_version": "10",
        "country": "US",
    }
    for source, medium, campaign, host, referrer_class in (
        (None, None, None, None, "direct"),
        (None, None, None, "google.com", "search"),
        ("newsletter", "email", "spring", "mail.example", "email"),
        (None, None, None, "shop.example", "internal"),
    )
]


def preload(s: Settings, n: int, start_ms: int) -> None:
    producer = Producer(
        {
            "bootstrap.servers": s.kafka.bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    rng = random.Random(1)
    for i in range(n):
        ts = start_ms + i  # 1,000 events per second of event time
        session = f"s{rng.randrange(20_000)}"
        value = {
            "event": {"type": rng.choice(TYPES), "id": uuid.uuid4().hex},
            "user": {"id": f"u{rng.randrange(50_000)}"},
            "device": {
                "user_agent": rng.choice((DESKTOP_UA, IPHONE_UA)),
                "screen_width": 1920,
                "screen_height": 1080,
            },
            "context": {
                "url": f"https://shop.example/p{rng.randrange(40)}",
                "referrer": None,
                "ip_address": None,
                "session_id": session,
            },
            "enrichment": rng.choice(ENRICHMENTS),
            "properties": {"revenue": 10.5},
            "metrics": {"load_time": rng.uniform(50, 3000), "interaction_time": rng.uniform(1, 300)},
            "timestamp": ts,
            "received_at": ts,
        }
        producer.produce(topics(s).events.name, key=session, value=json.dumps(value), timestamp=ts)
        if i % 10_000 == 0:
            producer.poll(0)
    hb = json.dumps(
        {
            "event": {"type": HEARTBEAT_TYPE, "id": "hb"},
            "timestamp": start_ms + n,
            "received_at": start_ms + n,
        }
    )
    for partition in range(4):
        producer.produce(topics(s).events.name, value=hb, partition=partition, timestamp=start_ms + n)
    assert producer.flush(120) == 0


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return (
        times.user
        + times.system
        + sum(c.cpu_times().user + c.cpu_times().system for c in process.children(recursive=True))
    )


def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = isolated_settings(Path(tmp) / "state")
        harness = Harness(base)
        try:
            harness.ensure("kafka", "flink-jobmanager", "flink-taskmanager")
            s = processing_settings(base, parallelism=0, session_gap_seconds=30)
            create_topics(s)
            start_ms = int(time.time() * 1000) - n - 3_600_000
            t0 = time.perf_counter()
            preload(s, n, start_ms)
            print(f"preloaded {n} events in {time.perf_counter() - t0:.1f}s")
            env = settings_env(s)
            taskmanager = psutil.Process(harness.stack.component("flink-taskmanager").pid())
            cpu_before = cpu_seconds(taskmanager)
            job_id = submit_job(
                extra_args=["--from", str(start_ms), "--to", str(start_ms + n)], env={**os.environ, **env}
            )
            rest = f"http://127.0.0.1:{s.flink.rest_port}/jobs/{job_id}"
            while (detail := httpx.get(rest, timeout=5).json())["state"] not in (
                "FINISHED",
                "FAILED",
                "CANCELED",
            ):
                time.sleep(1)
            seconds = detail["duration"] / 1000
            cpu = cpu_seconds(taskmanager) - cpu_before
            print(
                f"state={detail['state']} parallelism={base.flink.parallelism} events={n} "
                f"job_seconds={seconds:.1f} throughput={n / seconds:,.0f} events/s "
                f"taskmanager_cpu={cpu:.1f}s ({n / cpu:,.0f} events per TaskManager CPU-second) "
                f"load_average={os.getloadavg()[0]:.1f}"
            )
        finally:
            harness.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=500_000)
    run(parser.parse_args().events)
