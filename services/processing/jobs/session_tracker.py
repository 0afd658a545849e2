from shared.metrics import Column, MetricSchema
from services.processing.job import BaseJob


class SessionTracker(BaseJob):
    schema = MetricSchema(
        name="session_metrics",
        description="Session windows per session id (gap RTAP_PROCESSING__SESSION_GAP_SECONDS).",
        columns=(
            Column("window_start", "timestamp_ms", "first event of the session, epoch ms"),
            Column("window_end", "timestamp_ms", "session window end (last event + gap), epoch ms"),
            Column("session_id", "string"),
            Column("user_id", "string"),
            Column("device_category", "string", "desktop | mobile | tablet | bot"),
            Column("duration_ms", "int64", "last event time minus first event time"),
            Column("page_views", "int64"),
            Column("events", "int64"),
            Column("products_viewed", "int64", "product_view events"),
            Column("cart_adds", "int64", "add_to_cart events"),
            Column("purchases", "int64", "purchase events"),
            Column("revenue", "float64", "sum of properties.revenue over purchase events"),
        ),
        key=("window_start", "session_id"),
    )
