"""The storage query API on real chDB: schemathesis over every operation, then hand-picked nasty inputs
for POST /v1/sql and GET /v1/jobs/{job}/windows. Never a 5xx; every 4xx names the parameter."""

from __future__ import annotations

import pytest

from tests.fuzz.conftest import READ_KEY, run_schemathesis, server_errors

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]


def test_every_operation_conforms(storage, tmp_path):
    done, entries = run_schemathesis("storage", storage.url, {"X-Read-Key": READ_KEY}, tmp_path)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:] + storage.log_tail()
    assert not server_errors(entries)
    assert storage.healthy()


def refused(r, status: int, loc: list[str]) -> None:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/json"
    problem = r.json()["detail"][0]
    assert problem["loc"] == loc and problem["msg"], problem


def raw_sql(storage, body: bytes, content_type: str = "application/json"):
    return storage.client.post("/v1/sql", content=body, headers={"Content-Type": content_type})


SQL_NASTY = [
    (
        "parentheses nested 10,000 levels",
        b'{"sql": "SELECT ' + b"(" * 10_000 + b"1" + b")" * 10_000 + b'"}',
        400,
        ["body", "sql"],
    ),
    ("lone surrogate in sql", rb'{"sql": "SELECT \ud800"}', 400, ["body", "sql"]),
    (
        "lone surrogate in a param",
        rb'{"sql": "SELECT {s:String} AS s", "params": {"s": "\udfff"}}',
        400,
        ["body", "params.s"],
    ),
    ("NaN param", b'{"sql": "SELECT {x:Float64} AS x", "params": {"x": NaN}}', 400, ["body", "params.x"]),
    ("1e400 param", b'{"sql": "SELECT {x:Float64} AS x", "params": {"x": 1e400}}', 400, ["body", "params.x"]),
    (
        "2**70 into Int64",
        b'{"sql": "SELECT {x:Int64} AS x", "params": {"x": %d}}' % 2**70,
        400,
        ["body", "params.x"],
    ),
    ("array param", b'{"sql": "SELECT {x:Int64} AS x", "params": {"x": [1]}}', 400, ["body", "params.x"]),
    (
        "param name that is not an identifier",
        b'{"sql": "SELECT 1", "params": {"a b": 1}}',
        400,
        ["body", "params.a b"],
    ),
    ("raw NUL byte in the body", b'{"sql": "SELECT 1\x00"}', 422, ["body", 17]),
    ("escaped NUL in sql", b'{"sql": "SELECT 1\\u0000"}', 400, ["body", "sql"]),
    ("invalid UTF-8 body", b'{"sql": "SELECT \xff\xfe"}', 400, ["body"]),
    ("empty body", b"", 422, ["body"]),
    ("array body", b"[]", 422, ["body"]),
    ("params as an array", b'{"sql": "SELECT 1", "params": []}', 422, ["body", "params"]),
    ("sql as a number", b'{"sql": 1}', 422, ["body", "sql"]),
    ("empty sql", b'{"sql": "   ;  "}', 400, ["body", "sql"]),
    (
        "write behind a duplicate key",
        b'{"sql": "SELECT 1", "sql": "DROP TABLE event_metrics"}',
        400,
        ["body", "sql"],
    ),
]


@pytest.mark.parametrize("body, status, loc", [c[1:] for c in SQL_NASTY], ids=[c[0] for c in SQL_NASTY])
def test_nasty_sql_bodies_are_refused_naming_the_field(storage, body, status, loc):
    refused(raw_sql(storage, body), status, loc)
    assert storage.healthy()


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=b", ""])
def test_wrong_content_types_are_refused(storage, content_type):
    refused(raw_sql(storage, b'{"sql": "SELECT 1"}', content_type), 422, ["body"])


RESULTS = [
    ("SELECT nan AS a, inf AS b, -inf AS c", {"a": None, "b": None, "c": None}),
    ("SELECT unhex('FF') AS bytes", {"bytes": "\ufffd"}),
    ("SELECT toInt128('170141183460469231731687303715884105727') AS i", {"i": 2**127 - 1}),
    ("SELECT '\u0000' AS nul", {"nul": "\u0000"}),
    ("SELECT [1, 2] AS a, map('k', 1) AS m, tuple(1, 'x') AS t", None),
    ("SELECT repeat('x', 1000000) AS big", None),
]


@pytest.mark.parametrize("statement, row", RESULTS, ids=[r[0] for r in RESULTS])
def test_awkward_results_are_valid_json(storage, statement, row):
    r = storage.client.post("/v1/sql", json={"sql": statement})
    assert r.status_code == 200, r.text[:500]
    if row is not None:
        assert r.json()["rows"] == [row]


METRICS_NASTY = [
    ("from 2**70", {"from": str(2**70), "to": str(2**70 + 1)}, 400, ["query", "from"]),
    ("to 5000 digits", {"from": "0", "to": "9" * 5000}, 400, ["query", "to"]),
    ("from int64 min, to int64 max", {"from": str(-(2**63)), "to": str(2**63 - 1)}, 200, None),
    ("from 1e400", {"from": "1e400", "to": "1"}, 400, ["query", "from"]),
    ("from NUL", {"from": "\x00", "to": "1"}, 400, ["query", "from"]),
    ("to before from", {"from": "10", "to": "5"}, 400, ["query", "to"]),
    ("year 1 with an offset", {"from": "0001-01-01T00:00:00+14:00", "to": "1"}, 200, None),
    ("year 9999", {"from": "0", "to": "9999-12-31T23:59:59.999999-14:00"}, 200, None),
    ("limit 2**70", {"from": "0", "to": "1", "limit": str(2**70)}, 400, ["query", "limit"]),
    ("limit -1", {"from": "0", "to": "1", "limit": "-1"}, 422, ["query", "limit"]),
    ("limit NaN", {"from": "0", "to": "1", "limit": "NaN"}, 422, ["query", "limit"]),
    ("unknown filter", {"from": "0", "to": "1", "nope": "x"}, 400, ["query", "nope"]),
    (
        "filter with NUL and invalid UTF-8",
        {"from": "0", "to": "1", "event_type": "\x00\udcff".encode("utf-8", "surrogateescape")},
        200,
        None,
    ),
]


@pytest.mark.parametrize(
    "params, status, loc", [c[1:] for c in METRICS_NASTY], ids=[c[0] for c in METRICS_NASTY]
)
def test_nasty_metric_queries(storage, params, status, loc):
    r = storage.client.get("/v1/jobs/event_metrics/windows", params=params)
    if loc is None:
        assert r.status_code == status, r.text[:500]
    else:
        refused(r, status, loc)
    assert storage.healthy()


@pytest.mark.parametrize(
    "path", ["/v1/jobs/%FF/windows", "/v1/jobs/%00/windows", "/v1/jobs/%ED%A0%80/windows"]
)
def test_nasty_job_names_are_404(storage, path):
    refused(storage.client.get(path, params={"from": "0", "to": "1"}), 404, ["path", "job"])


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Read-Key": "wrong"},
        {"X-Read-Key": ""},
        {"X-Read-Key": "\xe9t\xe9".encode("latin-1")},
        {"X-Read-Key": "", "Authorization": "Bearer " + READ_KEY + "x"},
    ],
)
def test_wrong_keys_are_401(storage, headers):
    refused(
        storage.client.post("/v1/sql", json={"sql": "SELECT 1"}, headers=headers),
        401,
        ["header", "X-Read-Key"],
    )
