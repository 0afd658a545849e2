"""The raw events table's sort order: the key, de-duplication by event id under it, the re-sort of a table
created with the old key (also when killed midway), and what it is for: a query for one event type over one
day reads that type's rows of the day, not the whole day.

chDB runs in this test process (its own state directory).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.storage.backends import Backend, ChdbBackend
from services.storage.processors import process_event
from services.storage.tables import events_table, migrate
from shared.settings import Settings
from tests.storage.conftest import raw_event
from tests.storage.test_event_fields import TABLE_BEFORE_SCHEMA, with_identity

SETTINGS = Settings()
TABLE = events_table(SETTINGS).name
NEW_KEY = "event_type, toDate(timestamp), cityHash64(user_id), event_id"


@pytest.fixture(scope="module")
def chdb(tmp_path_factory) -> Backend:
    backend = ChdbBackend(Path(tmp_path_factory.mktemp("chdb-raw-order")))
    yield backend
    backend.close()


def fresh_db(backend: Backend, prefix: str) -> str:
    db = f"{prefix}_{uuid.uuid4().hex[:8]}"
    backend.command(f"CREATE DATABASE `{db}`")
    return db


def create_old_table(backend: Backend, db: str) -> None:
    """The raw events table as storage created it before the re-sort (ORDER BY event_id), today's columns."""
    backend.command(with_identity(TABLE_BEFORE_SCHEMA).replace("`rtap`.", f"`{db}`."))


def sorting_key(backend: Backend, db: str) -> str:
    rows = backend.query(
        "SELECT sorting_key FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        {"db": db, "t": TABLE},
    )
    return str(rows[0]["sorting_key"])


def table_names(backend: Backend, db: str) -> set[str]:
    rows = backend.query("SELECT name FROM system.tables WHERE database = {db:String}", {"db": db})
    return {row["name"] for row in rows}


def day_start(days_ago: int) -> datetime:
    return datetime.combine(datetime.now(UTC).date() - timedelta(days=days_ago), time(), tzinfo=UTC)


def event_row(event_id: str, event_type: str, days_ago: int, offset: int, minute: int = 0) -> dict[str, Any]:
    """The stored row of one event at noon (plus `minute`) UTC, `days_ago` days back; its user by its type."""
    ts = day_start(days_ago) + timedelta(hours=12, minutes=minute)
    event = raw_event(f"s-{event_type}", event_id, event_type, int(ts.timestamp() * 1000))
    return process_event(b"s", orjson.dumps(event), offset)


def fill(backend: Backend, db: str, days: int = 3) -> None:
    """Three event types, four events each, on each of `days` days: one insert per day (a part per day)."""
    offset = 0
    for days_ago in range(1, days + 1):
        rows = []
        for event_type in ("page_view", "add_to_cart", "purchase"):
            for n in range(4):
                offset += 1
                rows.append(event_row(f"{event_type}-{days_ago}-{n}", event_type, days_ago, offset))
        backend.insert(f"{db}.{TABLE}", rows)


def every_row(backend: Backend, db: str) -> list[dict[str, Any]]:
    return backend.query(f"SELECT * FROM `{db}`.`{TABLE}` FINAL ORDER BY event_id")


def count(backend: Backend, db: str, final: bool) -> int:
    rows = backend.query(f"SELECT toInt64(count()) AS n FROM `{db}`.`{TABLE}`{' FINAL' if final else ''}")
    return int(rows[0]["n"])


def test_the_raw_table_is_sorted_by_event_type_day_user_and_event_id():
    table = events_table(SETTINGS)
    assert table.order_by == ("`event_type`", "toDate(`timestamp`)", "cityHash64(`user_id`)", "`event_id`")
    assert table.partition_by == "toYYYYMMDD(`timestamp`)"
    assert (
        "ORDER BY (`event_type`, toDate(`timestamp`), cityHash64(`user_id`), `event_id`)"
        in table.create_sql("rtap")
    )


