"""JobCoordinator: one Kafka source, one events view, one upsert-kafka sink per job, one statement set.

Everything here is SQL text except `run`, which needs a PyFlink TableEnvironment; the DDL is
derived from settings, from the raw event's schema (shared.events.EVENT) and from each job's
MetricSchema, so neither a new job nor a new event field needs an edit here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.processing.device import device_category_sql, function_ddl
from services.processing.job import BaseJob, interval
from services.processing.registry import load_schemas
from shared.events import (
    EVENT,
    EVENT_TIME_PATH,
    HEARTBEAT_TYPE,
    ID_PATH,
    IDENTITY_TYPES,
    RECEIVED_PATH,
    TYPE_PATH,
    EventField,
    EventSchema,
)
from shared.metric_schema import FLINK_TYPES, MetricSchema
from shared.settings import Settings
from shared.topics import topics

SOURCE_TABLE = "events_source"
EVENTS_VIEW = "events"


@dataclass(frozen=True)
class Bounds:
    """A bounded run (backfill): event-time range [start_ms, end_ms) and the Kafka record-time range to
    read."""

    start_ms: int
    end_ms: int
    read_from_ms: int
    read_to_ms: int
    lookaround_ms: int  # events read beyond the range so sessions touching its edges are seen whole
    # a topic holding exactly the range's events (exported from the raw table), read whole instead of the
    # events topic's record-time range
    events_topic: str | None = None


def quote(name: str) -> str:
    return f"`{name}`"


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def with_options(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in options.items())


def source_path(path: str) -> str:
    """A raw event value in the source table: `context`.`url` for context.url."""
    return ".".join(quote(key) for key in path.split("."))


EVENT_MS = f"COALESCE({source_path(EVENT_TIME_PATH)}, {source_path(RECEIVED_PATH)}, CAST(0 AS BIGINT))"
RECEIVED_MS = f"COALESCE({source_path(RECEIVED_PATH)}, {source_path(EVENT_TIME_PATH)}, CAST(0 AS BIGINT))"


def source_columns(event: EventSchema, fields: Sequence[EventField] | None = None) -> list[str]:
    """The source table's physical columns: one per top-level key of the Kafka value, nested ones as ROWs; of
    every field, or of `fields` only (the JSON decoder then skips the others' values)."""
    chosen = event.fields if fields is None else fields
    tree = event.nest({f.path: f for f in chosen}, chosen)
    return [f"{quote(key)} {_flink_type(node)}" for key, node in tree.items()]


def _flink_type(node: EventField | dict[str, Any]) -> str:
    if isinstance(node, dict):
        return f"ROW<{', '.join(f'{quote(key)} {_flink_type(child)}' for key, child in node.items())}>"
    return node.type.flink


def view_selection(view_fields: Sequence[EventField]) -> list[str]:
    """The events view's raw event columns over the source; the event time is the watermark's (event_ms)."""
    selection = []
    for f in view_fields:
        expression = "event_ms" if f.path == EVENT_TIME_PATH else source_path(f.path)
        column = quote(f.view_column)
        selection.append(expression if expression == column else f"{expression} AS {column}")
    return selection


# what the source and the view read themselves: the de-duplication key, the type filter, the watermark's times
VIEW_PATHS = (ID_PATH, TYPE_PATH, EVENT_TIME_PATH, RECEIVED_PATH)
DEVICE_CATEGORY = device_category_sql("user_agent", "screen_width", "screen_height")


class SqlRecorder:
    """Stands in for the TableEnvironment while `JobCoordinator.read_fields` collects a job's SQL: keeps the
    statements the job runs while it builds (its helper views) instead of running them."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute_sql(self, statement: str) -> None:
        self.statements.append(statement)


class JobCoordinator:
    def __init__(self, settings: Settings, bounds: Bounds | None = None, event: EventSchema = EVENT):
        self.settings = settings
        self.bounds = bounds
        self.event = event
        schemas = load_schemas(settings.processing.job_modules)
        self.jobs: list[BaseJob] = [BaseJob.registry[name]() for name in schemas if name in BaseJob.registry]

    def read_fields(self) -> tuple[EventField, ...]:
        """The raw event's fields the source declares: those the view reads itself and every view column that
        a job's SQL names (its query, the statements it runs while building, its output columns). Every field
        when a job builds through PyFlink's Table API, whose columns cannot be read from text.

        Flink's Kafka source decodes every column it declares (it cannot push a projection into the JSON
        format), so a field no job reads would cost a decoded string per event for nothing."""
        texts = [DEVICE_CATEGORY]
        for job in self.jobs:
            recorder = SqlRecorder()
            try:
                query = job.build(recorder, EVENTS_VIEW, self.settings)
            except Exception:  # it needs the real TableEnvironment; its real build raises any real error
                return self.event.wire_fields
            if not isinstance(query, str):
                return self.event.wire_fields
            texts += [query, *recorder.statements, *job.schema.column_names]
        named = {word.lower() for word in re.findall(r"\w+", "\n".join(texts))}
        return tuple(
            f
            for f in self.event.wire_fields
            if f.path in VIEW_PATHS or (f.in_view and f.view_column.lower() in named)
        )

    @property
    def pipeline_name(self) -> str:
        names = ", ".join(job.name for job in self.jobs)
        if self.bounds:
            return (
                f"{self.settings.processing.job_name}-backfill "
                f"[{self.bounds.start_ms}, {self.bounds.end_ms}): {names}"
            )
        return f"{self.settings.processing.job_name}: {names}"

    @property
    def source_topic(self) -> str:
        if self.bounds and self.bounds.events_topic:
            return self.bounds.events_topic
        return topics(self.settings).events.name

    def sink_topic(self, schema: MetricSchema) -> str:
        return topics(self.settings).metric(schema).name

    def source_ddl(self, fields: Sequence[EventField] | None = None) -> str:
        """The Kafka source table over every raw event field, or over `fields` (read_fields())."""
        p = self.settings.processing
        options = {
            "connector": "kafka",
            "topic": self.source_topic,
            "properties.bootstrap.servers": self.settings.kafka.bootstrap,
            "properties.group.id": p.consumer_group,
            "format": "json",
            "json.ignore-parse-errors": "true",
            "json.fail-on-missing-field": "false",
            "scan.watermark.idle-timeout": f"{p.idle_timeout_ms} ms",
        }
        options.update(self._startup_options())
        raw = "".join(f"\n  {column}," for column in source_columns(self.event, fields))
        return f"""CREATE TABLE {SOURCE_TABLE} ({raw}
  kafka_partition INT METADATA FROM 'partition' VIRTUAL,
  kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
  proc_time AS PROCTIME(),
  event_ms AS {EVENT_MS},
  event_time AS TO_TIMESTAMP_LTZ({EVENT_MS}, 3),
  WATERMARK FOR event_time AS {self.watermark_sql()}
) WITH (
  {with_options(options)}
)"""

    def watermark_sql(self) -> str:
        """Event time minus the watermark delay, where event time counts for at most max_future_skew_ms past
        the record's receive time. Ingestion already bounds every timestamp it writes that way (clock-skew
        policy), so this changes nothing for its records; a record from another writer, or from an ingestion
        configured with a larger bound, still cannot move the watermark further. The record keeps its event
        time for its window."""
        delay = interval(self.settings.processing.watermark_delay_ms / 1000)
        bounded_ms = f"LEAST({EVENT_MS}, {RECEIVED_MS} + {self.settings.ingestion.max_future_skew_ms})"
        return f"TO_TIMESTAMP_LTZ({bounded_ms}, 3) - {delay}"

    def _startup_options(self) -> dict[str, str]:
        if self.bounds is None:
            return {"scan.startup.mode": "group-offsets", "properties.auto.offset.reset": "earliest"}
        group = {"properties.group.id": f"{self.settings.processing.consumer_group}-backfill"}
        if self.bounds.events_topic:
            return {**group, "scan.startup.mode": "earliest-offset", "scan.bounded.mode": "latest-offset"}
        return {
            **group,
            "scan.startup.mode": "timestamp",
            "scan.startup.timestamp-millis": str(self.bounds.read_from_ms),
            "scan.bounded.mode": "timestamp",
            "scan.bounded.timestamp-millis": str(self.bounds.read_to_ms),
        }

    def events_view_sql(self, fields: Sequence[EventField] | None = None) -> str:
        """The events every job reads: heartbeats and identity records removed (they already moved the
        watermark in the source; storage keeps identities), repeats of an event id removed (client retries),
        device category computed. Its raw columns: those of `fields` that are in the view (default: all)."""
        shown = set(self.event.wire_fields if fields is None else fields)
        view_fields = [f for f in self.event.view_fields if f in shown]
        skipped = ", ".join(sql_string(t) for t in (HEARTBEAT_TYPE, *IDENTITY_TYPES))
        where = f"{source_path(TYPE_PATH)} NOT IN ({skipped})"
        if self.bounds:
            b = self.bounds
            where += (
                f" AND event_ms >= {b.start_ms - b.lookaround_ms} AND event_ms < {b.end_ms + b.lookaround_ms}"
            )
        raw_columns = ", ".join(quote(f.view_column) for f in view_fields)
        selection = f"SELECT {', '.join(view_selection(view_fields))},\n       event_time"
        if self.settings.processing.dedup_seconds > 0:
            key = (
                f"COALESCE({source_path(ID_PATH)}, "
                "CONCAT('kafka:', CAST(kafka_partition AS STRING), ':', CAST(kafka_offset AS STRING)))"
            )
            selection += f", ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY proc_time ASC) AS seen"
            events = (
                f"SELECT {raw_columns}, event_time\n"  # not `seen`: Flink plans a dedup only without it
                f"FROM ({selection} FROM {SOURCE_TABLE} WHERE {where}) WHERE seen = 1"
            )
        else:
            events = f"{selection} FROM {SOURCE_TABLE} WHERE {where}"
        return f"""CREATE TEMPORARY VIEW {EVENTS_VIEW} AS
