"""GET /v1/events/export: the raw events of an event-time range, back in the Kafka wire format, streamed.

`rtap backfill --source raw` reads it to replay history Kafka no longer holds: each line is one event's Kafka
value (analytics_events' exact wire format), in event-time order, then one last line
{"export_end": {"rows": N}} (a stream without it was cut short; an error after the first byte ends it with
{"export_error": "..."}). The row -> value mapping is the inverse of storage's (processors.row_builder),
derived from shared.events.EVENT, so a new event field is carried without an edit here.

The events table's copy of an event is the de-duplicated one (FINAL); heartbeats are never stored.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse

from services.storage.backends import Backend, ChdbBackend, ServerBackend, reader_limits
from services.storage.query import QueryError, parse_time
from services.storage.tables import qualified
from shared.api_errors import error_responses, param_error, unavailable
from shared.events import EPOCH_MS, EVENT, EVENT_TIME_PATH, ID_PATH, EventField, EventSchema
from shared.logging import get_logger
from shared.settings import Settings

log = get_logger("storage.export")
DAY_MS = 86_400_000
END, ERROR = "export_end", "export_error"


def kept_from_ms(settings: Settings, now_ms: int | None = None) -> int:
    """The oldest event time the raw table still holds whole: now minus its TTL (storage.raw_events_ttl_days).
    Older rows may linger until a merge drops them, but none is guaranteed."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - settings.storage.raw_events_ttl_days * DAY_MS


def _selected(f: EventField) -> str:
    column = f"`{f.column}`"
    return f"toUnixTimestamp64Milli({column}) AS {column}" if f.type is EPOCH_MS else column


def export_query(settings: Settings, event: EventSchema = EVENT) -> str:
    """One SELECT of every event field in [{start:Int64}, {end:Int64}) event time, oldest first."""
    # qualified: unqualified, the name would be the select list's epoch-ms alias of the same name
    time_column = f"source.`{event.at(EVENT_TIME_PATH).column}`"
    table = qualified(settings.clickhouse.database, settings.storage.events_table)
    return (
        f"SELECT {', '.join(_selected(f) for f in event.fields)} FROM {table} AS source FINAL "
        f"WHERE {time_column} >= fromUnixTimestamp64Milli({{start:Int64}}) "
        f"AND {time_column} < fromUnixTimestamp64Milli({{end:Int64}}) "
        f"ORDER BY {time_column}, source.`{event.at(ID_PATH).column}`"
    )


def wire_value(row: dict[str, Any], event: EventSchema = EVENT) -> dict[str, Any]:
    """A raw table row (as export_query selects it) as its Kafka value."""
    return event.nest({f.path: row[f.column] for f in event.fields})


