"""API keys: the constant-time check every service uses, and the read-key guard of the query APIs.

A read key comes in the X-Read-Key header or as a Bearer token (and, where the route serves browsers'
EventSource, as ?key=). A missing or wrong key is a 401 in FastAPI's validation shape, naming X-Read-Key.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Callable, Sequence

from fastapi import Depends, Header, HTTPException, Query


def key_matches(provided: str | None, keys: Sequence[str]) -> bool:
    """Constant-time comparison of bytes, so a non-ASCII header value is a wrong key rather than an error."""
    if not provided:
        return False
    given = provided.encode()
    return any(secrets.compare_digest(given, key.encode()) for key in keys)


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def read_key_guard(keys: Sequence[str], query_param: bool = False) -> list[Any]:
    """Route dependencies requiring a read key; none when no keys are configured."""
    if not keys:
        return []
    where = "X-Read-Key header, Bearer token, or ?key= for streams" if query_param else "X-Read-Key header or Bearer token"

    def check(provided: str | None) -> None:
        if not key_matches(provided, keys):
            detail = [{"loc": ["header", "X-Read-Key"], "msg": f"a valid read key is required ({where})", "type": "value_error"}]
            raise HTTPException(401, detail)

    def from_headers(x_read_key: Annotated[str | None, Header()] = None,
                     authorization: Annotated[str | None, Header()] = None) -> None:
        check(x_read_key or bearer_token(authorization))

    def from_headers_or_query(x_read_key: Annotated[str | None, Header()] = None,
                              authorization: Annotated[str | None, Header()] = None,
                              key: Annotated[str | None, Query(description="read key, for EventSource and the dashboard page")] = None) -> None:
        check(x_read_key or bearer_token(authorization) or key)

    dependency: Callable[..., None] = from_headers_or_query if query_param else from_headers
    return [Depends(dependency)]
