"""The cache API: every metric job served from Redis, generic over the job's schema.

Errors are in the APIs' one shape (shared/api_errors.py), so every 4xx names the parameter:
    {"detail": [{"loc": ["query", "limit"], "msg": "...", "type": "..."}]}
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from services.cache.analytics_proxy import add_analytics_proxy
from services.cache.consumer import cache_consumer
from services.cache.layout import JobLayout, layouts, sessions_job
from services.cache.store import CacheStore
from services.cache.streams import Stream, StreamHub, SubscriptionUnavailable, TooManyStreams
from services.processing.registry import load_schemas
from shared.api_app import service_app
from shared.api_errors import error_body, error_responses, known_job, param_error, problem, unavailable
from shared.api_keys import read_key_guard
from shared.consumer_lag import group_lag_registry
from shared.settings import Settings
from shared.topics import topics

DASHBOARD = Path(__file__).with_name("static") / "dashboard.html"
JSON = "application/json"
EPOCH_MS_MAX = 2**63 - 1
STREAM_RETRY_AFTER_SECONDS = 5
DESCRIPTION = "Latest and historical metric windows of every job, served from Redis."


def json_response(body: bytes) -> Response:
    return Response(body, media_type=JSON)


def redis_pool(settings: Settings) -> BlockingConnectionPool:
    """At most cache.redis_max_connections connections, whatever the clients do: a request waits for a free
    one (up to cache.redis_timeout_seconds) instead of opening another."""
    c = settings.cache
    return BlockingConnectionPool.from_url(
        settings.redis.url,
        max_connections=c.redis_max_connections,
        timeout=c.redis_timeout_seconds,
        socket_timeout=c.redis_timeout_seconds,
        socket_connect_timeout=c.redis_timeout_seconds,
    )


class CacheApp:
    """Holds what the routes share: settings, job layouts, the Redis store and the consumer."""

    def __init__(self, settings: Settings, run_consumer: bool = True):
        self.settings = settings
        self.layouts: dict[str, JobLayout] = layouts(
            settings.cache.key_prefix, load_schemas().values(), settings.cache.index_columns
        )
        schemas = [layout.schema for layout in self.layouts.values()]
        self.sessions_job = sessions_job(schemas, settings.cache.sessions_job)
        self.redis = Redis.from_pool(redis_pool(settings))
        self.store = CacheStore(self.redis)
        self.streams = StreamHub(
            self.redis,
            [layout.channel for layout in self.layouts.values()],
            settings.cache.max_streams,
            settings.cache.stream_queue,
            settings.cache.redis_timeout_seconds,
        )
        self.consumer = cache_consumer(settings, self.layouts) if run_consumer else None
        self.lag_registry = (
            group_lag_registry(
                settings.kafka.bootstrap,
                settings.cache.consumer_group,
                [topics(settings).metric(schema).name for schema in schemas],
                settings.kafka.group_lag_interval_seconds,
            )
            if run_consumer
            else None
        )

    def consumer_status(self) -> dict[str, Any] | None:
        """The consumer's status with its lag summed over the metric topics (None without a consumer)."""
        if not self.consumer:
            return None
        status = self.consumer.status()
        lag = status["lag_records"]
        return {**status, "lag_records": sum(lag.values()) if lag is not None else None}

    def layout(self, job: str) -> JobLayout:
        return known_job(self.layouts, job)

    def filters(self, layout: JobLayout, request: Request, reserved: set[str]) -> dict[str, str]:
        """Group-key filters from the query string; any other unknown parameter is an error naming it."""
        allowed = set(layout.filter_columns)
        out: dict[str, str] = {}
        for name, value in request.query_params.items():
            if name in reserved:
                continue
            if name not in allowed:
                raise param_error(
                    400,
                    "query",
                    name,
                    f"unknown parameter {name!r}; filters for {layout.schema.name}: {sorted(allowed)}",
                )
            out[name] = value
        return out

    @asynccontextmanager
    async def serving(self, _app: FastAPI) -> AsyncIterator[None]:
        """The lifespan: the consumer runs while the API serves; streams, consumer and Redis close after."""
        if self.consumer:
            self.consumer.start()
        yield
        await self.streams.close()
        if self.consumer:
            self.consumer.stop()
        if self.lag_registry:
            self.lag_registry.close()
        await self.redis.aclose()