@pytest.mark.clickhouse
def test_a_retried_event_stays_one_row_under_the_new_key(chdb):
    """The retry has the same id, type and user, a later offset, and another timestamp of the same day (a
    client that sent none gets its receive time): one row with FINAL, the retry's."""
    db = fresh_db(chdb, "dedup")
    migrate(chdb, db, [events_table(SETTINGS)])
    assert sorting_key(chdb, db) == NEW_KEY
    for row in (
        event_row("retried", "purchase", days_ago=1, offset=1),
        event_row("other", "purchase", days_ago=1, offset=2),
        event_row("retried", "purchase", days_ago=1, offset=3, minute=3),
    ):
        chdb.insert(f"{db}.{TABLE}", [row])  # one insert each: separate parts, as separate batches make
    rows = chdb.query(
        f"SELECT event_id, toInt32(_version) AS version, toString(timestamp) AS ts "
        f"FROM `{db}`.`{TABLE}` FINAL ORDER BY event_id"
    )
    assert [(r["event_id"], r["version"]) for r in rows] == [("other", 2), ("retried", 3)]
    assert rows[1]["ts"].endswith("12:03:00.000")
    chdb.command(f"DROP DATABASE `{db}`")


@pytest.mark.clickhouse
def test_a_raw_table_with_the_old_key_is_re_sorted_keeping_every_row(chdb):
    db = fresh_db(chdb, "resort")
    create_old_table(chdb, db)
    fill(chdb, db)
    chdb.insert(f"{db}.{TABLE}", [event_row("purchase-1-0", "purchase", days_ago=1, offset=99)])  # a retry
    before = every_row(chdb, db)
    assert sorting_key(chdb, db).strip("()") == "event_id" and len(before) == 36

    applied = migrate(chdb, db, [events_table(SETTINGS)])

    assert [s.split(" ", 2)[:2] for s in applied if not s.startswith("INSERT")] == [
        ["CREATE", "TABLE"],
        ["EXCHANGE", "TABLES"],
        ["DROP", "TABLE"],
    ]
    assert sum(s.startswith("INSERT") for s in applied) == 3  # one per day partition
    assert sorting_key(chdb, db) == NEW_KEY
    assert every_row(chdb, db) == before
    assert migrate(chdb, db, [events_table(SETTINGS)]) == []
    assert table_names(chdb, db) == {TABLE, "schema_migrations"}
    recorded = chdb.query(f"SELECT statement FROM `{db}`.schema_migrations")
    assert set(applied) <= {r["statement"] for r in recorded}
    chdb.command(f"DROP DATABASE `{db}`")


class Killed(Exception):
    """Stands for the storage process killed at that point."""


class KilledAt:
    """A backend that dies right after the `nth` statement starting with `prefix`, before migrate() records
    it; `partial`: that statement ran with LIMIT 1 (an INSERT ... SELECT cut short)."""

    kind = "chdb"

    def __init__(self, backend: Backend, prefix: str, nth: int, partial: bool):
        self.backend, self.prefix, self.nth, self.partial, self.seen = backend, prefix, nth, partial, 0

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        if not sql.startswith(self.prefix):
            self.backend.command(sql, params)
            return
        self.seen += 1
        self.backend.command(f"{sql} LIMIT 1" if self.partial and self.seen == self.nth else sql, params)
        if self.seen == self.nth:
            raise Killed(sql)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.backend.query(sql, params)

    def insert(self, table: str, rows: Any) -> None:
        self.backend.insert(table, rows)

    def close(self) -> None:
        pass


