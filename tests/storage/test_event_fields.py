"""The raw event declared once (shared.events.EVENT): every consumer derives its part from it.

- Today's event yields exactly the DDL and rows written by hand before the schema existed (raw table,
  Flink source and events view, storage's row), plus the enrichment group appended since (its columns last,
  so existing tables migrate by ADD COLUMN), so existing tables and data keep working.
- A field added to a copy of the schema reaches the Flink source, the events view (resolved by Flink
  itself), the raw table's DDL and migration, and the row stored in chDB through storage's processor.
- docs/adding-a-job.md quotes the derived list of the columns (view and raw table).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_type_hints

import orjson
import pytest
from typing_extensions import TypedDict

from services.processing.coordinator import EVENTS_VIEW, JobCoordinator
from services.storage.backends import ChdbBackend
from services.storage.processors import event_processor, process_event
from services.storage.tables import events_table, migrate
from shared import event_doc
from shared.events import EVENT, EVENT_FIELDS, FLOAT64, INT32, Device, EventField, EventSchema, RawEvent
from shared.settings import Settings
from tests.storage.conftest import raw_event

ENRICHMENT_COLUMNS = """  `utm_source` Nullable(String),
  `utm_medium` Nullable(String),
  `utm_campaign` Nullable(String),
  `utm_term` Nullable(String),
  `utm_content` Nullable(String),
  `referrer_host` Nullable(String),
  `referrer_class` LowCardinality(String),
  `browser` LowCardinality(String),
  `browser_version` LowCardinality(Nullable(String)),
  `os` LowCardinality(String),
  `os_version` LowCardinality(Nullable(String)),
  `country` LowCardinality(Nullable(String)),"""
ENRICHMENT = (
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "referrer_host",
    "referrer_class",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "country",
)
TABLE_BEFORE_SCHEMA = """CREATE TABLE IF NOT EXISTS `rtap`.`analytics_events` (
  `event_id` String,
  `event_type` LowCardinality(String),
  `user_id` String,
  `session_id` String,
  `url` String,
  `referrer` Nullable(String),
  `ip` Nullable(String),
  `user_agent` String,
  `screen_width` Int32,
  `screen_height` Int32,
  `properties` Map(String, String),
  `load_time` Nullable(Float64),
  `interaction_time` Nullable(Float64),
  `timestamp` DateTime64(3, 'UTC'),
  `received_at` DateTime64(3, 'UTC'),
{ENRICHMENT_COLUMNS}
  `_version` UInt64,
  `_ingested_at` DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMMDD(`timestamp`)
ORDER BY (`event_id`)
TTL toDateTime(`timestamp`) + toIntervalDay(30)""".replace("{ENRICHMENT_COLUMNS}", ENRICHMENT_COLUMNS)

SOURCE_COLUMNS_BEFORE_SCHEMA = """CREATE TABLE events_source (
  event ROW<`type` STRING, id STRING>,
  `user` ROW<id STRING>,
  device ROW<user_agent STRING, screen_width INT, screen_height INT>,
  context ROW<url STRING, referrer STRING, ip_address STRING, session_id STRING>,
  properties MAP<STRING, STRING>,
  metrics ROW<load_time DOUBLE, interaction_time DOUBLE>,
  `timestamp` BIGINT,
  received_at BIGINT,
  enrichment ROW<utm_source STRING, utm_medium STRING, utm_campaign STRING, utm_term STRING, \
utm_content STRING, referrer_host STRING, referrer_class STRING, browser STRING, browser_version STRING, \
os STRING, os_version STRING, country STRING>,
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  proc_time AS PROCTIME(),
  event_ms AS COALESCE(`timestamp`, received_at, CAST(0 AS BIGINT)),
  event_time AS TO_TIMESTAMP_LTZ(COALESCE(`timestamp`, received_at, CAST(0 AS BIGINT)), 3),
  WATERMARK FOR event_time AS TO_TIMESTAMP_LTZ(LEAST(COALESCE(`timestamp`, received_at, CAST(0 AS BIGINT)), \
COALESCE(received_at, `timestamp`, CAST(0 AS BIGINT)) + 500), 3) - INTERVAL '0 00:00:02.000' DAY TO SECOND(3)
) WITH ("""

RAW_VIEW_COLUMNS = (
    "event_type, event_id, user_id, session_id, user_agent, screen_width, screen_height, "
    "url, referrer, properties, load_time, interaction_time, ts, received_at, " + ", ".join(ENRICHMENT)
)
VIEW_SELECTION = (
    """SELECT event.`type` AS event_type, event.id AS event_id, `user`.id AS user_id,
       context.session_id AS session_id, device.user_agent AS user_agent, device.screen_width AS screen_width,
       device.screen_height AS screen_height, context.url AS url, context.referrer AS referrer, properties,
       metrics.load_time AS load_time, metrics.interaction_time AS interaction_time, event_ms AS ts,
       received_at, """
    + ", ".join(f"enrichment.{c} AS {c}" for c in ENRICHMENT)
    + ", event_time"
)
VIEW_BEFORE_SCHEMA = f"""CREATE TEMPORARY VIEW events AS
SELECT {RAW_VIEW_COLUMNS},
  device_category(user_agent, screen_width, screen_height) AS device_category, event_time
FROM (SELECT {RAW_VIEW_COLUMNS}, event_time
FROM ({VIEW_SELECTION}, ROW_NUMBER() OVER (PARTITION BY COALESCE(event.id, CONCAT('kafka:', \
CAST(kafka_partition AS STRING), ':', CAST(kafka_offset AS STRING))) ORDER BY proc_time ASC) AS seen \
FROM events_source WHERE event.`type` <> '__heartbeat') WHERE seen = 1)"""
VIEW_WITHOUT_DEDUP_BEFORE_SCHEMA = f"""CREATE TEMPORARY VIEW events AS
SELECT {RAW_VIEW_COLUMNS},
  device_category(user_agent, screen_width, screen_height) AS device_category, event_time
FROM ({VIEW_SELECTION} FROM events_source WHERE event.`type` <> '__heartbeat')"""


def with_identity(text: str) -> str:
    """The text as the identity fields changed it (user.anonymous_id, context.group_id appended after the
    enrichment columns; identity
    records left out of the events view); every other part as before the schema."""
    changes = (
        (
            "`country` LowCardinality(Nullable(String)),\n",
            "`country` LowCardinality(Nullable(String)),\n"
            "  `anonymous_id` Nullable(String),\n  `group_id` Nullable(String),\n",
        ),
        ("`user` ROW<id STRING>", "`user` ROW<id STRING, anonymous_id STRING>"),
        ("session_id STRING>", "session_id STRING, group_id STRING>"),
        ("user_id, session_id, user_agent", "user_id, session_id, anonymous_id, user_agent"),
        (
            "context.session_id AS session_id,",
            "context.session_id AS session_id, `user`.anonymous_id AS anonymous_id,",
        ),
        ("<> '__heartbeat'", "NOT IN ('__heartbeat', '__identify', '__alias', '__group')"),
    )
    for old, new in changes:
        text = text.replace(old, new)
    return text


PIXEL_RATIO = EventField("pixel_ratio", "device.pixel_ratio", FLOAT64, nullable=True)


def wire_with_device_value(key: str, hint: Any) -> Any:
    """RawEvent's TypedDict with one more value in its device."""
    device_hints = get_type_hints(Device, include_extras=True)
    device = TypedDict("Device", {**device_hints, key: hint})  # type: ignore[misc]
    wire_hints = get_type_hints(RawEvent, include_extras=True)
    return TypedDict("RawEvent", {**wire_hints, "device": device})  # type: ignore[misc]


def with_pixel_ratio() -> EventSchema:
    """A copy of the event schema with one more value, device.pixel_ratio (the TypedDicts extended alike)."""
    return EventSchema((*EVENT_FIELDS, PIXEL_RATIO), wire_with_device_value("pixel_ratio", float | None))


def flink_text(sql: str) -> str:
    """Flink SQL without quoting and layout: Flink keeps an identifier's case, so quoting changes nothing."""
    return re.sub(r"\s+", " ", sql.replace("`", "")).strip()


@pytest.fixture(scope="module")
def chdb(tmp_path_factory):
    backend = ChdbBackend(Path(tmp_path_factory.mktemp("chdb-event-fields")))
    yield backend
    backend.close()


def test_todays_event_keeps_the_raw_table_written_before_the_schema():
    """All but its sort order, changed since (tests/storage/test_raw_order.py)."""
    resorted = TABLE_BEFORE_SCHEMA.replace(
        "ORDER BY (`event_id`)",
        "ORDER BY (`event_type`, toDate(`timestamp`), cityHash64(`user_id`), `event_id`)",
    )
    assert events_table(Settings()).create_sql("rtap") == with_identity(resorted)


def test_todays_event_keeps_the_flink_source_and_view_written_before_the_schema():
    settings = Settings()
    source = JobCoordinator(settings).source_ddl()
    assert flink_text(source).startswith(flink_text(with_identity(SOURCE_COLUMNS_BEFORE_SCHEMA)))
    assert flink_text(JobCoordinator(settings).events_view_sql()) == flink_text(
        with_identity(VIEW_BEFORE_SCHEMA)
    )
    no_dedup = settings.processing.model_copy(update={"dedup_seconds": 0})
    view = JobCoordinator(settings.model_copy(update={"processing": no_dedup})).events_view_sql()
    assert flink_text(view) == flink_text(with_identity(VIEW_WITHOUT_DEDUP_BEFORE_SCHEMA))


def test_todays_event_keeps_the_row_written_before_the_schema():
    event = raw_event("s1", "e1", "add_to_cart", ts=1_767_225_600_123)
    event["received_at"] = 1_767_225_600_456
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert process_event(b"s1", orjson.dumps(event), 7) == {
        "event_id": "e1",
        "event_type": "add_to_cart",
        "user_id": "u-s1",
        "session_id": "s1",
        "url": "https://shop.example/p/1",
        "referrer": None,
        "ip": "203.0.113.9",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "screen_width": 1920,
        "screen_height": 1080,
        "properties": {"sku": "A-1", "qty": "2", "gift": "true"},
        "load_time": 812.5,
        "interaction_time": None,
        "timestamp": at.replace(microsecond=123_000),
        "received_at": at.replace(microsecond=456_000),
        **event["enrichment"],
        "anonymous_id": None,
        "group_id": None,
        "_version": 7,
    }


def test_a_record_missing_what_a_row_can_do_without_still_becomes_a_row():
    event = raw_event("s1", "e1")
    for group in ("user", "device", "metrics", "properties", "enrichment"):  # enrichment: older records
        del event[group]
    row = process_event(b"s1", orjson.dumps(event), 0)
    assert (row["user_id"], row["screen_width"], row["load_time"], row["properties"]) == ("", 0, None, {})
    assert (row["referrer_class"], row["browser"], row["country"], row["utm_source"]) == ("", "", None, None)


@pytest.mark.clickhouse
def test_a_raw_table_from_before_the_enrichment_gains_its_columns_and_stores_them(chdb):
    db = f"enriched_{uuid.uuid4().hex[:8]}"
    chdb.command(f"CREATE DATABASE `{db}`")
    table = events_table(Settings())
    chdb.command(table.create_sql(db).replace(ENRICHMENT_COLUMNS + "\n", ""))
    applied = migrate(chdb, db, [table])
    added = [s for s in applied if "ADD COLUMN" in s]
    assert [s.split("`")[-2] for s in added] == list(ENRICHMENT)
    event = raw_event("s1", "enriched")
    event["enrichment"] |= {"country": "JP", "referrer_host": "t.co", "referrer_class": "social"}
    chdb.insert(f"{db}.{table.name}", [process_event(b"s1", orjson.dumps(event), 1)])
    [row] = chdb.query(f"SELECT {', '.join(ENRICHMENT)} FROM `{db}`.`{table.name}` FINAL")
    assert row == event["enrichment"]
    chdb.command(f"DROP DATABASE `{db}`")


@pytest.mark.clickhouse
def test_a_new_field_reaches_the_flink_source_the_view_the_raw_table_and_the_stored_row(chdb):
    extended, settings = with_pixel_ratio(), Settings()
    coordinator = JobCoordinator(settings, event=extended)
    assert "`pixel_ratio` DOUBLE>" in coordinator.source_ddl().split("`device` ROW<")[1].split("\n")[0]
    view = coordinator.events_view_sql()
    assert "`device`.`pixel_ratio` AS `pixel_ratio`" in view
    assert view.split("\n")[1].startswith("SELECT ") and "`pixel_ratio`" in view.split("\n")[1]
    assert "| `device.pixel_ratio` | `pixel_ratio` `DOUBLE` |" in event_doc.column_list(extended)

    db = f"fields_{uuid.uuid4().hex[:8]}"
    table = events_table(settings).name
    migrate(chdb, db, [events_table(settings)])
    chdb.insert(f"{db}.{table}", [process_event(b"s1", orjson.dumps(raw_event("s1", "before")), 1)])
    applied = migrate(chdb, db, [events_table(settings, extended)])
    target = f"`{db}`.`{table}`"
    assert applied == [f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS `pixel_ratio` Nullable(Float64)"]
    assert "`pixel_ratio` Nullable(Float64)" in events_table(settings, extended).create_sql(db)

    event = raw_event("s1", "after")
    event["device"]["pixel_ratio"] = 2.5
    chdb.insert(f"{db}.{table}", [event_processor(extended)(b"s1", orjson.dumps(event), 2)])
    rows = chdb.query(f"SELECT event_id, pixel_ratio FROM `{db}`.`{table}` FINAL ORDER BY event_id")
    assert rows == [{"event_id": "after", "pixel_ratio": 2.5}, {"event_id": "before", "pixel_ratio": None}]
    chdb.command(f"DROP DATABASE `{db}`")


@pytest.mark.flink
def test_flink_resolves_the_new_field_in_the_source_and_the_view():
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from infrastructure.local import jars
    from services.processing.device import function_ddl
    from services.processing.driver import pipeline_jars

    settings = Settings()
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    jars.prepare_pipeline_jars(settings)  # what `rtap setup` lists for the driver
    t_env.get_config().set("pipeline.jars", pipeline_jars(settings))
    coordinator = JobCoordinator(settings, event=with_pixel_ratio())
    for ddl in (function_ddl(), coordinator.source_ddl(), coordinator.events_view_sql()):
        t_env.execute_sql(ddl)
    schema = t_env.from_path(EVENTS_VIEW).get_schema()
    names = schema.get_field_names()
    assert names[-3:] == ["country", "device_category", "event_time"] and "pixel_ratio" in names
    assert str(schema.get_field_data_type("pixel_ratio")) == "DOUBLE"
    assert {str(schema.get_field_data_type(column)) for column in ENRICHMENT} == {"VARCHAR"}


def test_the_schema_must_cover_the_wire_format_exactly():
    wire = with_pixel_ratio().wire
    with pytest.raises(TypeError, match=r"device\.pixel_ratio"):
        EventSchema(EVENT_FIELDS, wire)  # a wire value without a field
    with pytest.raises(TypeError, match=r"device\.pixel_ratio"):
        EventSchema((*EVENT_FIELDS, PIXEL_RATIO), RawEvent)  # a field without a wire value
    with pytest.raises(TypeError, match=r"device\.pixel_ratio"):
        EventSchema((*EVENT_FIELDS, EventField("pixel_ratio", "device.pixel_ratio", INT32)), wire)
    with pytest.raises(TypeError, match="twice"):
        EventSchema((*EVENT_FIELDS, EventField("url", "device.pixel_ratio", FLOAT64, nullable=True)), wire)


def test_a_heartbeat_has_every_value_of_the_schema():
    heartbeat = with_pixel_ratio().heartbeat("id-1", 5)
    empty_device = {"user_agent": "", "screen_width": 0, "screen_height": 0, "pixel_ratio": None}
    assert heartbeat["device"] == empty_device
    assert EVENT.heartbeat("id-1", 5)["event"] == {"type": "__heartbeat", "id": "id-1"}


def test_the_guide_lists_the_derived_columns():
    assert event_doc.documented(event_doc.DOC.read_text()) == event_doc.column_list(), (
        "docs/adding-a-job.md lists other raw event columns than shared/events.py declares: "
        "run .venv/bin/python -m shared.event_doc --write"
    )


def test_the_row_builder_refuses_a_path_that_is_not_python_names():
    wire = wire_with_device_value("pixel-ratio", float)
    odd = EventSchema((*EVENT_FIELDS, EventField("pixel_ratio", "device.pixel-ratio", FLOAT64)), wire)
    with pytest.raises(ValueError, match="identifier"):
        event_processor(odd)
