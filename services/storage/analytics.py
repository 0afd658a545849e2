"""Analytics over the raw events table: funnels, retention, top pages and traffic sources.

Each query is built here from the raw table's own column names (shared.events.EVENT) and a fixed set of
expressions; every value (event types, times, the conversion window, limits) is bound as a ClickHouse query
parameter ({name:Type}). The storage API runs them on its read-only connections, under the limits of
/v1/sql (services/storage/backends.py, reader_limits). Parameter checks (how many steps, how long a range)
are the API's (services/storage/api.py); these functions trust their arguments' types and bounds.

What the answers mean (docs/api.md repeats it for clients):
- Times are event times (`timestamp`), a range is [from, to) in UTC; heartbeats and identity records
  (identify, alias, group) are rows of the raw table but never events here.
- Funnel: per user id, ClickHouse's `windowFunnel` in its default mode over the user's events of the step
  types in the range: the deepest step k such that events of steps 1..k happened in that order (equal times
  allowed), the last at most `window` after the first. Every step's event lies in the range. Breakdown: the
  value on the user's earliest event of a step type in the range.
- Retention: a user's cohort is the day or ISO week (Monday, UTC) of their first event in the raw table
  overall (so within its TTL), counted only when that first event lies in the range; offset k counts the
  cohort's users with an event (of `returning_event`, if given) in the k-th period after the cohort's,
  within the range. Offset 0 is the cohort's size.
- Top pages: page_view events per URL without its query string and fragment (scheme, host and path kept).
- Sources: every event by source = utm_source, else the referrer's host, else "(direct)"; medium =
  utm_medium, else the referrer class; campaign = utm_campaign; with distinct sessions and users.
Until ClickHouse merges them, a retried event may be two rows: events and views count distinct event ids,
and funnel levels, first-seen times and active days do not change with a duplicate. No query reads FINAL,
which reads (and merges) far more rows than the range's (docs/benchmarks.md, "Analytics queries").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from services.storage.tables import qualified, quoted
from shared.events import EVENT, EVENT_TIME_PATH, ID_PATH, RESERVED_TYPES, TYPE_PATH, USER_PATH

EVENT_ID = quoted(EVENT.at(ID_PATH).column)
TYPE = quoted(EVENT.at(TYPE_PATH).column)
USER = quoted(EVENT.at(USER_PATH).column)
TIME = quoted(EVENT.at(EVENT_TIME_PATH).column)
SESSION = quoted(EVENT.at("context.session_id").column)
URL = quoted(EVENT.at("context.url").column)
REFERRER = quoted(EVENT.at("context.referrer").column)
PAGE_VIEW = "page_view"

Period = Literal["day", "week"]
PERIOD_DAYS = {"day": 1, "week": 7}

# Funnel breakdowns: name -> expression over one raw row. "none" puts every user in one group.
Breakdown = Literal["none", "referrer_host", "page"]
BREAKDOWNS: dict[Breakdown, str] = {
    "none": "''",
    "referrer_host": f"domainWithoutWWW(ifNull({REFERRER}, ''))",
    "page": f"cutQueryStringAndFragment({URL})",
}
if set(BREAKDOWNS) != set(get_args(Breakdown)):
    raise TypeError("BREAKDOWNS must have an expression for each Breakdown")
# The enrichment columns the sources query reads (ingestion's enrichment group, shared/events.py).
SOURCE_COLUMNS = tuple(
    EVENT.at(f"enrichment.{name}").column
    for name in ("utm_source", "utm_medium", "utm_campaign", "referrer_host", "referrer_class")
)


@dataclass(frozen=True)
class TimeRange:
    """[start_ms, end_ms) in epoch milliseconds of event time."""

    start_ms: int
    end_ms: int

    def params(self) -> dict[str, Any]:
        return {"from_ms": self.start_ms, "to_ms": self.end_ms}


# heartbeats and identity records are rows of the raw table, never events of an analysis
NOT_RESERVED = f"{TYPE} NOT IN ({', '.join(repr(t) for t in sorted(RESERVED_TYPES))})"
IN_RANGE = (
    f"{TIME} >= fromUnixTimestamp64Milli({{from_ms:Int64}}, 'UTC') "
    f"AND {TIME} < fromUnixTimestamp64Milli({{to_ms:Int64}}, 'UTC')"
)


def funnel_query(
    table: str, database: str, steps: list[str], window_ms: int, span: TimeRange, breakdown: Breakdown
) -> tuple[str, dict[str, Any]]:
    """Rows (breakdown, level, users): how many users got exactly `level` steps deep (level >= 1)."""
    names = [f"step_{i}" for i in range(len(steps))]
    conditions = ", ".join(f"{TYPE} = {{{n}:String}}" for n in names)
    types = ", ".join(f"{{{n}:String}}" for n in names)
    per_user = (
        f"SELECT {USER}, windowFunnel({{window_ms:UInt64}})(toUInt64(toUnixTimestamp64Milli({TIME})), "
        f"{conditions}) AS level, argMin({BREAKDOWNS[breakdown]}, {TIME}) AS breakdown "
        f"FROM {qualified(database, table)} WHERE {TYPE} IN ({types}) AND {IN_RANGE} GROUP BY {USER}"
    )
    sql = (
        f"SELECT breakdown, toInt64(level) AS level, toInt64(count()) AS users FROM ({per_user}) "
        "WHERE level > 0 GROUP BY breakdown, level ORDER BY breakdown, level"
    )
    return sql, {**dict(zip(names, steps, strict=True)), "window_ms": window_ms, **span.params()}


def funnel_steps(steps: list[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per breakdown value and step: the users who reached at least that step, and the share of step 1's.
    With no user at all, one group "" of zeros."""
    depth: dict[str, dict[int, int]] = {} if rows else {"": {}}
    for row in rows:
        depth.setdefault(row["breakdown"], {})[int(row["level"])] = int(row["users"])
    out: list[dict[str, Any]] = []
    for value, levels in sorted(depth.items()):
        entered = sum(levels.values())
        for number, event_type in enumerate(steps, 1):
            reached = sum(n for level, n in levels.items() if level >= number)
            out.append(
                {
                    "breakdown": value,
                    "step": number,
                    "event_type": event_type,
                    "users": reached,
                    "conversion": round(reached / entered, 4) if entered else 0.0,
                }
            )
    return out


