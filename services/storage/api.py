"""The storage process's HTTP side: health, Prometheus metrics and the read-only historical query API.

Errors share FastAPI's validation shape, so every 4xx names the parameter:
    {"detail": [{"loc": ["query", "limit"], "msg": "...", "type": "value_error"}]}
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.storage.backends import Backend, open_backend
from services.storage.consumer import StorageConsumer
from services.storage.query import QueryError, bind_params, guard_select, metric_query, parse_time, read_only_settings
from services.storage.tables import all_tables, migrate
from shared.api_errors import error_responses
from shared.api_keys import read_key_guard
from shared.consumer_lag import group_lag_registry
from shared.http_metrics import HttpMetrics
from shared.logging import get_logger
from shared.metrics import MetricSchema, load_schemas
from shared.settings import Settings

log = get_logger("storage.api")
RESERVED = {"from", "to", "limit"}


def param_error(status: int, where: str, name: str, msg: str) -> HTTPException:
    return HTTPException(status, [{"loc": [where, name], "msg": msg, "type": "value_error"}])


class SqlRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "sql": "SELECT event_type, sum(events) AS events FROM event_metrics FINAL "
               "WHERE window_start >= {since:DateTime64(3)} GROUP BY event_type",
        "params": {"since": "2026-01-01 00:00:00"}}]})

    sql: str = Field(description="One SELECT (or WITH ... SELECT); values as {name:Type} placeholders")
    params: dict[str, Any] = Field(default_factory=dict, description="values bound to the {name:Type} placeholders")


class SqlResult(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]]
    row_count: int


class MetricRows(BaseModel):
    job: str
    rows: list[dict[str, Any]]
    row_count: int


class Storage:
    """What the routes share: one backend guarded by a lock (a chDB session has one owner), and the consumer."""

    def __init__(self, settings: Settings, run_consumer: bool = True):
        self.settings = settings
        self.schemas: dict[str, MetricSchema] = load_schemas()
        self.lock = threading.Lock()
        self.backend: Backend = open_backend(settings)
        migrate(self.backend, settings.clickhouse.database, all_tables(settings, self.schemas))
        if self.backend.kind == "chdb":  # user SQL names tables without the database
            self.backend.command(f"USE `{settings.clickhouse.database}`")
        self.consumer = StorageConsumer(settings, self.backend, self.lock, self.schemas) if run_consumer else None
        self.lag_registry = group_lag_registry(settings.kafka.bootstrap, settings.storage.consumer_group,
                                               list(self.consumer.routes)) if self.consumer else None

    def schema(self, job: str) -> MetricSchema:
        try:
            return self.schemas[job]
        except KeyError:
            raise param_error(404, "path", "job", f"unknown job {job!r}; known: {sorted(self.schemas)}") from None

    def query(self, sql: str, params: dict[str, Any], settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return self.backend.query(sql, params, settings)

    def clickhouse_ok(self) -> tuple[bool, str]:
        if not self.lock.acquire(timeout=5):
            return True, "busy writing"
        try:
            return True, str(self.backend.query("SELECT version() AS v")[0]["v"])
        except Exception as exc:
            return False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        finally:
            self.lock.release()

    def close(self) -> None:
        if self.consumer:
            self.consumer.stop()
        with self.lock:
            self.backend.close()


def create_app(settings: Settings | None = None, run_consumer: bool = True) -> FastAPI:
    settings = settings or Settings()
    storage = Storage(settings, run_consumer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if storage.consumer:
            storage.consumer.start()
        yield
        storage.close()

    app = FastAPI(title="rtap storage API", version="1", lifespan=lifespan,
                  description="Historical metrics from ClickHouse: per-job time ranges and read-only SQL.")
    app.state.storage = storage
    app.add_middleware(HttpMetrics)
    app.add_exception_handler(StarletteHTTPException, name_the_body)
    add_health_routes(app, storage)
    add_query_routes(app, storage, read_key_guard(settings.storage.read_keys))
    return app


async def name_the_body(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own 400 for a body it cannot decode (invalid UTF-8) gets the validation shape naming the body."""
    if exc.status_code == 400 and isinstance(exc.detail, str):
        exc = HTTPException(400, [{"loc": ["body"], "msg": exc.detail, "type": "body_invalid"}])
    return await http_exception_handler(request, exc)


