"""The dashboard's way to the analytics of the storage API: GET /v1/analytics/{kind} on the cache API,
forwarded to the storage API's route of the same name.

The dashboard page is served by the cache API and reaches only it (its origin, its read key); funnels and
traffic sources are queries over the raw events in ClickHouse, which only the storage API runs. This route
forwards the query string (all of it but the cache's own `key`) with the storage API's read key (the first of
storage.read_keys) and answers with the storage API's status and body unchanged, so a refusal names the
parameter as the storage API's does. Whoever may read the cache API may so run these four queries; they
keep the storage API's limits (services/storage/api.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi import Path as PathParam

from shared.api_errors import error_responses, param_error, unavailable
from shared.settings import Settings

KINDS = ("funnel", "retention", "top-pages", "sources")
FORWARDED_HEADERS = ("retry-after",)


def add_analytics_proxy(app: FastAPI, settings: Settings, guarded: list[Any]) -> None:
    storage = settings.storage
    base = storage.url
    headers = {"X-Read-Key": storage.read_keys[0]} if storage.read_keys else {}
    timeout = storage.sql_max_seconds + 5

    @app.get(
        "/v1/analytics/{kind}",
        tags=["analytics"],
        dependencies=guarded,
        responses=error_responses(401, 404, 503),
        summary="The storage API's /v1/analytics/{kind} (funnel, retention, top-pages, sources), forwarded",
    )
    async def analytics(
        request: Request,
        kind: Annotated[str, PathParam(description="funnel, retention, top-pages or sources")],
    ) -> Response:
        if kind not in KINDS:
            raise param_error(404, "path", "kind", f"unknown analytics {kind!r}; known: {list(KINDS)}")
        params = httpx.QueryParams([(k, v) for k, v in request.query_params.multi_items() if k != "key"])
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                answer = await client.get(f"{base}/v1/analytics/{kind}", params=params, headers=headers)
        except httpx.HTTPError as exc:
            msg = f"the storage API at {base} did not answer ({type(exc).__name__})"
            raise unavailable("storage", msg, 5) from None
        kept = {name: answer.headers[name] for name in FORWARDED_HEADERS if name in answer.headers}
        return Response(answer.content, answer.status_code, media_type="application/json", headers=kept)
