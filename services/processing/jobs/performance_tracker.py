from shared.metrics import Column, MetricSchema
from services.processing.job import BaseJob


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
