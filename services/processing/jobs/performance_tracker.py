from typing import Any

from services.processing.job import BaseJob, epoch_ms, interval
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings


class PerformanceTracker(BaseJob):
    schema = MetricSchema(
        name="performance_metrics",
        description="Tumbling windows per device category: load and interaction time statistics (ms).",
        columns=(
            Column("window_start", "timestamp_ms", "window start, epoch ms"),
            Column("window_end", "timestamp_ms", "window end (exclusive), epoch ms"),
            Column("device_category", "string", "desktop | mobile | tablet | bot"),
            Column("events", "int64", "events in the window"),
            Column("load_time_count", "int64"),
            Column("load_time_avg", "float64"),
            Column("load_time_p50", "float64"),
            Column("load_time_p95", "float64"),
            Column("load_time_p99", "float64"),
            Column("interaction_time_count", "int64"),
            Column("interaction_time_avg", "float64"),
            Column("interaction_time_p50", "float64"),
            Column("interaction_time_p95", "float64"),
            Column("interaction_time_p99", "float64"),
        ),
        key=("window_start", "device_category"),
    )

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        window = settings.processing.window_seconds
        return f"""
            SELECT {epoch_ms("w_start")} AS window_start, {epoch_ms("w_end")} AS window_end,
                   device_category, events,
                   load_time_count, load_time_avg,
                   lp[1] AS load_time_p50, lp[2] AS load_time_p95, lp[3] AS load_time_p99,
                   interaction_time_count, interaction_time_avg,
                   ip[1] AS interaction_time_p50, ip[2] AS interaction_time_p95, ip[3] AS interaction_time_p99
            FROM (
                SELECT window_start AS w_start, window_end AS w_end, device_category,
                       COUNT(*) AS events,
                       COUNT(load_time) AS load_time_count, AVG(load_time) AS load_time_avg,
                       PERCENTILE(load_time, ARRAY[0.5, 0.95, 0.99]) AS lp,
                       COUNT(interaction_time) AS interaction_time_count,
                       AVG(interaction_time) AS interaction_time_avg,
                       PERCENTILE(interaction_time, ARRAY[0.5, 0.95, 0.99]) AS ip
                FROM TABLE(TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time), {interval(window)}))
                GROUP BY window_start, window_end, device_category
            )
        """
