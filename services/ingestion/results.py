"""Writing a batch's items and answering with per-item results.

Every item gets a result naming its index: `accepted` (durably written, with its id), `rejected` (never
written: invalid, over the record limit, or refused by Kafka for what it is; with its error and field) or
`failed` (valid but not acknowledged by Kafka; retry it with its id). A rejected item never stops its
siblings.
"""

from __future__ import annotations

from collections import Counter
from operator import attrgetter
from typing import Any

from fastapi.responses import Response

from services.ingestion import record_size
from services.ingestion.errors import IngestError, Rejection, json_response, kafka_refusal
from services.ingestion.producer import is_permanent
from services.ingestion.records import Record
from services.ingestion.state import Ingestion
from shared.api_errors import error_body

Items = list[tuple[int, Record]]  # (index in the request, record)


async def ingest_items(
    ing: Ingestion,
    endpoint: str,
    valid: Items,
    invalid: list[Rejection],
    items_at: str | None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Write the items that are valid and within the record limit, and answer with per-item results: 503 when
    one was not written and may be on retry, else 202 when any was written, else the first rejection's status
    (400, 413). items_at: the array's path in the body (body.items_at), None when the body is the one item;
    extra: added to a 202."""
    valid, oversize = record_size.split(valid, ing.max_event_bytes)
    written: list[Any] = []
    if valid:
        try:
            written = await ing.produce([r for _, r in valid])
        except IngestError as exc:
            rejected = sorted(invalid + oversize, key=attrgetter("index"))
            exc.extra = item_results(valid, rejected, [exc.msg] * len(valid))
            raise
        valid, written, refused = kafka_rejections(ing, valid, written)
        oversize += refused
    invalid = sorted(invalid + oversize, key=attrgetter("index"))
    count_rejections(ing, invalid)
    body = item_results(valid, invalid, written)
    ing.metrics.accepted_total.labels(endpoint).inc(body["accepted"])
    adjusted = sum(r.timestamp_adjusted for (_, r), err in zip(valid, written, strict=True) if err is None)
    ing.metrics.adjusted_total.inc(adjusted)
    if body["failed"]:
        return not_acknowledged(ing, body)
    if not body["accepted"]:
        return none_written(invalid[0], items_at, body)
    return json_response(202, {**body, **(extra or {})})


def not_acknowledged(ing: Ingestion, results: dict[str, Any]) -> Response:
    """503: some valid item was not acknowledged; its result says `failed` and carries its id."""
    ing.metrics.rejected("unavailable", results["failed"])
    problem = error_body(
        ["kafka"], "Kafka did not acknowledge every event; retry the failed items", "unavailable"
    )
    return json_response(503, {**problem, **results}, {"Retry-After": str(ing.limits.retry_after_seconds)})


def none_written(first: Rejection, items_at: str | None, results: dict[str, Any]) -> Response:
    """Every item rejected: the first rejection's status, `detail` naming it by its path in the body."""
    msg = f"no valid events; first problem: {first.error}"
    problem = error_body(list(first.loc(items_at)), msg, first.reason)
    return json_response(first.status, {**problem, **results})


def item_results(valid: Items, invalid: list[Rejection], errors: list[Any]) -> dict[str, Any]:
    """The counts and per-item results; errors: per valid item, None (written) or why it was not (a retry may
    write it)."""
    results = [_item_result(i, record, err) for (i, record), err in zip(valid, errors, strict=True)]
    failed = sum(r["status"] == "failed" for r in results) if any(errors) else 0
    if invalid:
        results += [rejection.result() for rejection in invalid]
        results.sort(key=lambda r: r["index"])
    return {
        "accepted": len(results) - len(invalid) - failed,
        "rejected": len(invalid),
        "failed": failed,
        "results": results,
    }


def _item_result(index: int, record: Record, err: Any) -> dict[str, Any]:
    if err is None:
        return {
            "index": index,
            "status": "accepted",
            "id": record.id,
            "timestamp_adjusted": record.timestamp_adjusted,
        }
    return {"index": index, "status": "failed", "id": record.id, "error": str(err), "field": "kafka"}


def kafka_rejections(
    ing: Ingestion, valid: Items, errors: list[Any]
) -> tuple[Items, list[Any], list[Rejection]]:
    """Items Kafka refused for what they are leave (valid, errors) as rejections: a retry cannot help."""
    if not any(errors):
        return valid, errors, []
    kept: Items = []
    kept_errors: list[Any] = []
    refused: list[Rejection] = []
    for (i, record), err in zip(valid, errors, strict=True):
        if err is not None and is_permanent(err):
            refused.append(kafka_refusal(err, ing.limits.retry_after_seconds).rejection(i))
        else:
            kept.append((i, record))
            kept_errors.append(err)
    return kept, kept_errors, refused


def count_rejections(ing: Ingestion, rejections: list[Rejection]) -> None:
    if not rejections:
        return
    for reason, n in Counter(r.reason for r in rejections).items():
        ing.metrics.rejected(reason, n)
