"""The storage process's HTTP side: health, Prometheus metrics and the read-only historical query API.

Errors are in the APIs' one shape (shared/api_errors.py), so every 4xx names the parameter:
    {"detail": [{"loc": ["query", "limit"], "msg": "...", "type": "value_error"}]}
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from services.processing.registry import load_schemas
from services.storage.analytics import (
    Breakdown,
    Period,
    TimeRange,
    funnel_query,
    funnel_steps,
    retention_cohorts,
    retention_query,
    sources_query,
    top_pages_query,
)
from services.storage.backends import Backend, ResultTooLarge, open_backend, open_reader
from services.storage.consumer import storage_consumer
from services.storage.export import add_export_route
from services.storage.identity import identity_tables, identity_views
from services.storage.query import QueryError, bind_params, check_text, metric_query, parse_time
from services.storage.sandbox import SandboxError, Tables, canonical_statement
from services.storage.tables import all_tables, migrate, migrate_views
from shared.api_app import service_app
from shared.api_errors import body_error, error_responses, known_job, param_error, unavailable
from shared.api_keys import read_key_guard
from shared.consumer_lag import group_lag_registry
from shared.logging import get_logger
from shared.metric_schema import MetricSchema
from shared.settings import Settings

log = get_logger("storage.api")
T = TypeVar("T")
RESERVED = {"from", "to", "limit"}
DESCRIPTION = (
    "Historical metrics from ClickHouse: per-job time ranges, read-only SQL, and analytics over the raw "
    "events (funnels, retention, top pages, traffic sources)."
)
DAY_MS = 86_400_000
EVENT_TYPE_MAX = 128  # shared.events.EventType


class SqlRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sql": "SELECT event_type, sum(events) AS events FROM event_metrics FINAL "
                    "WHERE window_start >= {since:DateTime64(3)} GROUP BY event_type",
                    "params": {"since": "2026-01-01 00:00:00"},
                }
            ]
        }
    )

    sql: str = Field(description="One SELECT (or WITH ... SELECT); values as {name:Type} placeholders")
    params: dict[str, Any] = Field(
        default_factory=dict, description="values bound to the {name:Type} placeholders"
    )


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]]
    row_count: int


class MetricRows(BaseModel):
    job: str
    rows: list[dict[str, Any]]
    row_count: int


class ReaderPool:
    """Read-only connections (a chDB connection runs one query at a time); a read that finds none free is a
    503."""

    def __init__(self, settings: Settings):
        self.size = settings.storage.sql_max_concurrent
        self.free: queue.SimpleQueue[Backend] = queue.SimpleQueue()
        for _ in range(self.size):
            self.free.put(open_reader(settings))

    def read(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            reader = self.free.get_nowait()
        except queue.Empty:
            msg = f"{self.size} queries are already running (storage.sql_max_concurrent); retry shortly"
            raise unavailable("clickhouse", msg, 1, "over_capacity") from None
        try:
            return reader.query(sql, params)
        finally:
            self.free.put(reader)

    def close(self) -> None:
        for _ in range(self.size):
            self.free.get().close()


def sandbox_tables(backend: Backend, database: str, pipeline: frozenset[str]) -> Tables:
    """The sandbox's view of the database: pipeline tables, the other tables there, the engine's function
    names."""
    functions = backend.query("SELECT lower(name) AS name FROM system.functions")
    present = backend.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": database})
    return Tables(
        database,
        pipeline,
        frozenset(r["name"] for r in functions),
        frozenset(r["name"] for r in present) - pipeline,
    )


class Storage:
    """What the routes share: the writer backend (the consumer's, behind a lock), read-only readers, the
    consumer.

    Reads go to connections of their own (a chDB connection runs one query at a time), so a long query never
    delays a write; there are storage.sql_max_concurrent of them, and a read that finds none free is refused.
    """

    def __init__(self, settings: Settings, run_consumer: bool = True):
        self.settings = settings
        self.schemas: dict[str, MetricSchema] = load_schemas()
        self.lock = threading.Lock()
        self.backend: Backend = open_backend(settings)
        database = settings.clickhouse.database
        tables = all_tables(settings, self.schemas) + identity_tables()
        migrate(self.backend, database, tables)
        views = identity_views(database, [s.name for s in self.schemas.values()])
        migrate_views(self.backend, database, views)
        self.readers = {route: ReaderPool(settings) for route in ("sql", "windows", "analytics")}
        self.tables = sandbox_tables(
            self.backend, database, frozenset([*(t.name for t in tables), *(v.name for v in views)])
        )
        self.consumer = (
            storage_consumer(settings, self.backend, self.lock, self.schemas) if run_consumer else None
        )
        self.lag_registry = (
            group_lag_registry(
                settings.kafka.bootstrap,
                settings.storage.consumer_group,
                self.consumer.topics,
                settings.kafka.group_lag_interval_seconds,
            )
            if self.consumer
            else None
        )

    def schema(self, job: str) -> MetricSchema:
        return known_job(self.schemas, job)

    def checked_sql(self, sql: str, params: dict[str, Any]) -> str:
        """The statement ClickHouse formatted from sql, once its syntax tree passed the sandbox
        (services/storage/sandbox.py)."""
        return canonical_statement(self.readers["sql"].read, sql, params, self.tables)

    def clickhouse_ok(self) -> tuple[bool, str]:
        if not self.lock.acquire(timeout=5):
            return True, "busy writing"
        try:
            self.backend.query("SELECT 1 AS ok")
            return True, "answers"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            self.lock.release()

    def close(self) -> None:
        if self.consumer:
            self.consumer.stop()
        with self.lock:
            self.backend.close()
        for pool in self.readers.values():
            pool.close()

    @asynccontextmanager
    async def serving(self, _app: FastAPI) -> AsyncIterator[None]:
        """The app's lifespan: the consumer runs while the API serves; everything is closed after."""
        if self.consumer:
            self.consumer.start()
        yield
        self.close()


def create_app(settings: Settings | None = None, run_consumer: bool = True) -> FastAPI:
    settings = settings or Settings()
    storage = Storage(settings, run_consumer)
    app = service_app(FastAPI, "rtap storage API", DESCRIPTION, lifespan=storage.serving)
    app.state.storage = storage
    add_health_routes(app, storage)
    add_query_routes(app, storage, read_key_guard(settings.storage.read_keys))
    add_export_route(app, settings, read_key_guard(settings.storage.read_keys))
    add_analytics_routes(app, storage, read_key_guard(settings.storage.read_keys))
    app.openapi = lambda: openapi_with_sql_request(app)  # type: ignore[method-assign]
    return app


def openapi_with_sql_request(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus SqlRequest: /v1/sql reads its own body (after the key check), so no route names
    the model."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schema["components"]["schemas"]["SqlRequest"] = SqlRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        return schema
    return app.openapi_schema


def add_health_routes(app: FastAPI, storage: Storage) -> None:
    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="ClickHouse reachable and the consumer has partitions assigned",
        responses={503: {"description": "not ready; the same body says why"}},
    )
    def readyz() -> JSONResponse:
        ok, detail = storage.clickhouse_ok()
        consumer = (
            storage.consumer.status() if storage.consumer else {"running": False, "assigned_partitions": 0}
        )
        ready = ok and consumer["running"] and consumer["assigned_partitions"] > 0
        body = {
            "status": "ready" if ready else "not ready",
            "clickhouse": {"ok": ok, "detail": detail},
            "consumer": consumer,
        }
        return JSONResponse(body, 200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        # on the event loop, not behind queries in the thread pool; nothing here blocks
        lag = generate_latest(storage.lag_registry) if storage.lag_registry else b""
        return Response(generate_latest() + lag, media_type=CONTENT_TYPE_LATEST)


def add_query_routes(app: FastAPI, storage: Storage, guarded: list[Any]) -> None:
    max_limit = storage.settings.storage.max_limit

    # the earlier name of the route, kept for existing clients
    @app.get("/v1/metrics/{job}", dependencies=guarded, include_in_schema=False)
    @app.get(
        "/v1/jobs/{job}/windows",
        tags=["query"],
        dependencies=guarded,
        response_model=MetricRows,
        responses=error_responses(400, 401, 404, 503),
        summary=(
            "A job's windows with window_start in [from, to), filtered by group keys (exact, de-duplicated)"
        ),
    )
    def job_windows(
        request: Request,
        from_: Annotated[str, Query(alias="from", description="epoch ms or ISO-8601, inclusive")],
        to: Annotated[str, Query(description="epoch ms or ISO-8601, exclusive")],
        limit: Annotated[int, Query(ge=1, description="at most storage.max_limit")] = 1000,
        job: str = Path(
            description="a metric job (others: 404)", json_schema_extra={"enum": sorted(storage.schemas)}
        ),
    ) -> Response:
        schema = storage.schema(job)
        if limit > max_limit:
            raise param_error(400, "query", "limit", f"limit must be at most {max_limit}")
        filters = {k: v for k, v in request.query_params.items() if k not in RESERVED}
        try:
            start, end = parse_time("from", from_), parse_time("to", to)
            if end <= start:
                raise QueryError("query", "to", "'to' must be after 'from'")
            sql, params = metric_query(
                schema, storage.settings.clickhouse.database, start, end, filters, limit
            )
        except QueryError as exc:
            raise param_error(400, exc.where, exc.name, exc.msg) from None
        rows = clickhouse_answer(lambda: storage.readers["windows"].read(sql, params), "query", "from")
        return json_rows({"job": job, "rows": rows, "row_count": len(rows)})

    @app.post(
        "/v1/sql",
        tags=["query"],
        dependencies=guarded,
        response_model=SqlResult,
        responses=error_responses(400, 401, 413, 503),
        openapi_extra=SQL_REQUEST_BODY,
        summary=(
            "One read-only SELECT over the pipeline's tables, checked on ClickHouse's own syntax tree, "
            "with limits"
        ),
    )
    async def sql(request: Request) -> Response:
        body = sql_request(
            request.headers.get("content-type", ""),
            await bounded_body(request, storage.settings.storage.max_body_bytes),
        )
        try:
            check_text("sql", body.sql)
            params = bind_params(body.params)
        except QueryError as exc:
            raise param_error(400, exc.where, exc.name, exc.msg) from None
        rows = await run_in_threadpool(run_sql, storage, body.sql, params)
        return json_rows(
            {"columns": list(rows[0].keys()) if rows else [], "rows": rows, "row_count": len(rows)}
        )


class FunnelStep(BaseModel):
    breakdown: str = Field(description='the breakdown value ("" for breakdown=none)')
    step: int = Field(description="1-based")
    event_type: str
    users: int = Field(description="users who reached at least this step")
    conversion: float = Field(description="users / users of step 1 in the same breakdown value")


class FunnelResult(BaseModel):
    steps: list[str]
    window_seconds: int
    breakdown: str
    rows: list[FunnelStep]


class Cohort(BaseModel):
    cohort: str = Field(description="first day of the cohort's period, YYYY-MM-DD (UTC)")
    users: int = Field(description="users first seen in the period")
    returning: list[int] = Field(description="per following period 1, 2, ...: cohort users active then")


class RetentionResult(BaseModel):
    period: str
    returning_event: str | None
    cohorts: list[Cohort]


class AnalyticsRows(BaseModel):
    rows: list[dict[str, Any]]
    row_count: int


FromParam = Annotated[str, Query(alias="from", description="event time, epoch ms or ISO-8601, inclusive")]
ToParam = Annotated[str, Query(description="event time, epoch ms or ISO-8601, exclusive")]


def add_analytics_routes(app: FastAPI, storage: Storage, guarded: list[Any]) -> None:
    s = storage.settings.storage
    table, database = s.events_table, storage.settings.clickhouse.database
    tags: list[str | Enum] = ["analytics"]
    errors = error_responses(400, 401, 503)  # FastAPI documents its 422 itself

    @app.get(
        "/v1/analytics/funnel",
        tags=tags,
        dependencies=guarded,
        response_model=FunnelResult,
        responses=errors,
        summary="Users reaching each of 2..N ordered steps (event types) within a conversion window",
    )
    def funnel(
        from_: FromParam,
        to: ToParam,
        step: Annotated[
            list[str], Query(description="event types in order, 2..storage.funnel_max_steps (default 10)")
        ],
        window: Annotated[
            int, Query(description="conversion window in seconds, 1..storage.analytics_max_days days")
        ] = 86_400,
        breakdown: Annotated[
            Breakdown,
            Query(description="group users by this value on their earliest step event in the range"),
        ] = "none",
    ) -> Response:
        span = time_range(from_, to, s.analytics_max_days)
        steps = funnel_step_types(step, s.funnel_max_steps)
        if not 1 <= window <= s.analytics_max_days * 86_400:
            msg = f"window must be 1..{s.analytics_max_days * 86_400} seconds (storage.analytics_max_days)"
            raise param_error(422, "query", "window", msg)
        sql, params = funnel_query(table, database, steps, window * 1000, span, breakdown)
        rows = analytics_read(storage, sql, params)
        body = {"steps": steps, "window_seconds": window, "breakdown": breakdown}
        return json_rows({**body, "rows": funnel_steps(steps, rows)})

    @app.get(
        "/v1/analytics/retention",
        tags=tags,
        dependencies=guarded,
        response_model=RetentionResult,
        responses=errors,
        summary="Cohorts by the day or week users were first seen; how many came back in each period after",
    )
    def retention(
        from_: FromParam,
        to: ToParam,
        period: Annotated[
            Period, Query(description="cohort and return period (weeks start on Monday, UTC)")
        ] = "day",
        event: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=EVENT_TYPE_MAX,
                description="count a return only for this event type (default: any event)",
            ),
        ] = None,
    ) -> Response:
        span = time_range(from_, to, s.analytics_max_days)
        sql, params = retention_query(table, database, period, span, event)
        cohorts = retention_cohorts(analytics_read(storage, sql, params))
        return json_rows({"period": period, "returning_event": event, "cohorts": cohorts})

    @app.get(
        "/v1/analytics/top-pages",
        tags=tags,
        dependencies=guarded,
        response_model=AnalyticsRows,
        responses=errors,
        summary="The most viewed pages (page_view events; URL without query string) with unique users",
    )
    def top_pages(
        from_: FromParam,
        to: ToParam,
        limit: Annotated[int, Query(description="1..storage.max_limit")] = 10,
    ) -> Response:
        span = time_range(from_, to, s.analytics_max_days)
        check_limit(limit, s.max_limit)
        rows = analytics_read(storage, *top_pages_query(table, database, span, limit))
        return json_rows({"rows": rows, "row_count": len(rows)})

    @app.get(
        "/v1/analytics/sources",
        tags=tags,
        dependencies=guarded,
        response_model=AnalyticsRows,
        responses=errors,
        summary="Events, sessions and users by source, medium, campaign and referrer class",
    )
    def sources(
        from_: FromParam,
        to: ToParam,
        limit: Annotated[int, Query(description="1..storage.max_limit")] = 100,
    ) -> Response:
        span = time_range(from_, to, s.analytics_max_days)
        check_limit(limit, s.max_limit)
        rows = analytics_read(storage, *sources_query(table, database, span, limit))
        return json_rows({"rows": rows, "row_count": len(rows)})