def create_app(settings: Settings | None = None, run_consumer: bool = True) -> FastAPI:
    settings = settings or Settings()
    cache = CacheApp(settings, run_consumer)
    origins = settings.cache.cors_origins
    cors = {"allow_origins": origins, "allow_methods": ["GET"], "allow_headers": ["*"]} if origins else None
    app = service_app(FastAPI, "rtap cache API", DESCRIPTION, cors, lifespan=cache.serving)
    app.state.cache = cache
    app.add_exception_handler(RedisError, redis_unavailable)
    guarded = read_key_guard(settings.cache.read_keys, query_param=True)
    add_health_routes(app, cache)
    add_job_routes(app, cache, guarded)
    add_session_routes(app, cache, guarded)
    add_page_routes(app, cache, guarded)
    add_analytics_proxy(app, settings, guarded)
    return app


async def redis_unavailable(request: Request, exc: Exception) -> Response:
    """Redis down or every pooled connection busy: a 503 the client may retry, never a 500."""
    body = error_body(["redis"], f"Redis unavailable ({type(exc).__name__}); retry later", "unavailable")
    return Response(orjson.dumps(body), 503, media_type=JSON, headers={"Retry-After": "1"})


def add_health_routes(app: FastAPI, cache: CacheApp) -> None:
    @app.get(
        "/healthz",
        tags=["health"],
        summary="Redis reachable",
        responses={503: {"description": "Redis does not answer"}},
    )
    async def healthz() -> Response:
        try:
            await cache.redis.ping()
        except Exception as exc:
            return Response(orjson.dumps({"status": "unhealthy", "redis": str(exc)}), 503, media_type=JSON)
        return json_response(b'{"status":"ok"}')

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Consumer running and its lag below cache.max_lag_records",
        responses={503: {"description": "not ready; the same body says why"}},
    )
    async def readyz() -> Response:
        status = cache.consumer_status() or {"running": False, "lag_records": None, "error": "no consumer"}
        lag = status["lag_records"]
        ready = status["running"] and lag is not None and lag <= cache.settings.cache.max_lag_records
        body = {"ready": ready, **status, "max_lag_records": cache.settings.cache.max_lag_records}
        return Response(orjson.dumps(body), 200 if ready else 503, media_type=JSON)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        # the group lag is measured in the background: nothing here waits on the broker
        lag = generate_latest(cache.lag_registry) if cache.lag_registry else b""
        return Response(generate_latest() + lag, media_type=CONTENT_TYPE_LATEST)


def limit_query(settings: Settings) -> Any:
    return Query(
        None,
        ge=1,
        le=settings.cache.max_limit,
        description="maximum records returned (1..cache.max_limit, default 100)",
    )


def bounded(limit: int | None, settings: Settings) -> int:
    return min(100, settings.cache.max_limit) if limit is None else limit


def job_path(cache: CacheApp) -> Any:
    return PathParam(
        description="a metric job (others: 404)", json_schema_extra={"enum": sorted(cache.layouts)}
    )


