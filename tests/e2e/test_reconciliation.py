"""End-to-end reconciliation on the full local stack: `rtap load` -> ingestion -> Kafka -> Flink -> metric
topics -> ClickHouse (storage API) and Redis (cache API), every layer checked against the recomputation from
the manifest.

The stack runs on the module's own settings (2 s windows, 3 s session gap) so its timings do not affect other
tests. The workload repeats 5% of its sends with the same event id (client retries): every layer must count
them once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from segment.analytics import Client

from services.loadgen.manifest import accepted, counted
from services.loadgen.reconcile import (
    Layers,
    by_key,
    expected_enrichment,
    expected_identities,
    expected_metrics,
    identity_differences,
    poll,
    reconcile,
    reconcile_raw,
    time_span,
)
from services.processing.registry import builtin_schemas, load_schemas
from shared.events import ALIAS_TYPE, IDENTIFY_TYPE
from shared.metric_schema import MetricSchema
from shared.settings import Settings
from tests.e2e.stack import full_stack, reconciled_env, rtap_load

pytestmark = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.flink,
    pytest.mark.redis,
    pytest.mark.clickhouse,
]

WINDOW_S, GAP_S = 2, 3
# The senders stamp planned send times; a CI machine once stalled a sender by more than 2 s and ~10 events of
# one window were late by policy. This module checks exactness, not the lateness policy (tests/processing
# covers that).
WATERMARK_DELAY_MS = 10_000
EVENTS_SENT = 3_000
SETTLE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Settings]:
    with full_stack(
        tmp_path_factory.mktemp("e2e") / "state", **reconciled_env(WINDOW_S, GAP_S, WATERMARK_DELAY_MS)
    ) as (s, _, _):
        yield s


@pytest.fixture(scope="module")
def layers(stack) -> Layers:
    return Layers(stack)


@pytest.fixture(scope="module")
def workload(stack: Settings, tmp_path_factory) -> list[dict[str, Any]]:
    entries = rtap_load(
        stack,
        tmp_path_factory.mktemp("e2e-load") / "run.jsonl",
        "--events",
        str(EVENTS_SENT),
        "--rate",
        "1000",
        "--duplicate-fraction",
        "0.05",
    )
    assert len(entries) == EVENTS_SENT and all(e["accepted"] and not e["timestamp_adjusted"] for e in entries)
    assert any(e["duplicate"] for e in entries)
    return entries


def reconciled(schema: MetricSchema, expected: dict, read: Callable[[], dict]) -> list[str]:
    """The differences left once the layer has settled (or the timeout passed)."""
    return reconcile(
        schema, expected, poll(read, lambda actual: not reconcile(schema, expected, actual), SETTLE_TIMEOUT_S)
    )


def assert_reconciled(job: str, workload: list, layer: str, layers: Layers) -> None:
    schema = load_schemas()[job]
    expected = expected_metrics(workload, layers.s)[job]
    problems = reconciled(schema, expected, layers.metric_readers(schema, expected)[layer])
    assert problems == [], f"{len(problems)} differences of {len(expected)} windows:\n" + "\n".join(
        layers.explain_late(*time_span(workload)) + problems[:20]
    )


JOBS = tuple(builtin_schemas())  # every built-in job, so a new one must be recomputed in the manifest


def test_raw_topic_holds_every_accepted_id(layers, workload):
    wanted = {e["id"] for e in accepted(workload)}
    seen = poll(lambda: set(layers.raw_ids()), lambda ids: wanted <= ids, timeout=30)
    assert len(wanted - seen) == 0, f"{len(wanted - seen)} accepted ids not in the raw topic"


@pytest.mark.parametrize("job", JOBS)
def test_metric_topic_final_values_equal_the_recomputation(layers, workload, job):
    assert_reconciled(job, workload, "kafka", layers)


def test_clickhouse_raw_rows_are_the_accepted_distinct_ids(layers, workload):
    distinct = len({e["id"] for e in accepted(workload)})
    rows = poll(
        lambda: layers.raw_rows_between(*time_span(workload)), lambda r: r["rows"] >= distinct, timeout=60
    )
    assert rows == {"rows": distinct, "ids": distinct}


def test_clickhouse_raw_enrichment_equals_the_generators_expectation_per_event_id(layers, workload):
    """UTM fields, referrer host and class, browser, OS, country and the truncated IP of every event, as the
    generator's own tables describe them (services/loadgen/traffic.py, agents.py)."""
    expected = expected_enrichment(workload, layers.s)
    assert len(expected) == len({e["id"] for e in counted(workload)})  # every event, no identity call
    assert {row["referrer_class"] for row in expected.values()} >= {"direct", "search", "paid", "internal"}
    stored = poll(
        lambda: layers.raw_enrichment(*time_span(workload)), lambda r: expected.keys() <= r.keys(), timeout=60
    )
    problems = reconcile_raw(expected, stored)
    assert problems == [], f"{len(problems)} differences:\n" + "\n".join(problems[:20])


def test_session_metrics_hold_no_bot_session(layers, workload):
    bots = {e["session_id"] for e in counted(workload) if e["device_category"] == "bot"}
    assert bots, "the workload has bot sessions"
    schema = load_schemas()["session_metrics"]
    expected = expected_metrics(workload, layers.s)["session_metrics"]
    stored = poll(
        layers.metric_readers(schema, expected)["clickhouse"], lambda r: r.keys() >= expected.keys(), 60
    )
    assert not {key[1] for key in stored} & bots


@pytest.mark.parametrize("job", JOBS)
def test_clickhouse_metrics_equal_the_recomputation(layers, workload, job):
    assert_reconciled(job, workload, "clickhouse", layers)


