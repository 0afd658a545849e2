"""One small interface over the two ClickHouse backends: embedded chDB and a ClickHouse server.

Both take the same SQL with server-side bound parameters ({name:Type}); SQL is never
built from values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from shared.settings import Settings


class ResultTooLarge(Exception):
    """A result over the reader's limit of JSON bytes, refused before it is read into rows."""


class Backend(Protocol):
    kind: str

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class ChdbBackend:
    kind = "chdb"

    def __init__(
        self,
        path: Path,
        options: dict[str, Any] | None = None,
        database: str | None = None,
        max_result_bytes: int = 0,
    ):
        """options: ClickHouse settings of this connection alone (another connection to the path keeps its
        own). max_result_bytes: the most JSON a query's result may take before it is read into rows (0: no
        limit); chDB does not apply ClickHouse's max_result_bytes, and rows take several times their JSON."""
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_result_bytes = max_result_bytes
        startup = "&".join(f"{name}={value}" for name, value in (options or {}).items())
        connection = f"{path}?{startup}" if startup else str(path)
        self.session: Any = session.Session(connection)  # type: ignore[no-untyped-call]
        if database:
            self.command(f"USE `{database}`")

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.session.query(sql, "Null", params=_escaped(params) or None)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.session.query(sql, "JSONEachRow", params=_escaped(params) or None)
        data: bytes = result.bytes() if hasattr(result, "bytes") else str(result).encode()
        if self.max_result_bytes and len(data) > self.max_result_bytes:
            raise ResultTooLarge(
                f"the result takes {len(data):,} bytes as JSON, over the limit of {self.max_result_bytes:,} "
                "(storage.sql_max_result_bytes)"
            )
        text = data.decode()
        # one row per "\n": str.splitlines() would also split inside values holding U+0085, which
        # ClickHouse writes raw
        return [json.loads(line) for line in text.split("\n") if line.strip()]

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Rows may carry datetimes (sent as ISO 8601, parsed best-effort) and dicts (Map columns)."""
        if not rows:
            return
        payload = b"\n".join(orjson.dumps(r) for r in rows).decode()
        self.session.query(
            f"INSERT INTO {table} SETTINGS date_time_input_format = 'best_effort' "
            f"FORMAT JSONEachRow\n{payload}",
            "Null",
        )

    def close(self) -> None:
        self.session.close()


class ServerBackend:
    kind = "server"

    def __init__(
        self,
        url: str,
        database: str,
        create: bool = True,
        query_settings: dict[str, Any] | None = None,
        password: str = "",
    ):
        """create: make the database first (the writer; a read-only user cannot). query_settings: sent with
        every query. password: overrides one in the URL (clickhouse.password, which no URL syntax has to
        carry)."""
        import clickhouse_connect

        # Connect to "default" first: a database named at connect time must already exist.
        self.client = clickhouse_connect.get_client(
            dsn=url, password=password, database="default", autogenerate_session_id=False
        )
        if create:
            self.client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.client.database = database
        self.query_settings = query_settings or {}

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.client.command(sql, parameters=params)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=params, settings=self.query_settings)
        return list(result.named_results())

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0].keys())
        database, _, name = table.rpartition(".")
        self.client.insert(
            name, [[r.get(c) for c in columns] for r in rows], column_names=columns, database=database or None
        )

    def close(self) -> None:
        self.client.close()


def _escaped(params: dict[str, Any] | None) -> dict[str, Any]:
    """chDB reads a text parameter in the escaped (TabSeparated) format, as clickhouse-client does: escape
    it so."""
    return {
        name: _escape_text(value) if isinstance(value, str) else value
        for name, value in (params or {}).items()
    }


def _escape_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def open_backend(settings: Settings) -> Backend:
    if settings.clickhouse.url:
        return ServerBackend(
            settings.clickhouse.url, settings.clickhouse.database, password=settings.clickhouse.password
        )
    return ChdbBackend(settings.state_path / "clickhouse")


def reader_limits(settings: Settings) -> dict[str, Any]:
    """What bounds one query of the storage API. readonly=1 also keeps a query from changing any of them."""
    s = settings.storage
    return {
        "max_result_rows": s.sql_max_rows,
        "max_result_bytes": s.sql_max_result_bytes,
        "result_overflow_mode": "throw",
        "max_execution_time": s.sql_max_seconds,
        "timeout_overflow_mode": "throw",
        "max_memory_usage": s.sql_max_memory_bytes,
        "max_rows_to_read": s.sql_max_rows_to_read,
        "read_overflow_mode": "throw",
        # bytes that are not UTF-8 come back as U+FFFD, not as broken JSON
        "output_format_json_validate_utf8": 1,
        "readonly": 1,
    }


def open_reader(settings: Settings) -> Backend:
    """The storage API's own read-only connection: its queries run beside the consumer's writes, never
    behind them.

    chDB: a second connection to the same engine with the limits as its startup settings. A ClickHouse server:
    clickhouse.reader_url (a read-only user whose profile holds the limits), else the writer's URL with the
    limits sent per query.
    """
    c = settings.clickhouse
    if c.reader_url:
        return ServerBackend(c.reader_url, c.database, create=False, password=c.reader_password)
    if c.url:
        return ServerBackend(
            c.url, c.database, create=False, query_settings=reader_limits(settings), password=c.password
        )
    return ChdbBackend(
        settings.state_path / "clickhouse",
        {"readonly": 1, **reader_limits(settings)},
        c.database,
        settings.storage.sql_max_result_bytes,
    )
