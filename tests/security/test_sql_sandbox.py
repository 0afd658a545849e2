"""The storage SQL API is a sandbox: no file read or written, no table created, no setting changed, no 5xx.

Against the real storage service (real Kafka and chDB). The escape corpus is generated from functions and
table functions that reach files, network, processes, settings or the server, wrapped in comment, quote,
Unicode and nesting tricks, plus hand-written statements; a canary file's secret must never come back.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import chdb
import httpx
import psutil
import pytest

from tests.storage.conftest import (
    api,  # noqa: F401  (a fixture, used by name)
    event_metric,
    produce_metrics,
    sql,
    storage_service,  # noqa: F401  (a fixture, used by name)
    unique,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]
SECRET = f"canary-{uuid.uuid4().hex}"
BASE_MS = 1_767_312_000_000

SCALAR_FUNCTIONS = [
    "file",
    "getSetting",
    "getSettingOrDefault",
    "getServerSetting",
    "getMergeTreeSetting",
    "getMacro",
    "hostName",
    "FQDN",
    "currentUser",
    "currentDatabase",
    "version",
    "uptime",
    "serverUUID",
    "filesystemAvailable",
    "filesystemCapacity",
    "dictGet",
    "dictGetOrDefault",
    "dictHas",
    "joinGet",
    "hasColumnInTable",
    "sleep",
    "sleepEachRow",
    "addressToLine",
    "addressToSymbol",
    "demangle",
    "logTrace",
    "getOSKernelVersion",
    "getClientHTTPHeader",
    "currentQueryID",
    "initialQueryID",
    "buildId",
    "tcpPort",
    "getServerPort",
    "showCertificate",
    "parseQueryToJSON",
    "transactionID",
    "aiGenerate",
    "structureToProtobufSchema",
    "currentProfiles",
    "enabledRoles",
    "errorCodeToName",
    "globalVariable",
]
TABLE_FUNCTION_CALLS = [
    "file({path}, 'LineAsString')",
    "url('http://127.0.0.1:1/', 'LineAsString')",
    "urlCluster('default', 'http://127.0.0.1:1/')",
    "s3('http://127.0.0.1:1/b/k')",
    "hdfs('hdfs://127.0.0.1:1/x', 'TSV')",
    "remote('127.0.0.1', system.one)",
    "remoteSecure('127.0.0.1', system.one)",
    "cluster('default', system.one)",
    "clusterAllReplicas('default', system.one)",
    "mysql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "postgresql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "sqlite({path}, 't')",
    "odbc('DSN=x', 't')",
    "jdbc('jdbc:x', 't')",
    "mongodb('127.0.0.1:1', 'd', 'c', 'u', 'p', 'x String')",
    "redis('127.0.0.1:1', 'k', 'k String')",
    "executable('cat', 'TSV', 'x String')",
    "python('print(1)')",
    "input('x String')",
    "view(SELECT 1)",
    "viewIfPermitted(SELECT 1 ELSE null('x Int8'))",
    "merge('system', '.*')",
    "dictionary('d')",
    "format(TSV, 'x')",
    "generateRandom('x String')",
    "fuzzJSON('{{}}')",
    "null('x Int8')",
    "filesystem('/')",
    "azureBlobStorage('http://127.0.0.1:1', 'c', 'b')",
    "gcs('http://127.0.0.1:1/b/k')",
    "iceberg('http://127.0.0.1:1/t')",
    "deltaLake('http://127.0.0.1:1/t')",
    "hudi('http://127.0.0.1:1/t')",
    "loop(numbers(1))",
    "mergeTreeIndex(currentDatabase(), event_metrics)",
    "primes(10)",
    "fileCluster('default', {path})",
    "arrowstream({path})",
    "system.one",
    "system.processes",
    "system.settings",
    "system.users",
    "system.tables",
    "INFORMATION_SCHEMA.TABLES",
    "information_schema.columns",
    "`default`.nothing",
    "schema_migrations",
    "rtap.schema_migrations",
    "one",
]
SCALAR_TEMPLATES = [
    "SELECT {f}({a})",
    "SELECT upper(toString({f}({a}))) AS x",
    "SELECT 1 AS a /* /* */* */ , {f}({a}) AS b -- */",
    "WITH {f}({a}) AS x SELECT x",
    "SELECT arrayMap(p -> {f}(p), [{a}])",
    "SELECT * FROM (SELECT {f}({a}) AS x)",
    "SELECT count() FROM event_metrics WHERE event_type IN (SELECT toString({f}({a})))",
    "SELECT `{f}`({a})",
    "SELECT '1' UNION ALL SELECT toString({f}({a}))",
]
TABLE_TEMPLATES = [
    "SELECT * FROM {t}",
    "SELECT count() FROM event_metrics AS e JOIN {t} AS x ON 1 = 1",
    "SELECT (SELECT count() FROM {t})",
    "WITH c AS (SELECT * FROM {t}) SELECT * FROM c",
    "SELECT 1 WHERE 1 IN (SELECT 1 FROM {t})",
]


def hand_written(path: str, out: str) -> list[str]:
    return [
        f"SELECT 'x' AS a /* /* */* */ INTO OUTFILE {out} FORMAT TSVRaw -- */",
        f"SELECT 1 INTO OUTFILE {out}",
        f"SELECT 1 INTO OUTFILE {out} APPEND",
        f"SELECT 1 INTO OUTFILE {out} TRUNCATE",
        f"SELECT 1 INTO OUTFILE {out} AND STDOUT",
        f"SELECT 1 INTO OUTFILE {out} COMPRESSION 'gzip'",
        f"SELECT $$x$$ AS a INTO OUTFILE {out}",
        f"SELECT 1 UNION ALL SELECT 2 INTO OUTFILE {out}",
        f"INSERT INTO FUNCTION file({out}, 'TSV') SELECT 1",
        "SELECT 1 /* /* */* */ ; CREATE TABLE evil (a Int8) ENGINE=Memory ; SELECT 2 -- */",
        "SELECT 1; CREATE TABLE evil (a Int8) ENGINE = Memory",
        "SELECT ';'; CREATE TABLE evil (a Int8) ENGINE = Memory",
        "SELECT 1\u2028; CREATE TABLE evil (a Int8) ENGINE = Memory",
        "CREATE TABLE evil (a Int8) ENGINE = Memory",
        "CREATE TABLE evil ENGINE = Memory AS SELECT 1",
        "CREATE VIEW evil AS SELECT 1",
        "CREATE DATABASE evil",
        "CREATE FUNCTION evil AS x -> x",
        "CREATE DICTIONARY evil (a UInt64) PRIMARY KEY a SOURCE(NULL()) LAYOUT(FLAT()) LIFETIME(0)",
        "CREATE USER evil",
        "GRANT ALL ON *.* TO default",
        "ALTER TABLE event_metrics DELETE WHERE 1",
        "INSERT INTO event_metrics (event_type) VALUES ('x')",
        "DROP TABLE event_metrics",
        "TRUNCATE TABLE event_metrics",
        "RENAME TABLE event_metrics TO evil",
        "DETACH TABLE event_metrics",
        "ATTACH TABLE evil",
        "OPTIMIZE TABLE event_metrics FINAL",
        "SYSTEM DROP MARK CACHE",
        "SYSTEM SHUTDOWN",
        "KILL QUERY WHERE 1",
        f"BACKUP TABLE event_metrics TO File({out})",
        "SET readonly = 0",
        "SET max_memory_usage = 0",
        "USE system",
        "SHOW TABLES FROM system",
        "SHOW GRANTS",
        "SHOW CREATE TABLE event_metrics",
        "DESCRIBE TABLE system.users",
        "EXISTS TABLE system.users",
        "CHECK TABLE event_metrics",
        "EXPLAIN SELECT 1",
        "EXPLAIN AST SELECT file('/etc/passwd')",
        "SELECT 1 SETTINGS readonly = 0",
        "SELECT 1 SETTINGS max_memory_usage = 0",
        "SELECT * FROM (SELECT 1 SETTINGS readonly = 0)",
        "WITH c AS (SELECT 1 SETTINGS max_result_rows = 0) SELECT * FROM c",
        "SELECT 1 UNION ALL SELECT 2 SETTINGS readonly = 0",
        "SELECT 1 FORMAT JSON",
        "SELECT 1 FORMAT TSVRaw SETTINGS readonly = 0",
        "SELECT 1 SETTINGS readonly = 0 FORMAT JSON",
        "SELECT * FROM event_metrics SETTINGS max_execution_time = 0",
        f"SELECT ｆｉｌｅ({path})",
        f"SELECT fi\u200ble({path})",
        f"SELECT fil\u0435({path})",
        f"SELECT \u202efile({path})",
        f"SELECT file\u00a0({path})",
        f"SELECT FILE({path})",
        f"SELECT File({path})",
        f'SELECT "file"({path})',
        f"SELECT $$x$$, file({path})",
        f"SELECT $t$ ; $t$, file({path})",
        f"SELECT '\\'' || file({path})",
        f"SELECT 'a\\\\' , file({path}) -- '",
        f"SELECT 1 -- \\\n, file({path})",
        f"SELECT /* ' */ file({path}) /* ' */",
        f"SELECT 1 /*/ */ , file({path})",
        f"SELECT arrayFold((acc, p) -> concat(acc, file(p)), [{path}], '')",
        f"SELECT * APPLY(file) FROM (SELECT {path} AS p)",
        f"SELECT * FROM event_metrics ORDER BY 1 WITH FILL INTERPOLATE (events AS file({path}))",
        "SELECT 1 IN system.one",
        "SELECT 1 GLOBAL IN system.one",
        "SELECT 1 NOT IN system.tables",
        "SELECT system.one.dummy",
        "SELECT * FROM system.one",
        "SELECT * FROM `system`.`one`",
        "SELECT * FROM `system.one`",
        "WITH `system.one` AS (SELECT 1 AS a) SELECT * FROM `system.one`",
        "SELECT * FROM event_metrics AS e, system.one AS o",
        "SELECT 0 IN one",
        "SELECT 1 IN schema_migrations",
        "WITH schema_migrations AS (SELECT 1) SELECT * FROM schema_migrations",
        "SELECT * FROM (WITH x AS (SELECT 1) SELECT 1) AS a, schema_migrations",
        "SELECT * FROM (WITH schema_migrations AS (SELECT 1) SELECT 1) AS a, schema_migrations",
        "SELECT currentUser AS u",
        "SELECT user",
        "SELECT DATABASE",
        "SELECT current_user",
        "SELECT currentRequestURL",
        "SELECT chdb()",
        "SELECT serverTimezone()",
        "SELECT version()",
        "SELECT sum(editDistance(repeat('a', 65536), repeat(toString(number), 65536))) FROM numbers(12)",
        "SELECT levenshteinDistance('a', 'b')",
        "SELECT multiMatchAny('a', ['a'])",
        "SELECT 1 SETTINGS max_memory_usage = 536870912",
        "SELECT 1 SETTINGS max_memory_usage = 536870913",
    ]


def corpus(path: str, out: str) -> list[str]:
    scalar = [
        template.format(f=f, a=path if f == "file" else "'readonly'")
        for f in SCALAR_FUNCTIONS
        for template in SCALAR_TEMPLATES
    ]
    scalar += [f"SELECT {f.upper()}({path})" for f in SCALAR_FUNCTIONS]
    tables = [
        template.format(t=call.format(path=path))
        for call in TABLE_FUNCTION_CALLS
        for template in TABLE_TEMPLATES
    ]
    return scalar + tables + hand_written(path, out)


@pytest.fixture(scope="module")
def canary(tmp_path_factory) -> tuple[str, Path]:
    directory = tmp_path_factory.mktemp("canary")
    (directory / "secret.txt").write_text(SECRET + "\n")
    return f"'{directory / 'secret.txt'}'", directory / "written.txt"


def metadata_files(storage_service) -> set[Path]:  # noqa: F811
    """Every table and database definition chDB keeps on disk: a created table or database adds one."""
    return set((storage_service.settings.state_path / "clickhouse" / "metadata").rglob("*.sql"))


def test_the_escape_corpus_escapes_nothing(storage_service, api, canary):  # noqa: F811
    path, written = canary
    statements = corpus(path, f"'{written}'")
    assert len(statements) >= 200
    before = metadata_files(storage_service)
    answers = {statement: sql(api, statement) for statement in statements}
    server_errors = {s: r.text[:200] for s, r in answers.items() if r.status_code >= 500}
    leaks = [s for s, r in answers.items() if SECRET in r.text]
    accepted = {s: r.text[:200] for s, r in answers.items() if r.status_code == 200}
    assert not server_errors, server_errors
    assert not leaks, leaks
    assert not accepted, accepted
    assert not written.exists(), "INTO OUTFILE wrote a file"
    assert metadata_files(storage_service) == before, "a table or database was created"
    limit = storage_service.settings.storage.sql_max_rows
    still_limited = sql(api, "SELECT number FROM numbers({n:UInt64})", n=limit + 1)
    assert still_limited.status_code == 400 and "max rows" in still_limited.text.lower(), still_limited.text


@pytest.mark.parametrize(
    "statement, refusal",
    [
        ("SELECT substring(file({path}), 1, 60) AS f", "function 'file'"),
        ("SELECT length(file('/proc/self/environ')) AS n", "function 'file'"),
        ("SELECT 1 AS a /* /* */* */ , getSetting('readonly') AS b -- */", "function 'getSetting'"),
        ("SELECT * FROM {{t:Identifier}}", "table 'system.tables'"),
        ("SELECT * FROM schema_migrations", "table 'schema_migrations'"),
        ("SELECT currentUser AS u", "'currentUser' names the function"),
        ("SELECT 1 SETTINGS max_memory_usage = 536870913", "SETTINGS is not allowed"),
    ],
)
def test_issue_statements_are_refused_by_name(api, canary, statement, refusal):  # noqa: F811
    path, _ = canary
    response = sql(api, statement.format(path=path), t="system.tables")
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "sql"]
    assert refusal in response.json()["detail"][0]["msg"]
    assert SECRET not in response.text


def test_the_checked_statement_is_the_one_that_runs(api):  # noqa: F811
    """sqlglot ended this comment early; ClickHouse reads two columns. The answer is ClickHouse's reading."""
    response = sql(api, "SELECT 1 AS a /* /* */* */ , 2 AS b -- */")
    assert response.status_code == 200, response.text
    assert response.json()["columns"] == ["a", "b"]


