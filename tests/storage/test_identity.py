"""Persons, identity links, groups and resolved sessions (services/storage/identity.py): the rows derived
from identity records, their deterministic winners in chDB, and their views through storage's /v1/sql."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.processing.registry import load_schemas
from services.storage.backends import Backend, ChdbBackend
from services.storage.consumer import table_writer
from services.storage.identity import LINKS, PERSONS, identity_rows, identity_tables, identity_views
from services.storage.processors import metric_processor, process_event
from services.storage.tables import events_table, metric_table, migrate, migrate_views
from shared.events import ALIAS_TYPE, GROUP_TYPE, IDENTIFY_TYPE
from shared.settings import Settings
from tests.storage.conftest import produce_events, raw_event, scalar, sql, unique, wait_for

SETTINGS = Settings()
EVENTS_TOPIC = "events"
T0 = 1_767_225_600_000


def identity_event(
    kind: str,
    event_id: str,
    user: str,
    anonymous: str | None = None,
    traits: dict[str, Any] | None = None,
    group: str | None = None,
    ts: int = T0,
    session: str | None = None,
) -> dict[str, Any]:
    """A raw identity record as ingestion writes it (services/ingestion/identity.py)."""
    event = raw_event(session or anonymous or user, event_id, kind, ts=ts)
    event["user"] = {"id": user, "anonymous_id": anonymous}
    event["context"]["group_id"] = group
    event["properties"] = traits or {}
    return event


def rows_of(*events: dict[str, Any]) -> list[dict[str, Any]]:
    return [process_event(b"k", orjson.dumps(e), offset) for offset, e in enumerate(events)]


def test_identity_records_give_persons_links_and_groups_and_other_events_nothing():
    derived = identity_rows(
        rows_of(
            identity_event(IDENTIFY_TYPE, "i1", "u1", "a1", {"plan": "pro", "seats": 3}),
            identity_event(IDENTIFY_TYPE, "i2", "a2", "a2", {"seen": True}),  # anonymous traits: no link
            identity_event(ALIAS_TYPE, "l1", "u2", "u1"),
            identity_event(GROUP_TYPE, "g1", "u1", None, {"name": "Acme"}, group="acme"),
            raw_event("s1", "e1"),
        )
    )
    people = {(r["user_id"], r["key"]): r["value"] for r in derived["person_properties"]}
    assert people == {("u1", "plan"): "pro", ("u1", "seats"): "3", ("a2", "seen"): "true"}
    links = [(r["anonymous_id"], r["user_id"], r["source"]) for r in derived["identity_links"]]
    assert links == [("a1", "u1", "identify"), ("u1", "u2", "alias")]
    assert [(r["group_id"], r["key"], r["value"]) for r in derived["group_properties"]] == [
        ("acme", "name", "Acme")
    ]
    assert [(r["group_id"], r["user_id"]) for r in derived["group_members"]] == [("acme", "u1")]


@pytest.fixture(scope="module")
def chdb(tmp_path_factory) -> Backend:
    backend = ChdbBackend(Path(tmp_path_factory.mktemp("chdb-identity")))
    yield backend
    backend.close()


def prepared(backend: Backend) -> tuple[str, Any]:
    """A fresh database with the raw, session and identity tables and views, and storage's writer to it."""
    db = f"identity_{uuid.uuid4().hex[:8]}"
    sessions = load_schemas()["session_metrics"]
    migrate(backend, db, [events_table(SETTINGS), metric_table(sessions), *identity_tables()])
    migrate_views(backend, db, identity_views(db, [sessions.name]))
    table_of = {EVENTS_TOPIC: f"{db}.{events_table(SETTINGS).name}", "sessions": f"{db}.{sessions.name}"}
    return db, table_writer(backend, threading.Lock(), table_of, EVENTS_TOPIC)


