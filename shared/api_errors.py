"""The one error-body shape of every HTTP API (ingestion, storage, cache, the HTTP server guard): FastAPI's
own validation shape, so a client reads every refusal the same way and every 4xx names what it refuses:

    {"detail": [{"loc": ["query", "limit"], "msg": "limit must be at most 1000", "type": "value_error"}]}

`loc` is [where, name]: where is `body`, `query`, `path` or `header` (a part of the request), or the backend
that did not answer (`kafka`, `clickhouse`, `redis`); name is the parameter, header or dotted body path
(`user.id`, `events[3].user.id`, `params.since`). An API may add top-level siblings of `detail`
(ingestion's `id`, `accepted`, `rejected`, `failed`, `results`), never replace it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException


class Problem(BaseModel):
    loc: list[str | int] = Field(description="[body|query|path|header, name], or [kafka|clickhouse|redis]")
    msg: str = Field(description="what is wrong, naming the field or limit")
    type: str = Field(description="the kind of problem, e.g. value_error, missing, too_large, unavailable")


class ErrorBody(BaseModel):
    detail: list[Problem]


DESCRIPTIONS = {
    400: "a parameter is refused; `loc` names it",
    401: "read key missing or wrong (only when read keys are configured)",
    404: "unknown job or resource; `loc` names the path parameter",
    413: "body over the service's size limit",
    429: "too many at once (for example open streams); `msg` names the limit, Retry-After says when to retry",
    503: "backend unavailable, or too many queries running; retry after Retry-After seconds",
}

V = TypeVar("V")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes, each with the ErrorBody model."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def problem(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One entry of `detail`."""
    return {"loc": loc, "msg": msg, "type": kind}


def error_body(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """A whole error body with one problem."""
    return {"detail": [problem(loc, msg, kind)]}


def param_error(status: int, where: str, name: str, msg: str, kind: str = "value_error") -> HTTPException:
    """A refusal naming one request part: where is body, query, path or header."""
    return HTTPException(status, [problem([where, name], msg, kind)])


def known_job(jobs: Mapping[str, V], job: str) -> V:
    """jobs[job], or a 404 naming the path parameter `job` and the jobs there are."""
    try:
        return jobs[job]
    except KeyError:
        raise param_error(404, "path", "job", f"unknown job {job!r}; known: {sorted(jobs)}") from None


def body_error(status: int, msg: str, kind: str = "value_error") -> HTTPException:
    """A refusal of the body as a whole (too large, not UTF-8, cut off)."""
    return HTTPException(status, [problem(["body"], msg, kind)])


def unavailable(backend: str, msg: str, retry_after: int, kind: str = "unavailable") -> HTTPException:
    """503 with Retry-After: the backend did not answer, or the server is at a limit of its own."""
    return HTTPException(503, [problem([backend], msg, kind)], headers={"Retry-After": str(retry_after)})


TEXT_DETAIL_KINDS = {400: "body_invalid", 404: "not_found", 405: "method_not_allowed"}


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    """Every app's HTTPException handler: a refusal with a text detail (Starlette's unknown path 404 and 405,
    FastAPI's 400 for a body it cannot decode) is answered in the one shape, naming the body or the path."""
    if isinstance(exc.detail, str):
        loc: list[str | int] = ["body"] if exc.status_code == 400 else ["path"]
        kind = TEXT_DETAIL_KINDS.get(exc.status_code, "http_error")
        exc = HTTPException(exc.status_code, [problem(loc, exc.detail, kind)], headers=exc.headers)
    return await http_exception_handler(request, exc)