SELECT {raw_columns}, {DEVICE_CATEGORY} AS device_category, event_time
FROM ({events})"""

    def sink_ddl(self, schema: MetricSchema) -> str:
        columns = ",\n  ".join(f"{quote(c.name)} {FLINK_TYPES[c.type]}" for c in schema.columns)
        key = ", ".join(quote(k) for k in schema.key)
        options = {
            "connector": "upsert-kafka",
            "topic": self.sink_topic(schema),
            "properties.bootstrap.servers": self.settings.kafka.bootstrap,
            "key.format": "json",
            "value.format": "json",
            "value.fields-include": "ALL",
        }
        return f"""CREATE TABLE {self.sink_table(schema)} (
  {columns},
  PRIMARY KEY ({key}) NOT ENFORCED
) WITH (
  {with_options(options)}
)"""

    @staticmethod
    def sink_table(schema: MetricSchema) -> str:
        return f"sink_{schema.name}"

    def insert_sql(self, job: BaseJob, query: str) -> str:
        columns = ", ".join(quote(c) for c in job.schema.column_names)
        if self.bounds:
            query = self._within_bounds(job.schema, query)
        return f"INSERT INTO {self.sink_table(job.schema)} ({columns})\nSELECT {columns} FROM ({query})"

    def _within_bounds(self, schema: MetricSchema, query: str) -> str:
        """Backfill writes only windows the bounded read saw whole, so it never overwrites a value with a
        partial one. An unbounded run keeps every window."""
        b = self.bounds
        if b is None:
            return query
        start, end = quote(schema.window_start), quote(schema.window_end)
        return (
            f"SELECT * FROM ({query}) WHERE {start} >= {b.start_ms} AND {start} < {b.end_ms}"
            f" AND {end} <= {b.end_ms + b.lookaround_ms}"
        )

    def table_config(self) -> dict[str, str]:
        p = self.settings.processing
        config = {
            "pipeline.name": self.pipeline_name,
            "table.local-time-zone": "UTC",
            "pipeline.object-reuse": "true",
            "table.exec.source.idle-timeout": f"{p.idle_timeout_ms} ms",
            # Plan the events view once for all jobs (one dedup, one device category), not once per job.
            "table.optimizer.reuse-optimize-block-with-digest-enabled": "true",
            # Only the deduplication keeps state by key without a window; window state is freed by the
            # watermark.
            "table.exec.state.ttl": f"{max(p.dedup_seconds, 1)} s",
        }
        if self.bounds is None:
            config.update(
                {
                    "execution.checkpointing.interval": f"{p.checkpoint_interval_ms} ms",
                    "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
                }
            )
        if p.parallelism > 0:
            config["parallelism.default"] = str(p.parallelism)
        return config

    def statements(self, t_env: Any) -> list[str]:
        """Register source, view and sinks on t_env; return one INSERT per job."""
        fields = self.read_fields()
        t_env.execute_sql(function_ddl())
        t_env.execute_sql(self.source_ddl(fields))
        t_env.execute_sql(self.events_view_sql(fields))
        inserts = []
        for job in self.jobs:
            t_env.execute_sql(self.sink_ddl(job.schema))
            query = job.build(t_env, EVENTS_VIEW, self.settings)
            if not isinstance(query, str):
                t_env.create_temporary_view(f"{job.name}_result", query)
                query = f"SELECT * FROM {job.name}_result"
            inserts.append(self.insert_sql(job, query))
        return inserts

    def run(self, t_env: Any) -> Any:
        """Submit every job as ONE Flink job (statement set); return the TableResult."""
        for key, value in self.table_config().items():
            t_env.get_config().set(key, value)
        statement_set = t_env.create_statement_set()
        for insert in self.statements(t_env):
            statement_set.add_insert_sql(insert)
        return statement_set.execute()
