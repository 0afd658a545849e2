"""Every ingest failure is one IngestError, mapped to an HTTP status and a JSON body naming the field.

Body: {"error": "<what is wrong>", "field": "<dotted path, header or 'body'>"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from services.ingestion.producer import SIZE_ERRORS, is_permanent

CLIENT_CLOSED = 499  # the status counted (never sent) for a client that disconnected before its body was read


class IngestError(Exception):
    def __init__(self, status: int, error: str, field: str, reason: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(error)
        self.status, self.error, self.field, self.reason = status, error, field, reason
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "field": self.field, **self.extra}

    def rejection(self, index: int) -> Rejection:
        return Rejection(index, self.error, self.field, self.status, self.reason)


@dataclass(slots=True)
class Rejection:
    """One batch item refused on its own: the problem, its field (relative to the item) and the status it would get alone."""

    index: int
    error: str
    field: str
    status: int = 400
    reason: str = "invalid"

    def result(self) -> dict[str, Any]:
        return {"index": self.index, "status": "rejected", "error": self.error, "field": self.field}


def bad_request(error: str, field: str) -> IngestError:
    return IngestError(400, error, field, "invalid")


def too_large(error: str, field: str = "body") -> IngestError:
    return IngestError(413, error, field, "too_large")


def unavailable(error: str, retry_after: int, extra: dict[str, Any] | None = None) -> IngestError:
    return IngestError(503, error, "kafka", "unavailable", {"Retry-After": str(retry_after)}, extra)


def kafka_refusal(err: KafkaError, retry_after: int) -> IngestError:
    """A record Kafka did not write. Refused for what it is (retrying cannot help): 413 when too large, else 400, for
    that event alone. Anything else (queue full, broker down, timeout): 503, retry later."""
    if not is_permanent(err):
        return unavailable(f"Kafka did not write the event: {err.str()}", retry_after)
    if err.code() in SIZE_ERRORS:
        return too_large(f"Kafka refuses the event's record as too large: {err.str()}", "event")
    return bad_request(f"Kafka refuses the event's record: {err.str()}", "event")


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('user', 'id') -> 'user.id'; ('events', 3, 'user') -> 'events[3].user'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("body",) or out:
            out += f".{part}" if out else str(part)
    return out or "body"


# pydantic's loc tags for the members of a union (a property value is bool | int | float | str)
UNION_MEMBERS = {"bool", "int", "constrained-int", "float", "str"}
TYPE_MISMATCH = {"bool_type", "int_type", "float_type", "string_type"}


def first_error(exc: ValidationError | RequestValidationError, prefix: tuple[Any, ...] = ()) -> tuple[str, str]:
    """The first validation problem as (message, field); a failed union is one problem at the union's path."""
    errors = exc.errors()
    err = errors[0]
    loc = tuple(err.get("loc", ()))
    if err.get("type") == "json_invalid":
        return f"body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}", "body"
    if loc and loc[-1] in UNION_MEMBERS:
        members = [e for e in errors if tuple(e["loc"][:-1]) == loc[:-1] and e["loc"][-1] in UNION_MEMBERS]
        specific = [e["msg"] for e in members if e["type"] not in TYPE_MISMATCH]
        field = field_path(prefix + loc[:-1])
        return f"{field}: {specific[0] if specific else 'Input should be a string, number or boolean'}", field
    field = field_path(prefix + loc)
    return f"{field}: {err['msg']}", field


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


async def ingest_error_handler(request: Request, exc: IngestError) -> Response:
    request.app.state.ingestion.metrics.rejected(exc.reason)
    return json_response(exc.status, exc.body(), exc.headers)


async def request_validation_handler(request: Request, exc: RequestValidationError) -> Response:
    message, field = first_error(exc)
    request.app.state.ingestion.metrics.rejected("invalid")
    return json_response(422, {"error": message, "field": field})
