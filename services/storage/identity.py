"""Persons, identity links and groups in ClickHouse, derived from the raw events topic's identity records.

Ingestion writes identify, alias and group calls to analytics_events as raw events of the reserved types in
shared/events.py (services/ingestion/identity.py maps them). Storage writes them to the raw table like every
event and, in the same batch write, the rows `identity_rows()` derives from them:

    person_properties (user_id, key)   one row per trait of an identify call: the user's latest value
    identity_links    (anonymous_id)   identify with an anonymous id other than its user id, and alias
                                       (previous id -> user id): the user an anonymous id belongs to
    group_properties  (group_id, key)  one row per trait of a group call: the group's latest value
    group_members     (group_id, user_id)  the user of each group call

Each table is a ReplacingMergeTree sorted by the key above, versioned by `_version`: the event time in the
high 64 bits, cityHash64(event id) in the low ones. So the row that survives (with FINAL, or argMax over
`_version`) is the one of the latest event time, ties broken by the hashed event id: a replay, a retry or an
update arriving out of order resolves the same way every time. An anonymous id linked twice belongs to the
user of its latest link.

Views: `persons` (one row per user id, its latest traits as a map), `groups` (the same per group id) and,
when the session job's table exists, `resolved_sessions`: session_metrics with `resolved_user_id`, the user
the session's user id is linked to in identity_links, else the session's own user id (one level: links are
not followed transitively).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from services.storage.tables import DELETED, INGESTED_AT, VERSION, ColumnDef, Table, View, qualified, quoted
from shared.events import (
    ALIAS_TYPE,
    ANONYMOUS_PATH,
    EVENT,
    EVENT_TIME_PATH,
    GROUP_PATH,
    GROUP_TYPE,
    ID_PATH,
    IDENTIFY_TYPE,
    TYPE_PATH,
    USER_PATH,
)

Row = dict[str, Any]
PERSONS, LINKS, GROUP_TRAITS, MEMBERS = (
    "person_properties",
    "identity_links",
    "group_properties",
    "group_members",
)
SESSIONS_TABLE = "session_metrics"  # the session job's table; resolved_sessions exists only beside it
TIME = "DateTime64(3, 'UTC')"
# the raw table's columns the identity rows come from
EVENT_TYPE, EVENT_ID, EVENT_TIME = (EVENT.at(p).column for p in (TYPE_PATH, ID_PATH, EVENT_TIME_PATH))
USER, ANONYMOUS, GROUP = (EVENT.at(p).column for p in (USER_PATH, ANONYMOUS_PATH, GROUP_PATH))
TRAITS = EVENT.at("properties").column


def _versioned(name: str, key: tuple[ColumnDef, ...], values: tuple[ColumnDef, ...], time: str) -> Table:
    """A table sorted by `key`, whose `_version` ClickHouse computes at insert from the row's event time and
    event id (the module docstring)."""
    computed = f"bitShiftLeft(toUInt128(toUnixTimestamp64Milli({quoted(time)})), 64) + cityHash64(`event_id`)"
    columns = (
        *key,
        *values,
        ColumnDef(time, TIME),
        ColumnDef("event_id", "String"),
        ColumnDef(VERSION, f"UInt128 DEFAULT {computed}"),
        ColumnDef(INGESTED_AT, f"{TIME} DEFAULT now64(3)"),
    )
    return Table(
        name=name,
        columns=columns,
        engine=f"ReplacingMergeTree({VERSION})",
        order_by=tuple(quoted(c.name) for c in key),
        partition_by="tuple()",
    )


def identity_tables() -> list[Table]:
    text = "String"
    return [
        _versioned(
            PERSONS,
            (ColumnDef("user_id", text), ColumnDef("key", text)),
            (ColumnDef("value", text),),
            "updated_at",
        ),
        _versioned(
            LINKS,
            (ColumnDef("anonymous_id", text),),
            (ColumnDef("user_id", text), ColumnDef("source", "LowCardinality(String)")),
            "linked_at",
        ),
        _versioned(
            GROUP_TRAITS,
            (ColumnDef("group_id", text), ColumnDef("key", text)),
            (ColumnDef("value", text),),
            "updated_at",
        ),
        _versioned(MEMBERS, (ColumnDef("group_id", text), ColumnDef("user_id", text)), (), "joined_at"),
    ]


def identity_views(database: str, metric_tables: Iterable[str]) -> list[View]:
    """The views over the identity tables (and over session_metrics when that table is declared)."""
    views = [
        View("persons", _traits_select(qualified(database, PERSONS), "user_id")),
        View("groups", _traits_select(qualified(database, GROUP_TRAITS), "group_id")),
    ]
    if SESSIONS_TABLE in metric_tables:
        views.append(
            View(
                "resolved_sessions",
                _sessions_select(qualified(database, SESSIONS_TABLE), qualified(database, LINKS)),
            )
        )
    return views


def _traits_select(source: str, key: str) -> str:
    return (
        f"SELECT `{key}`, mapFromArrays(groupArray(`key`), groupArray(`value`)) AS traits, "
        f"max(`updated_at`) AS updated_at\nFROM {source} FINAL\nGROUP BY `{key}`"
    )


def _sessions_select(sessions: str, links: str) -> str:
    return (
        "SELECT s.*, if(l.`user_id` = '', s.`user_id`, l.`user_id`) AS resolved_user_id\n"
        f"FROM (SELECT * EXCEPT (`{VERSION}`, `{DELETED}`, `{INGESTED_AT}`) FROM {sessions} FINAL "
        f"WHERE `{DELETED}` = 0) AS s\n"
        f"LEFT JOIN (SELECT `anonymous_id`, `user_id` FROM {links} FINAL) AS l "
        "ON s.`user_id` = l.`anonymous_id`"
    )


def identity_rows(raw_rows: Iterable[Row]) -> dict[str, list[Row]]:
    """The identity tables' rows of a batch of raw event rows (the raw table's columns), by table; rows of
    other event types give none."""
    out: dict[str, list[Row]] = {PERSONS: [], LINKS: [], GROUP_TRAITS: [], MEMBERS: []}
    for row in raw_rows:
        derive = DERIVED.get(row[EVENT_TYPE])
        if derive is not None:
            for table, derived in derive(row):
                out[table].append(derived)
    return {table: rows for table, rows in out.items() if rows}


def _identify(row: Row) -> list[tuple[str, Row]]:
    user, anonymous = row[USER], row[ANONYMOUS]
    found = _traits(PERSONS, "user_id", user, row)
    if anonymous and anonymous != user:
        found.append((LINKS, _link(row, "identify")))
    return found


def _alias(row: Row) -> list[tuple[str, Row]]:
    if not row[ANONYMOUS] or row[ANONYMOUS] == row[USER]:
        return []
    return [(LINKS, _link(row, "alias"))]


def _group(row: Row) -> list[tuple[str, Row]]:
    group = row[GROUP]
    if not group:
        return []
    member = {"group_id": group, "user_id": row[USER], "joined_at": row[EVENT_TIME]}
    return [*_traits(GROUP_TRAITS, "group_id", group, row), (MEMBERS, {**member, "event_id": row[EVENT_ID]})]


def _traits(table: str, key: str, owner: str, row: Row) -> list[tuple[str, Row]]:
    return [
        (
            table,
            {
                key: owner,
                "key": name,
                "value": value,
                "updated_at": row[EVENT_TIME],
                "event_id": row[EVENT_ID],
            },
        )
        for name, value in row[TRAITS].items()
    ]


def _link(row: Row, source: str) -> Row:
    return {
        "anonymous_id": row[ANONYMOUS],
        "user_id": row[USER],
        "source": source,
        "linked_at": row[EVENT_TIME],
        "event_id": row[EVENT_ID],
    }


DERIVED: dict[str, Callable[[Row], list[tuple[str, Row]]]] = {
    IDENTIFY_TYPE: _identify,
    ALIAS_TYPE: _alias,
    GROUP_TYPE: _group,
}
