"""Tables derived from the schemas, migrations that only add, processors and the SQL guard.

chDB runs in this test process (its own state directory); the ClickHouse server case runs only when
RTAP_TEST_CLICKHOUSE_URL points at a server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import orjson
import pytest

from services.processing.registry import load_schemas
from services.storage.backends import Backend, ChdbBackend, ServerBackend, reader_limits
from services.storage.processors import BadRecord, metric_processor, process_event
from services.storage.query import metric_query
from services.storage.tables import Table, events_table, events_ttl, metric_table, migrate
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings
from tests.storage.conftest import event_metric, heartbeat, raw_event
from tests.topics import DEAD_LETTER

SERVER_URL = os.environ.get("RTAP_TEST_CLICKHOUSE_URL", "")


def versioned_schema(name: str, extra: bool) -> MetricSchema:
    columns = [
        Column("window_start", "timestamp_ms"),
        Column("window_end", "timestamp_ms"),
        Column("page", "string"),
        Column("views", "int64"),
    ]
    if extra:
        columns.append(Column("p95_ms", "float64"))
    return MetricSchema(name=name, columns=tuple(columns), key=("window_start", "page"))


@pytest.fixture(scope="module")
def chdb(tmp_path_factory) -> Backend:
    backend = ChdbBackend(Path(tmp_path_factory.mktemp("chdb")))
    yield backend
    backend.close()


def backends() -> list:
    server = pytest.param(
        "server",
        marks=pytest.mark.skipif(
            not SERVER_URL, reason="RTAP_TEST_CLICKHOUSE_URL is not set: no ClickHouse server to test against"
        ),
    )
    return [pytest.param("chdb", marks=pytest.mark.clickhouse), server]


@pytest.fixture(params=backends())
def backend(request, chdb) -> Backend:
    if request.param == "chdb":
        yield chdb
        return
    server = ServerBackend(SERVER_URL, "default")
    yield server
    server.close()


def test_every_schema_has_a_table_keyed_by_its_key():
    for schema in load_schemas().values():
        table = metric_table(schema)
        assert table.order_by == tuple(f"`{k}`" for k in schema.key)
        assert table.engine.startswith("ReplacingMergeTree(_version")
        assert table.column_names[: len(schema.columns)] == schema.column_names
        assert f"toYYYYMM(`{schema.window_start}`)" == table.partition_by


def test_events_table_has_a_ttl():
    """Its sort order: tests/storage/test_raw_order.py."""
    assert events_table(Settings()).ttl == events_ttl(Settings().storage.raw_events_ttl_days)


def test_unsafe_identifiers_are_refused():
    with pytest.raises(ValueError, match="identifier"):
        Table("x; DROP TABLE y", (), "MergeTree", ("a",), "tuple()")


def test_migration_adds_columns_keeps_data_and_is_idempotent(backend):
    db = f"mig_{uuid.uuid4().hex[:8]}"
    v1, v2 = versioned_schema("pages", extra=False), versioned_schema("pages", extra=True)
    assert migrate(backend, db, [metric_table(v1)])
    row = metric_processor(v1)(
        b"", orjson.dumps({"window_start": 1_000, "window_end": 2_000, "page": "/", "views": 3}), 0
    )
    backend.insert(f"{db}.pages", [row])
    applied = migrate(backend, db, [metric_table(v2)])
    assert applied == [f"ALTER TABLE `{db}`.`pages` ADD COLUMN IF NOT EXISTS `p95_ms` Nullable(Float64)"]
    assert migrate(backend, db, [metric_table(v2)]) == []
    rows = backend.query(f"SELECT views, p95_ms FROM `{db}`.pages FINAL")
    assert rows == [{"views": 3, "p95_ms": None}]
    recorded = backend.query(f"SELECT count() AS c FROM `{db}`.schema_migrations")
    assert recorded[0]["c"] == 2
    backend.command(f"DROP DATABASE `{db}`")


def test_ttl_change_is_migrated(backend):
    db = f"ttl_{uuid.uuid4().hex[:8]}"
    table = events_table(Settings())
    migrate(backend, db, [table])
    shorter = Table(
        table.name, table.columns, table.engine, table.order_by, table.partition_by, events_ttl(3)
    )
    assert migrate(backend, db, [shorter]) == [
        f"ALTER TABLE `{db}`.`{table.name}` MODIFY TTL {events_ttl(3)}"
    ]
    assert migrate(backend, db, [shorter]) == []
    backend.command(f"DROP DATABASE `{db}`")


def test_replayed_rows_collapse_with_final_and_tombstones_hide(backend):
    db = f"rep_{uuid.uuid4().hex[:8]}"
    schema = load_schemas()["event_metrics"]
    migrate(backend, db, [metric_table(schema)])
    process = metric_processor(schema)
    first = event_metric(1_767_225_600_000, "click", "desktop", 5, 2)
    second = event_metric(1_767_225_610_000, "click", "desktop", 6, 2)
    rows = [
        process(b"", orjson.dumps(r), offset)
        for offset, r in enumerate([first, second, first, {**first, "events": 8}])
    ]
    for row in rows:  # one insert per row: separate parts, as separate batches would make
        backend.insert(f"{db}.event_metrics", [row])
    sql, params = metric_query(schema, db, 0, 2_000_000_000_000, {"event_type": "click"}, 10)
    assert [r["events"] for r in backend.query(sql, params)] == [8, 6]
    key = orjson.dumps({k: second[k] for k in schema.key})
    backend.insert(f"{db}.event_metrics", [process(key, None, 9)])
    assert [r["events"] for r in backend.query(sql, params)] == [8]
    backend.command(f"DROP DATABASE `{db}`")


@pytest.mark.parametrize("odd", ["\x85", "\u2028", "\u2029", "\x1c", "\r", "\x00", "\x0b"])
def test_values_with_line_separators_come_back_whole(backend, odd):
    """ClickHouse writes U+0085 raw in JSON output: a value holding it must not split its row in two."""
    value = f"a{odd}b"
    assert backend.query("SELECT {v:String} AS v, 2 AS n", {"v": value}) == [{"v": value, "n": 2}]


def test_the_readers_connection_refuses_writes_and_setting_changes(chdb):
    """The storage API's chDB connection: readonly=1 and limits of its own, beside the writer's connection."""
    reader = ChdbBackend(chdb.path, {"readonly": 1, **reader_limits(Settings())})
    try:
        with pytest.raises(Exception, match="(?i)readonly"):
            reader.command("CREATE TABLE evil (a Int8) ENGINE = Memory")
        with pytest.raises(Exception, match="(?i)readonly"):
            reader.query("SELECT 1 SETTINGS max_result_rows = 0")
        chdb.command("CREATE TABLE IF NOT EXISTS writable (a Int8) ENGINE = Memory")
    finally:
        reader.close()


def test_heartbeat_is_skipped_and_a_real_event_becomes_a_row():
    assert process_event(b"k", orjson.dumps(heartbeat()), 1) is None
    row = process_event(b"s", orjson.dumps(raw_event("s1", "e1")), 7)
    assert row["event_id"] == "e1" and row["session_id"] == "s1" and row["_version"] == 7
    assert row["properties"]["gift"] == "true"


@pytest.mark.parametrize(
    "value,field",
    [
        (b"[]", "value"),
        (b"not json", "value"),
        (orjson.dumps({**raw_event("s", "e"), "timestamp": "soon"}), "timestamp"),
        (orjson.dumps({**raw_event("s", "e"), "context": {"url": "/"}}), "context.session_id"),
    ],
)
def test_bad_raw_events_name_the_field(value, field):
    with pytest.raises(BadRecord, match=field.replace(".", r"\.")):
        process_event(b"k", value, 0)


def test_bad_metric_records_name_the_column():
    process = metric_processor(load_schemas()["event_metrics"])
    with pytest.raises(BadRecord, match="events"):
        process(b"", orjson.dumps({**event_metric(0, "a", "b", 1, 1), "events": "many"}), 0)
    with pytest.raises(BadRecord, match="tombstone"):
        process(b'{"window_start": 0}', None, 0)


def batch_writer(backend: Backend, lock, stop, table_of: dict[str, str], max_wait: float):
    """The storage sink's batch writer (shared/consumer_pipeline.py) over storage's table writer."""
    from services.storage.consumer import table_writer
    from shared.consumer_pipeline import BatchWriter, ConsumerState, Limits, Sink

    sink = Sink("storage", {}, table_writer(backend, lock, table_of), Limits(1, 1, 1.0), max_wait)
    return sink, BatchWriter(sink, None, ConsumerState("storage"), stop, DEAD_LETTER.name)


def storage_retries() -> float:
    from shared.consumer_pipeline import RETRIES

    return sum(
        s.value
        for s in RETRIES.collect()[0].samples
        if s.name.endswith("_total") and s.labels["sink"] == "storage"
    )


@pytest.mark.clickhouse
def test_a_failed_write_is_retried_until_it_succeeds(chdb):
    """The table is missing at first (a real ClickHouse error); the writer backs off and retries until
    it exists."""
    import threading
    import time

    from shared.consumer_pipeline import Batch

    db = f"retry_{uuid.uuid4().hex[:8]}"
    schema = versioned_schema("late_table", extra=False)
    lock, stop = threading.Lock(), threading.Event()
    sink, writer = batch_writer(chdb, lock, stop, {"late_topic": f"{db}.late_table"}, max_wait=0.2)
    batch = Batch(
        sink,
        rows={
            "late_topic": [
                metric_processor(schema)(
                    b"",
                    orjson.dumps({"window_start": 1_000, "window_end": 2_000, "page": "/a", "views": 1}),
                    0,
                )
            ]
        },
    )
    before = storage_retries()

    def create_later() -> None:
        time.sleep(0.6)
        with lock:
            migrate(chdb, db, [metric_table(schema)])

    creator = threading.Thread(target=create_later)
    creator.start()
    writer.write(batch)
    creator.join()
    assert storage_retries() - before >= 2
    assert chdb.query(f"SELECT count() AS c FROM `{db}`.late_table")[0]["c"] == 1
    chdb.command(f"DROP DATABASE `{db}`")


@pytest.mark.clickhouse
def test_a_write_that_never_succeeds_is_never_passed(chdb):
    """Stopping while a write still fails raises, so flush() never reaches the commit."""
    import threading

    from shared.consumer_pipeline import Batch

    stop = threading.Event()
    sink, writer = batch_writer(
        chdb, threading.Lock(), stop, {"t": "no_such_db.no_such_table"}, max_wait=0.05
    )
    batch = Batch(sink, rows={"t": [{"a": 1}]})
    threading.Timer(0.5, stop.set).start()
    with pytest.raises(Exception, match="(?i)no_such"):
        writer.write(batch)
