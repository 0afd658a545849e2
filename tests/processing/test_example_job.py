"""A job defined in one file of the test tree, registered only through RTAP_PROCESSING__JOB_MODULES."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processing.conftest import (
    WINDOW_MS,
    Feed,
    create_topics,
    event,
    processing_settings,
    read_metrics,
    window_base,
)

pytestmark = [pytest.mark.kafka, pytest.mark.flink, pytest.mark.slow]

MODULE = "tests.processing.example_job"


@pytest.fixture(scope="module")
def job_settings(settings, kafka, flink_cluster):
    s = processing_settings(settings, job_modules=[MODULE])
    create_topics(s)
    return s


def test_the_new_jobs_metrics_reach_kafka(job_settings, supervisor):
    base = window_base()
    home, cart = "https://shop.example/", "https://shop.example/cart"
    events = [
        event("s1", "u1", "page_view", base + 1_000),
        event("s2", "u2", "page_view", base + 2_000),
        event("s1", "u1", "page_view", base + 3_000),
        event("s1", "u1", "click", base + 3_500),
    ]
    events[2]["context"]["url"] = cart
    feed = Feed(job_settings)
    feed.send(*events)
    feed.heartbeat(base + WINDOW_MS + 5_000)
    got = read_metrics(job_settings, "example_url_metrics", lambda r: len(r) >= 2)
    assert {k: (v["page_views"], v["visitors"], v["window_end"]) for k, v in got.items()} == {
        (base, home): (2, 2, base + WINDOW_MS),
        (base, cart): (1, 1, base + WINDOW_MS),
    }


def test_the_built_in_jobs_still_run_beside_it(job_settings, supervisor):
    got = read_metrics(job_settings, "event_metrics", lambda r: len(r) >= 2, timeout=30)
    assert {k[1] for k in got} == {"page_view", "click"}


def test_the_guide_quotes_this_file_as_it_is():
    """docs/adding-a-job.md shows the example job's code exactly (everything after its docstring)."""
    root = Path(__file__).resolve().parents[2]
    code = (root / "tests/processing/example_job.py").read_text()
    guide = (root / "docs/adding-a-job.md").read_text()
    quoted = guide.split("```python\n", 1)[1].split("```\n", 1)[0]
    assert quoted == code[code.index("from services.processing.job") :]
