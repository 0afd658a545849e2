"""Read-only queries of the stored metrics: per-job time ranges, and the parameters of user SQL.

Values are always bound as ClickHouse query parameters ({name:Type}); SQL text is built only from
the schema's own column names. User SQL itself is checked by services/storage/sandbox.py.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from services.storage.tables import DELETED, qualified
from shared.metric_schema import MetricSchema

PARAM_TYPES = {"string": "String", "int64": "Int64", "float64": "Float64", "timestamp_ms": "Int64"}
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INT64 = range(-(2**63), 2**63)
BOUND_INTS = range(-(2**63), 2**64)  # Int64 and UInt64; chDB silently turns a wider Python int into 0


class QueryError(ValueError):
    """A refused query parameter; `where` and `name` locate it (FastAPI's loc shape)."""

    def __init__(self, where: str, name: str, msg: str):
        super().__init__(msg)
        self.where, self.name, self.msg = where, name, msg


def parse_time(name: str, value: str) -> int:
    """Epoch milliseconds, or an ISO-8601 time (UTC unless it says otherwise)."""
    text = value.strip()
    if re.fullmatch(r"-?[0-9]+", text):
        if len(text) > 20 or int(text) not in INT64:
            raise QueryError("query", name, f"{name!r} is outside the 64-bit range of epoch milliseconds")
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(
            "query", name, f"{name!r} must be epoch milliseconds or ISO-8601, got {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _select_list(schema: MetricSchema) -> str:
    return ", ".join(
        f"toUnixTimestamp64Milli(`{c.name}`) AS `{c.name}`" if c.type == "timestamp_ms" else f"`{c.name}`"
        for c in schema.columns
    )


def metric_query(
    schema: MetricSchema, database: str, start_ms: int, end_ms: int, filters: dict[str, str], limit: int
) -> tuple[str, dict[str, Any]]:
    """Windows starting in [start_ms, end_ms), de-duplicated with FINAL; filters on group keys only."""
    ws = schema.window_start
    where = [
        f"`{ws}` >= fromUnixTimestamp64Milli({{from_ms:Int64}}, 'UTC')",
        f"`{ws}` < fromUnixTimestamp64Milli({{to_ms:Int64}}, 'UTC')",
        f"`{DELETED}` = 0",
    ]
    params: dict[str, Any] = {"from_ms": start_ms, "to_ms": end_ms, "limit": limit}
    for i, (name, value) in enumerate(sorted(filters.items())):
        if name not in schema.group_keys:
            raise QueryError(
                "query",
                name,
                f"unknown parameter {name!r}; filters for {schema.name}: {list(schema.group_keys)}",
            )
        column = schema.column(name)
        where.append(f"`{name}` = {{f{i}:{PARAM_TYPES[column.type]}}}")
        params[f"f{i}"] = _filter_value(name, column.type, value)
    order = ", ".join(f"`{k}`" for k in schema.key)
    # Filter in an inner query: an outer alias (window_start AS epoch ms) would shadow the column in WHERE.
    inner = (
        f"SELECT * FROM {qualified(database, schema.name)} FINAL "
        f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {{limit:UInt32}}"
    )
    sql = f"SELECT {_select_list(schema)} FROM ({inner}) ORDER BY {order}"
    return sql, params


def _filter_value(name: str, logical: str, value: str) -> Any:
    try:
        if logical in ("int64", "timestamp_ms"):
            return int(value)
        if logical == "float64":
            return float(value)
    except ValueError:
        raise QueryError("query", name, f"{name!r} expects {logical}, got {value!r}") from None
    return value


def bind_params(params: dict[str, Any]) -> dict[str, Any]:
    """User parameters for {name:Type} placeholders: names are identifiers, values scalars."""
    for name, value in params.items():
        if not PARAM_NAME.match(name):
            raise QueryError("body", f"params.{name}", f"parameter name {name!r} must be an identifier")
        if not isinstance(value, (str, int, float, bool)):
            raise QueryError(
                "body", f"params.{name}", f"parameter {name!r} must be a string, number or boolean"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise QueryError("body", f"params.{name}", f"parameter {name!r} must be a finite number")
        if isinstance(value, int) and value not in BOUND_INTS:
            raise QueryError("body", f"params.{name}", f"parameter {name!r} must fit in 64 bits")
        if isinstance(value, str):
            check_text(f"params.{name}", value)
    return params


def check_text(name: str, value: str) -> None:
    """Refuse text that is not UTF-8-encodable (a lone surrogate from a JSON escape like \\ud800)."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise QueryError(
            "body", name, f"{name} is not valid Unicode text: lone surrogate at position {exc.start}"
        ) from None
