from shared.metrics import Column, MetricSchema
from services.processing.job import BaseJob


class EventAggregator(BaseJob):
    schema = MetricSchema(
        name="event_metrics",
        description="Tumbling windows per event type and device category.",
        columns=(
            Column("window_start", "timestamp_ms", "window start, epoch ms"),
            Column("window_end", "timestamp_ms", "window end (exclusive), epoch ms"),
            Column("event_type", "string"),
            Column("device_category", "string", "desktop | mobile | tablet | bot"),
            Column("events", "int64", "events in the window"),
            Column("unique_users", "int64", "distinct user ids in the window"),
        ),
        key=("window_start", "event_type", "device_category"),
    )
