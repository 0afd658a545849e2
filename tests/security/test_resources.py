"""Every resource a client or reader can reach is bounded (issue 14), checked against the real services.

Each test starts what it needs in a private state directory on free ports: its own redis-server where Redis
connections or memory are counted, and its own service processes with small limits, so the bounds are reached
within seconds. Loops are bounded; sockets are closed at the end of each test.
"""

from __future__ import annotations

import asyncio
import gc
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from infrastructure.local.components import Redis as RedisServer
from infrastructure.local.isolated import free_ports
from infrastructure.local.stack import Service
from services.cache.layout import layouts
from services.processing.registry import load_schemas
from shared.settings import Settings
from tests.cache.conftest import (
    READ_KEY,
    RunningCache,
    cache_settings,
    event_record,
    produce,
    wait_caught_up,
    wait_for,
    window_base,
)
from tests.topics import DEAD_LETTER, EVENTS

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

AUTH = {"X-Read-Key": READ_KEY}
ODD_PASSWORD = "p/a@s:s%w#?d"


# -- private processes ---------------------------------------------------------------------------------------


def private(settings: Settings, state: Path, **sections: dict[str, Any]) -> Settings:
    """settings with its own state directory, fresh service ports and the given section overrides."""
    ingestion_port, storage_port, cache_port, redis_port = free_ports(4)
    updates: dict[str, Any] = {"state_dir": state}
    base = {
        "ingestion": {"port": ingestion_port},
        "storage": {"port": storage_port},
        "cache": {"port": cache_port},
        "redis": {"port": redis_port},
    }
    for name in {*base, *sections}:
        section = getattr(settings, name)
        updates[name] = section.model_copy(update={**base.get(name, {}), **sections.get(name, {})})
    return settings.model_copy(update=updates)


@contextmanager
def redis_server(settings: Settings) -> Iterator[redis.Redis]:
    """A redis-server of its own (settings.redis), and a client to inspect it."""
    server = RedisServer(settings)
    server.start()
    client = redis.Redis.from_url(settings.redis.url)
    try:
        yield client
    finally:
        client.close()
        server.stop()


@contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


@contextmanager
def running_cache(settings: Settings) -> Iterator[RunningCache]:
    cache = RunningCache(settings).start()
    try:
        yield cache
    finally:
        cache.stop()


def connected_clients(client: redis.Redis) -> int:
    """Clients of the server other than the one asking."""
    return int(client.info("clients")["connected_clients"]) - 1


# -- raw HTTP ------------------------------------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started, out = time.monotonic(), b""
    sock.settimeout(limit_s)
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        return out + b"<still open>", time.monotonic() - started
    return out, time.monotonic() - started


