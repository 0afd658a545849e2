"""Ingestion throughput against a real Kafka broker: single-event requests/s and batched events/s.

The ingestion service runs as its own process (python -m services.ingestion); the load comes over 127.0.0.1
from a compiled client by default, wrk (Debian's package, installed by infrastructure/bootstrap.sh, driven by
a Lua script generated into a temporary directory), so the client does not take the CPU the server needs;
`--client python` is a load client in this process (raw HTTP/1.1 keep-alive connections on asyncio +
uvloop). Every counted request got a 202, i.e. its events were acknowledged by Kafka with acks=all; a run
in which any request got another answer (or none) fails.

    .venv/bin/python benchmarks/ingestion.py [--client wrk|python] [--repeats 3] [--duration 10]
                                             [--connections 64] [--batch-size 500] [--workers 1]
                                             [--set linger_ms=10 ...]

Each repeat runs the single-event phase, then the batch phase; the last lines are the medians over the
repeats. Without --bootstrap it starts a private broker (free ports, temporary state dir) and stops it after.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cpu import cpu_seconds  # noqa: E402
from infrastructure.local.components import Component  # noqa: E402
from infrastructure.local.stack import Service, Stack  # noqa: E402
from shared.settings import IngestionSettings, KafkaSettings, Settings  # noqa: E402

HOST = "127.0.0.1"
WARM_UP_S = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def sample_event(i: int) -> dict[str, Any]:
    """An event without an id: ingestion gives every accepted event a new one, so repeating a body is not
    repeating an event."""
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


@dataclass(frozen=True)
class Phase:
    name: str
    path: str
    body: bytes
    connections: int
    events_per_request: int


@dataclass(frozen=True)
class Load:
    """What a client saw: requests answered 202 and otherwise (including sockets errors and timeouts)."""

    ok: int
    failed: int
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float


Client = Callable[[int, Phase, float], Load]


# --- the Python client (asyncio + uvloop, in this process) ---


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


def python_client(port: int, phase: Phase, seconds: float) -> Load:
    request = http_request(phase.path, phase.body)
    cpu_before = time.process_time()
    stats, elapsed = asyncio.run(load(port, request, phase.connections, seconds))
    lat = sorted(stats.latencies) or [0.0]
    return Load(
        ok=stats.ok,
        failed=stats.failed,
        elapsed_s=elapsed,
        p50_ms=lat[len(lat) // 2] * 1000,
        p99_ms=lat[int(len(lat) * 0.99)] * 1000,
        client_cpu_s=time.process_time() - cpu_before,
    )


# --- wrk ---

# wrk runs this in one Lua state per thread; done() sums the threads' counts and prints one line to parse.
WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open([==[{body_file}]==], "rb"))
wrk.body = file:read("*a")
file:close()

not_202 = 0
local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 202 then
    not_202 = not_202 + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("not_202")
  end
  local e = summary.errors
  io.write(string.format(
    "rtap-wrk requests=%d duration_us=%d not_202=%d connect=%d read=%d write=%d timeout=%d "
    .. "p50_us=%d p99_us=%d\\n",
    summary.requests, summary.duration, total, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
WRK_RESULT = re.compile(r"^rtap-wrk (.*)$", re.MULTILINE)


class Wrk:
    """wrk with one generated Lua script per phase (in work_dir): POSTs the phase's body on keep-alive
    connections."""

    def __init__(self, work_dir: Path, threads: int, timeout_s: float):
        binary = shutil.which("wrk")
        if binary is None:
            raise SystemExit("wrk is not installed: run infrastructure/bootstrap.sh (Debian package wrk)")
        self.binary, self.work_dir, self.threads, self.timeout_s = binary, work_dir, threads, timeout_s

    def script(self, phase: Phase) -> Path:
        body_file = self.work_dir / f"{phase.name}.json"
        body_file.write_bytes(phase.body)
        script = self.work_dir / f"{phase.name}.lua"
        script.write_text(WRK_SCRIPT.format(body_file=body_file))
        return script

    def __call__(self, port: int, phase: Phase, seconds: float) -> Load:
        argv = [
            self.binary,
            f"--threads={min(self.threads, phase.connections)}",
            f"--connections={phase.connections}",
            f"--duration={max(1, round(seconds))}s",
            f"--timeout={self.timeout_s:g}s",
            f"--script={self.script(phase)}",
            f"http://{HOST}:{port}{phase.path}",
        ]
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        found = WRK_RESULT.search(out.stdout)
        if out.returncode != 0 or found is None:
            raise SystemExit(f"wrk failed (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
        fields = {k: int(v) for k, v in (pair.split("=") for pair in found.group(1).split())}
        unanswered = sum(fields[k] for k in ("connect", "read", "write", "timeout"))
        return Load(
            ok=fields["requests"] - fields["not_202"],
            failed=fields["not_202"] + unanswered,
            elapsed_s=fields["duration_us"] / 1e6,
            p50_ms=fields["p50_us"] / 1000,
            p99_ms=fields["p99_us"] / 1000,
            client_cpu_s=(children_after.ru_utime + children_after.ru_stime)
            - (children_before.ru_utime + children_before.ru_stime),
        )


# --- measuring the server ---


def event_loop_seconds(server: psutil.Process) -> float:
    """CPU of the server's main thread, which runs the event loop (one worker; the Kafka client has its own
    threads)."""
    return next((t.user_time + t.system_time for t in server.threads() if t.id == server.pid), 0.0)


def measure(
    client: Client, server: psutil.Process, port: int, phase: Phase, seconds: float
) -> dict[str, Any]:
    """One load phase: throughput, latency, the client's and the server's own CPU use.

    events per server CPU-second is what one worker could do on a core of its own: on this
    2-core machine the load client, the broker and the server share the cores."""
    cpu_before, loop_before = cpu_seconds(server.pid), event_loop_seconds(server)
    seen = client(port, phase, seconds)
    server_cpu, loop_cpu = cpu_seconds(server.pid) - cpu_before, event_loop_seconds(server) - loop_before
    events, elapsed = seen.ok * phase.events_per_request, seen.elapsed_s
    return {
        "name": phase.name,
        "requests_per_s": seen.ok / elapsed,
        "events_per_s": events / elapsed,
        "server_cpu_cores": server_cpu / elapsed,
        "event_loop_cores": loop_cpu / elapsed,
        "event_loop_us_per_event": loop_cpu / max(events, 1) * 1e6,
        "events_per_server_cpu_second": events / max(server_cpu, 1e-9),
        "client_cpu_cores": seen.client_cpu_s / elapsed,
        "client_us_per_request": seen.client_cpu_s / max(seen.ok + seen.failed, 1) * 1e6,
        "p50_ms": seen.p50_ms,
        "p99_ms": seen.p99_ms,
        "requests": seen.ok,
        "non_202": seen.failed,
        "seconds": elapsed,
    }


def show(label: str, r: dict[str, Any]) -> None:
    print(
        f"{label:<14} {r['requests_per_s']:>8,.0f} req/s {r['events_per_s']:>10,.0f} events/s | "
        f"server CPU {r['server_cpu_cores']:4.2f} cores, "
        f"{r['events_per_server_cpu_second']:>9,.0f} events per server CPU-second | "
        f"event loop {r['event_loop_us_per_event']:5.1f} us per event | "
        f"client CPU {r['client_cpu_cores']:4.2f} cores, {r['client_us_per_request']:4.0f} us per request | "
        f"p50 {r['p50_ms']:5.1f} ms p99 {r['p99_ms']:6.1f} ms | "
        f"202s {r['requests']:,} non-202 {r['non_202']:,} ({r['seconds']:.1f}s)",
        flush=True,
    )


COUNTS = ("requests", "non_202", "seconds")


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each rate's median over the repeats (so the medians of one row may come from different runs); the
    counts (COUNTS) summed."""
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r[key] for r in runs]
        if key in COUNTS:
            merged[key] = sum(values)
        elif isinstance(value, int | float):
            merged[key] = statistics.median(values)
        else:
            merged[key] = value
    return merged