def time_range(from_: str, to: str, max_days: int) -> TimeRange:
    """[from, to) from the query; 422 naming the parameter when unreadable, empty or longer than max_days."""
    try:
        span = TimeRange(parse_time("from", from_), parse_time("to", to))
    except QueryError as exc:
        raise param_error(422, exc.where, exc.name, exc.msg) from None
    if span.end_ms <= span.start_ms:
        raise param_error(422, "query", "to", "'to' must be after 'from'")
    if span.end_ms - span.start_ms > max_days * DAY_MS:
        msg = f"the range is longer than {max_days} days (storage.analytics_max_days)"
        raise param_error(422, "query", "to", msg)
    return span


def check_limit(limit: int, max_limit: int) -> None:
    if not 1 <= limit <= max_limit:
        raise param_error(422, "query", "limit", f"limit must be 1..{max_limit} (storage.max_limit)")


def funnel_step_types(steps: list[str], max_steps: int) -> list[str]:
    """2..max_steps distinct event types of 1..128 characters; 422 naming `step` otherwise."""
    if not 2 <= len(steps) <= max_steps:
        msg = f"a funnel has 2..{max_steps} steps (storage.funnel_max_steps), got {len(steps)}"
        raise param_error(422, "query", "step", msg)
    for number, event_type in enumerate(steps, 1):
        if not 1 <= len(event_type) <= EVENT_TYPE_MAX:
            msg = f"step {number} must be an event type of 1..{EVENT_TYPE_MAX} characters"
            raise param_error(422, "query", "step", msg)
        try:
            check_text("step", event_type)
        except QueryError as exc:
            raise param_error(422, "query", "step", exc.msg) from None
    if len(set(steps)) != len(steps):
        raise param_error(422, "query", "step", "each step must be another event type")
    return steps


