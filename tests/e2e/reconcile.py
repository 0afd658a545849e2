"""The reconciliation checker: what a layer holds for one job, compared with the recomputation from the manifest."""

from __future__ import annotations

import math
from typing import Any, Iterable

from shared.metrics import MetricSchema

Key = tuple
REL_TOL = 1e-9  # float columns (averages, interpolated percentiles, revenue): same formula, only rounding differs
ABS_TOL = 1e-6


def by_key(schema: MetricSchema, records: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Records keyed by the schema key (later records replace earlier ones, as an upsert topic does)."""
    return {tuple(r[k] for k in schema.key): r for r in records}


def same_value(expected: Any, actual: Any, column_type: str) -> bool:
    if expected is None or actual is None:
        return expected is None and actual is None
    if column_type == "float64":
        return math.isclose(float(expected), float(actual), rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return expected == actual


def reconcile(schema: MetricSchema, expected: dict[Key, dict[str, Any]], actual: dict[Key, dict[str, Any]]) -> list[str]:
    """Every difference, one line each: missing windows, extra windows, and columns whose value differs."""
    problems = [f"{schema.name} missing {key}" for key in sorted(expected.keys() - actual.keys())]
    problems += [f"{schema.name} unexpected {key}: {actual[key]}" for key in sorted(actual.keys() - expected.keys())]
    types = {c.name: c.type for c in schema.columns}
    for key in sorted(expected.keys() & actual.keys()):
        for column, want in expected[key].items():
            got = actual[key].get(column)
            if not same_value(want, got, types[column]):
                problems.append(f"{schema.name} {key} {column}: expected {want!r}, got {got!r}")
    return problems