def add_job_routes(app: FastAPI, cache: CacheApp, guarded: list[Any]) -> None:
    @app.get(
        "/v1/jobs",
        tags=["jobs"],
        dependencies=guarded,
        responses=error_responses(401),
        summary="Jobs and their metric schemas",
    )
    async def jobs() -> dict[str, Any]:
        return {
            "jobs": [
                {**layout.schema.to_json(), "filters": list(layout.filter_columns)}
                for layout in cache.layouts.values()
            ]
        }

    @app.get(
        "/v1/jobs/{job}/latest",
        tags=["jobs"],
        dependencies=guarded,
        responses=error_responses(400, 401, 404),
        summary=(
            "Every record of the newest window; group-key filters as query parameters"
            " (e.g. ?device_category=mobile)"
        ),
    )
    async def latest(request: Request, job: str = job_path(cache)) -> Response:
        layout = cache.layout(job)
        filters = cache.filters(layout, request, {"key"})
        window_start, windows = await cache.store.latest(layout, filters)
        head = orjson.dumps({"job": job, "window_start": window_start})[:-1]
        return json_response(head + b',"records":' + windows.json() + b"}")

    @app.get(
        "/v1/jobs/{job}/windows",
        tags=["jobs"],
        dependencies=guarded,
        responses=error_responses(400, 401, 404),
        summary="Records with from <= window_start < to (epoch ms), group-key filters as query parameters",
    )
    async def windows(
        request: Request,
        job: str = job_path(cache),
        from_: Annotated[
            int,
            Query(
                alias="from",
                ge=0,
                le=EPOCH_MS_MAX,
                description="window_start lower bound, epoch ms (inclusive)",
            ),
        ] = 0,
        to: Annotated[
            int | None,
            Query(
                ge=0,
                le=EPOCH_MS_MAX,
                description="window_start upper bound, epoch ms (exclusive); default: no bound",
            ),
        ] = None,
        limit: int | None = limit_query(cache.settings),
        order: Annotated[Literal["asc", "desc"], Query(description="by window_start")] = "asc",
    ) -> Response:
        layout = cache.layout(job)
        filters = cache.filters(layout, request, {"from", "to", "limit", "order", "key"})
        end = EPOCH_MS_MAX if to is None else to
        if end <= from_:
            raise param_error(422, "query", "to", "to must be greater than from")
        n = bounded(limit, cache.settings)
        found = await cache.store.window_range(layout, filters, from_, end, n, order == "desc")
        head = orjson.dumps({"job": job, "from": from_, "to": to, "limit": n, "order": order})[:-1]
        return json_response(head + b',"records":' + found.json() + b"}")

    def stream_subject(request: Request, job: str = job_path(cache)) -> tuple[JobLayout, dict[str, str]]:
        """Checked before the stream starts:
        a bad job or filter is a 404/400, not a 200 cut off mid-stream."""
        layout = cache.layout(job)
        return layout, cache.filters(layout, request, {"key"})

    async def stream_slot(
        subject: tuple[JobLayout, dict[str, str]] = Depends(stream_subject),
    ) -> AsyncIterator[Stream]:
        """Held for the whole response,
        so the refusal (429 at cache.max_streams, 503 without Redis) comes before it."""
        layout, filters = subject
        try:
            async with cache.streams.open(layout.channel, filters) as stream:
                yield stream
        except TooManyStreams:
            raise too_many_streams(cache.settings) from None
        except SubscriptionUnavailable as exc:
            raise unavailable("redis", f"Redis unavailable ({exc}); retry later", 1) from None

    slot_dependency = Depends(stream_slot)

    @app.get(
        "/v1/jobs/{job}/stream",
        tags=["jobs"],
        dependencies=guarded,
        response_class=EventSourceResponse,
        responses=error_responses(400, 401, 404, 429, 503),
        summary=(
            "Server-Sent Events: each new or updated window of the job (event 'window', data = the record)"
        ),
    )
    async def stream(request: Request, slot: Stream = slot_dependency) -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="subscribed", retry=2000)
        while not slot.ended and not await request.is_disconnected():
            payload = await slot.next(timeout=1.0)
            if payload is not None:
                yield ServerSentEvent(raw_data=payload.decode(), event="window")


def too_many_streams(settings: Settings) -> HTTPException:
    limit = settings.cache.max_streams
    msg = (
        f"{limit} streams are open, the limit of this server (cache.max_streams); "
        f"retry after {STREAM_RETRY_AFTER_SECONDS} s"
    )
    return HTTPException(
        429,
        [problem(["path", "job"], msg, "too_many_streams")],
        headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
    )


