"""ClickHouse tables, derived from the metric schemas and the raw event's schema; never hand-kept per job.

Every table is a ReplacingMergeTree whose sorting key holds its record identity, so a replayed record
overwrites itself: metric tables are sorted by the schema key (a tombstone sets `_deleted`), the raw events
table by `events_sorting_key()`, which ends in the event id. `_version` is the Kafka offset of the record
(the same key always lands in the same partition, so a later offset is a later value). Query with FINAL
(or argMax over `_version`) for exact numbers.

`migrate()` creates what is missing, re-sorts a table whose sorting key is not the declared one
(`resort()`), adds new columns (ADD COLUMN IF NOT EXISTS), updates the raw events TTL, and records every
statement it ran in `schema_migrations`. It never loses data: a re-sort swaps in a complete copy of the
table before it drops the old one. `migrate_views()` then (re)creates each declared view whose definition
changed. The identity tables and views (persons, links, groups) are declared in services/storage/identity.py,
with a version of their own (event time, then event id) instead of the Kafka offset.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from services.storage.backends import Backend
from shared.events import EVENT, EVENT_TIME_PATH, ID_PATH, TYPE_PATH, USER_PATH, EventSchema
from shared.logging import get_logger
from shared.metric_schema import CLICKHOUSE_TYPES, MetricSchema
from shared.settings import Settings

log = get_logger("storage.tables")

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PARTITION_ID = re.compile(r"^[A-Za-z0-9_-]+$")
MIGRATIONS_TABLE = "schema_migrations"
COPY_INFIX = "__resort_"
VERSION = "_version"
DELETED = "_deleted"
INGESTED_AT = "_ingested_at"


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str


@dataclass(frozen=True)
class Table:
    """order_by: the sorting key's expressions, SQL built from the table's own (checked) column names."""

    name: str
    columns: tuple[ColumnDef, ...]
    engine: str
    order_by: tuple[str, ...]
    partition_by: str
    ttl: str | None = None

    def __post_init__(self) -> None:
        for name in (self.name, *(c.name for c in self.columns)):
            if not IDENTIFIER.match(name):
                raise ValueError(f"{name!r} is not a safe ClickHouse identifier")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def sorting_key(self) -> str:
        return ", ".join(self.order_by)

    def create_sql(self, database: str) -> str:
        columns = ",\n  ".join(f"`{c.name}` {c.type}" for c in self.columns)
        ttl = f"\nTTL {self.ttl}" if self.ttl else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {qualified(database, self.name)} (\n  {columns}\n)\n"
            f"ENGINE = {self.engine}\nPARTITION BY {self.partition_by}\n"
            f"ORDER BY ({self.sorting_key}){ttl}"
        )


@dataclass(frozen=True)
class View:
    """A view over the tables; select: SQL built from declared names, never from input."""

    name: str
    select: str

    def create_sql(self, database: str) -> str:
        return f"CREATE OR REPLACE VIEW {qualified(database, self.name)} AS\n{self.select}"


@dataclass(frozen=True)
class Partition:
    """parts_digest: of its active parts' names, which change with every insert, merge or mutation."""

    rows: int
    parts_digest: str


