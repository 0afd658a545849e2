from typing import Any

from services.processing.job import BaseJob, interval
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings


class SessionTracker(BaseJob):
    schema = MetricSchema(
        name="session_metrics",
        description=(
            "Session windows per session id (gap RTAP_PROCESSING__SESSION_GAP_SECONDS); bot events open no "
            "session unless RTAP_PROCESSING__SESSION_BOTS=include."
        ),
        columns=(
            Column("window_start", "timestamp_ms", "first event of the session, epoch ms"),
            Column("window_end", "timestamp_ms", "session window end (last event + gap), epoch ms"),
            Column("session_id", "string"),
            Column(
                "user_id",
                "string",
                "the identified user: the greatest user id of an event whose user id is not its "
                "anonymous id, else the greatest user id",
            ),
            Column("device_category", "string", "desktop | mobile | tablet | bot"),
            Column("duration_ms", "int64", "last event time minus first event time"),
            Column("page_views", "int64"),
            Column("events", "int64"),
            Column("products_viewed", "int64", "product_view events"),
            Column("cart_adds", "int64", "add_to_cart events"),
            Column("purchases", "int64", "purchase events"),
            Column("revenue", "float64", "sum of properties.revenue over purchase events"),
            Column("cart_items", "int64", "quantity added to the cart minus quantity removed"),
            Column("cart_value", "float64", "price x quantity added to the cart minus removed"),
        ),
        key=("window_start", "session_id"),
    )

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        gap_s = settings.processing.session_gap_seconds
        if settings.processing.session_bots == "exclude":
            events_view = without_bots(t_env, events_view)
        quantity = (
            "CASE event_type WHEN 'add_to_cart' THEN 1 WHEN 'remove_from_cart' THEN -1 END"
            " * COALESCE(TRY_CAST(properties['quantity'] AS BIGINT), 1)"
        )
        return f"""
            SELECT first_ms AS window_start, last_ms + {gap_s * 1000} AS window_end,
                   session_id, user_id, device_category, last_ms - first_ms AS duration_ms,
                   page_views, events, products_viewed, cart_adds, purchases, revenue,
                   COALESCE(cart_items, 0) AS cart_items, COALESCE(cart_value, 0.0) AS cart_value
            FROM (
                SELECT session_id, MIN(ts) AS first_ms, MAX(ts) AS last_ms,
                       COALESCE(
                           MAX(user_id) FILTER (WHERE anonymous_id IS NOT NULL AND user_id <> anonymous_id),
                           MAX(user_id)
                       ) AS user_id,
                       MAX(device_category) AS device_category,
                       COUNT(*) FILTER (WHERE event_type = 'page_view') AS page_views,
                       COUNT(*) AS events,
                       COUNT(*) FILTER (WHERE event_type = 'product_view') AS products_viewed,
                       COUNT(*) FILTER (WHERE event_type = 'add_to_cart') AS cart_adds,
                       COUNT(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                       COALESCE(
                           SUM(TRY_CAST(properties['revenue'] AS DOUBLE))
                               FILTER (WHERE event_type = 'purchase'),
                           0.0
                       ) AS revenue,
                       SUM({quantity}) AS cart_items,
                       SUM({quantity} * TRY_CAST(properties['price'] AS DOUBLE)) AS cart_value
                FROM TABLE(SESSION(
                    TABLE {events_view} PARTITION BY session_id, DESCRIPTOR(event_time), {interval(gap_s)}
                ))
                GROUP BY window_start, window_end, session_id
            )
        """


def without_bots(t_env: Any, events_view: str) -> str:
    """A view of the events without device_category = bot (a filter keeps the event-time attribute)."""
    view = f"{events_view}_without_bots"
    t_env.execute_sql(
        f"CREATE TEMPORARY VIEW IF NOT EXISTS {view} AS "
        f"SELECT * FROM {events_view} WHERE device_category <> 'bot'"
    )
    return view
