"""API keys of every service: where a key may be presented, the one parser of those places, the constant-time
check, and the read-key guard of the query APIs.

A key comes in the service's own header (X-Write-Key, X-Read-Key), as `Authorization: Bearer <key>`,
where allowed as `Authorization: Basic base64("<key>:")` (Segment's libraries) or in a query parameter
(`?write_key=` for sendBeacon, `?key=` for EventSource). A missing or wrong key is a 401 naming the header,
in the shared error shape (shared/api_errors.py).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request
from starlette.requests import HTTPConnection

from shared.api_errors import problem


@dataclass(frozen=True)
class KeyPlaces:
    """Where a service accepts its key, besides `Authorization: Bearer`."""

    kind: str  # "write" or "read"
    header: str
    query: str | None = None
    basic: bool = False

    def refusal(self) -> dict[str, Any]:
        """The problem of a request without a valid key, naming every place a key is read from."""
        places = [f"{self.header} header", "Bearer token"] + ["Basic username"] * self.basic
        places += [f"?{self.query}="] if self.query else []
        where = ", ".join(places[:-1]) + " or " + places[-1]
        msg = f"a valid {self.kind} key is required ({where})"
        return problem(["header", self.header], msg, "unauthorized")


KEY_QUERY = "read key, for EventSource and the dashboard page"
WRITE_KEY = KeyPlaces("write", "X-Write-Key", query="write_key", basic=True)
READ_KEY = KeyPlaces("read", "X-Read-Key")
STREAM_READ_KEY = KeyPlaces("read", "X-Read-Key", query="key")


def presented_key(places: KeyPlaces, request: HTTPConnection) -> str | None:
    """The key a request presents outside its body, in the order: own header, Authorization, query parameter
    (the query string is parsed only when no header carries a key)."""
    headers = request.headers
    if key := headers.get(places.header):
        return key
    if key := authorization_key(headers.get("authorization"), places.basic):
        return key
    return request.query_params.get(places.query) if places.query else None


def authorization_key(authorization: str | None, basic: bool) -> str | None:
    """The Bearer token, or (when basic) the Basic username; None for any other or an unreadable header."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if basic and scheme.lower() == "basic":
        try:
            return base64.b64decode(credentials.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def key_matches(provided: str | None, keys: Sequence[str]) -> bool:
    """Constant-time comparison of bytes, so a non-ASCII header value is a wrong key rather than an error."""
    if not provided:
        return False
    given = provided.encode()
    return any(secrets.compare_digest(given, key.encode()) for key in keys)


def read_key_guard(keys: Sequence[str], query_param: bool = False) -> list[Any]:
    """Route dependencies requiring a read key; none when no keys are configured. The header and query
    parameters are declared for the OpenAPI schema; the key is read by presented_key, as every service reads
    its key."""
    if not keys:
        return []
    places = STREAM_READ_KEY if query_param else READ_KEY

    def check(request: Request) -> None:
        if not key_matches(presented_key(places, request), keys):
            raise HTTPException(401, [places.refusal()])

    def from_headers(
        request: Request,
        x_read_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        check(request)

    def from_headers_or_query(
        request: Request,
        x_read_key: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
        key: Annotated[str | None, Query(description=KEY_QUERY)] = None,
    ) -> None:
        check(request)

    dependency: Callable[..., None] = from_headers_or_query if query_param else from_headers
    return [Depends(dependency)]