@contextmanager
def running(component: Component) -> Iterator[None]:
    component.start()
    try:
        yield
    finally:
        component.stop()


def bench_settings(state_dir: Path, bootstrap: str | None, workers: int, **ingestion: Any) -> Settings:
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
        ingestion=IngestionSettings(port=free_port(), workers=workers, max_batch_events=5000, **ingestion),
    )


def phases(args: argparse.Namespace) -> list[Phase]:
    single = orjson.dumps(sample_event(1))
    batch = orjson.dumps({"events": [sample_event(i) for i in range(args.batch_size)]})
    return [
        Phase("single", "/v1/analytics/track", single, args.connections, 1),
        Phase("batch", "/v1/analytics/batch", batch, args.batch_connections, args.batch_size),
    ]


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rtap-bench-") as tmp, ExitStack() as stack:
        overrides = dict(pair.split("=", 1) for pair in args.set)
        settings = bench_settings(Path(tmp), args.bootstrap, args.workers, **overrides)
        local = Stack(settings, only=["kafka"])
        local.check_state_dir()
        if not args.bootstrap:
            print(f"starting a private Kafka broker on {settings.kafka.bootstrap} ...", flush=True)
            stack.enter_context(running(local.component("kafka")))
            local.create_topics()
        service = Service(settings, "ingestion")
        stack.enter_context(running(service))
        port = settings.ingestion.port
        client: Client = (
            Wrk(Path(tmp), args.wrk_threads, args.timeout) if args.client == "wrk" else python_client
        )
        print(
            f"ingestion: {args.workers} worker(s) on {HOST}:{port}; load client: {args.client}; "
            f"{args.duration:g}s per phase, {args.repeats} repeat(s)",
            flush=True,
        )
        server = psutil.Process(service.pid())
        todo = phases(args)
        client(port, todo[0], WARM_UP_S)
        runs: dict[str, list[dict[str, Any]]] = {phase.name: [] for phase in todo}
        for repeat in range(1, args.repeats + 1):
            for phase in todo:
                result = measure(client, server, port, phase, args.duration)
                show(f"{phase.name} #{repeat}", result)
                runs[phase.name].append(result)
        results = [median(phase_runs) for phase_runs in runs.values()]
        for result in results:
            show(f"{result['name']} median", result)
        if args.json:
            Path(args.json).write_bytes(orjson.dumps({"phases": results}, option=orjson.OPT_INDENT_2))
        refused = {name: sum(r["non_202"] for r in phase_runs) for name, phase_runs in runs.items()}
        if any(refused.values()):
            raise SystemExit(f"FAILED: requests without a 202 per phase: {refused}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk", help="load client")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each phase; the medians are shown")
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
        "--set", action="append", default=[], metavar="KEY=VALUE", help="an ingestion setting (linger_ms=10)"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (each an event loop)")
    parser.add_argument("--timeout", type=float, default=10.0, help="wrk: seconds before a request fails")
    parser.add_argument(
        "--bootstrap", help="use this broker instead of starting a private one (topics must exist)"
    )
    parser.add_argument(
        "--json", help="also write the median phase results to this file as JSON (used by rtap bench)"
    )
    args = parser.parse_args()
    args.duration = min(args.duration, 120.0)
    args.repeats = max(1, args.repeats)
    uvloop.install()
    run(args)


if __name__ == "__main__":
    main()
