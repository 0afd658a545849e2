"""docs/api.md's Storage query API section lists exactly the routes the storage service serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.storage.api import create_app
from shared.settings import Settings

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
pytestmark = pytest.mark.clickhouse


def storage_section() -> str:
    text = API_DOC.read_text()
    start = text.index("## Storage query API")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def openapi(tmp_path_factory) -> dict:
    app = create_app(Settings(state_dir=tmp_path_factory.mktemp("docs-state")), run_consumer=False)
    spec = app.openapi()
    app.state.storage.close()
    return spec


def test_documented_routes_match_openapi(openapi):
    served = {f"{method.upper()} {path}" for path, ops in openapi["paths"].items() for method in ops}
    documented = set(re.findall(r"`((?:GET|POST) /[^`]*)`", storage_section()))
    assert documented == served


def test_documented_parameters_exist(openapi):
    names = {p["name"] for p in openapi["paths"]["/v1/jobs/{job}/windows"]["get"]["parameters"]}
    assert {"job", "from", "to", "limit"} <= names
    body = openapi["components"]["schemas"]["SqlRequest"]["properties"]
    assert set(body) == {"sql", "params"}
    for name in ("from", "to", "limit", "sql", "params"):
        assert f"`{name}`" in storage_section() or f'"{name}"' in storage_section()