def stream_rows(backend: Backend, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """The result as JSONEachRow lines, read incrementally from either backend; a stream given up early
    (the client went away) is cancelled."""
    if isinstance(backend, ChdbBackend):
        result = backend.session.send_query(sql, "JSONEachRow", params=params)
        try:
            yield from _lines(chunk.bytes() for chunk in result)
        finally:
            result.cancel()
    elif isinstance(backend, ServerBackend):
        with backend.client.raw_stream(
            sql, parameters=params, settings=backend.query_settings, fmt="JSONEachRow"
        ) as stream:
            yield from _lines(iter(stream))
    else:
        raise TypeError(f"no streaming read for backend {backend.kind!r}")


def _lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for piece in pieces:
        rest += piece
        *complete, rest = rest.split(b"\n")
        yield from (line for line in complete if line.strip())
    if rest.strip():
        yield rest


def export_lines(backend: Backend, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """NDJSON: one wire value per row, then the end line; an error mid-stream ends it with an error line."""
    rows = 0
    try:
        for line in stream_rows(backend, sql, params):
            yield orjson.dumps(wire_value(orjson.loads(line))) + b"\n"
            rows += 1
    except Exception as exc:
        log.warning("export failed", rows=rows, error=str(exc).splitlines()[0][:300] if str(exc) else "")
        yield orjson.dumps({ERROR: f"export failed after {rows} rows: {type(exc).__name__}"}) + b"\n"
        return
    yield orjson.dumps({END: {"rows": rows}}) + b"\n"


class Exporter:
    """At most storage.export_max_concurrent exports at once, each on a read-only connection of its own."""

    def __init__(self, settings: Settings, open_connection: Callable[[], Backend] | None = None):
        self.settings = settings
        self.slots = threading.BoundedSemaphore(settings.storage.export_max_concurrent)
        self.open_connection = open_connection or (lambda: open_export_connection(settings))

    def checked_range(self, from_: str, to: str) -> tuple[int, int]:
        """[start, end) in epoch ms; a QueryError naming the parameter unless the table keeps the range."""
        start, end = parse_time("from", from_), parse_time("to", to)
        if end <= start:
            raise QueryError("query", "to", "'to' must be after 'from'")
        kept = kept_from_ms(self.settings)
        if start < kept:
            days = self.settings.storage.raw_events_ttl_days
            raise QueryError(
                "query",
                "from",
                f"'from' ({start}) is older than the raw table keeps: it holds event times from {kept} "
                f"(now minus storage.raw_events_ttl_days = {days}) onwards; events before that are gone",
            )
        return start, end

    def lines(self, start: int, end: int) -> Iterator[bytes]:
        """The export's lines; its first line is read here, so a busy or unreachable ClickHouse is a 503
        before the response starts."""
        if not self.slots.acquire(blocking=False):
            msg = f"{self.settings.storage.export_max_concurrent} exports are already running; retry later"
            raise unavailable("clickhouse", msg, 30, "over_capacity")
        try:
            connection = self.open_connection()
        except Exception as exc:
            self.slots.release()
            raise unavailable("clickhouse", f"ClickHouse unavailable: {type(exc).__name__}", 5) from None
        lines = self._run(connection, start, end)
        first = next(lines)  # started: from now on closing it (or dropping it) releases the slot
        return itertools.chain([first], lines)

    def _run(self, connection: Backend, start: int, end: int) -> Iterator[bytes]:
        try:
            yield from export_lines(connection, export_query(self.settings), {"start": start, "end": end})
        finally:
            connection.close()
            self.slots.release()


def export_limits(settings: Settings) -> dict[str, Any]:
    """The reader's limits without a result cap (a range may hold millions of events), with the export's own
    time limit, sorting beyond half the memory limit on disk; set per connection (readonly=1 refuses a
    query's own SETTINGS)."""
    s = settings.storage
    return {
        **reader_limits(settings),
        "max_result_rows": 0,
        "max_result_bytes": 0,
        "max_rows_to_read": 0,
        "max_execution_time": s.export_max_seconds,
        "max_bytes_before_external_sort": s.sql_max_memory_bytes // 2,
        "output_format_json_quote_64bit_integers": 0,  # epoch ms as JSON numbers, as on the wire
    }


def open_export_connection(settings: Settings) -> Backend:
    """chDB: a read-only connection of its own. A ClickHouse server: the writer's URL with readonly=1 and the
    limits sent per query (a read-only user's profile could not lift the result cap)."""
    c = settings.clickhouse
    if c.url:
        return ServerBackend(
            c.url, c.database, create=False, query_settings=export_limits(settings), password=c.password
        )
    return ChdbBackend(settings.state_path / "clickhouse", export_limits(settings), c.database)


def add_export_route(app: FastAPI, settings: Settings, guarded: list[Any]) -> None:
    exporter = Exporter(settings)

    @app.get(
        "/v1/events/export",
        tags=["query"],
        dependencies=guarded,
        response_class=StreamingResponse,
        responses={
            **error_responses(400, 401, 503),
            200: {"description": "NDJSON: one raw event's Kafka value per line, then the end line"},
        },
        summary="The raw events of an event-time range in the Kafka wire format, oldest first (backfill)",
    )
    def export_events(
        from_: Annotated[str, Query(alias="from", description="event time, epoch ms or ISO-8601, inclusive")],
        to: Annotated[str, Query(description="event time, epoch ms or ISO-8601, exclusive")],
    ) -> StreamingResponse:
        try:
            start, end = exporter.checked_range(from_, to)
        except QueryError as exc:
            raise param_error(400, exc.where, exc.name, exc.msg) from None
        return StreamingResponse(exporter.lines(start, end), media_type="application/x-ndjson")
