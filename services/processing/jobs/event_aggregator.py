from typing import Any

from services.processing.job import BaseJob, epoch_ms, interval
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings


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

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        window = settings.processing.window_seconds
        return f"""
            SELECT {epoch_ms("w_start")} AS window_start, {epoch_ms("w_end")} AS window_end,
                   event_type, device_category, events, unique_users
            FROM (
                SELECT window_start AS w_start, window_end AS w_end, event_type, device_category,
                       COUNT(*) AS events, COUNT(DISTINCT user_id) AS unique_users
                FROM TABLE(TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time), {interval(window)}))
                GROUP BY window_start, window_end, event_type, device_category
            )
        """