def parse_response(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return (
        int(lines[0].split()[1]),
        {k.lower(): v for k, v in headers.items()},
        orjson.loads(body) if body else None,
    )


def open_stream(port: int, job: str = "event_metrics") -> socket.socket:
    """An SSE stream of the cache API, read up to its ': subscribed' comment."""
    sock = connect(port)
    sock.sendall(f"GET /v1/jobs/{job}/stream HTTP/1.1\r\nHost: t\r\nX-Read-Key: {READ_KEY}\r\n\r\n".encode())
    seen = b""
    while b": subscribed" not in seen:
        chunk = sock.recv(4096)
        assert chunk, f"stream closed before subscribing: {seen!r}"
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


def timed_get(client: httpx.Client, path: str) -> float:
    started = time.monotonic()
    response = client.get(path)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


# -- the cache API under many connections and streams --------------------------------------------------------

STREAMS_CAP = 60
POOL = 8


@pytest.fixture(scope="module")
def crowded(settings, kafka, tmp_path_factory) -> Iterator[tuple[RunningCache, redis.Redis]]:
    """A cache API on a redis-server of its own (every client of that Redis is this service), with a stream
    cap and a Redis pool small enough to reach, and room for hundreds of connections."""
    s = private(
        cache_settings(settings, read_keys=[READ_KEY]),
        tmp_path_factory.mktemp("crowded"),
        cache={"max_streams": STREAMS_CAP, "redis_max_connections": POOL},
        http={"limit_concurrency": 600, "header_read_seconds": 4.0},
    )
    with redis_server(s) as client, running_cache(s) as cache:
        yield cache, client


def test_idle_connections_and_open_streams_leave_requests_answering(crowded):
    """300 connections that never send a byte and the full quota of SSE streams: every ordinary request still
    answers within 2 s, the streams share one Redis subscription per job, and the idle connections are closed
    at http.header_read_seconds."""
    cache, client = crowded
    port = cache.service.port
    channels = {
        name: layout.channel
        for name, layout in layouts(cache.settings.cache.key_prefix, load_schemas().values()).items()
    }
    with ExitStack() as sockets:
        idle = [sockets.enter_context(closing(connect(port))) for _ in range(300)]
        opened_at = time.monotonic()
        jobs = ["event_metrics", "performance_metrics"]
        streams = [sockets.enter_context(closing(open_stream(port, jobs[i % 2]))) for i in range(STREAMS_CAP)]
        slowest = max(
            timed_get(cache.client, path)
            for _ in range(10)
            for path in ("/v1/jobs/event_metrics/latest", "/v1/overview", "/metrics", "/healthz")
        )
        assert slowest < 2.0, (
            f"a request took {slowest:.2f} s with 300 idle connections and {len(streams)} streams"
        )
        subscribers = dict(client.pubsub_numsub(*(channels[j] for j in jobs)))
        assert subscribers == {channels[j].encode(): 1 for j in jobs}, (
            "one Redis subscription per job, whatever the streams"
        )
        assert connected_clients(client) <= POOL + 1, (
            "the API's pool (its pub/sub connection included) plus the consumer"
        )

        time.sleep(max(0.0, opened_at + 4.0 + 1.5 - time.monotonic()))
        for sock in idle[:20]:
            assert read_until_closed(sock, 2.0)[0] == b"", (
                "an idle connection outlived http.header_read_seconds"
            )


def test_redis_connections_stay_bounded_under_concurrent_requests(crowded):
    """64 clients at once on Redis-backed routes: Redis sees at most the pool (cache.redis_max_connections)
    plus the consumer's connection, and every request is answered (waiting for a pooled connection, not
    failing)."""
    cache, client = crowded
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], connected_clients(client))
            time.sleep(0.02)

    def hammer(_: int) -> list[int]:
        with httpx.Client(base_url=cache.url, headers=AUTH, timeout=10) as c:
            return [
                c.get(path).status_code for path in ("/v1/overview", "/v1/jobs/session_metrics/latest") * 5
            ]

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(64) as pool:
            statuses = [s for batch in pool.map(hammer, range(64)) for s in batch]
    finally:
        stop.set()
        sampler.join(5)
    assert set(statuses) == {200}
    assert peak[0] <= POOL + 1, f"{peak[0]} Redis connections for a pool of {POOL}"


def test_streams_over_the_cap_are_refused_precisely(crowded):
    """At cache.max_streams open streams, the next one gets 429 with Retry-After and a body naming the limit;
    when a stream closes, its slot is free again."""
    cache, _ = crowded
    with ExitStack() as sockets:
        streams = [
            sockets.enter_context(closing(open_stream(cache.service.port))) for _ in range(STREAMS_CAP)
        ]
        refused = cache.client.get("/v1/jobs/event_metrics/stream")
        assert refused.status_code == 429, refused.text[:300]
        assert int(refused.headers["retry-after"]) > 0
        [problem] = refused.json()["detail"]
        assert (
            problem["type"] == "too_many_streams"
            and "cache.max_streams" in problem["msg"]
            and str(STREAMS_CAP) in problem["msg"]
        )
        assert problem["loc"] == ["path", "job"]
        streams.pop().close()
        wait_for(
            lambda: cache.client.get("/metrics").text.count(f"rtap_cache_streams_open {STREAMS_CAP - 1}.0"),
            10,
            what="the closed stream's slot to be released",
        )
        sockets.enter_context(closing(open_stream(cache.service.port)))


