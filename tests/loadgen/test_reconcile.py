"""reconcile_run's waiting (pure logic: a stand-in for the layers of a stack that never settles)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from services.loadgen.reconcile import expected_enrichment, reconcile_raw, reconcile_run
from services.loadgen.traffic import Traffic, TrafficSpec
from services.processing.registry import builtin_schemas
from shared.settings import Settings
from tests.loadgen.test_manifest import MANIFEST


class StuckLayers:
    """Raw layers complete; every metric layer empty for ever; Flink reports 3 late records."""

    def __init__(self) -> None:
        self.s = Settings()
        self.reads: Counter[str] = Counter()
        self.identity_reads = 0

    def raw_ids(self) -> list[str]:
        return [e["id"] for e in MANIFEST if e["accepted"]]

    def raw_rows_between(self, start_ms: int, end_ms: int) -> dict[str, int]:
        ids = len({e["id"] for e in MANIFEST if e["accepted"]})
        return {"rows": ids, "ids": ids}

    def raw_enrichment(self, start_ms: int, end_ms: int) -> dict[str, dict]:
        return {}

    def metric_readers(self, schema: Any, expected: dict) -> dict[str, Callable[[], dict]]:
        def reader(layer: str) -> Callable[[], dict]:
            def read() -> dict:
                self.reads[f"{schema.name}/{layer}"] += 1
                return {}

            return read

        return {layer: reader(layer) for layer in ("kafka", "clickhouse", "cache")}

    def identities(self, start_ms: int, end_ms: int) -> dict[str, dict]:
        self.identity_reads += 1
        return {"persons": {}, "identity_links": {}, "resolved_sessions": {}}

    def explain_late(self, start_ms: int, end_ms: int) -> list[str]:
        return ["flink: 3 records arrived after their window closed"]


def test_layers_share_one_deadline_so_a_stuck_stack_is_read_once_per_layer_after_it():
    layers = StuckLayers()
    schemas = builtin_schemas()
    problems = reconcile_run(layers, schemas, MANIFEST, timeout=1.5)  # type: ignore[arg-type]
    assert len(layers.reads) == 3 * len(schemas), layers.reads  # every job x 3 layers, all read
    first, *rest = layers.reads.values()
    assert first >= 2 and all(n == 1 for n in rest), layers.reads  # only the first layer waited
    assert any(p.startswith("kafka: event_metrics") for p in problems)
    assert layers.identity_reads == 1 and any(p.startswith("clickhouse: resolved_sessions") for p in problems)
    assert problems[0].startswith("flink: 3 records"), "the late-record count opens a failed reconciliation"


def test_raw_enrichment_is_compared_per_event_id_and_column_with_the_ip_as_configured():
    traffic = Traffic(TrafficSpec(seed=5, start_ms=1_700_000_000_000, login_fraction=0, alias_fraction=0))
    events = traffic.events(50)
    entries = [
        {"id": e["event"]["id"], "accepted": True, "enrichment": traffic.expected[e["event"]["id"]]}
        for e in events
    ]
    network = expected_enrichment(entries, Settings())
    whole = expected_enrichment(entries, Settings(ingestion={"ip_truncation": "none"}))
    first = events[0]
    assert whole[first["event"]["id"]]["ip"] == first["context"]["ip_address"]
    assert network[first["event"]["id"]]["ip"] == first["context"]["ip_address"].rsplit(".", 1)[0] + ".0"
    assert reconcile_raw(network, network) == []
    stored = {event_id: dict(row) for event_id, row in network.items()}
    stored[first["event"]["id"]]["browser"] = "Wrong"
    del stored[events[1]["event"]["id"]]
    first_id, missing_id = first["event"]["id"], events[1]["event"]["id"]
    assert reconcile_raw(network, stored) == [
        f"raw enrichment missing {missing_id}",
        f"raw {first_id} browser: expected {network[first_id]['browser']!r}, got 'Wrong'",
    ]
