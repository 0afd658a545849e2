from typing import Any

from services.processing.job import BaseJob, epoch_ms, interval
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings

NONE, UNKNOWN = "(none)", "(unknown)"


class TrafficSources(BaseJob):
    schema = MetricSchema(
        name="traffic_sources",
        description=(
            "Tumbling windows per source, medium, campaign and referrer class: events, sessions, users "
            "(bots left out as in session_metrics, RTAP_PROCESSING__SESSION_BOTS)."
        ),
        columns=(
            Column("window_start", "timestamp_ms", "window start, epoch ms"),
            Column("window_end", "timestamp_ms", "window end (exclusive), epoch ms"),
            Column("source", "string", "utm_source, else the referrer's host, else (direct)"),
            Column("medium", "string", "utm_medium, else the referrer class"),
            Column("campaign", "string", f"utm_campaign, else {NONE}"),
            Column(
                "referrer_class",
                "string",
                f"direct | internal | search | social | email | paid | referral; {UNKNOWN} for events "
                "written before enrichment",
            ),
            Column("events", "int64"),
            Column("sessions", "int64", "distinct session ids"),
            Column("users", "int64", "distinct user ids"),
        ),
        key=("window_start", "source", "medium", "campaign", "referrer_class"),
    )

    def build(self, t_env: Any, events_view: str, settings: Settings) -> str:
        window = settings.processing.window_seconds
        referrer_class = f"COALESCE(referrer_class, '{UNKNOWN}')"
        source = "COALESCE(utm_source, referrer_host, '(direct)')"
        medium = f"COALESCE(utm_medium, {referrer_class})"
        campaign = f"COALESCE(utm_campaign, '{NONE}')"
        humans = "device_category <> 'bot'" if settings.processing.session_bots == "exclude" else "TRUE"
        return f"""
            SELECT {epoch_ms("w_start")} AS window_start, {epoch_ms("w_end")} AS window_end,
                   source, medium, campaign, referrer_class, events, sessions, users
            FROM (
                SELECT window_start AS w_start, window_end AS w_end,
                       {source} AS source, {medium} AS medium, {campaign} AS campaign,
                       {referrer_class} AS referrer_class,
                       COUNT(*) AS events, COUNT(DISTINCT session_id) AS sessions,
                       COUNT(DISTINCT user_id) AS users
                FROM TABLE(TUMBLE(TABLE {events_view}, DESCRIPTOR(event_time), {interval(window)}))
                WHERE {humans}
                GROUP BY window_start, window_end, {source}, {medium}, {campaign}, {referrer_class}
            )
        """
