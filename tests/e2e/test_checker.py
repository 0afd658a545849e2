"""The checker itself: a deliberately broken metric set (a window dropped, a count changed) is
reported, both ways."""

from __future__ import annotations

import copy

from services.loadgen.manifest import event_metrics, performance_metrics
from services.loadgen.reconcile import reconcile
from services.processing.registry import load_schemas

WINDOW_MS = 2_000


def entry(i: int, ts: int, kind: str, device: str, load: float | None) -> dict:
    return {
        "id": f"e{i}",
        "type": kind,
        "user_id": f"u{i % 3}",
        "session_id": f"s{i % 2}",
        "timestamp": ts,
        "device_category": device,
        "load_time": load,
        "interaction_time": None if load else 40.0 + i,
        "revenue": None,
        "accepted": True,
    }


ENTRIES = [
    entry(i, 1_000 * i, kind, device, load)
    for i, (kind, device, load) in enumerate(
        [
            ("page_view", "mobile", 120.0),
            ("click", "mobile", None),
            ("page_view", "desktop", 80.0),
            ("page_view", "desktop", 95.5),
            ("click", "desktop", None),
            ("page_view", "mobile", 300.0),
        ]
    )
]


def as_records(expected: dict, key_columns: tuple[str, ...]) -> dict:
    return {key: {**dict(zip(key_columns, key, strict=True)), **values} for key, values in expected.items()}


def test_a_faithful_metric_set_reconciles():
    schemas = load_schemas()
    for name, expected in (
        ("event_metrics", event_metrics(ENTRIES, WINDOW_MS)),
        ("performance_metrics", performance_metrics(ENTRIES, WINDOW_MS)),
    ):
        schema = schemas[name]
        assert reconcile(schema, expected, as_records(expected, schema.key)) == []


def test_a_dropped_window_and_a_changed_count_are_both_reported():
    schema = load_schemas()["event_metrics"]
    expected = event_metrics(ENTRIES, WINDOW_MS)
    broken = copy.deepcopy(as_records(expected, schema.key))
    dropped, changed = sorted(broken)[0], sorted(broken)[-1]
    del broken[dropped]
    broken[changed]["events"] += 1
    problems = reconcile(schema, expected, broken)
    assert problems == [
        f"event_metrics missing {dropped}",
        f"event_metrics {changed} events: expected {expected[changed]['events']}, "
        f"got {expected[changed]['events'] + 1}",
    ]


def test_an_extra_window_and_a_percentile_off_are_reported():
    schema = load_schemas()["performance_metrics"]
    expected = performance_metrics(ENTRIES, WINDOW_MS)
    broken = copy.deepcopy(as_records(expected, schema.key))
    key = next(k for k, v in broken.items() if v["load_time_p95"] is not None)
    broken[key]["load_time_p95"] += 0.5
    broken[(999_000, "tablet")] = {"window_start": 999_000, "device_category": "tablet", "events": 1}
    problems = reconcile(schema, expected, broken)
    assert len(problems) == 2, problems
    assert problems[0].startswith("performance_metrics unexpected (999000, 'tablet')")
    assert problems[1].startswith(f"performance_metrics {key} load_time_p95: expected")
