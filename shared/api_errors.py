"""Error answers of the query APIs (storage, cache) as OpenAPI responses: FastAPI's validation shape,
{"detail": [{"loc": ["query", "limit"], "msg": "...", "type": "..."}]}, so every 4xx names the parameter."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ParamError(BaseModel):
    detail: list[Problem]


class Unavailable(BaseModel):
    detail: str


DESCRIPTIONS = {
    400: "a parameter is refused; `loc` names it",
    401: "read key missing or wrong (only when read keys are configured)",
    404: "unknown job or resource; `loc` names the path parameter",
    413: "body over the service's size limit",
    429: "too many at once (for example open streams); `msg` names the limit, Retry-After says when to try again",
    503: "backend unavailable, or too many queries running; retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Unavailable if code == 503 else ParamError, "description": DESCRIPTIONS[code]} for code in codes}