def qualified(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


def quoted(column: str) -> str:
    return f"`{column}`"


def metric_table(schema: MetricSchema) -> Table:
    """Key columns plain (they are the sort key), every other column Nullable (validate() allows nulls)."""
    columns = tuple(
        ColumnDef(c.name, _metric_type(c.type, nullable=c.name not in schema.key)) for c in schema.columns
    )
    bookkeeping = (
        ColumnDef(VERSION, "UInt64"),
        ColumnDef(DELETED, "UInt8 DEFAULT 0"),
        ColumnDef(INGESTED_AT, "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    )
    return Table(
        name=schema.name,
        columns=columns + bookkeeping,
        engine=f"ReplacingMergeTree({VERSION}, {DELETED})",
        order_by=tuple(quoted(k) for k in schema.key),
        partition_by=f"toYYYYMM(`{schema.window_start}`)",
    )


def _metric_type(logical: str, nullable: bool) -> str:
    return _nullable(CLICKHOUSE_TYPES[logical]) if nullable else CLICKHOUSE_TYPES[logical]


def _nullable(base: str) -> str:
    if base.startswith("LowCardinality("):
        return f"LowCardinality(Nullable({base[len('LowCardinality(') : -1]}))"
    return f"Nullable({base})"


def event_columns(event: EventSchema) -> tuple[ColumnDef, ...]:
    """One column per raw event field, in the schema's order, then the bookkeeping columns."""
    fields = tuple(
        ColumnDef(f.column, _nullable(f.type.clickhouse) if f.nullable else f.type.clickhouse)
        for f in event.fields
    )
    ingested_at = ColumnDef(INGESTED_AT, "DateTime64(3, 'UTC') DEFAULT now64(3)")
    return (*fields, ColumnDef(VERSION, "UInt64"), ingested_at)


def events_table(settings: Settings, event: EventSchema = EVENT) -> Table:
    """Partitioned by day of event time, sorted by `events_sorting_key()`."""
    return Table(
        name=settings.storage.events_table,
        columns=event_columns(event),
        engine=f"ReplacingMergeTree({VERSION})",
        order_by=events_sorting_key(event),
        partition_by=f"toYYYYMMDD(`{event.at(EVENT_TIME_PATH).column}`)",
        ttl=events_ttl(settings.storage.raw_events_ttl_days, event),
    )


def events_sorting_key(event: EventSchema = EVENT) -> tuple[str, ...]:
    """Event type, day of event time, hashed user id, event id.

    The day is the partition's too: it adds no way for two rows of one event to differ in key. Every other
    part is a value of the client's payload, the same in each retry of an event, so a retried event still
    replaces itself; no finer time is, since an event sent without a timestamp gets its receive time.
    """
    return (
        quoted(event.at(TYPE_PATH).column),
        f"toDate({quoted(event.at(EVENT_TIME_PATH).column)})",
        f"cityHash64({quoted(event.at(USER_PATH).column)})",
        quoted(event.at(ID_PATH).column),
    )


def events_ttl(days: int, event: EventSchema = EVENT) -> str:
    return f"toDateTime(`{event.at(EVENT_TIME_PATH).column}`) + toIntervalDay({int(days)})"


def all_tables(settings: Settings, schemas: dict[str, MetricSchema]) -> list[Table]:
    return [*(metric_table(s) for s in schemas.values()), events_table(settings)]


MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS {table} (`table` String, `statement` String, "
    "`applied_at` DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY applied_at"
)


def migrate(backend: Backend, database: str, tables: list[Table]) -> list[str]:
    """Bring the database up to the declared tables; returns the statements that changed something.

    Run it before anything writes to the tables (storage runs it before its consumer starts)."""
    backend.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    backend.command(MIGRATIONS_DDL.format(table=qualified(database, MIGRATIONS_TABLE)))
    applied: list[str] = []
    for table in tables:
        applied += resort(backend, database, table)
        for statement in _pending_statements(backend, database, table):
            applied.append(_apply(backend, database, table.name, statement))
    if applied:
        log.info("migrations applied", count=len(applied))
    return applied


def migrate_views(backend: Backend, database: str, views: list[View]) -> list[str]:
    """(Re)create each view that is missing or whose definition is not the one recorded last; run after
    migrate() (a view reads the tables). Returns the statements it ran."""
    applied = []
    for view in views:
        statement = view.create_sql(database)
        if _table_info(backend, database, view.name) is None or statement not in _recorded(
            backend, database, view.name
        ):
            applied.append(_apply(backend, database, view.name, statement))
    return applied


def _pending_statements(backend: Backend, database: str, table: Table) -> list[str]:
    have = _columns(backend, database, table.name)
    if not have:
        return [table.create_sql(database)]
    target = qualified(database, table.name)
    statements = [
        f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `{c.name}` {c.type}"
        for c in table.columns
        if c.name not in have
    ]
    if table.ttl and _normalized(_current_ttl(backend, database, table.name)) != _normalized(table.ttl):
        statements.append(f"ALTER TABLE {target} MODIFY TTL {table.ttl}")
    return statements


def resort(backend: Backend, database: str, table: Table) -> list[str]:
    """Rebuild `table` when the existing one has another sorting key; returns the statements it ran.

    ClickHouse changes a sorting key in place only by appending new columns, so: copy the table partition
    by partition into one of the declared definition, EXCHANGE TABLES (atomic; an Atomic database, the
    default, has it), drop the old table. Killed at any point, the next run completes it: the old table is
    whole until the swap; a partition counts as copied only while its copy's INSERT is recorded in
    schema_migrations with the partition's present parts (one not recorded so is dropped from the copy and
    copied again); the copy's name digests the old table's UUID and the declared definition, so no record of
    another rebuild counts. Copies an earlier run left (the old table after a swap, or a rebuild given up)
    are dropped: `table` is whole either way.
    """
    current = _table_info(backend, database, table.name)
    if current is None:
        return []
    if _normalized_key(current["sorting_key"]) == _normalized_key(table.sorting_key):
        return _drop_copies(backend, database, table.name, keep="")
    started = time.monotonic()
    copy = _copy_definition(backend, database, table, current["uuid"])
    applied = _drop_copies(backend, database, table.name, keep=copy.name)
    if _table_info(backend, database, copy.name) is None:
        applied.append(_apply(backend, database, table.name, copy.create_sql(database)))
    applied += _copy_partitions(backend, database, table.name, copy)
    old, new = qualified(database, table.name), qualified(database, copy.name)
    applied.append(_apply(backend, database, table.name, f"EXCHANGE TABLES {old} AND {new}"))
    applied.append(_apply(backend, database, table.name, f"DROP TABLE {new}"))
    log.info("table re-sorted", table=table.name, seconds=round(time.monotonic() - started, 1))
    return applied


def _copy_definition(backend: Backend, database: str, table: Table, uuid: str) -> Table:
    """The declared table plus every column only the existing one has, named for this rebuild."""
    declared = set(table.column_names)
    only_existing = tuple(
        ColumnDef(name, type_)
        for name, type_ in _columns(backend, database, table.name).items()
        if name not in declared
    )
    whole = replace(table, columns=table.columns + only_existing)
    return replace(whole, name=f"{table.name}{COPY_INFIX}{_digest(uuid, whole.create_sql(database))}")


def _copy_partitions(backend: Backend, database: str, source: str, copy: Table) -> list[str]:
    """Copy each partition of `source` not recorded as copied, logging each; returns the statements."""
    columns = ", ".join(quoted(c) for c in _columns(backend, database, source))
    partitions = _partitions(backend, database, source)
    partly_copied = _partitions(backend, database, copy.name)
    recorded = _recorded(backend, database, source)
    rows = sum(p.rows for p in partitions.values())
    log.info(
        "re-sorting table", table=source, sorting_key=copy.sorting_key, partitions=len(partitions), rows=rows
    )
    applied: list[str] = []
    started, copied = time.monotonic(), 0
    for number, (partition_id, partition) in enumerate(partitions.items(), 1):
        statement = (
            f"INSERT INTO {qualified(database, copy.name)} ({columns}) SELECT {columns} "
            f"FROM {qualified(database, source)} WHERE _partition_id = '{partition_id}' "
            f"/* parts {partition.parts_digest} */"
        )
        if statement in recorded:
            continue
        if partition_id in partly_copied:
            drop = f"ALTER TABLE {qualified(database, copy.name)} DROP PARTITION ID '{partition_id}'"
            applied.append(_apply(backend, database, source, drop))
        applied.append(_apply(backend, database, source, statement))
        copied += partition.rows
        log.info(
            "partition copied",
            table=source,
            partition=partition_id,
            number=number,
            partitions=len(partitions),
            rows=partition.rows,
            rows_per_second=round(copied / max(time.monotonic() - started, 1e-3)),
        )
    return applied


def _drop_copies(backend: Backend, database: str, table: str, keep: str) -> list[str]:
    rows = backend.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND startsWith(name, {prefix:String})",
        {"db": database, "prefix": f"{table}{COPY_INFIX}"},
    )
    return [
        _apply(backend, database, table, f"DROP TABLE IF EXISTS {qualified(database, row['name'])}")
        for row in rows
        if row["name"] != keep
    ]


def _partitions(backend: Backend, database: str, table: str) -> dict[str, Partition]:
    rows = backend.query(
        "SELECT partition_id, toInt64(sum(rows)) AS rows, arraySort(groupArray(name)) AS parts "
        "FROM system.parts WHERE database = {db:String} AND table = {t:String} AND active "
        "GROUP BY partition_id ORDER BY partition_id",
        {"db": database, "t": table},
    )
    for row in rows:
        if not PARTITION_ID.match(row["partition_id"]):
            raise ValueError(f"{table}: unexpected partition id {row['partition_id']!r}")
    return {row["partition_id"]: Partition(int(row["rows"]), _digest(*row["parts"])) for row in rows}


def _digest(*texts: str) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def _table_info(backend: Backend, database: str, table: str) -> dict[str, Any] | None:
    rows = backend.query(
        "SELECT sorting_key, toString(uuid) AS uuid, create_table_query FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    return rows[0] if rows else None


def _columns(backend: Backend, database: str, table: str) -> dict[str, str]:
    """Name -> type of the existing table's columns, in its order (empty when there is no such table)."""
    rows = backend.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "ORDER BY position",
        {"db": database, "t": table},
    )
    return {row["name"]: row["type"] for row in rows}


def _recorded(backend: Backend, database: str, table: str) -> set[str]:
    rows = backend.query(
        f"SELECT statement FROM {qualified(database, MIGRATIONS_TABLE)} WHERE table = {{t:String}}",
        {"t": table},
    )
    return {row["statement"] for row in rows}


def _current_ttl(backend: Backend, database: str, table: str) -> str | None:
    info = _table_info(backend, database, table)
    match = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", info["create_table_query"]) if info else None
    return match.group(1).strip() if match else None


def _normalized_key(key: str) -> str:
    """ClickHouse prints a sorting key of one expression in parentheses, of several without."""
    normalized = _normalized(key)
    wrapped = normalized.startswith("(") and _closing_paren(normalized) == len(normalized) - 1
    return normalized[1:-1] if wrapped else normalized


def _closing_paren(text: str) -> int:
    """The index of the parenthesis closing the one that opens `text`."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index
    return -1


def _normalized(expression: str | None) -> str:
    """ClickHouse prints a key or a TTL without backquotes; compare without them and without spaces."""
    return re.sub(r"[`\s]", "", expression or "")


def _apply(backend: Backend, database: str, table: str, statement: str) -> str:
    backend.command(statement)
    _record(backend, database, table, statement)
    return statement


def _record(backend: Backend, database: str, table: str, statement: str) -> None:
    backend.insert(f"{database}.{MIGRATIONS_TABLE}", [{"table": table, "statement": statement}])