def add_health_routes(app: FastAPI, storage: Storage) -> None:
    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="ClickHouse reachable and the consumer has partitions assigned",
             responses={503: {"description": "not ready; the same body says why"}})
    def readyz() -> JSONResponse:
        ok, detail = storage.clickhouse_ok()
        consumer = storage.consumer.status() if storage.consumer else {"running": False, "assigned_partitions": 0}
        ready = ok and consumer["running"] and consumer["assigned_partitions"] > 0
        body = {"status": "ready" if ready else "not ready", "clickhouse": {"ok": ok, "detail": detail}, "consumer": consumer}
        return JSONResponse(body, 200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        lag = generate_latest(storage.lag_registry) if storage.lag_registry else b""
        return Response(generate_latest() + lag, media_type=CONTENT_TYPE_LATEST)


def add_query_routes(app: FastAPI, storage: Storage, guarded: list) -> None:
    max_limit = storage.settings.storage.max_limit

    @app.get("/v1/metrics/{job}", tags=["query"], dependencies=guarded, response_model=MetricRows,
             responses=error_responses(400, 401, 404),
             summary="A job's windows with window_start in [from, to), filtered by group keys (exact, de-duplicated)")
    def job_metrics(
        request: Request,
        from_: Annotated[str, Query(alias="from", description="epoch ms or ISO-8601, inclusive")],
        to: Annotated[str, Query(description="epoch ms or ISO-8601, exclusive")],
        limit: Annotated[int, Query(ge=1, description="at most storage.max_limit")] = 1000,
        job: str = Path(description="a metric job (others: 404)", json_schema_extra={"enum": sorted(storage.schemas)}),
    ) -> dict[str, Any]:
        schema = storage.schema(job)
        if limit > max_limit:
            raise param_error(400, "query", "limit", f"limit must be at most {max_limit}")
        filters = {k: v for k, v in request.query_params.items() if k not in RESERVED}
        try:
            start, end = parse_time("from", from_), parse_time("to", to)
            if end <= start:
                raise QueryError("query", "to", "'to' must be after 'from'")
            sql, params = metric_query(schema, storage.settings.clickhouse.database, start, end, filters, limit)
        except QueryError as exc:
            raise param_error(400, exc.where, exc.name, exc.msg) from None
        rows = storage.query(sql, params)
        return {"job": job, "rows": rows, "row_count": len(rows)}

    @app.post("/v1/sql", tags=["query"], dependencies=guarded, response_model=SqlResult,
              responses=error_responses(400, 401, 503),
              summary="One read-only SELECT with bound parameters, readonly=1, row and time limits")
    def sql(body: SqlRequest) -> dict[str, Any]:
        try:
            text = guard_select(body.sql)
            params = bind_params(body.params)
        except QueryError as exc:
            raise param_error(400, exc.where, exc.name, exc.msg) from None
        limits = read_only_settings(storage.settings.storage.sql_max_rows, storage.settings.storage.sql_max_seconds)
        try:
            rows = storage.query(text, params, limits)
        except Exception as exc:
            if "DB::Exception" not in str(exc):
                raise HTTPException(503, f"ClickHouse unavailable: {_first_line(exc)}") from None
            # ClickHouse refused it: unknown table, bad parameter, limit exceeded, readonly
            raise param_error(400, "body", "sql", f"ClickHouse refused the query: {_first_line(exc)}") from None
        return {"columns": list(rows[0].keys()) if rows else [], "rows": rows, "row_count": len(rows)}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