ANALYST_QUERIES = [
    "SELECT event_type, sum(events) AS events FROM event_metrics FINAL "
    "WHERE window_start >= now() - INTERVAL 1 DAY GROUP BY event_type",
    "WITH t AS (SELECT event_type, max(unique_users) AS u FROM rtap.event_metrics GROUP BY event_type) "
    "SELECT * FROM t ORDER BY u DESC LIMIT 5",
    "SELECT device_category, quantilesIf(0.5, 0.95)(events, events > 0) AS q, countIf(events > 1) AS c "
    "FROM event_metrics GROUP BY device_category",
    "SELECT toStartOfHour(window_start) AS h, uniqExactMerge(s) "
    "FROM (SELECT window_start, uniqExactState(event_type) AS s FROM event_metrics GROUP BY window_start) "
    "GROUP BY h",
    "SELECT event_type, row_number() OVER (PARTITION BY device_category ORDER BY events DESC) AS r "
    "FROM event_metrics LIMIT 10",
    "SELECT arrayMap(x -> x * 2, [1, 2, 3]) AS a, JSONExtractString('{\"k\": \"v\"}', 'k') AS j, "
    "domain('https://a.example/p') AS d",
    "SELECT count() FROM analytics_events WHERE event_type IN ('page_view', 'purchase') "
    "AND toDate(`timestamp`) = today() AND properties['sku'] != ''",
    "SELECT number AS n FROM numbers(3) ORDER BY n WITH FILL FROM 0 TO 5",
    "SELECT * EXCEPT (unique_users) FROM event_metrics FINAL LIMIT 1",
    "SELECT COUNT(*) AS c, SUM(events) AS s, Max(events) AS m FROM event_metrics",
]


