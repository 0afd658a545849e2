"""The analytics queries of the storage API (services/storage/analytics.py): rows read and time of each, over
one day and over seven, on the raw events table as storage creates it.

    .venv/bin/python benchmarks/analytics.py [--rows 1400000] [--types 8] [--days 7] [--repeat 3]

In a temporary chDB directory, embedded in this process: the table from migrate(), filled as
benchmarks/raw_table.py fills it (--types named types interleaved over --days days ending yesterday, 20,000
users),
plus the enrichment columns of the traffic-sources query (added to this temporary table only when the
declared table does not have them yet). Each query runs --repeat times: median wall time; rows read from the
statistics of ClickHouse's JSON output. The last two rows are the events-counting queries as first written
(FINAL, count()), for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from benchmarks.raw_table import DAY_MS, DB, day_start, fill_sql  # noqa: E402
from services.storage.analytics import (  # noqa: E402
    TimeRange,
    funnel_query,
    retention_query,
    sources_query,
    top_pages_query,
)
from services.storage.backends import ChdbBackend, _escaped  # noqa: E402
from services.storage.tables import events_table, migrate  # noqa: E402
from shared.settings import Settings  # noqa: E402

TYPES = ("page_view", "click", "product_view", "add_to_cart", "purchase", "search", "scroll", "signup")


def named_fill_sql(table: str, rows: int, types: int, days: int) -> str:
    """benchmarks/raw_table.py's fill, with event type names the queries know (page_view first)."""
    numbered = f"concat('type_', toString(number % {types}))"
    sql = fill_sql(table, rows, types, days)
    if numbered not in sql or not 5 <= types <= len(TYPES):
        raise SystemExit(f"--types must be 5..{len(TYPES)} (and raw_table.fill_sql names types {numbered})")
    return sql.replace(numbered, f"{list(TYPES[:types])}[number % {types} + 1]")


def queries(table: str) -> dict[str, tuple[str, dict[str, Any]]]:
    yesterday = int(day_start(1).timestamp() * 1000)
    day, week = (
        TimeRange(yesterday, yesterday + DAY_MS),
        TimeRange(yesterday - 6 * DAY_MS, yesterday + DAY_MS),
    )
    steps = ["page_view", "product_view", "purchase"]
    return {
        "funnel, 3 steps, 1 day": funnel_query(table, DB, steps, 3_600_000, day, "none"),
        "funnel, 3 steps, 7 days": funnel_query(table, DB, steps, 3_600_000, week, "none"),
        "retention by day, 7 days": retention_query(table, DB, "day", week, None),
        "top pages, 1 day": top_pages_query(table, DB, day, 10),
        "sources, 1 day": sources_query(table, DB, day, 100),
        "top pages, 1 day, FINAL": read_final(top_pages_query(table, DB, day, 10), table),
        "sources, 1 day, FINAL": read_final(sources_query(table, DB, day, 100), table),
    }


def read_final(query: tuple[str, dict[str, Any]], table: str) -> tuple[str, dict[str, Any]]:
    """The query as first written: the table read FINAL, events counted with count()."""
    sql, params = query
    source = f"`{DB}`.`{table}`"
    if source not in sql or "uniqExact(`event_id`)" not in sql:
        raise SystemExit("the query no longer reads the table or counts event ids as this comparison expects")
    return sql.replace(source, f"{source} FINAL").replace("uniqExact(`event_id`)", "count()"), params


def measure(backend: ChdbBackend, sql: str, params: dict[str, Any], repeat: int) -> tuple[int, float]:
    """(rows read, median wall milliseconds)."""
    times: list[float] = []
    read = 0
    for _ in range(repeat):
        started = time.perf_counter()
        result = backend.session.query(sql, "JSON", params=_escaped(params))
        times.append((time.perf_counter() - started) * 1000)
        read = int(orjson.loads(result.bytes())["statistics"]["rows_read"])
    return read, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_400_000)
    parser.add_argument("--types", type=int, default=8)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = events_table(Settings())
    with tempfile.TemporaryDirectory(prefix="rtap-bench-analytics-") as tmp:
        backend = ChdbBackend(Path(tmp))
        migrate(backend, DB, [table])
        backend.command(named_fill_sql(table.name, args.rows, args.types, args.days))
        print(f"{args.rows:,} events, {args.types} types over {args.days} days; ranges end at midnight today")
        for name, (sql, params) in queries(table.name).items():
            read, ms = measure(backend, sql, params, args.repeat)
            print(f"{name:<26} | {read:>10,} rows read ({read / args.rows:6.1%}) | {ms:8.1f} ms")
        backend.close()


if __name__ == "__main__":
    main()
