"""Reading a request body within limits: Content-Length, streamed size, gzip (bounded), content types."""

from __future__ import annotations

import zlib

from fastapi import Request

from services.ingestion.errors import IngestError, bad_request, too_large

JSON_TYPES = ("application/json", "text/plain", "")  # text/plain: navigator.sendBeacon with a string body


async def read_body(request: Request, limit: int) -> bytes:
    """The decoded body, refusing anything whose wire or decompressed size exceeds limit bytes."""
    _check_content_type(request.headers.get("content-type", ""))
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:  # "²" is a digit to isdigit()
        raise too_large(f"body is {declared} bytes; the limit is {limit}")
    body = await _read_bounded(request, limit)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gunzip_bounded(body, limit)
    raise IngestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none", "Content-Encoding", "unsupported")


async def _read_bounded(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Decompress gzip, stopping at limit + 1 bytes so a gzip bomb costs at most the limit."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise bad_request(f"body is not valid gzip: {exc}", "Content-Encoding") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(f"decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise bad_request("gzip body is truncated", "Content-Encoding")
    return out


def _check_content_type(content_type: str) -> None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media in JSON_TYPES or media.endswith("+json"):
        return
    raise IngestError(415, f"unsupported Content-Type {media!r}; send application/json or text/plain", "Content-Type", "unsupported")
