"""The parts every HTTP API shares (shared/api_app.py, shared/api_errors.py, shared/api_keys.py), on a real
FastAPI app served in-process: the one error shape, CORS, and the one key parser."""

from __future__ import annotations

import base64

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from shared.api_app import service_app
from shared.api_errors import param_error
from shared.api_keys import READ_KEY, STREAM_READ_KEY, WRITE_KEY, KeyPlaces, presented_key, read_key_guard

ORIGIN = "https://shop.example"


def app_with_routes() -> FastAPI:
    app = service_app(FastAPI, "test", "shared parts", {"allow_origins": [ORIGIN], "allow_methods": ["GET"]})

    @app.get("/things/{name}")
    def thing(name: str) -> dict[str, str]:
        if name == "missing":
            raise param_error(404, "path", "name", f"no thing {name!r}")
        return {"name": name}

    @app.get("/guarded", dependencies=read_key_guard(["k1"]))
    def guarded() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(app_with_routes())


@pytest.mark.parametrize(
    "method, path, status, loc, kind",
    [
        ("GET", "/nowhere", 404, ["path"], "not_found"),
        ("POST", "/things/x", 405, ["path"], "method_not_allowed"),
        ("GET", "/things/missing", 404, ["path", "name"], "value_error"),
        ("GET", "/guarded", 401, ["header", "X-Read-Key"], "unauthorized"),
    ],
)
def test_every_refusal_has_the_one_error_shape(client, method, path, status, loc, kind):
    response = client.request(method, path)
    assert response.status_code == status, response.text
    [problem] = response.json()["detail"]
    assert (problem["loc"], problem["type"]) == (loc, kind) and problem["msg"], problem


def test_cors_is_answered_for_the_configured_origin_only(client):
    allowed = client.options("/things/x", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = client.options(
        "/things/x", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in other.headers


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.mark.parametrize(
    "places, headers, query, expected",
    [
        (WRITE_KEY, {"X-Write-Key": "h"}, "write_key=q", "h"),
        (WRITE_KEY, {"Authorization": "Bearer b"}, "write_key=q", "b"),
        (WRITE_KEY, {"Authorization": basic("s")}, "", "s"),
        (WRITE_KEY, {"Authorization": "Basic !!not-base64"}, "write_key=q", "q"),
        (WRITE_KEY, {}, "key=q", None),
        (READ_KEY, {"Authorization": basic("s")}, "", None),
        (READ_KEY, {"X-Read-Key": "h"}, "", "h"),
        (READ_KEY, {}, "key=q", None),
        (STREAM_READ_KEY, {}, "key=q", "q"),
    ],
)
def test_one_parser_reads_each_services_key_places(places: KeyPlaces, headers, query, expected):
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "query_string": query.encode(),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }
    assert presented_key(places, Request(scope)) == expected


def test_the_refusal_names_every_place_a_key_is_read_from():
    assert WRITE_KEY.refusal()["msg"] == (
        "a valid write key is required (X-Write-Key header, Bearer token, Basic username or ?write_key=)"
    )
    assert READ_KEY.refusal()["msg"] == "a valid read key is required (X-Read-Key header or Bearer token)"