def test_one_subscription_fans_a_window_out_to_every_stream(crowded, kafka):
    """20 streams of one job on one Redis subscription: each receives a window written after it opened."""
    cache, client = crowded
    base = window_base()
    channel = layouts(cache.settings.cache.key_prefix, load_schemas().values())["event_metrics"].channel
    with ExitStack() as sockets:
        streams = [sockets.enter_context(closing(open_stream(cache.service.port))) for _ in range(20)]
        assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
        produce(kafka, "event_metrics", [event_record(base, "fanned", "desktop", 3, 1)])
        for sock in streams:
            seen = b""
            while b'"fanned"' not in seen:
                chunk = sock.recv(65536)
                assert chunk, "stream closed before the window arrived"
                seen += chunk


# -- server-level limits of every service --------------------------------------------------------------------

LIMITED = {
    "limit_concurrency": 20,
    "header_read_seconds": 2.0,
    "body_read_seconds": 2.0,
    "max_header_bytes": 4096,
}
BODY_ROUTES = {"ingestion": "/v1/analytics/track", "storage": "/v1/sql"}


@pytest.fixture(scope="module", params=["ingestion", "storage", "cache"])
def limited(request, settings, kafka, redis_url, tmp_path_factory) -> Iterator[Service]:
    name = request.param
    s = private(
        cache_settings(settings),
        tmp_path_factory.mktemp(f"limited-{name}"),
        http=LIMITED,
        redis={"port": settings.redis.port},
    )
    with running(Service(s, name)) as service:
        yield service


def test_a_silent_connection_is_closed_at_the_header_deadline(limited):
    with closing(connect(limited.port)) as sock:
        raw, took = read_until_closed(sock, 6.0)
    assert raw == b"" and took < 2.0 + 1.5, f"{limited.name}: {raw[:200]!r} after {took:.1f} s"


