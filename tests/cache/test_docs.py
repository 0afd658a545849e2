"""docs/api.md's Cache API section lists exactly the routes the cache API serves."""

from __future__ import annotations

import re
from pathlib import Path

from services.cache.api import create_app
from shared.settings import CacheSettings, Settings

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def cache_section() -> str:
    text = API_DOC.read_text()
    start = text.index("## Cache API")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_documented_routes_match_openapi():
    app = create_app(Settings(cache=CacheSettings(read_keys=["doc-check-key"])), run_consumer=False)
    served = {f"{method.upper()} {path}" for path, ops in app.openapi()["paths"].items() for method in ops}
    documented = set(re.findall(r"`(GET /[^`]*)`", cache_section()))
    assert documented == served


def test_documented_parameters_exist():
    app = create_app(Settings(), run_consumer=False)
    windows = app.openapi()["paths"]["/v1/jobs/{job}/windows"]["get"]["parameters"]
    names = {p["name"] for p in windows}
    assert {"from", "to", "limit", "order"} <= names
    for name in ("from", "to", "limit", "order"):
        assert f"`{name}`" in cache_section()
