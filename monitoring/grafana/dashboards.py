"""Generate the Grafana dashboards (grafanalib) into monitoring/grafana/dashboards/*.json.

    .venv/bin/python monitoring/grafana/dashboards.py

The JSON files are committed; tests/monitoring/test_dashboards.py checks they equal this output and
runs every panel's query (PromQL against Prometheus, SQL against the ClickHouse metric tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard, GridPos, Target, Time, TimeSeries

from services.processing.registry import builtin_schemas
from shared.metric_schema import MetricSchema

OUT = Path(__file__).parent / "dashboards"
PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "clickhouse"}
# Grafana's ClickHouse macro; tests replace it with a concrete time filter.
TIME_FILTER = "$__timeFilter(window_start)"


@attr.s
class SqlTarget:
    """A ClickHouse datasource query (grafanalib has no class for this plugin)."""

    rawSql = attr.ib()
    refId = attr.ib(default="A")

    def to_json_data(self):
        return {
            "datasource": CLICKHOUSE,
            "editorType": "sql",
            "format": 1,
            "queryType": "timeseries",
            "rawSql": self.rawSql,
            "refId": self.refId,
        }


def prom_panel(title: str, exprs: dict[str, str], pos: tuple[int, int], unit: str = "short") -> TimeSeries:
    targets = [
        Target(expr=expr, legendFormat=legend, refId=chr(65 + i), datasource=PROMETHEUS)
        for i, (legend, expr) in enumerate(exprs.items())
    ]
    return TimeSeries(
        title=title,
        dataSource=PROMETHEUS,
        targets=targets,
        unit=unit,
        gridPos=GridPos(h=8, w=12, x=pos[0], y=pos[1]),
    )


def sql_panel(title: str, sql: str, pos: tuple[int, int], unit: str = "short") -> TimeSeries:
    return TimeSeries(
        title=title,
        dataSource=CLICKHOUSE,
        targets=[SqlTarget(sql)],
        unit=unit,
        gridPos=GridPos(h=8, w=12, x=pos[0], y=pos[1]),
    )


def pipeline_health() -> Dashboard:
    panels = [
        prom_panel("Ingest rate (events/s)", {"accepted": "rtap:ingest_events:rate1m"}, (0, 0), "ops"),
        prom_panel(
            "Rejects by reason (events/s)", {"{{reason}}": "rtap:ingest_rejects:rate1m"}, (12, 0), "ops"
        ),
        prom_panel("Produce latency p99", {"p99": "rtap:produce_latency_seconds:p99"}, (0, 8), "s"),
        prom_panel(
            "Flink records in / out (records/s)",
            {"in": "rtap:flink_records_in:rate1m", "out": "rtap:flink_records_out:rate1m"},
            (12, 8),
            "ops",
        ),
        prom_panel("Flink watermark lag", {"lag": "rtap:flink_watermark_lag_seconds"}, (0, 16), "s"),
        prom_panel(
            "Checkpoint duration", {"{{job_name}}": "rtap:flink_checkpoint_duration_seconds"}, (12, 16), "s"
        ),
        prom_panel("Consumer lag (records)", {"{{job}}": "rtap:consumer_lag_records"}, (0, 24)),
        prom_panel("Rows written (rows/s)", {"{{job}}": "rtap:rows_written:rate1m"}, (12, 24), "ops"),
        prom_panel("Dead-letter records (5m)", {"{{job}}": "rtap:dead_letters:increase5m"}, (0, 32)),
        prom_panel(
            "Kafka messages in by topic (msg/s)",
            {"{{topic}}": "rtap:kafka_messages_in:rate1m"},
            (12, 32),
            "ops",
        ),
        prom_panel(
            "API requests by status (req/s)",
            {"{{job}} {{status}}": "rtap:http_requests:rate5m"},
            (0, 40),
            "reqps",
        ),
        prom_panel(
            "Redis memory used",
            {
                "used": "redis_memory_used_bytes",
                "maxmemory (writes refused at it)": "redis_memory_max_bytes > 0",
            },
            (12, 40),
            "bytes",
        ),
        prom_panel(
            "Redis commands (ops/s)", {"commands": "rate(redis_commands_processed_total[1m])"}, (0, 48), "ops"
        ),
        prom_panel(
            "Flink job running (processing supervisor)", {"running": "rtap_processing_job_running"}, (12, 48)
        ),
        prom_panel(
            "Event time: timestamps replaced, late records (per 5 min)",
            {
                "timestamps replaced by the receive time": "rtap:timestamps_adjusted:increase5m",
                "late records dropped by Flink": "rtap:late_records_dropped:increase5m",
            },
            (0, 56),
        ),
    ]
    return Dashboard(
        title="RTAP pipeline health",
        uid="rtap-pipeline-health",
        panels=panels,
        refresh="10s",
        time=Time("now-1h", "now"),
        tags=["rtap"],
    ).auto_panel_ids()


def product() -> Dashboard:
    ms = "window_start"
    panels = [
        sql_panel(
            "Events per type",
            f"SELECT {ms} AS time, event_type, sum(events) AS events "
            f"FROM event_metrics FINAL WHERE {TIME_FILTER} GROUP BY time, event_type ORDER BY time",
            (0, 0),
        ),
        sql_panel(
            "Unique users",
            f"SELECT {ms} AS time, max(unique_users) AS unique_users "
            f"FROM event_metrics FINAL WHERE {TIME_FILTER} GROUP BY time ORDER BY time",
            (12, 0),
        ),
        sql_panel(
            "Sessions started",
            f"SELECT toStartOfMinute({ms}) AS time, count() AS sessions "
            f"FROM session_metrics FINAL WHERE {TIME_FILTER} GROUP BY time ORDER BY time",
            (0, 8),
        ),
        sql_panel(
            "Conversion (sessions with a purchase)",
            f"SELECT toStartOfHour({ms}) AS time, countIf(purchases > 0) / count() AS conversion "
            f"FROM session_metrics FINAL WHERE {TIME_FILTER} GROUP BY time ORDER BY time",
            (12, 8),
            "percentunit",
        ),
        sql_panel(
            "Load time percentiles by device",
            f"SELECT {ms} AS time, device_category, max(load_time_p50) AS p50, max(load_time_p95) AS p95, "
            f"max(load_time_p99) AS p99 FROM performance_metrics FINAL WHERE {TIME_FILTER} "
            f"GROUP BY time, device_category ORDER BY time",
            (0, 16),
            "ms",
        ),
    ]
    return Dashboard(
        title="RTAP product",
        uid="rtap-product",
        panels=panels,
        refresh="30s",
        time=Time("now-6h", "now"),
        tags=["rtap"],
    ).auto_panel_ids()


def job_panel_sql(schema: MetricSchema) -> str:
    """Per window, each measure column (not a key) of the job over the window's groups: integers summed
    (sum_<column>) and other numbers averaged (avg_<column>)."""
    ws = schema.window_start
    measures = [c for c in schema.columns if c.type in ("int64", "float64") and c.name not in schema.key]
    how = {c.name: "sum" if c.type == "int64" else "avg" for c in measures}
    selected = ", ".join(f"{how[c]}({c}) AS {how[c]}_{c}" for c in how)
    time_filter = TIME_FILTER.replace("window_start", ws)
    return (
        f"SELECT {ws} AS time, {selected} FROM {schema.name} FINAL WHERE {time_filter} "
        f"GROUP BY time ORDER BY time"
    )


def jobs() -> Dashboard:
    """One panel per built-in job, derived from its metric schema: a new job file gets its panel here when
    this generator runs (tests/monitoring/test_dashboards.py fails until the JSON is regenerated)."""
    panels = [
        sql_panel(f"{schema.name}: {schema.description}", job_panel_sql(schema), (12 * (i % 2), 8 * (i // 2)))
        for i, schema in enumerate(builtin_schemas().values())
    ]
    return Dashboard(
        title="RTAP jobs",
        uid="rtap-jobs",
        panels=panels,
        refresh="30s",
        time=Time("now-6h", "now"),
        tags=["rtap"],
    ).auto_panel_ids()


DASHBOARDS = {"pipeline-health": pipeline_health, "product": product, "jobs": jobs}


def render(build) -> str:
    return json.dumps(build().to_json_data(), cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, build in DASHBOARDS.items():
        (OUT / f"{name}.json").write_text(render(build))


if __name__ == "__main__":
    main()
