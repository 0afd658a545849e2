"""What the session job's cost per event is made of: Flink's merging session window, or the job's aggregates.

Uses benchmarks/processing.py's private cluster, preloaded topic and floor job, and runs, interleaved with the
floor and the five jobs, each variant of session_metrics alone on the source the built-in jobs read together.
The variants edit the job's own SQL (an edit that no longer applies fails the run), so they follow the job:

- session_metrics: the job as it is;
- count-only: the same session window, with only the first and last time and COUNT(*);
- tumbling: count-only's key and aggregates on a tumbling window (no merging of windows);
- no-strings: the job without its three string MAXes (user_id twice, device_category);
- no-properties: the job without its three sums over `properties` (revenue, cart items, cart value);
- bots-included: the job with RTAP_PROCESSING__SESSION_BOTS=include (no bot filter).

Prints each run, then each variant's events per TaskManager CPU-second over the floor's and its CPU per event
beyond the floor's (medians of the warm rounds).

    .venv/bin/python benchmarks/session_cost.py [--events 300000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.processing import only_job, run, submit_jobs, with_processing  # noqa: E402
from services.processing.coordinator import Bounds  # noqa: E402
from services.processing.job import BaseJob, interval  # noqa: E402
from services.processing.jobs.session_tracker import SessionTracker  # noqa: E402
from shared.kafka_admin import ensure_topics  # noqa: E402
from shared.metric_schema import Column, MetricSchema  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.topics import topics  # noqa: E402

COUNT_COLUMNS = (
    Column("window_start", "timestamp_ms"),
    Column("window_end", "timestamp_ms"),
    Column("session_id", "string"),
    Column("events", "int64"),
)
STRING_MAXES = {
    """COALESCE(
                           MAX(user_id) FILTER (WHERE anonymous_id IS NOT NULL AND user_id <> anonymous_id),
                           MAX(user_id)
                       ) AS user_id""": "CAST(NULL AS STRING) AS user_id",
    "MAX(device_category) AS device_category": "CAST(NULL AS STRING) AS device_category",
}
QUANTITY = (
    "CASE event_type WHEN 'add_to_cart' THEN 1 WHEN 'remove_from_cart' THEN -1 END"
    " * COALESCE(TRY_CAST(properties['quantity'] AS BIGINT), 1)"
)
PROPERTY_SUMS = {
    f"SUM({QUANTITY} * TRY_CAST(properties['price'] AS DOUBLE))": "SUM(CAST(0.0 AS DOUBLE))",
    f"SUM({QUANTITY})": "SUM(CAST(0 AS BIGINT))",
    """SUM(TRY_CAST(properties['revenue'] AS DOUBLE))
                               FILTER (WHERE event_type = 'purchase')""": "SUM(CAST(0.0 AS DOUBLE))",
}


def edited(sql: str, edits: dict[str, str]) -> str:
    for old, new in edits.items():
        if old not in sql:
            raise SystemExit(
                f"session_metrics' SQL changed: update benchmarks/session_cost.py ({old[:60]!r})"
            )
        sql = sql.replace(old, new)
    return sql


class SessionVariant(SessionTracker):
    """session_metrics with its SQL edited, or its settings changed; not registered (no schema of its own)."""

    def __init__(self, edits: dict[str, str], settings_update: dict[str, Any] | None = None):
        self.edits, self.settings_update = edits, settings_update or {}

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        sql = super().build(t_env, events_view, with_processing(settings, **self.settings_update))
        return edited(sql, self.edits)


class CountOnly(BaseJob):
    """The first and last time and COUNT(*) per session id, on a session window or on a tumbling one."""

    tumbling: ClassVar[bool]

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        p = settings.processing
        window = (
            f"TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time), {interval(p.window_seconds)})"
            if self.tumbling
            else f"SESSION(TABLE {events_view} PARTITION BY session_id, DESCRIPTOR(event_time), "
            f"{interval(p.session_gap_seconds)})"
        )
        return f"""
            SELECT first_ms AS window_start, last_ms AS window_end, session_id, events FROM (
                SELECT session_id, MIN(ts) AS first_ms, MAX(ts) AS last_ms, COUNT(*) AS events
                FROM TABLE({window})
                GROUP BY window_start, window_end, session_id
            )"""


class SessionCount(CountOnly):
    tumbling = False


class TumblingCount(CountOnly):
    tumbling = True


# set after the classes exist, so they are not registered: the five jobs' run stays the five built-in jobs
SessionCount.schema = MetricSchema(
    name="session_count_only", columns=COUNT_COLUMNS, key=("window_start", "session_id")
)
TumblingCount.schema = MetricSchema(
    name="session_tumbling", columns=COUNT_COLUMNS, key=("window_start", "session_id")
)


def variants() -> dict[str, BaseJob]:
    return {
        "session_metrics": SessionTracker(),
        "count-only": SessionCount(),
        "tumbling": TumblingCount(),
        "no-strings": SessionVariant(STRING_MAXES),
        "no-properties": SessionVariant(PROPERTY_SUMS),
        "bots-included": SessionVariant({}, {"session_bots": "include"}),
    }


def session_submits(s: Settings, bounds: Bounds) -> dict[str, Callable[[], str]]:
    jobs = variants()
    ensure_topics(
        s.kafka.bootstrap,
        [topics(s).metric(job.schema) for job in jobs.values() if isinstance(job, CountOnly)],
    )
    return {name: partial(submit_jobs, s, bounds, {}, only_job(job)) for name, job in jobs.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3, help="round 1: cold")
    args = parser.parse_args()
    run(args.events, args.rounds, False, None, [], False, session_submits)
