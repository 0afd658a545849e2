"""An example job, complete in one file: page views per URL in tumbling windows.

docs/adding-a-job.md walks through this file; tests/processing/test_example_job.py runs it.
"""

from services.processing.job import BaseJob, epoch_ms, interval
from shared.metric_schema import Column, MetricSchema


class PageViewsByUrl(BaseJob):
    schema = MetricSchema(
        name="example_url_metrics",  # Kafka topic and ClickHouse table name
        description="Page views and distinct visitors per URL, tumbling windows.",
        columns=(
            Column("window_start", "timestamp_ms", "window start, epoch ms"),
            Column("window_end", "timestamp_ms", "window end (exclusive), epoch ms"),
            Column("url", "string"),
            Column("page_views", "int64"),
            Column("visitors", "int64", "distinct user ids"),
        ),
        key=("window_start", "url"),  # the record's identity: replays overwrite, never add
    )

    def build(self, t_env, events_view: str, settings) -> str:
        return f"""
            SELECT {epoch_ms("w_start")} AS window_start, {epoch_ms("w_end")} AS window_end,
                   url, page_views, visitors
            FROM (
                SELECT window_start AS w_start, window_end AS w_end, url,
                       COUNT(*) AS page_views, COUNT(DISTINCT user_id) AS visitors
                FROM TABLE(TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time),
                                  {interval(settings.processing.window_seconds)}))
                WHERE event_type = 'page_view'
                GROUP BY window_start, window_end, url
            )
        """
