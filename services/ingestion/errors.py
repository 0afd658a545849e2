"""Every ingest failure is one IngestError, mapped to an HTTP status and the APIs' one error body
(shared/api_errors.py), whose `loc` names the field:

    {"detail": [{"loc": ["body", "user.id"], "msg": "user.id: Field required", "type": "invalid"}]}

`type` is the rejection reason counted in rtap_ingestion_rejected_total (invalid, too_large, unsupported,
unauthorized, unavailable). Answers about events add top-level siblings of `detail` (`id`, `results`...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import KafkaError
from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from services.ingestion.producer import SIZE_ERRORS, is_permanent
from shared.api_errors import error_body
from shared.api_keys import WRITE_KEY

CLIENT_CLOSED = 499  # the status counted (never sent) for a client that disconnected before its body was read


class IngestError(Exception):
    """A refusal: status, message, where (`loc`: ("body", field), ("header", name) or ("kafka",)) and the
    reason it is counted under; extra: top-level siblings of `detail` in the answer."""

    def __init__(
        self,
        status: int,
        msg: str,
        loc: tuple[str, ...],
        reason: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(msg)
        self.status, self.msg, self.loc, self.reason = status, msg, loc, reason
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def field(self) -> str:
        """The field as a batch item's result names it: the dotted path, header name, 'body' or 'kafka'."""
        return self.loc[-1]

    def body(self) -> dict[str, Any]:
        return {**error_body(list(self.loc), self.msg, self.reason), **self.extra}

    def rejection(self, index: int) -> Rejection:
        return Rejection(index, self.msg, self.field, self.status, self.reason)


@dataclass(slots=True)
class Rejection:
    """One batch item refused on its own: the problem, its field (relative to the item) and the status it
    would get alone."""

    index: int
    error: str
    field: str
    status: int = 400
    reason: str = "invalid"

    def result(self) -> dict[str, Any]:
        return {"index": self.index, "status": "rejected", "error": self.error, "field": self.field}

    def loc(self, items_at: str | None) -> tuple[str, ...]:
        """Where in the request body: items_at is the array's dotted path ('events', 'batch', '' for a bare
        array), None when the body is the item itself."""
        if items_at is None:
            return body_loc(self.field)
        item = f"{items_at}[{self.index}]"
        return ("body", item if self.field == "body" else f"{item}.{self.field}")


def body_loc(field: str) -> tuple[str, ...]:
    return ("body",) if field == "body" else ("body", field)


def bad_request(msg: str, field: str) -> IngestError:
    return IngestError(400, msg, body_loc(field), "invalid")


def too_large(msg: str, field: str = "body") -> IngestError:
    return IngestError(413, msg, body_loc(field), "too_large")


def header_error(status: int, msg: str, header: str, reason: str) -> IngestError:
    return IngestError(status, msg, ("header", header), reason)


def unauthorized() -> IngestError:
    refusal = WRITE_KEY.refusal()
    return header_error(401, refusal["msg"], WRITE_KEY.header, "unauthorized")


def unavailable(msg: str, retry_after: int, extra: dict[str, Any] | None = None) -> IngestError:
    return IngestError(503, msg, ("kafka",), "unavailable", {"Retry-After": str(retry_after)}, extra)


def kafka_refusal(err: KafkaError, retry_after: int) -> IngestError:
    """A record Kafka did not write. Refused for what it is (retrying cannot help): 413 when too large, else
    400, for that event alone. Anything else (queue full, broker down, timeout): 503, retry later."""
    if not is_permanent(err):
        return unavailable(f"Kafka did not write the event: {err.str()}", retry_after)
    if err.code() in SIZE_ERRORS:
        return too_large(f"Kafka refuses the event's record as too large: {err.str()}", "event")
    return bad_request(f"Kafka refuses the event's record: {err.str()}", "event")


NAMED_CHARS = 64  # a longer key in a path (a refused property name) is named by its start and its length


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """('user', 'id') -> 'user.id'; ('events', 3, 'user') -> 'events[3].user'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("body",) or out:
            out += f".{_short(part)}" if out else _short(part)
    return out or "body"


def _short(part: Any) -> str:
    text = str(part)
    return text if len(text) <= NAMED_CHARS else f"{text[:NAMED_CHARS]}...({len(text)} characters)"


# pydantic's loc tags for the members of a union (a property value is bool | int | float | str)
UNION_MEMBERS = {"bool", "int", "constrained-int", "float", "str"}
TYPE_MISMATCH = {"bool_type", "int_type", "float_type", "string_type"}


def first_error(
    exc: ValidationError | RequestValidationError, prefix: tuple[Any, ...] = ()
) -> tuple[str, str]:
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
    """FastAPI's own 422 (same shape), counted as a rejection."""
    request.app.state.ingestion.metrics.rejected("invalid")
    return await request_validation_exception_handler(request, exc)
