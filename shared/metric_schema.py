"""The metric schema contract: what a job emits, declared once.

A job declares a MetricSchema; the Kafka topic, the ClickHouse table and the Redis key
layout are all derived from it. Column types are logical and map to each system here.
Windows are epoch milliseconds (int64) so JSON never carries ambiguous timestamp strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ColumnType = Literal["string", "int64", "float64", "timestamp_ms"]

FLINK_TYPES: dict[str, str] = {
    "string": "STRING",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "timestamp_ms": "BIGINT",
}
CLICKHOUSE_TYPES: dict[str, str] = {
    "string": "LowCardinality(String)",
    "int64": "Int64",
    "float64": "Float64",
    "timestamp_ms": "DateTime64(3, 'UTC')",
}
KEY_SEPARATOR = "|"
NOT_FINITE = ("Infinity", "-Infinity", "NaN")  # how Flink's JSON format writes a double that is not finite


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    description: str = ""


@dataclass(frozen=True)
class MetricSchema:
    """name is the ClickHouse table name and, after the topic prefix, the Kafka topic (shared/topics.py)."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    description: str = ""
    window_start: str = "window_start"
    window_end: str = "window_end"
    group_keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        unknown = [k for k in self.key if k not in names]
        if unknown:
            raise ValueError(f"metric schema {self.name}: key columns {unknown} are not columns")
        for required in (self.window_start, self.window_end):
            if required not in names:
                raise ValueError(f"metric schema {self.name}: missing column {required}")
        object.__setattr__(self, "group_keys", tuple(k for k in self.key if k != self.window_start))

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    def record_key(self, record: dict[str, Any]) -> str:
        """Deterministic identity of a metric record: job, window start, group keys."""
        return KEY_SEPARATOR.join([self.name, *(str(record[k]) for k in self.key)])

    def validate(self, record: dict[str, Any]) -> dict[str, Any]:
        """Return the record restricted to the schema's columns; raise ValueError naming the problem. A float
        that is not finite (a sum that overflowed; Flink writes it as "Infinity" or "NaN") becomes null, so
        the window's other columns are kept."""
        out: dict[str, Any] = {}
        for col in self.columns:
            if col.name not in record:
                raise ValueError(f"{self.name}: missing column {col.name!r}")
            value = record[col.name]
            coerced = None if value is None else _coerce(self.name, col, value)
            if coerced is None and col.name in self.key:
                problem = "null" if value is None else f"not finite ({value})"
                raise ValueError(f"{self.name}: key column {col.name!r} is {problem}")
            out[col.name] = coerced
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "key": list(self.key),
            "group_keys": list(self.group_keys),
            "window_start": self.window_start,
            "window_end": self.window_end,
            "columns": [{"name": c.name, "type": c.type, "description": c.description} for c in self.columns],
        }


def _coerce(schema: str, col: Column, value: Any) -> Any:
    try:
        if col.type == "string":
            if not isinstance(value, str):
                raise TypeError
            return value
        if col.type in ("int64", "timestamp_ms"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise TypeError
            return int(value)
        if value in NOT_FINITE:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{schema}: column {col.name!r} expects {col.type}, got {value!r}") from None


_REGISTRY: dict[str, MetricSchema] = {}


def register(schema: MetricSchema) -> MetricSchema:
    existing = _REGISTRY.get(schema.name)
    if existing is not None and existing != schema:
        raise ValueError(f"two different metric schemas are named {schema.name!r}")
    _REGISTRY[schema.name] = schema
    return schema


def registered_schemas() -> dict[str, MetricSchema]:
    """Every schema registered so far, by name. Discovery (which job modules to import) lives in the job
    registry, services/processing/registry.py; this module knows no job."""
    return dict(sorted(_REGISTRY.items()))
