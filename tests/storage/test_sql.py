"""Read-only SQL: injection attempts and write statements are refused and change nothing
(API and `rtap sql`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infrastructure.cli import app as cli
from tests.storage.conftest import READ_KEY, event_metric, produce_metrics, scalar, sql, unique, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]
BASE_MS = 1_767_312_000_000  # 2026-01-02
runner = CliRunner()

WRITES = [
    "INSERT INTO event_metrics (event_type) VALUES ('x')",
    "ALTER TABLE event_metrics DELETE WHERE 1",
    "DROP TABLE event_metrics",
    "TRUNCATE TABLE event_metrics",
    "SELECT 1; DROP TABLE event_metrics",
    "SELECT count() FROM event_metrics; DELETE FROM event_metrics WHERE 1",
    "OPTIMIZE TABLE event_metrics FINAL",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
    "SELECT 1 FORMAT TabSeparated",
    "CREATE TABLE evil (a Int8) ENGINE = Memory",
    "SYSTEM DROP MARK CACHE",
]


@pytest.fixture(scope="module")
def seeded(kafka, api) -> tuple[str, int]:
    event_type = unique("sql")
    produce_metrics(
        kafka,
        "event_metrics",
        [event_metric(BASE_MS + i * 10_000, event_type, "desktop", 3, 1) for i in range(4)],
    )
    count = "SELECT count() AS c FROM event_metrics FINAL WHERE event_type = {t:String}"
    wait_for(lambda: scalar(api, count, t=event_type) == 4)
    return event_type, scalar(api, "SELECT count() AS c FROM event_metrics")


def assert_unchanged(api, seeded) -> None:
    """The seeded rows are all there (system tables are outside the sandbox; tests/security checks the disk
    for new tables)."""
    event_type, total = seeded
    assert (
        scalar(
            api, "SELECT count() AS c FROM event_metrics FINAL WHERE event_type = {t:String}", t=event_type
        )
        == 4
    )
    assert scalar(api, "SELECT count() AS c FROM event_metrics") >= total


@pytest.mark.parametrize("statement", WRITES)
def test_write_statements_are_refused_by_the_api(api, seeded, statement):
    response = sql(api, statement)
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "sql"]
    assert_unchanged(api, seeded)


def test_table_functions_that_read_the_host_are_refused(api, seeded):
    """They parse as a SELECT; the sandbox allows no table function but numbers()."""
    response = sql(api, "SELECT * FROM file('/etc/passwd', 'LineAsString')")
    assert response.status_code == 400
    assert "table function 'file'" in response.text


def test_injection_in_a_bound_parameter_is_just_a_value(api, seeded):
    event_type, _ = seeded
    tricky = f"{event_type}' OR '1'='1"
    statement = "SELECT count() AS c FROM event_metrics FINAL WHERE event_type = {t:String}"
    assert scalar(api, statement, t=tricky) == 0
    assert sql(api, "SELECT {n:Int64} AS n", n="1; DROP TABLE event_metrics").status_code == 400
    response = api.get(
        "/v1/jobs/event_metrics/windows",
        params={"from": BASE_MS, "to": BASE_MS + 3600_000, "event_type": tricky},
    )
    assert response.status_code == 200 and response.json()["rows"] == []
    response = api.get(
        "/v1/jobs/event_metrics/windows",
        params={
            "from": BASE_MS,
            "to": BASE_MS + 3600_000,
            "event_type": f"{event_type}'; DROP TABLE event_metrics; --",
        },
    )
    assert response.status_code == 200 and response.json()["rows"] == []
    assert_unchanged(api, seeded)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT number FROM numbers(1000000)",
        # no FROM: ClickHouse did not count these rows, and answered 200 with all of them
        "SELECT arrayJoin(range(1000000))",
        "WITH 5 AS n SELECT arrayJoin(range(1000000)) + n",
    ],
)
def test_the_row_limit_applies(api, seeded, statement):
    response = sql(api, statement)
    assert response.status_code == 400 and "max rows" in response.text.lower(), response.text[:200]


def test_the_result_byte_limit_applies(api, seeded):
    """Two rows of 900,000 numbers: 12 MB of JSON, some 200 MB of Python objects in the storage process, which
    also runs the consumers. chDB does not apply ClickHouse's max_result_bytes: this answered 200, and so did
    110 MB of JSON."""
    response = sql(api, "SELECT range(900000) AS r FROM numbers(2)")
    assert response.status_code == 400, response.text[:200]
    assert "bytes as JSON, over the limit of 8,388,608" in response.json()["detail"][0]["msg"]


def test_sql_needs_the_read_key(storage_service):
    import httpx

    response = httpx.post(f"{storage_service.url()}/v1/sql", json={"sql": "SELECT 1"})
    assert response.status_code == 401 and response.json()["detail"][0]["loc"] == ["header", "X-Read-Key"]


def rtap_sql(*args: str):
    return runner.invoke(cli, ["sql", *args, "--key", READ_KEY])


def test_rtap_sql_prints_a_table(seeded):
    event_type, _ = seeded
    result = rtap_sql(
        "SELECT event_type, sum(events) AS total FROM event_metrics FINAL WHERE event_type = {t:String} "
        "GROUP BY event_type",
        "--param",
        f"t={event_type}",
    )
    assert result.exit_code == 0, result.output
    assert event_type in result.output and "12" in result.output and "1 row(s)" in result.output


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE event_metrics",
        "SELECT 1; DROP TABLE event_metrics",
        "INSERT INTO event_metrics (event_type) VALUES ('x')",
    ],
)
def test_rtap_sql_refuses_write_statements(api, seeded, statement):
    result = rtap_sql(statement)
    assert result.exit_code == 2
    assert "refused" in result.output
    assert_unchanged(api, seeded)


def test_rtap_sql_injection_in_a_param_changes_nothing(api, seeded):
    event_type, _ = seeded
    result = rtap_sql(
        "SELECT count() AS c FROM event_metrics FINAL WHERE event_type = {t:String}",
        "--param",
        f"t={event_type}' OR 1=1; DROP TABLE event_metrics; --",
    )
    assert result.exit_code == 0, result.output
    assert "│ 0 " in result.output
    assert_unchanged(api, seeded)


def test_rtap_sql_reports_a_refusal_from_the_server(seeded):
    result = rtap_sql("SELECT * FROM no_such_table")
    assert result.exit_code == 2 and "HTTP 400" in result.output
