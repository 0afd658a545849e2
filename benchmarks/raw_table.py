"""Raw events table: rows read and time of a query for one event type over one day with the old sort order
(ORDER BY event_id) and after the re-sort, and how long the re-sort (migrate()) takes.

    .venv/bin/python benchmarks/raw_table.py [--rows 1400000] [--types 8] [--days 7] [--repeat 5]

In a temporary chDB directory, embedded in this process: creates the raw events table with the old key,
fills it with generated events (--types types interleaved over --days days ending yesterday, 20,000 users),
runs each query --repeat times (median wall time; rows read from the statistics of ClickHouse's JSON
output), runs migrate() as storage does at start, and runs the queries again. The table's insert
throughput: benchmarks/storage.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from services.storage.backends import ChdbBackend  # noqa: E402
from services.storage.tables import events_table, migrate, quoted  # noqa: E402
from shared.settings import Settings  # noqa: E402

DB = "rtap"
DAY_MS = 86_400_000


def old_table_sql(settings: Settings) -> str:
    """The raw events table as storage created it before the re-sort."""
    return replace(events_table(settings), order_by=(quoted("event_id"),)).create_sql(DB)


def day_start(days_ago: int) -> datetime:
    today = datetime.now(UTC).date()
    return datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=days_ago)


def fill_sql(table: str, rows: int, types: int, days: int) -> str:
    first_ms = int(day_start(days).timestamp() * 1000)
    return (
        f"INSERT INTO `{DB}`.`{table}` (event_id, event_type, user_id, session_id, url, referrer, ip, "
        "user_agent, screen_width, screen_height, properties, load_time, timestamp, received_at, _version) "
        f"SELECT toString(generateUUIDv7(number)), concat('type_', toString(number % {types})), "
        "concat('u', toString(number % 20000)), concat('s', toString(number % 5000)), "
        "concat('https://shop.example/p/', toString(number % 500)), NULL, '203.0.113.7', "
        "'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)', 390, 844, "
        "map('sku', concat('A-', toString(number % 300)), 'qty', '1'), 400 + number % 900, "
        f"fromUnixTimestamp64Milli(toInt64({first_ms} + intDiv(number * {days * DAY_MS}, {rows}))) AS ts, "
        f"ts, number FROM numbers({rows})"
    )


def queries(table: str) -> dict[str, str]:
    start, end = day_start(2), day_start(1)
    where = (
        "WHERE event_type = 'type_3' "
        f"AND timestamp >= toDateTime64('{start:%Y-%m-%d %H:%M:%S}', 3, 'UTC') "
        f"AND timestamp < toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 3, 'UTC')"
    )
    select = "SELECT count(), uniqExact(user_id), avg(load_time)"
    return {
        "one type, one day": f"{select} FROM `{DB}`.`{table}` {where}",
        "one type, one day, FINAL": f"{select} FROM `{DB}`.`{table}` FINAL {where}",
    }


def measure(backend: ChdbBackend, sql: str, repeat: int) -> tuple[int, float]:
    """(rows read, median wall milliseconds) of `sql`."""
    times: list[float] = []
    read = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = backend.session.query(sql, "JSON")
        times.append((time.perf_counter() - started) * 1000)
        read = int(orjson.loads(result.bytes())["statistics"]["rows_read"])
    return read, statistics.median(times)


def report(backend: ChdbBackend, table: str, label: str, total: int, repeat: int) -> None:
    for name, sql in queries(table).items():
        read, ms = measure(backend, sql, repeat)
        print(f"{label:>6} key | {name:<26} | {read:>10,} rows read ({read / total:6.1%}) | {ms:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--types", type=int, default=8)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    table = events_table(settings)
    with tempfile.TemporaryDirectory(prefix="rtap-bench-raw-table-") as tmp:
        backend = ChdbBackend(Path(tmp))
        backend.command(f"CREATE DATABASE `{DB}`")
        backend.command(old_table_sql(settings))
        started = time.perf_counter()
        backend.command(fill_sql(table.name, args.rows, args.types, args.days))
        print(
            f"{args.rows:,} events, {args.types} types over {args.days} days, filled in "
            f"{time.perf_counter() - started:.1f} s; query: type_3 on the day before yesterday"
        )
        report(backend, table.name, "old", args.rows, args.repeat)
        started = time.perf_counter()
        migrate(backend, DB, [table])
        seconds = time.perf_counter() - started
        print(
            f"re-sort (migrate): {seconds:.1f} s for {args.rows:,} rows -> "
            f"{seconds / args.rows * 1_000_000:.1f} s per million rows"
        )
        report(backend, table.name, "new", args.rows, args.repeat)
        backend.close()


if __name__ == "__main__":
    main()