@pytest.mark.clickhouse
@pytest.mark.parametrize(
    "prefix,nth,partial",
    [("INSERT", 2, True), ("INSERT", 3, False), ("EXCHANGE", 1, False)],
    ids=["mid-copy", "copied-unrecorded", "swapped-not-dropped"],
)
def test_a_re_sort_killed_midway_completes_on_the_next_start(chdb, prefix, nth, partial):
    db = fresh_db(chdb, "killed")
    create_old_table(chdb, db)
    fill(chdb, db)
    before, rows_before = every_row(chdb, db), count(chdb, db, final=False)

    with pytest.raises(Killed):
        migrate(KilledAt(chdb, prefix, nth, partial), db, [events_table(SETTINGS)])
    assert every_row(chdb, db) == before  # the table in place is whole at every point

    migrate(chdb, db, [events_table(SETTINGS)])
    assert sorting_key(chdb, db) == NEW_KEY
    assert every_row(chdb, db) == before
    assert count(chdb, db, final=False) == rows_before  # no row copied twice
    assert migrate(chdb, db, [events_table(SETTINGS)]) == []
    assert table_names(chdb, db) == {TABLE, "schema_migrations"}
    chdb.command(f"DROP DATABASE `{db}`")


TYPES, DAYS, ROWS_PER_TYPE_AND_DAY = 8, 4, 16_384


def generated_events(db: str) -> str:
    """TYPES event types interleaved over DAYS days (evenly, ending yesterday), 5,000 users."""
    rows = TYPES * DAYS * ROWS_PER_TYPE_AND_DAY
    first_ms = int(day_start(DAYS).timestamp() * 1000)
    return (
        f"INSERT INTO `{db}`.`{TABLE}` (event_id, event_type, user_id, session_id, url, user_agent, "
        "timestamp, received_at, _version) "
        f"SELECT toString(generateUUIDv4(number)), concat('type_', toString(number % {TYPES})), "
        "concat('u', toString(number % 5000)), concat('s', toString(number % 1000)), "
        "concat('https://shop.example/p/', toString(number % 300)), 'Mozilla/5.0', "
        f"fromUnixTimestamp64Milli(toInt64({first_ms} + intDiv(number * {DAYS * 86_400_000}, {rows}))) "
        f"AS ts, ts, number FROM numbers({rows})"
    )


def rows_read(backend: ChdbBackend, sql: str) -> int:
    """Rows the query read from the table, from the statistics of ClickHouse's JSON output."""
    return int(orjson.loads(backend.session.query(sql, "JSON").bytes())["statistics"]["rows_read"])


def one_type_one_day(db: str, final: bool) -> str:
    start, end = day_start(2), day_start(1)
    return (
        f"SELECT count() AS n, uniqExact(user_id) AS users FROM `{db}`.`{TABLE}`{' FINAL' if final else ''} "
        f"WHERE event_type = 'type_3' AND timestamp >= toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 3, 'UTC') "
        f"AND timestamp < toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    )


@pytest.mark.clickhouse
def test_one_event_type_over_one_day_reads_that_types_rows_not_the_whole_day(chdb):
    """Before the re-sort the query reads its whole day partition (a quarter of the table), and with FINAL
    the whole table (ClickHouse filters only on sorting-key columns before FINAL merges rows); after, about
    its type's share of that day (1/32 of the table, plus the granules at its range's edges), and with FINAL
    its type's share of at most two days (the day's end bound is inclusive for toDate())."""
    db = fresh_db(chdb, "reads")
    create_old_table(chdb, db)
    chdb.command(generated_events(db))
    total = TYPES * DAYS * ROWS_PER_TYPE_AND_DAY
    queries = [one_type_one_day(db, final=False), one_type_one_day(db, final=True)]
    answers = [chdb.query(q) for q in queries]
    before, before_final = (rows_read(chdb, q) for q in queries)

    migrate(chdb, db, [events_table(SETTINGS)])

    after, after_final = (rows_read(chdb, q) for q in queries)
    assert [chdb.query(q) for q in queries] == answers and int(answers[0][0]["n"]) == ROWS_PER_TYPE_AND_DAY
    assert before >= total // DAYS and before_final >= total
    assert after <= total // 10 and after * 3 <= before, (before, after, total)
    assert after_final <= total // 5, (before_final, after_final, total)
    chdb.command(f"DROP DATABASE `{db}`")