def analytics_read(storage: Storage, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """On the analytics route's read-only connections: ClickHouse's refusal (a limit) is a 400, none a 503."""
    return clickhouse_answer(lambda: storage.readers["analytics"].read(sql, params), "query", "from")


def run_sql(storage: Storage, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Check, then run the checked text; every refusal is a 400 naming body.sql."""
    try:
        checked = clickhouse_answer(lambda: storage.checked_sql(sql, params), "body", "sql")
    except SandboxError as exc:
        raise param_error(400, "body", "sql", f"refused by the SQL sandbox: {exc}") from None
    # ClickHouse does not count the result rows of a statement without FROM (arrayJoin can make millions);
    # as a subquery's they count against the limit like any others
    bounded = f"SELECT * FROM ({checked})"
    return clickhouse_answer(lambda: storage.readers["sql"].read(bounded, params), "body", "sql")


def clickhouse_answer(read: Callable[[], T], where: str, name: str) -> T:
    """read(): ClickHouse's refusal (unknown table, bad parameter, a limit, readonly) is a 400; no answer at
    all a 503."""
    try:
        return read()
    except (HTTPException, SandboxError):
        raise
    except ResultTooLarge as exc:
        raise param_error(400, where, name, str(exc)) from None
    except RecursionError:
        raise param_error(400, where, name, "the result nests too deeply to be read") from None
    except Exception as exc:
        if "DB::Exception" not in str(exc):
            raise unavailable("clickhouse", f"ClickHouse unavailable: {_first_line(exc)}", 1) from None
        raise param_error(400, where, name, f"ClickHouse refused the query: {refusal(exc)}") from None


def refusal(exc: Exception) -> str:
    """ClickHouse's reason, without what only helps someone map the server: its version, spelling hints
    that name tables the API does not serve, and the sandbox's own wrapping query."""
    text = _first_line(exc)
    for tail in (" Maybe you meant", " In scope SELECT formatQuery(", " (version "):
        text = text.split(tail, 1)[0]
    return text


def json_rows(body: dict[str, Any]) -> Response:
    """The result as JSON, values as ClickHouse sent them (integers wider than 64 bits included)."""
    try:
        return Response(
            json.dumps(body, ensure_ascii=False, separators=(",", ":")), media_type="application/json"
        )
    except RecursionError:
        raise param_error(400, "body", "sql", "the result nests too deeply to be sent as JSON") from None


SQL_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SqlRequest"}}},
    }
}


async def bounded_body(request: Request, limit: int) -> bytes:
    """The body, read only up to limit bytes (413 beyond); the read key was checked before the first byte."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_error(413, f"body is {declared} bytes; the limit is {limit} (storage.max_body_bytes)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_error(413, f"body exceeds the limit of {limit} bytes (storage.max_body_bytes)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise body_error(400, "the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


def sql_request(content_type: str, body: bytes) -> SqlRequest:
    """The JSON body as a SqlRequest; errors in FastAPI's validation shape (422 naming the field, 400 for
    bad UTF-8)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "input": None,
                    "msg": f"send a JSON object with Content-Type application/json, not {media!r}",
                }
            ]
        )
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        data = json.loads(body)
    except RecursionError:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "input": {}, "msg": "JSON nests too deeply"}]
        ) from None
    except UnicodeDecodeError as exc:
        raise body_error(400, f"body is not valid UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    try:
        return SqlRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
