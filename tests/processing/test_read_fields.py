"""The source declares only the raw event fields the jobs name (JobCoordinator.read_fields): Flink's Kafka
source decodes every column it declares. Pure SQL text, no Flink here; tests/processing/test_jobs.py runs the
built-in jobs on the narrowed source against real Kafka and Flink."""

from __future__ import annotations

from typing import Any

from services.processing.coordinator import VIEW_PATHS, JobCoordinator
from services.processing.job import BaseJob
from shared.events import EVENT
from shared.metric_schema import Column, MetricSchema
from shared.settings import Settings

COUNTS = MetricSchema(
    name="read_fields_counts",
    description="test job",
    columns=(
        Column("window_start", "timestamp_ms"),
        Column("window_end", "timestamp_ms"),
        Column("events", "int64"),
    ),
    key=("window_start",),
)


class NamesOsVersionInItsQuery(BaseJob):
    def build(self, t_env: Any, events_view: str, settings: Any) -> str:
        return f"SELECT 0 AS window_start, COUNT(DISTINCT os_version) AS events FROM {events_view}"


class NamesCountryInAHelperView(BaseJob):
    def build(self, t_env: Any, events_view: str, settings: Any) -> str:
        t_env.execute_sql(f"CREATE TEMPORARY VIEW us AS SELECT * FROM {events_view} WHERE country = 'US'")
        return "SELECT 0 AS window_start, COUNT(*) AS events FROM us"


class BuildsWithTheTableApi(BaseJob):
    def build(self, t_env: Any, events_view: str, settings: Any) -> Any:
        return t_env.from_path(events_view).select("*")


def coordinator(*jobs: type[BaseJob]) -> JobCoordinator:
    c = JobCoordinator(Settings())
    if jobs:
        for job in jobs:
            job.schema = COUNTS  # not through __init_subclass__: no registration
        c.jobs = [job() for job in jobs]
    return c


def paths(c: JobCoordinator) -> set[str]:
    return {f.path for f in c.read_fields()}


def test_the_built_in_jobs_source_leaves_out_the_fields_no_job_names():
    c = coordinator()
    read = paths(c)
    assert {"context.url", "properties", "enrichment.utm_campaign", "metrics.load_time"} <= read
    assert not read & {"context.ip_address", "enrichment.browser", "enrichment.country", "context.referrer"}
    source = c.source_ddl(c.read_fields())
    assert "`country`" not in source and "`url` STRING" in source
    view = c.events_view_sql(c.read_fields())
    assert "`referrer`" not in view and "`utm_campaign`" in view


def test_the_view_s_own_fields_are_read_whatever_the_jobs_name():
    read = paths(coordinator(NamesOsVersionInItsQuery))
    assert set(VIEW_PATHS) | {"device.user_agent", "device.screen_width", "enrichment.os_version"} <= read
    assert "context.url" not in read and "enrichment.os" not in read


def test_a_field_named_in_a_helper_view_the_job_creates_is_read():
    read = paths(coordinator(NamesCountryInAHelperView))
    assert "enrichment.country" in read and "enrichment.browser" not in read


def test_a_job_built_with_the_table_api_gets_every_field():
    assert coordinator(BuildsWithTheTableApi).read_fields() == EVENT.wire_fields
    assert coordinator(BuildsWithTheTableApi, NamesOsVersionInItsQuery).read_fields() == EVENT.wire_fields


def test_without_fields_the_source_and_view_keep_every_field():
    c = coordinator()
    assert c.source_ddl() == c.source_ddl(EVENT.wire_fields)
    assert c.events_view_sql() == c.events_view_sql(EVENT.wire_fields)