def test_a_trickled_request_head_gets_408_naming_the_limit(limited):
    with closing(connect(limited.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        for _ in range(3):
            time.sleep(0.5)
            sock.sendall(b"a")
        raw, took = read_until_closed(sock, 6.0)
    status, headers, body = parse_response(raw)
    assert status == 408 and headers["connection"] == "close", raw[:300]
    [problem] = body["detail"]
    assert problem["loc"] == ["header"] and "http.header_read_seconds" in problem["msg"]
    assert took < 2.0 + 1.5


def test_an_oversized_request_head_gets_431(limited):
    with closing(connect(limited.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n")
        raw, _ = read_until_closed(sock, 5.0)
    status, _, body = parse_response(raw)
    assert status == 431, raw[:300]
    assert "http.max_header_bytes" in body["detail"][0]["msg"]


def test_a_trickled_body_is_cut_off_at_the_body_deadline(limited):
    route = BODY_ROUTES.get(limited.name, "/healthz")
    with closing(connect(limited.port)) as sock:
        sock.sendall(
            f"POST {route} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        raw, took = read_until_closed(sock, 8.0)
    assert took < 2.0 + 2.0, f"{limited.name} kept a trickled body open for {took:.1f} s"
    if limited.name in BODY_ROUTES:  # the route waits for the body: the server answers 408
        status, _, body = parse_response(raw)
        assert status == 408 and "http.body_read_seconds" in body["detail"][0]["msg"], raw[:300]


def test_over_the_connection_limit_requests_get_503_with_retry_after(limited):
    with ExitStack() as sockets:
        for _ in range(LIMITED["limit_concurrency"]):
            sockets.enter_context(closing(connect(limited.port)))
        time.sleep(0.2)
        refused = httpx.get(f"{limited.url()}/healthz", timeout=5)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "1"
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["connection"] and "http.limit_concurrency" in problem["msg"]
    wait_for(
        lambda: httpx.get(f"{limited.url()}/healthz", timeout=5).status_code == 200, 10, what="capacity back"
    )
    metrics = httpx.get(f"{limited.url()}/metrics", timeout=5).text
    refusals = {
        s.labels["limit"]: s.value
        for f in text_string_to_metric_families(metrics)
        if f.name == "rtap_http_server_refused"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert refusals["limit_concurrency"] >= 1


# -- /metrics while the broker does not answer ---------------------------------------------------------------


@contextmanager
def silent_broker() -> Iterator[str]:
    """A port that completes TCP handshakes and never answers a Kafka request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_metrics_answer_fast_while_the_broker_does_not(settings, redis_url, tmp_path):
    """The consumer-group lag is measured in the background: a scrape never waits on a silent broker."""
    with silent_broker() as bootstrap:
        s = private(
            cache_settings(settings),
            tmp_path,
            kafka={"bootstrap": bootstrap},
            redis={"port": settings.redis.port},
        )
        with running(Service(s, "cache")) as service:
            for _ in range(5):
                started = time.monotonic()
                response = httpx.get(f"{service.url()}/metrics", timeout=30)
                assert response.status_code == 200
                assert time.monotonic() - started < 1.0, "a scrape waited on the broker"


# -- Redis memory and secrets --------------------------------------------------------------------------------


def test_local_redis_runs_with_maxmemory_and_noeviction(redis_url, settings):
    client = redis.Redis.from_url(redis_url)
    config = client.config_get("maxmemory*")
    assert int(config["maxmemory"]) == 256 * 1024 * 1024, "redis-server runs without the documented maxmemory"
    assert config["maxmemory-policy"] == "noeviction"
    assert parse_size(settings.redis.maxmemory) == 256 * 1024 * 1024


def parse_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-z]*)", value).groups()
    return int(number) * {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}[unit]


WINDOWS = 600


def test_a_full_redis_refuses_writes_loudly_and_loses_nothing(settings, kafka, tmp_path):
    """At maxmemory (noeviction) the consumer's writes fail: /readyz and the metrics say so, reads still
    answer, nothing is committed; once Redis has room the consumer catches up and every window is there."""
    s = private(cache_settings(settings, read_keys=[READ_KEY]), tmp_path)
    with redis_server(s) as client, running_cache(s) as cache:
        client.config_set("maxmemory", int(client.info("memory")["used_memory"]) + 150_000)
        base = window_base()
        types = [
            f"full-{uuid.uuid4().hex[:8]}-{n}" for n in range(7)
        ]  # indexes that hold this test's windows alone
        windows = [event_record(base + i * 10_000, types[i % 7], "desktop", i, 1) for i in range(WINDOWS)]
        produce(kafka, "event_metrics", windows)

        def refused() -> dict | None:
            body = cache.client.get("/readyz").json()
            return body if body["error"] and "OutOfMemoryError" in body["error"] else None

        status = wait_for(refused, 60, 0.3, "the consumer to report Redis at maxmemory")
        assert status["ready"] is False
        metrics = cache.client.get("/metrics").text
        assert 'rtap_consumer_write_blocked{sink="cache"} 1.0' in metrics
        assert re.search(
            r'rtap_consumer_write_retries_total\{error="OutOfMemoryError",sink="cache"\} [1-9]', metrics
        )
        assert cache.client.get("/v1/jobs/event_metrics/latest").status_code == 200, (
            "reads work while writes are refused"
        )

        client.config_set("maxmemory", 0)
        wait_ready_again = wait_for(
            lambda: cache.client.get("/readyz").status_code == 200, 60, 0.3, "writes accepted again"
        )
        assert wait_ready_again
        wait_caught_up(cache.client)
        found = [
            record
            for event_type in types
            for record in cache.client.get(
                "/v1/jobs/event_metrics/windows", params={"event_type": event_type, "limit": 1_000}
            ).json()["records"]
        ]
        assert len({(r["window_start"], r["event_type"]) for r in found}) == WINDOWS, (
            "a refused window was lost"
        )
        assert 'rtap_consumer_write_blocked{sink="cache"} 0.0' in cache.client.get("/metrics").text


def test_a_redis_password_with_url_characters_works(settings, tmp_path):
    """The password goes into the Redis URL percent-encoded: / @ : % # ? in it connect like any other."""
    s = private(settings, tmp_path, redis={"password": ODD_PASSWORD})
    with redis_server(s) as client:
        assert client.ping()
        from services.cache.api import redis_pool

        async def ping() -> bool:
            pooled = redis.asyncio.Redis.from_pool(redis_pool(s))
            try:
                return await pooled.ping()
            finally:
                await pooled.aclose()

        assert asyncio.run(ping())
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=s.redis.port, password="wrong").ping()


# -- storage batches -----------------------------------------------------------------------------------------


class Record:
    """The part of a confluent_kafka Message the consumer pipeline's batching reads."""

    def __init__(self, offset: int, size: int):
        self._offset, self._value = offset, b"x" * size

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return EVENTS.name

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value


class OneFetch:
    """A Kafka consumer whose first consume() returns every record at once (as a full prefetch queue does)."""

    def __init__(self, records: list[Record], stop: threading.Event):
        self.records, self.stop, self.commits = records, stop, []

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        out, self.records = self.records, []
        if not out:
            self.stop.set()
        return out

    def commit(self, offsets: list, asynchronous: bool) -> None:
        self.commits.append(offsets)

    def close(self) -> None:
        pass


def test_storage_batches_are_bounded_by_bytes(settings, kafka):
    """40 records of 300 kB in one fetch, storage.batch_bytes = 1 MiB: no batch holds more than 1 MiB plus one
    record, and every record is written and committed once."""
    from shared.consumer_pipeline import ConsumerPipeline, Limits, Sink

    record_bytes, limit = 300_000, 1_048_576
    storage = settings.storage.model_copy(update={"batch_bytes": limit, "batch_seconds": 60.0})
    processors = {EVENTS.name: lambda key, value, offset: {"offset": offset}}
    sink = Sink(
        "storage",
        processors,
        lambda rows: None,
        Limits(storage.batch_rows, storage.batch_bytes, storage.batch_seconds),
    )
    consumer = ConsumerPipeline(
        sink, {"bootstrap.servers": settings.kafka.bootstrap, "group.id": "bytes-bound"}, DEAD_LETTER.name
    )
    consumer.consumer.close()
    consumer.consumer = OneFetch([Record(i, record_bytes) for i in range(40)], consumer.stop_event)
    written: list[tuple[int, int]] = []
    consumer.writer.write = lambda batch: written.append((batch.records, batch.bytes))
    consumer._loop()
    consumer.flush()
    assert sum(n for n, _ in written) == 40
    assert max(size for _, size in written) <= limit + record_bytes, written
    assert [tp[0].offset for tp in consumer.consumer.commits][-1] == 40
    del consumer
    # the consumer (a cycle through its unstarted thread) and its producer, before the session's broker stops
    gc.collect()


# -- Flink REST ----------------------------------------------------------------------------------------------


@pytest.mark.flink
def test_flink_rest_refuses_jar_upload_and_run_but_keeps_job_submission(flink_cluster):
    """/jars/upload and /jars/:id/run are gone (web.submit.enable: false); POST /jobs (how the driver and
    `flink run` submit) and PATCH /jobs/:id (how the supervisor cancels) remain."""
    jar = {"jarfile": ("evil.jar", b"PK\x05\x06" + b"\0" * 18, "application/x-java-archive")}
    upload = httpx.post(f"{flink_cluster}/jars/upload", files=jar, timeout=10)
    assert upload.status_code in (400, 404) and "errors" in upload.json(), upload.text
    assert httpx.get(f"{flink_cluster}/jars", timeout=10).status_code == 404, "no jar store to list"
    assert (
        httpx.post(f"{flink_cluster}/jars/{uuid.uuid4()}_evil.jar/run", json={}, timeout=10).status_code
        == 404
    )
    features = httpx.get(f"{flink_cluster}/config", timeout=10).json()["features"]
    assert features["web-submit"] is False and features["web-cancel"] is False
    submit = httpx.post(f"{flink_cluster}/jobs", json={}, timeout=10)
    assert submit.status_code == 400 and "jobGraphFileName" in submit.text, (
        "POST /jobs (job submission) must still be served"
    )
    cancel = httpx.patch(f"{flink_cluster}/jobs/{uuid.uuid4().hex}", params={"mode": "cancel"}, timeout=10)
    assert cancel.status_code == 404 and "Job could not be found" in cancel.text, (
        "PATCH /jobs/:id (cancel) must still be served"
    )