@pytest.mark.parametrize("job", JOBS)
def test_cache_windows_equal_the_recomputation(layers, workload, job):
    assert_reconciled(job, workload, "cache", layers)


@pytest.mark.parametrize("job", JOBS)
def test_cache_latest_window_equals_the_recomputation(stack, layers, workload, job):
    schema = load_schemas()[job]
    expected = expected_metrics(workload, stack)[job]
    newest = max(key[0] for key in expected)
    want = {key: values for key, values in expected.items() if key[0] == newest}

    def latest() -> dict[tuple, dict]:
        response = httpx.get(f"http://127.0.0.1:{stack.cache.port}/v1/jobs/{job}/latest", timeout=30)
        assert response.status_code == 200, response.text
        return by_key(schema, response.json()["records"])

    assert reconciled(schema, want, latest) == []


def test_clickhouse_identities_equal_the_recomputation(layers, workload):
    """Persons, identity links and the resolved user of every session, as the manifest predicts them."""
    kinds = {e["type"] for e in accepted(workload)}
    assert {IDENTIFY_TYPE, ALIAS_TYPE} <= kinds, "the workload logs some sessions in and aliases some"
    expected = expected_identities(workload, layers.s)
    assert expected["identity_links"] and expected["persons"]
    span = time_span(list(accepted(workload)))
    found = poll(lambda: layers.identities(*span), lambda got: got == expected, SETTLE_TIMEOUT_S)
    problems = identity_differences(expected, found)
    assert problems == [], f"{len(problems)} differences:\n" + "\n".join(problems[:20])


def test_segment_library_identity_reaches_persons_links_and_resolved_sessions(stack, layers, workload):
    """Segment's own Python client sends track, page, identify, alias and group; a visitor who logs in
    mid-session is one user in the session table, and an earlier anonymous session resolves to that user.
    Runs after the reconciliation (its events land in later windows)."""
    tag = uuid.uuid4().hex[:10]
    anonymous, user, earlier = f"anon-{tag}", f"user-{tag}", f"anon-old-{tag}"
    errors: list = []
    client = Client(
        write_key="any", host=stack.ingestion.url, on_error=lambda e, b: errors.append(e), max_retries=0
    )
    visit = {"sessionId": f"visit-{tag}"}
    old_visit = {"sessionId": f"old-visit-{tag}"}
    client.page(
        anonymous_id=earlier, name="Home", properties={"url": "https://shop.example/"}, context=old_visit
    )
    client.page(
        anonymous_id=anonymous, name="Home", properties={"url": "https://shop.example/"}, context=visit
    )
    client.track(anonymous_id=anonymous, event="Product Viewed", properties={"sku": "p-1"}, context=visit)
    client.identify(user_id=user, anonymous_id=anonymous, traits={"plan": "pro", "email": f"{tag}@x.example"})
    client.track(
        user_id=user,
        anonymous_id=anonymous,
        event="Order Completed",
        properties={"revenue": 5.0},
        context=visit,
    )
    client.alias(previous_id=earlier, user_id=user)
    client.group(user_id=user, group_id=f"acme-{tag}", traits={"name": "Acme"})
    client.flush()
    client.join()
    assert errors == []

    def sessions() -> dict[str, dict[str, Any]]:
        rows = layers.storage_sql(
            "SELECT session_id, user_id, resolved_user_id, events FROM resolved_sessions "
            "WHERE session_id IN ({a:String}, {b:String})",
            a=visit["sessionId"],
            b=old_visit["sessionId"],
        )
        return {row["session_id"]: row for row in rows}

    got = poll(sessions, lambda rows: len(rows) == 2, SETTLE_TIMEOUT_S)
    login, old = got[visit["sessionId"]], got[old_visit["sessionId"]]
    assert (login["user_id"], login["resolved_user_id"], int(login["events"])) == (user, user, 3)
    assert (old["user_id"], old["resolved_user_id"]) == (earlier, user)  # linked by the alias
    person = layers.storage_sql("SELECT traits FROM persons WHERE user_id = {u:String}", u=user)
    assert person == [{"traits": {"plan": "pro", "email": f"{tag}@x.example"}}]
    links = layers.storage_sql(
        "SELECT anonymous_id, user_id, source FROM identity_links FINAL WHERE user_id = {u:String} "
        "ORDER BY anonymous_id",
        u=user,
    )
    assert links == [
        {"anonymous_id": anonymous, "user_id": user, "source": "identify"},
        {"anonymous_id": earlier, "user_id": user, "source": "alias"},
    ]
    members = layers.storage_sql(
        "SELECT user_id FROM group_members WHERE group_id = {g:String}", g=f"acme-{tag}"
    )
    assert members == [{"user_id": user}]


def test_duplicate_sends_are_one_row_in_raw_storage(stack, layers, workload, tmp_path):
    """Runs after the reconciliation tests (its events land in later windows): re-sent ids stay single in
    ClickHouse."""
    entries = rtap_load(
        stack, tmp_path / "dups.jsonl", "--events", "400", "--rate", "1000", "--duplicate-fraction", "0.2"
    )
    duplicated = [e for e in entries if e["duplicate"]]
    assert duplicated and all(e["accepted"] for e in entries)
    sent_ids = layers.raw_ids()
    assert all(
        sent_ids.count(e["id"]) == e["sends"] for e in duplicated
    )  # every duplicate send reached Kafka
    distinct = len(entries)
    rows = poll(
        lambda: layers.raw_rows_between(*time_span(entries)), lambda r: r["ids"] >= distinct, timeout=60
    )
    assert rows == {"rows": distinct, "ids": distinct}