@pytest.mark.parametrize("statement", ANALYST_QUERIES)
def test_what_analysts_need_is_allowed(api, statement):  # noqa: F811
    response = sql(api, statement)
    assert response.status_code == 200, response.text


def test_every_allowed_function_exists_in_the_engine():
    """A stale name in the allowlist would be harmless, but means the list was not made from this engine."""
    from services.storage.sandbox import TABLE_FUNCTIONS, Allowlist

    engine = chdb.connect(":memory:")
    try:
        known = set(engine.query("SELECT name FROM system.functions", "TSVRaw").bytes().decode().split("\n"))
    finally:
        engine.close()
    assert Allowlist.from_file().functions - known == set()
    assert {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "generate_series",
        "generateSeries",
        "values",
    } >= TABLE_FUNCTIONS


def test_body_over_the_limit_is_413_before_parsing(storage_service, api):  # noqa: F811
    limit = storage_service.settings.storage.max_body_bytes
    response = api.post(
        "/v1/sql", content=b'{"sql": "' + b"x" * limit + b'"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


def test_read_key_is_checked_before_the_body_is_parsed(storage_service):  # noqa: F811
    response = httpx.post(
        f"{storage_service.url()}/v1/sql", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 401, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "X-Read-Key"]


def test_a_memory_hungry_query_is_refused_and_the_process_stays_small(storage_service, api):  # noqa: F811
    process = psutil.Process(storage_service.pid())
    response = sql(api, "SELECT length(arrayMap(x -> repeat('x', 1000000), range(3000))) AS n")
    assert response.status_code == 400, response.text
    assert "memory limit" in response.text.lower()
    assert (
        process.is_running() and httpx.get(f"{storage_service.url()}/healthz", timeout=5).status_code == 200
    )
    assert process.memory_info().rss < 2 * storage_service.settings.storage.sql_max_memory_bytes + 1024**3


SLOW = (
    "SELECT count() AS n FROM numbers(20000000) ARRAY JOIN range(10) AS k "
    "WHERE sipHash64(number, k, {salt:String}) % 7 = 3"
)


def test_a_long_query_does_not_hold_up_the_consumer_writes(kafka, storage_service, api):  # noqa: F811
    event_type = unique("sandbox-write")
    slow: dict = {}
    reader = threading.Thread(
        target=lambda: slow.update(r=sql(api, SLOW, salt=event_type), done=time.monotonic())
    )
    reader.start()
    time.sleep(0.5)
    produce_metrics(kafka, "event_metrics", [event_metric(BASE_MS, event_type, "desktop", 7, 1)])
    stored = wait_for(
        lambda: (
            api.get(
                "/v1/jobs/event_metrics/windows",
                params={"from": BASE_MS, "to": BASE_MS + 10_000, "event_type": event_type},
            )
            .json()
            .get("rows")
        ),
        60,
        0.1,
    )
    seen = time.monotonic()
    reader.join()
    assert stored[0]["events"] == 7
    assert slow["r"].status_code in (200, 400), slow["r"].text
    assert seen < slow["done"], "the write became visible only after the long query ended"


def test_queries_beyond_the_concurrency_cap_get_503(storage_service, api):  # noqa: F811
    cap = storage_service.settings.storage.sql_max_concurrent
    answers: list[httpx.Response] = []
    threads = [
        threading.Thread(target=lambda i=i: answers.append(sql(api, SLOW, salt=str(i))))
        for i in range(cap + 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    busy = [a for a in answers if a.status_code == 503]
    assert busy and all(a.headers.get("Retry-After") for a in busy), [a.status_code for a in answers]
    [problem] = busy[0].json()["detail"]
    assert (problem["loc"], problem["type"]) == (["clickhouse"], "over_capacity")
    assert "sql_max_concurrent" in problem["msg"]
    assert all(a.status_code in (200, 400, 503) for a in answers)


def test_the_compose_reader_profile_holds_the_same_limits_as_constraints():
    """With a ClickHouse server, the storage API's read-only user has the limits chDB's reader
    connection has."""
    import xml.etree.ElementTree as ElementTree

    from services.storage.backends import reader_limits
    from shared.settings import Settings

    users = (
        Path(__file__).resolve().parents[2]
        / "infrastructure"
        / "compose"
        / "clickhouse"
        / "users.d"
        / "rtap-reader.xml"
    )
    profile = ElementTree.parse(users).getroot().find("profiles/rtap_reader")
    server_side = {
        k: v for k, v in reader_limits(Settings()).items() if k != "output_format_json_validate_utf8"
    }
    assert {child.tag: child.text for child in profile if child.tag != "constraints"} == {
        k: str(v) for k, v in server_side.items()
    }
    assert {c.tag for c in profile.find("constraints") if c.find("const") is not None} == set(server_side)


def test_refusals_do_not_map_the_server(api):  # noqa: F811
    """ClickHouse's spelling hints would name system tables, and its version follows every error."""
    response = sql(api, "SELECT * FROM users")
    assert response.status_code == 400, response.text
    assert (
        "system.users" not in response.text
        and "(version" not in response.text
        and "formatQuery" not in response.text
    )


@pytest.mark.parametrize(
    "statement", ["SELECT " + "[" * 255 + "1" + "]" * 255, "SELECT " + "tuple(" * 300 + "1" + ")" * 300]
)
def test_deeply_nested_results_are_a_4xx_or_sent(api, statement):  # noqa: F811
    response = sql(api, statement)
    assert response.status_code in (200, 400), response.text[:300]


def test_a_deeply_nested_body_is_a_422(api):  # noqa: F811
    body = b'{"sql": "SELECT 1", "params": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = api.post("/v1/sql", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text[:300]
