"""One small interface over the two ClickHouse backends: embedded chDB and a ClickHouse server.

Both take the same SQL with server-side bound parameters ({name:Type}); SQL is never
built from values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import orjson

from shared.settings import Settings


class Backend(Protocol):
    kind: str

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None: ...

    def query(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class ChdbBackend:
    kind = "chdb"

    def __init__(self, path: Path):
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.session = session.Session(str(path))

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.session.query(sql, "Null", params=params or None)

    def query(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if settings:
            sql = f"{sql}\nSETTINGS " + ", ".join(f"{k} = {_setting_literal(v)}" for k, v in settings.items())
        result = self.session.query(sql, "JSONEachRow", params=params or None)
        text = result.bytes().decode() if hasattr(result, "bytes") else str(result)
        # one row per "\n": str.splitlines() would also split inside values holding U+0085, which ClickHouse writes raw
        return [json.loads(line) for line in text.split("\n") if line.strip()]

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Rows may carry datetimes (sent as ISO 8601, parsed best-effort) and dicts (Map columns)."""
        if not rows:
            return
        payload = b"\n".join(orjson.dumps(r) for r in rows).decode()
        self.session.query(f"INSERT INTO {table} SETTINGS date_time_input_format = 'best_effort' FORMAT JSONEachRow\n{payload}", "Null")

    def close(self) -> None:
        self.session.close()


class ServerBackend:
    kind = "server"

    def __init__(self, url: str, database: str):
        import clickhouse_connect

        # Connect to "default" first: a database named at connect time must already exist.
        self.client = clickhouse_connect.get_client(dsn=url, database="default", autogenerate_session_id=False)
        self.client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self.client.database = database

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        self.client.command(sql, parameters=params)

    def query(self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        result = self.client.query(sql, parameters=params, settings=settings)
        return list(result.named_results())

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0].keys())
        database, _, name = table.rpartition(".")
        self.client.insert(name, [[r.get(c) for c in columns] for r in rows], column_names=columns, database=database or None)

    def close(self) -> None:
        self.client.close()


def _setting_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def open_backend(settings: Settings) -> Backend:
    if settings.clickhouse.url:
        return ServerBackend(settings.clickhouse.url, settings.clickhouse.database)
    return ChdbBackend(settings.state_path / "clickhouse")
