from typing import Any

from services.processing.job import BaseJob, epoch_ms, interval
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings


class TopPages(BaseJob):
    schema = MetricSchema(
        name="top_pages",
        description=(
            "Per tumbling window, the RTAP_PROCESSING__TOP_PAGES pages with the most page views (ties: in "
            "text order). A page is the URL without its query string and fragment. Bots left out as in "
            "session_metrics (RTAP_PROCESSING__SESSION_BOTS)."
        ),
        columns=(
            Column("window_start", "timestamp_ms", "window start, epoch ms"),
            Column("window_end", "timestamp_ms", "window end (exclusive), epoch ms"),
            Column("place", "int64", "1 = most viewed"),
            Column("page", "string", "URL without ? and # parts"),
            Column("page_views", "int64", "page_view events"),
            Column("unique_users", "int64", "distinct user ids among the views"),
        ),
        key=("window_start", "place"),
    )

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        window = settings.processing.window_seconds
        page = "COALESCE(REGEXP_EXTRACT(url, '^[^?#]*', 0), '')"
        humans = "device_category <> 'bot'" if settings.processing.session_bots == "exclude" else "TRUE"
        return f"""
            SELECT {epoch_ms("window_start")} AS window_start, {epoch_ms("window_end")} AS window_end,
                   place, page, page_views, unique_users
            FROM (
                SELECT window_start, window_end, page, page_views, unique_users,
                       ROW_NUMBER() OVER (
                           PARTITION BY window_start, window_end ORDER BY page_views DESC, page ASC
                       ) AS place
                FROM (
                    SELECT window_start, window_end, {page} AS page,
                           COUNT(*) AS page_views, COUNT(DISTINCT user_id) AS unique_users
                    FROM TABLE(TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time), {interval(window)}))
                    WHERE event_type = 'page_view' AND {humans}
                    GROUP BY window_start, window_end, {page}
                )
            )
            WHERE place <= {settings.processing.top_pages}
        """