def period_start(period: Period, time: str) -> str:
    """The first day (a Date) of the day or ISO week (Monday) holding `time`."""
    return f"toDate({time})" if period == "day" else f"toMonday(toDate({time}))"


def retention_query(
    table: str, database: str, period: Period, span: TimeRange, returning_event: str | None
) -> tuple[str, dict[str, Any]]:
    """Rows (cohort, offset, users); cohort is the period's first day ('YYYY-MM-DD').

    One pass over the table before `to`: per user, the first event time and the days of returning events in
    the range; offsets come from those days, each counted once per user, offset 0 for every cohort member."""
    returning = f" AND {TYPE} = {{returning_event:String}}" if returning_event is not None else ""
    active_days = (
        f"groupUniqArrayIf(toDate({TIME}), {TIME} >= fromUnixTimestamp64Milli({{from_ms:Int64}}, 'UTC')"
        f"{returning})"
    )
    offsets = (
        "arrayDistinct(arrayConcat([0], arrayFilter(o -> o >= 1, arrayMap(d -> "
        f"intDiv(dateDiff('day', cohort_day, d), {PERIOD_DAYS[period]}), {active_days}))))"
    )
    per_user = (
        f"SELECT {period_start(period, f'min({TIME})')} AS cohort_day, {offsets} AS offsets "
        f"FROM {qualified(database, table)} "
        f"WHERE {TIME} < fromUnixTimestamp64Milli({{to_ms:Int64}}, 'UTC') AND {NOT_RESERVED} GROUP BY {USER} "
        f"HAVING min({TIME}) >= fromUnixTimestamp64Milli({{from_ms:Int64}}, 'UTC')"
    )
    sql = (
        "SELECT toString(cohort_day) AS cohort, toInt64(offset) AS offset, toInt64(count()) AS users "
        f"FROM ({per_user}) ARRAY JOIN offsets AS offset GROUP BY cohort_day, offset "
        "ORDER BY cohort_day, offset"
    )
    params = span.params()
    if returning_event is not None:
        params["returning_event"] = returning_event
    return sql, params


def retention_cohorts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cohort: its size and, per offset 1.., the users returning then (0 when none did)."""
    by_cohort: dict[str, dict[int, int]] = {}
    for row in rows:
        by_cohort.setdefault(row["cohort"], {})[int(row["offset"])] = int(row["users"])
    longest = max((max(offsets) for offsets in by_cohort.values()), default=0)
    return [
        {
            "cohort": cohort,
            "users": offsets.get(0, 0),
            "returning": [offsets.get(k, 0) for k in range(1, longest + 1)],
        }
        for cohort, offsets in sorted(by_cohort.items())
    ]


def top_pages_query(table: str, database: str, span: TimeRange, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows (page, views, users), most viewed first (ties by page)."""
    sql = (
        f"SELECT cutQueryStringAndFragment({URL}) AS page, toInt64(uniqExact({EVENT_ID})) AS views, "
        f"toInt64(uniqExact({USER})) AS users FROM {qualified(database, table)} "
        f"WHERE {TYPE} = {{page_view:String}} AND {IN_RANGE} "
        "GROUP BY page ORDER BY views DESC, page LIMIT {limit:UInt32}"
    )
    return sql, {"page_view": PAGE_VIEW, "limit": limit, **span.params()}


def sources_query(table: str, database: str, span: TimeRange, limit: int) -> tuple[str, dict[str, Any]]:
    """Rows (source, medium, campaign, referrer_class, events, sessions, users), most events first."""
    utm_source, utm_medium, utm_campaign, referrer_host, referrer_class = (
        f"nullIf(toString({quoted(c)}), '')" for c in SOURCE_COLUMNS
    )
    sql = (
        f"SELECT coalesce({utm_source}, {referrer_host}, '(direct)') AS source, "
        f"coalesce({utm_medium}, {referrer_class}) AS medium, {utm_campaign} AS campaign, "
        f"{referrer_class} AS referrer_class, toInt64(uniqExact({EVENT_ID})) AS events, "
        f"toInt64(uniqExact({SESSION})) AS sessions, toInt64(uniqExact({USER})) AS users "
        f"FROM {qualified(database, table)} WHERE {IN_RANGE} AND {NOT_RESERVED} "
        "GROUP BY source, medium, campaign, referrer_class "
        "ORDER BY events DESC, source, medium, campaign, referrer_class LIMIT {limit:UInt32}"
    )
    return sql, {"limit": limit, **span.params()}
