"""Ingestion throughput against a real Kafka broker: single-event requests/s and batched events/s.

The ingestion service runs as its own process (python -m services.ingestion); this script is the
load client (raw HTTP/1.1 keep-alive connections on asyncio + uvloop, 127.0.0.1 only). Every
counted request got a 202, i.e. its events were acknowledged by Kafka with acks=all.

    .venv/bin/python benchmarks/ingestion.py [--duration 10] [--connections 64] [--batch-size 500]

Without --bootstrap it starts a private broker (free ports, temporary state dir) and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infrastructure.local.components import Component  # noqa: E402
from infrastructure.local.stack import Service, Stack  # noqa: E402
from shared.settings import IngestionSettings, KafkaSettings, Settings  # noqa: E402

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def sample_event(i: int) -> dict[str, Any]:
    return {
        "event": {"type": "page_view"},
        "user": {"id": f"user-{i % 1000}"},
        "device": {
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
            "screen_width": 1920,
            "screen_height": 1080,
        },
        "context": {
            "url": "https://shop.example/products/42",
            "referrer": "https://search.example/",
            "session_id": f"sess-{i % 5000}",
        },
        "properties": {"plan": "pro", "items": 2, "price": 19.99},
        "metrics": {"load_time": 231.5, "interaction_time": 40.0},
    }


def http_request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.latencies: list[float] = []


async def connection(port: int, request: bytes, deadline: float, stats: Stats) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            stats.latencies.append(time.perf_counter() - started)
            if head.startswith(b"HTTP/1.1 202"):
                stats.ok += 1
            else:
                stats.failed += 1
    finally:
        writer.close()


async def load(port: int, request: bytes, connections: int, seconds: float) -> tuple[Stats, float]:
    stats = Stats()
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(connection(port, request, deadline, stats) for _ in range(connections)))
    return stats, time.perf_counter() - started


def cpu_seconds(server: psutil.Process) -> float:
    times = server.cpu_times()
    return times.user + times.system


def event_loop_seconds(server: psutil.Process) -> float:
    """CPU of the server's main thread, which runs the event loop (one worker; the Kafka client has its own
    threads)."""
    return next((t.user_time + t.system_time for t in server.threads() if t.id == server.pid), 0.0)


def phase(
    name: str,
    server: psutil.Process,
    port: int,
    request: bytes,
    connections: int,
    seconds: float,
    events_per_request: int,
) -> dict[str, Any]:
    """Run one load phase and print throughput, latency and the server's own CPU use.

    events per server CPU-second is what one worker could do on a core of its own: on this
    2-core machine the load client, the broker and the server share the cores."""
    cpu_before, loop_before = cpu_seconds(server), event_loop_seconds(server)
    stats, elapsed = asyncio.run(load(port, request, connections, seconds))
    server_cpu, loop_cpu = cpu_seconds(server) - cpu_before, event_loop_seconds(server) - loop_before
    lat = sorted(stats.latencies) or [0.0]
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    events = stats.ok * events_per_request
    print(
        f"{name:<7} {stats.ok / elapsed:>8,.0f} req/s {events / elapsed:>10,.0f} events/s | "
        f"server CPU {server_cpu / elapsed:4.2f} cores, "
        f"{events / max(server_cpu, 1e-9):>9,.0f} events per server CPU-second | "
        f"p50 {p50:5.1f} ms p99 {p99:6.1f} ms | "
        f"202s {stats.ok:,} non-202 {stats.failed:,} ({elapsed:.1f}s)\n"
        f"{'':7} event-loop thread {loop_cpu / elapsed:4.2f} cores, "
        f"{loop_cpu / max(events, 1) * 1e6:5.1f} us per event",
        flush=True,
    )
    return {
        "name": name,
        "requests_per_s": stats.ok / elapsed,
        "events_per_s": events / elapsed,
        "server_cpu_cores": server_cpu / elapsed,
        "event_loop_cores": loop_cpu / elapsed,
        "events_per_server_cpu_second": events / max(server_cpu, 1e-9),
        "p50_ms": p50,
        "p99_ms": p99,
        "non_202": stats.failed,
    }


@contextmanager
def running(component: Component) -> Iterator[None]:
    component.start()
    try:
        yield
    finally:
        component.stop()


def bench_settings(state_dir: Path, bootstrap: str | None, workers: int) -> Settings:
    kafka_port = free_port()
    kafka = KafkaSettings(
        port=kafka_port,
        bootstrap=bootstrap or f"{HOST}:{kafka_port}",
        controller_port=free_port(),
        jmx_exporter_port=free_port(),
        heap="1g",
    )
    return Settings(
        state_dir=state_dir,
        kafka=kafka,
        ingestion=IngestionSettings(port=free_port(), workers=workers, max_batch_events=5000),
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rtap-bench-") as tmp, ExitStack() as stack:
        settings = bench_settings(Path(tmp), args.bootstrap, args.workers)
        local = Stack(settings, only=["kafka"])
        local.check_state_dir()
        if not args.bootstrap:
            print(f"starting a private Kafka broker on {settings.kafka.bootstrap} ...", flush=True)
            stack.enter_context(running(local.component("kafka")))
            local.create_topics()
        service = Service(settings, "ingestion")
        stack.enter_context(running(service))
        port = settings.ingestion.port
        single = http_request("/v1/analytics/track", orjson.dumps(sample_event(1)))
        batch = http_request(
            "/v1/analytics/batch", orjson.dumps({"events": [sample_event(i) for i in range(args.batch_size)]})
        )
        print(
            f"ingestion: {args.workers} worker(s) on {HOST}:{port}; load client: 1 process; "
            f"{args.duration:g}s per phase"
        )
        server = psutil.Process(service.pid())
        asyncio.run(load(port, single, args.connections, 2.0))  # warm-up
        results = [
            phase("single", server, port, single, args.connections, args.duration, 1),
            phase("batch", server, port, batch, args.batch_connections, args.duration, args.batch_size),
        ]
        if args.json:
            Path(args.json).write_bytes(orjson.dumps({"phases": results}, option=orjson.OPT_INDENT_2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (bounded)")
    parser.add_argument(
        "--connections", type=int, default=64, help="concurrent connections, single-event phase"
    )
    parser.add_argument(
        "--batch-connections", type=int, default=8, help="concurrent connections, batch phase"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="events per batch request")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--bootstrap", help="use this broker instead of starting a private one (topics must exist)"
    )
    parser.add_argument(
        "--json", help="also write the phase results to this file as JSON (used by rtap bench)"
    )
    args = parser.parse_args()
    args.duration = min(args.duration, 120.0)
    uvloop.install()
    run(args)


if __name__ == "__main__":
    main()
