"""Backfill from the raw table: rows/s of the storage export (services/storage/export.py) on chDB.

    .venv/bin/python benchmarks/raw_export.py [--rows 200000]

Fills a raw events table in a temporary chDB directory with --rows events spread over the last day (one
INSERT ... SELECT FROM numbers()), then reads them back through export_lines() on an export connection
(FINAL, event-time order, row -> Kafka value) and prints rows, wall seconds and rows per CPU-second of this
process (chDB's threads included). The HTTP streaming and the CLI's produce into Kafka are not included.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from services.storage.backends import ChdbBackend
from services.storage.export import export_limits, export_lines, export_query
from services.storage.tables import events_table, migrate, qualified
from shared.settings import Settings

DAY_MS = 86_400_000


def fill(backend: ChdbBackend, settings: Settings, rows: int, start: int) -> None:
    table = qualified(settings.clickhouse.database, settings.storage.events_table)
    at = f"fromUnixTimestamp64Milli(toInt64({start} + number * {DAY_MS} / {rows}))"
    backend.command(
        f"INSERT INTO {table} (event_id, event_type, user_id, session_id, url, user_agent, screen_width, "
        "screen_height, properties, load_time, timestamp, received_at, _version) "
        "SELECT toString(number), ['page_view', 'click', 'purchase'][number % 3 + 1], "
        "concat('u', toString(number % 5000)), concat('s', toString(number % 20000)), "
        "'https://shop.example/p', "
        f"'Mozilla/5.0', 1920, 1080, map('k', toString(number)), number % 1000, {at}, {at}, number "
        f"FROM numbers({rows})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="rtap-export-bench-"))
    settings = Settings(state_dir=state)
    writer = ChdbBackend(state / "clickhouse")
    migrate(writer, settings.clickhouse.database, [events_table(settings)])
    now = int(time.time() * 1000)
    fill(writer, settings, args.rows, now - DAY_MS)
    reader = ChdbBackend(state / "clickhouse", export_limits(settings), settings.clickhouse.database)
    wall, cpu = time.perf_counter(), time.process_time()
    lines = sum(1 for _ in export_lines(reader, export_query(settings), {"start": now - DAY_MS, "end": now}))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = lines - 1  # the end line
    reader.close()
    writer.close()
    shutil.rmtree(state, ignore_errors=True)
    print(
        f"rows={rows} wall={wall:.1f}s cpu={cpu:.1f}s rows/s={rows / wall:,.0f} rows/cpu-s={rows / cpu:,.0f}"
    )


if __name__ == "__main__":
    main()
