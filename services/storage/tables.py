"""ClickHouse tables, derived from the metric schemas and the raw event's schema; never hand-kept per job.

Every table is a ReplacingMergeTree keyed by its record identity, so a replayed record overwrites
itself: metric tables by the schema key (a tombstone sets `_deleted`), the raw events table by event id.
`_version` is the Kafka offset of the record (the same key always lands in the same partition, so a
later offset is a later value). Query with FINAL (or argMax over `_version`) for exact numbers.

`migrate()` creates what is missing, adds new columns (ADD COLUMN IF NOT EXISTS), updates the raw
events TTL, and records every statement it ran in `schema_migrations`. It never drops data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.storage.backends import Backend
from shared.events import EVENT, EVENT_TIME_PATH, ID_PATH, EventSchema
from shared.logging import get_logger
from shared.metric_schema import CLICKHOUSE_TYPES, MetricSchema
from shared.settings import Settings

log = get_logger("storage.tables")

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIGRATIONS_TABLE = "schema_migrations"
VERSION = "_version"
DELETED = "_deleted"
INGESTED_AT = "_ingested_at"


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type: str


@dataclass(frozen=True)
class Table:
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

    def create_sql(self, database: str) -> str:
        columns = ",\n  ".join(f"`{c.name}` {c.type}" for c in self.columns)
        ttl = f"\nTTL {self.ttl}" if self.ttl else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {qualified(database, self.name)} (\n  {columns}\n)\n"
            f"ENGINE = {self.engine}\nPARTITION BY {self.partition_by}\n"
            f"ORDER BY ({', '.join(f'`{k}`' for k in self.order_by)}){ttl}"
        )


def qualified(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


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
        order_by=schema.key,
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
    """Keyed by the event id, partitioned by day of event time."""
    return Table(
        name=settings.storage.events_table,
        columns=event_columns(event),
        engine=f"ReplacingMergeTree({VERSION})",
        order_by=(event.at(ID_PATH).column,),
        partition_by=f"toYYYYMMDD(`{event.at(EVENT_TIME_PATH).column}`)",
        ttl=events_ttl(settings.storage.raw_events_ttl_days, event),
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
    """Bring the database up to the declared tables; returns the statements that changed something."""
    backend.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    backend.command(MIGRATIONS_DDL.format(table=qualified(database, MIGRATIONS_TABLE)))
    applied: list[str] = []
    for table in tables:
        for statement in _pending_statements(backend, database, table):
            backend.command(statement)
            _record(backend, database, table.name, statement)
            applied.append(statement)
    if applied:
        log.info("migrations applied", count=len(applied))
    return applied


def _pending_statements(backend: Backend, database: str, table: Table) -> list[str]:
    existing = backend.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        {"db": database, "t": table.name},
    )
    if not existing:
        return [table.create_sql(database)]
    have = {row["name"] for row in existing}
    target = qualified(database, table.name)
    statements = [
        f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `{c.name}` {c.type}"
        for c in table.columns
        if c.name not in have
    ]
    if table.ttl and _normalized(_current_ttl(backend, database, table.name)) != _normalized(table.ttl):
        statements.append(f"ALTER TABLE {target} MODIFY TTL {table.ttl}")
    return statements


def _current_ttl(backend: Backend, database: str, table: str) -> str | None:
    rows = backend.query(
        "SELECT create_table_query AS q FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    match = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", rows[0]["q"]) if rows else None
    return match.group(1).strip() if match else None


def _normalized(expression: str | None) -> str:
    """ClickHouse prints a TTL without backquotes; compare without them and without spaces."""
    return re.sub(r"[`\s]", "", expression or "")


def _record(backend: Backend, database: str, table: str, statement: str) -> None:
    backend.insert(f"{database}.{MIGRATIONS_TABLE}", [{"table": table, "statement": statement}])
