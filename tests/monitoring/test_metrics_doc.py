"""docs/operations.md "## Metrics" lists exactly the rtap_* metric families each service's /metrics serves."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SERVICES = ("ingestion", "storage", "cache", "processing")

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.flink, pytest.mark.clickhouse]


def metrics_section() -> str:
    text = OPERATIONS_DOC.read_text()
    start = text.index("## Metrics")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def documented_names(service: str) -> set[str]:
    """Names in the `- <service>:` bullet of the section (the bullet runs to the next top-level bullet)."""
    bullet = re.search(rf"^- {service}\b(.*?)(?=^- |^\S|\Z)", metrics_section(), re.M | re.S)
    assert bullet, f"docs/operations.md ## Metrics has no '- {service}' bullet"
    return set(re.findall(r"`(rtap_[a-z0-9_]+)", bullet.group(1)))


def exported_names(url: str) -> set[str]:
    """Family names as exposed: counters keep their _total suffix as the doc shows it; the
    client's `<name>_created` timestamps of counters and histograms are not metrics of their own."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    families = {f.name: f.type for f in text_string_to_metric_families(text) if f.name.startswith("rtap_")}
    created = {
        f"{name}_created" for name, kind in families.items() if kind in ("counter", "histogram", "summary")
    }
    return {
        name + "_total" if kind == "counter" else name
        for name, kind in families.items()
        if name not in created
    }


@pytest.mark.parametrize("service", SERVICES)
def test_doc_lists_exactly_the_exported_metric_names(pipeline, service):
    exported = exported_names(pipeline.url(service))
    documented = documented_names(service)
    assert exported, f"{service} exports no rtap_* metric"
    assert exported - documented == set(), f"{service} exports metrics the doc does not list"
    assert documented - exported == set(), f"the doc lists {service} metrics that /metrics does not serve"


def test_http_requests_are_counted_by_route_template_not_by_path(pipeline):
    cache = pipeline.url("cache")
    assert httpx.get(f"{cache}/v1/jobs/event_metrics/latest", timeout=10).status_code == 200
    assert httpx.get(f"{cache}/no/such/path/{uuid.uuid4().hex}", timeout=10).status_code == 404
    assert httpx.request("PROPFIND", f"{cache}/v1/jobs", timeout=10).status_code == 405
    text = httpx.get(f"{cache}/metrics", timeout=10).text
    counted = {
        (s.labels["route"], s.labels["method"], s.labels["status"])
        for f in text_string_to_metric_families(text)
        if f.name == "rtap_http_requests"
        for s in f.samples
        if s.name == "rtap_http_requests_total"
    }
    assert {
        ("/v1/jobs/{job}/latest", "GET", "200"),
        ("unmatched", "GET", "404"),
        ("/v1/jobs", "other", "405"),
    } <= counted
    assert not [route for route, _, _ in counted if "no/such" in route]
