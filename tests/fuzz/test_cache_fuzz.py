"""The cache API on real Redis: schemathesis over every operation but the SSE stream, then hand-picked
nasty inputs (the stream's included). Never a 5xx; every 4xx names the parameter."""

from __future__ import annotations

import pytest

from tests.fuzz.conftest import READ_KEY, run_schemathesis, server_errors

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_every_operation_but_the_stream_conforms(cache, tmp_path):
    done, entries = run_schemathesis("cache", cache.url, {"X-Read-Key": READ_KEY}, tmp_path)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-3000:]
    assert not server_errors(entries)
    assert cache.client.get("/healthz").status_code == 200


def refused(r, status: int, loc: list[str]) -> None:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/json"
    problem = r.json()["detail"][0]
    assert problem["loc"] == loc and problem["msg"], problem


def open_stream(cache, path: str, **kwargs):
    """The stream's answer; for a 200 also its first bytes (then the connection is closed)."""
    with cache.client.stream("GET", path, timeout=10, **kwargs) as r:
        first = next(r.iter_raw(), b"") if r.status_code == 200 else r.read()
        return r, first


STREAM_NASTY = [
    ("unknown job", "/v1/jobs/nope/stream", {}, {}, 404, ["path", "job"]),
    ("job with a NUL", "/v1/jobs/%00/stream", {}, {}, 404, ["path", "job"]),
    ("job with invalid UTF-8", "/v1/jobs/%FF%FE/stream", {}, {}, 404, ["path", "job"]),
    ("unknown filter", "/v1/jobs/event_metrics/stream", {"nope": "1"}, {}, 400, ["query", "nope"]),
    (
        "window parameter on a stream",
        "/v1/jobs/event_metrics/stream",
        {"from": "0"},
        {},
        400,
        ["query", "from"],
    ),
    ("no key", "/v1/jobs/event_metrics/stream", {}, {"X-Read-Key": ""}, 401, ["header", "X-Read-Key"]),
    (
        "wrong ?key=",
        "/v1/jobs/event_metrics/stream",
        {"key": "wrong"},
        {"X-Read-Key": ""},
        401,
        ["header", "X-Read-Key"],
    ),
    (
        "non-ASCII key",
        "/v1/jobs/event_metrics/stream",
        {},
        {"X-Read-Key": "\xe9".encode("latin-1")},
        401,
        ["header", "X-Read-Key"],
    ),
]


@pytest.mark.parametrize(
    "path, params, headers, status, loc", [c[1:] for c in STREAM_NASTY], ids=[c[0] for c in STREAM_NASTY]
)
def test_stream_refuses_bad_parameters_before_streaming(cache, path, params, headers, status, loc):
    r, body = open_stream(cache, path, params=params, headers=headers)
    assert r.status_code == status, body[:300]
    assert r.headers["content-type"] == "application/json"
    problem = r.json()["detail"][0]
    assert problem["loc"] == loc, problem


@pytest.mark.parametrize(
    "params", [{"key": READ_KEY}, {"device_category": "\x00\udcff".encode("utf-8", "surrogateescape")}]
)
def test_stream_with_good_parameters_opens(cache, params):
    r, first = open_stream(cache, "/v1/jobs/event_metrics/stream", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert first.startswith(b": subscribed")


WINDOWS_NASTY = [
    ("from 2**70", {"from": str(2**70), "to": str(2**71)}, 422, ["query", "from"]),
    ("to int64 max", {"from": "0", "to": str(2**63 - 1)}, 200, None),
    ("from 5000 digits", {"from": "9" * 5000}, 422, ["query", "from"]),
    ("from 1e400", {"from": "1e400"}, 422, ["query", "from"]),
    ("from NaN", {"from": "NaN"}, 422, ["query", "from"]),
    ("negative from", {"from": "-1"}, 422, ["query", "from"]),
    ("to equal to from", {"from": "5", "to": "5"}, 422, ["query", "to"]),
    ("limit 0", {"limit": "0"}, 422, ["query", "limit"]),
    ("limit 2**70", {"limit": str(2**70)}, 422, ["query", "limit"]),
    ("order in capitals", {"order": "ASC"}, 422, ["query", "order"]),
    (
        "filter value with NUL and invalid UTF-8",
        {"device_category": "\x00\udcff".encode("utf-8", "surrogateescape")},
        200,
        None,
    ),
    ("unknown filter", {"session_id": "x"}, 400, ["query", "session_id"]),
]


@pytest.mark.parametrize(
    "params, status, loc", [c[1:] for c in WINDOWS_NASTY], ids=[c[0] for c in WINDOWS_NASTY]
)
def test_nasty_window_queries(cache, params, status, loc):
    r = cache.client.get("/v1/jobs/event_metrics/windows", params=params)
    if loc is None:
        # other tests' windows share the metric topics, so a wide range may hold records: only bounds are
        # checked
        low, high = int(params.get("from", 0)), int(params.get("to", 2**63 - 1))
        assert r.status_code == status, r.text[:300]
        assert all(low <= w["window_start"] < high for w in r.json()["records"]), r.text[:300]
        if "device_category" in params:
            assert r.json()["records"] == [], r.text[:300]
    else:
        refused(r, status, loc)


@pytest.mark.parametrize("session_id", ["%00", "%FF", "%ED%A0%80", "x" * 10_000, "*", "[a-z]"])
def test_nasty_session_ids_are_404_naming_the_session(cache, session_id):
    refused(cache.client.get(f"/v1/sessions/{session_id}"), 404, ["path", "session_id"])
    r = cache.client.get(f"/v1/users/{session_id}/sessions")
    assert r.status_code == 200 and r.json()["sessions"] == [], r.text[:300]
    assert cache.client.get("/healthz").status_code == 200