def add_session_routes(app: FastAPI, cache: CacheApp, guarded: list[Any]) -> None:
    def sessions() -> JobLayout:
        if cache.sessions_job is None:
            raise param_error(404, "path", "job", "no job is keyed by session_id")
        return cache.layout(cache.sessions_job)

    @app.get("/v1/sessions/recent", tags=["sessions"], dependencies=guarded, summary="Newest sessions first")
    async def recent(limit: int | None = limit_query(cache.settings)) -> Response:
        found = await cache.store.newest(sessions(), {}, bounded(limit, cache.settings))
        return json_response(b'{"sessions":' + found.json() + b"}")

    @app.get(
        "/v1/sessions/{session_id}",
        tags=["sessions"],
        dependencies=guarded,
        responses=error_responses(401, 404),
        summary="Windows of one session, newest first",
    )
    async def session(session_id: str) -> Response:
        found = await cache.store.newest(
            sessions(), {"session_id": session_id}, cache.settings.cache.max_limit
        )
        if not found.records:
            raise param_error(404, "path", "session_id", f"no session {session_id!r} in the cache")
        return json_response(
            orjson.dumps({"session_id": session_id})[:-1] + b',"windows":' + found.json() + b"}"
        )

    @app.get(
        "/v1/users/{user_id}/sessions",
        tags=["sessions"],
        dependencies=guarded,
        responses=error_responses(401, 404),
        summary="Sessions of one user, newest first",
    )
    async def user_sessions(user_id: str, limit: int | None = limit_query(cache.settings)) -> Response:
        layout = sessions()
        if "user_id" not in layout.filter_columns:
            raise param_error(
                404,
                "path",
                "user_id",
                f"{layout.schema.name} is not indexed by user_id (cache.index_columns)",
            )
        found = await cache.store.newest(layout, {"user_id": user_id}, bounded(limit, cache.settings))
        return json_response(orjson.dumps({"user_id": user_id})[:-1] + b',"sessions":' + found.json() + b"}")

    @app.get(
        "/v1/overview",
        tags=["overview"],
        dependencies=guarded,
        responses=error_responses(401),
        summary="Per job: newest window, its records and numeric totals; active sessions; consumer state",
    )
    async def overview() -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        jobs = {name: await job_overview(cache, layout) for name, layout in cache.layouts.items()}
        since = now_ms - cache.settings.cache.active_session_seconds * 1000
        active = await cache.store.count_ending_after(sessions(), since) if cache.sessions_job else 0
        consumer = cache.consumer_status()
        return {
            "generated_at": now_ms,
            "active_sessions": active,
            "active_session_seconds": cache.settings.cache.active_session_seconds,
            "jobs": jobs,
            "consumer": consumer,
        }


async def job_overview(cache: CacheApp, layout: JobLayout) -> dict[str, Any]:
    window_start, latest = await cache.store.latest(layout, {})
    records = [orjson.loads(r) for r in latest.records]
    numeric = [
        c.name
        for c in layout.schema.columns
        if c.type in ("int64", "float64") and c.name not in layout.schema.key
    ]
    totals = {
        c: sum(r[c] or 0 for r in records)
        for c in numeric
        if not c.endswith(("_avg", "_p50", "_p95", "_p99"))
    }
    return {
        "windows_cached": await cache.store.size(layout),
        "latest_window_start": window_start,
        "latest_records": len(records),
        "latest_totals": totals,
    }


def add_page_routes(app: FastAPI, cache: CacheApp, guarded: list[Any]) -> None:
    page = DASHBOARD.read_bytes()

    @app.get(
        "/",
        tags=["dashboard"],
        dependencies=guarded,
        response_class=HTMLResponse,
        responses=error_responses(401),
        summary="Live dashboard page (HTML, no build step)",
    )
    @app.get("/dashboard", tags=["dashboard"], dependencies=guarded, include_in_schema=False)
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")