@pytest.mark.clickhouse
def test_the_latest_event_time_wins_whatever_the_arrival_order_and_replays(chdb):
    db, write = prepared(chdb)
    newer = identity_event(IDENTIFY_TYPE, "i-new", "u1", "a1", {"plan": "pro"}, ts=T0 + 2_000)
    older = identity_event(
        IDENTIFY_TYPE, "i-old", "u1", "a1", {"plan": "free", "city": "Oslo"}, ts=T0 + 1_000
    )
    relinked = identity_event(IDENTIFY_TYPE, "i-other", "u9", "a1", {}, ts=T0 + 500)
    for batch in ([newer], [older, relinked], [newer, older]):  # out of order, then replayed
        write({EVENTS_TOPIC: rows_of(*batch)})
    persons = chdb.query(f"SELECT user_id, traits FROM `{db}`.persons ORDER BY user_id")
    assert persons == [{"user_id": "u1", "traits": {"city": "Oslo", "plan": "pro"}}]
    links = chdb.query(f"SELECT anonymous_id, user_id FROM `{db}`.`{LINKS}` FINAL")
    assert links == [{"anonymous_id": "a1", "user_id": "u1"}]  # linked twice: the later link
    assert chdb.query(f"SELECT count() AS n FROM `{db}`.`{PERSONS}` FINAL") == [{"n": 2}]
    assert_same_winner_on_equal_times(chdb, db, write)
    chdb.command(f"DROP DATABASE `{db}`")


def assert_same_winner_on_equal_times(chdb: Backend, db: str, write: Any) -> None:
    """Two updates at the same millisecond: one winner, the same in either arrival order."""
    first = identity_event(IDENTIFY_TYPE, "tie-a", "u-tie", None, {"plan": "a"}, ts=T0)
    second = identity_event(IDENTIFY_TYPE, "tie-b", "u-tie", None, {"plan": "b"}, ts=T0)
    winners = set()
    for order in ([first, second], [second, first]):
        chdb.command(f"TRUNCATE TABLE `{db}`.`{PERSONS}`")
        for event in order:
            write({EVENTS_TOPIC: rows_of(event)})
        winners.add(
            chdb.query(f"SELECT traits['plan'] AS plan FROM `{db}`.persons WHERE user_id = 'u-tie'")[0][
                "plan"
            ]
        )
    assert len(winners) == 1


@pytest.mark.clickhouse
def test_sessions_resolve_to_the_linked_user(chdb):
    db, write = prepared(chdb)
    write({EVENTS_TOPIC: rows_of(identity_event(ALIAS_TYPE, "al-1", "u-known", "anon-1"))})
    session = metric_processor(load_schemas()["session_metrics"])
    rows = [
        session(None, orjson.dumps(session_record("s-anon", "anon-1")), 1),
        session(None, orjson.dumps(session_record("s-other", "anon-2")), 2),
    ]
    write({"sessions": rows})
    resolved = chdb.query(
        f"SELECT session_id, user_id, resolved_user_id FROM `{db}`.resolved_sessions ORDER BY session_id"
    )
    assert resolved == [
        {"session_id": "s-anon", "user_id": "anon-1", "resolved_user_id": "u-known"},
        {"session_id": "s-other", "user_id": "anon-2", "resolved_user_id": "anon-2"},
    ]
    chdb.command(f"DROP DATABASE `{db}`")


def session_record(session_id: str, user_id: str) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(load_schemas()["session_metrics"].column_names, 0)
    return record | {
        "window_start": T0,
        "window_end": T0 + 60_000,
        "session_id": session_id,
        "user_id": user_id,
        "device_category": "desktop",
        "revenue": 0.0,
    }


@pytest.mark.kafka
def test_identity_records_on_the_topic_are_queryable(api, kafka):
    user, anonymous, group = unique("u"), unique("a"), unique("g")
    produce_events(
        kafka,
        [
            identity_event(IDENTIFY_TYPE, unique("i"), user, anonymous, {"plan": "pro"}),
            identity_event(GROUP_TYPE, unique("g"), user, None, {"name": "Acme"}, group=group),
        ],
    )
    wait_for(
        lambda: scalar(api, "SELECT count() AS n FROM group_members WHERE group_id = {g:String}", g=group)
    )
    assert (
        scalar(api, "SELECT traits['plan'] AS plan FROM persons WHERE user_id = {u:String}", u=user) == "pro"
    )
    assert (
        scalar(api, "SELECT user_id FROM identity_links FINAL WHERE anonymous_id = {a:String}", a=anonymous)
        == user
    )
    assert (
        scalar(api, "SELECT traits['name'] AS n FROM groups WHERE group_id = {g:String}", g=group) == "Acme"
    )
    response = sql(api, "SELECT count() AS n FROM resolved_sessions")
    assert response.status_code == 200, response.text
