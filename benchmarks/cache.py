"""Cache API requests/s for latest-window and range queries, one server worker.

    .venv/bin/python benchmarks/cache.py [--duration 5] [--connections 32] [--windows 500]

Starts a private redis-server (temporary state dir, free port), seeds event_metrics windows through the
consumer's own write path, runs the cache API (one uvicorn worker, no Kafka consumer) in one process and a
keep-alive HTTP/1.1 load client in another, for a bounded duration per query, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import psutil  # noqa: E402
import redis  # noqa: E402

from infrastructure.local.components import Redis  # noqa: E402
from services.cache.layout import layouts, write_records  # noqa: E402
from services.processing.registry import load_schemas  # noqa: E402
from shared.settings import CacheSettings, RedisSettings, Settings  # noqa: E402

EVENT_TYPES = ("page_view", "click", "add_to_cart", "purchase", "signup")
DEVICES = ("desktop", "mobile", "tablet", "bot")
WINDOW_MS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def seed(settings: Settings, windows: int) -> int:
    layout = layouts(settings.cache.key_prefix, load_schemas().values())["event_metrics"]
    client = redis.Redis.from_url(settings.redis.url)
    pipe = client.pipeline(transaction=False)
    base = int(time.time() * 1000) // WINDOW_MS * WINDOW_MS - windows * WINDOW_MS
    records = [
        {
            "window_start": base + w * WINDOW_MS,
            "window_end": base + (w + 1) * WINDOW_MS,
            "event_type": event_type,
            "device_category": device,
            "events": 100 + w,
            "unique_users": 10 + w,
        }
        for w in range(windows)
        for event_type in EVENT_TYPES
        for device in DEVICES
    ]
    chunk = 50 * len(EVENT_TYPES) * len(DEVICES)  # 50 windows per pipeline
    for start in range(0, len(records), chunk):
        write_records(pipe, [(layout, r) for r in records[start : start + chunk]], 10**6, 3600)
        pipe.execute()
    return base


def serve(settings: Settings) -> None:
    import uvicorn

    from services.cache.api import create_app

    uvicorn.run(
        create_app(settings, run_consumer=False),
        host="127.0.0.1",
        port=settings.cache.port,
        log_level="warning",
        access_log=False,
    )


async def connection(port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:80]!r}")
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            counts[0] += 1
    finally:
        writer.close()


async def load(port: int, path: str, connections: int, duration: float) -> tuple[int, float]:
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    counts = [0]
    start = time.perf_counter()
    deadline = start + duration
    await asyncio.gather(*(connection(port, request, deadline, counts) for _ in range(connections)))
    return counts[0], time.perf_counter() - start


def client(port: int, path: str, connections: int, duration: float, out: mp.Queue[tuple[int, float]]) -> None:
    out.put(asyncio.run(load(port, path, connections, duration)))


def run_load(server_pid: int, port: int, path: str, connections: int, duration: float) -> tuple[float, float]:
    """Requests/s seen by the client, and requests per CPU-second the server process used.

    The second is the worker's capacity even when other processes compete for the cores.
    """
    server = psutil.Process(server_pid)
    out: mp.Queue[tuple[int, float]] = mp.Queue()
    proc = mp.Process(target=client, args=(port, path, connections, duration, out))
    cpu_before = sum(server.cpu_times()[:2])
    proc.start()
    requests, elapsed = out.get(timeout=duration + 60)
    cpu = sum(server.cpu_times()[:2]) - cpu_before
    proc.join(10)
    return requests / elapsed, requests / cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per query")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--windows", type=int, default=500, help="windows seeded (x20 group combinations)")
    args = parser.parse_args()
    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in psutil.getloadavg())}"
        f" on {psutil.cpu_count()} cores"
    )

    state = Path(tempfile.mkdtemp(prefix="rtap-bench-cache-"))
    settings = Settings(
        state_dir=state,
        redis=RedisSettings(port=free_port()),
        cache=CacheSettings(port=free_port(), key_prefix="bench"),
    )
    redis_server = Redis(settings)
    redis_server.start()
    server = mp.Process(target=serve, args=(settings,), daemon=True)
    try:
        base = seed(settings, args.windows)
        server.start()
        if server.pid is None:
            raise RuntimeError("the cache API process did not start")
        url = f"http://127.0.0.1:{settings.cache.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        mid = base + args.windows // 2 * WINDOW_MS
        queries = {
            "latest (20 records)": "/v1/jobs/event_metrics/latest",
            "latest, filtered (1 record)": (
                "/v1/jobs/event_metrics/latest?event_type=click&device_category=mobile"
            ),
            "range, filtered, 10 windows": (
                f"/v1/jobs/event_metrics/windows?from={mid}&to={mid + 10 * WINDOW_MS}"
                "&event_type=click&device_category=mobile"
            ),
            "range, 100 records": f"/v1/jobs/event_metrics/windows?from={mid}&limit=100",
        }
        print(
            f"cache API, 1 worker, {args.connections} keep-alive connections, "
            f"{args.duration:.0f} s per query, "
            f"{args.windows * 20} records seeded"
        )
        for name, path in queries.items():
            body = httpx.get(url + path).json()
            rps, per_cpu = run_load(server.pid, settings.cache.port, path, args.connections, args.duration)
            print(
                f"  {name:30s} {rps:9,.0f} requests/s  {per_cpu:9,.0f} requests per server CPU-second"
                f"  ({len(body['records'])} records per answer)"
            )
    finally:
        if server.is_alive():
            server.terminate()
            server.join(10)
        redis_server.stop()


if __name__ == "__main__":
    main()
