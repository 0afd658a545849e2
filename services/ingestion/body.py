"""Reading a request body within limits (Content-Length, streamed size, gzip bounded, content types) and
finding its JSON and batch array; every refusal is an IngestError naming the header or field."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from fastapi import Request

from services.ingestion.errors import bad_request, header_error, too_large

JSON_TYPES = ("application/json", "text/plain", "")  # text/plain: navigator.sendBeacon with a string body


async def read_body(request: Request, limit: int) -> bytes:
    """The decoded body, refusing anything whose wire or decompressed size exceeds limit bytes."""
    _check_content_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:  # "²".isdigit()
        raise too_large(f"body is {declared} bytes; the limit is {limit}")
    body = await _read_bounded(request, limit)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gunzip_bounded(body, limit)
    msg = f"unsupported Content-Encoding {encoding!r}; use gzip or none"
    raise header_error(415, msg, "Content-Encoding", "unsupported")


async def _read_bounded(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


MAX_GZIP_MEMBERS = 64


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Decompress gzip, every member of it (RFC 1952), stopping at limit + 1 bytes so a gzip bomb costs at
    most the limit. Bytes after the last member that are not gzip are refused, not ignored."""
    members: list[bytes] = []  # joined once: adding each member to one bytes object copies quadratically
    size, rest = 0, data
    while rest:
        if len(members) == MAX_GZIP_MEMBERS:  # each member costs a new inflater: bound them, like the bytes
            raise header_error(
                400, f"gzip body has more than {MAX_GZIP_MEMBERS} members", "Content-Encoding", "invalid"
            )
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            members.append(inflater.decompress(rest, limit + 1 - size))
        except zlib.error as exc:
            raise header_error(400, f"body is not valid gzip: {exc}", "Content-Encoding", "invalid") from None
        size += len(members[-1])
        if size > limit or inflater.unconsumed_tail:
            raise too_large(f"decompressed body exceeds the limit of {limit} bytes")
        if not inflater.eof:
            raise header_error(400, "gzip body is truncated", "Content-Encoding", "invalid")
        rest = inflater.unused_data
    return b"".join(members)


def _check_content_type(content_type: str) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json"):
        return
    raise header_error(
        415,
        f"unsupported Content-Type {media!r}; send application/json or text/plain",
        "Content-Type",
        "unsupported",
    )


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc}", "body") from None


def batch_items(data: Any, max_events: int, field: str = "events") -> list[Any]:
    """The batch's items: data[field], or data itself when it is an array; 400 when missing or empty, 413 over
    max_events."""
    items = data.get(field) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise bad_request(f"body must be an object with an {field!r} array", field)
    if not items:
        raise bad_request(f"{field} is empty", field)
    if len(items) > max_events:
        raise too_large(f"{len(items)} events in one batch; the limit is {max_events}", field)
    return items


def items_at(body: bytes, field: str) -> str:
    """The dotted path of a batch's array in the body: field, or '' for a bare JSON array."""
    return "" if body.lstrip()[:1] == b"[" else field
