"""The ingestion API: validated events into Kafka, 202 only after durable acknowledgement."""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import time
from collections import Counter
from contextlib import asynccontextmanager, suppress
from operator import attrgetter
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence, Union

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.requests import ClientDisconnect

from services.ingestion import fast_batch, record_size
from services.ingestion.body import read_body
from services.ingestion.errors import (
    CLIENT_CLOSED, IngestError, Rejection, bad_request, first_error, ingest_error_handler, json_response, kafka_refusal,
    request_validation_handler, too_large, unavailable,
)
from services.ingestion.metrics import METRICS
from services.ingestion.models import (
    BatchRejected, BatchRequest, BatchResult, ErrorBody, Health, SegmentResult, TrackAccepted, TrackUnavailable,
)
from services.ingestion.producer import EventProducer, Unavailable, is_permanent
from services.ingestion.records import Record, SkewPolicy, now_ms, to_record
from services.ingestion.segment import SegmentBatch, SegmentMappingError, SegmentMessage, to_track_event
from shared.api_keys import key_matches
from shared.events import TRACK_EVENT, event_json_schema
from shared.http_metrics import HttpMetrics, record as record_http
from shared.logging import get_logger
from shared.settings import Settings
from shared.topics import EVENTS

log = get_logger("ingestion")
NO_OPENTELEMETRY = {"tracing": False, "metrics": False, "logs": False}  # Prometheus only; saves a provider lookup per request
KEY_HEADER = "X-Write-Key"
ERRORS = {400: {"model": ErrorBody, "description": "invalid body; `field` names the offending field"},
          401: {"model": ErrorBody, "description": "write key missing or wrong (only when write keys are configured)"},
          413: {"model": ErrorBody, "description": "body (or decompressed body, or batch, or one event's Kafka record) too large"},
          415: {"model": ErrorBody, "description": "unsupported Content-Type or Content-Encoding"},
          503: {"model": ErrorBody, "description": "Kafka unavailable or producer queue full; retry after Retry-After seconds"}}


class Ingestion:
    """What the routes share: settings, the producer, the clock-skew policy, the partition count."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.limits = settings.ingestion
        self.max_event_bytes = settings.kafka.max_event_bytes
        self.producer = EventProducer(settings, EVENTS.name)
        self.policy = SkewPolicy.from_settings(settings.ingestion)
        self.metrics = METRICS
        self.partitions = EVENTS.partitions

    def check_key(self, request: Request) -> None:
        """401 unless no write keys are configured or the request carries a valid one outside its body."""
        if not self.header_key_checked(request):
            raise unauthorized()

    def header_key_checked(self, request: Request) -> bool:
        """Check a write key given outside the body (header, Basic username, ?write_key=), before the body is read.
        True: none is needed, or a valid one was given; False: none was given. A wrong one is a 401."""
        keys = self.limits.write_keys
        if not keys:
            return True
        key = request_key(request)
        if not key:
            return False
        if not key_matches(key, keys):
            raise unauthorized()
        return True

    def check_body_key(self, body_key: str | None) -> None:
        """Segment's body writeKey, for a request that carried no key outside its body."""
        if not key_matches(body_key, self.limits.write_keys):
            raise unauthorized()

    async def produce(self, records: Sequence[Record]) -> list[Any]:
        started = time.perf_counter()
        try:
            return await self.producer.send(records)
        except Unavailable as exc:
            raise unavailable(str(exc), self.limits.retry_after_seconds) from None
        finally:
            self.metrics.produce_seconds.observe(time.perf_counter() - started)
            self.metrics.queue_depth.set(self.producer.queue_depth())

    async def heartbeats(self) -> None:
        interval = self.limits.heartbeat_interval_ms / 1000
        refresh_every = max(1, int(30 / interval))
        for tick in _count():
            if tick % refresh_every == 0:
                await self._refresh_partitions()
            self.producer.heartbeat(self.partitions)
            self.metrics.heartbeats_total.inc(self.partitions)
            await asyncio.sleep(interval)

    async def _refresh_partitions(self) -> None:
        with suppress(Exception):
            self.partitions = await asyncio.to_thread(self.producer.partitions, 2.0)


def unauthorized() -> IngestError:
    return IngestError(401, f"a valid write key is required ({KEY_HEADER} header, Bearer token, Basic username or ?write_key=)",
                       KEY_HEADER, "unauthorized")


def _count() -> Any:
    n = 0
    while True:
        yield n
        n += 1


def request_key(request: Request) -> str | None:
    headers = request.headers
    if key := headers.get(KEY_HEADER):
        return key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":  # Segment libraries: base64("<writeKey>:")
        with suppress(binascii.Error, UnicodeDecodeError):
            return base64.b64decode(credentials.strip()).decode().partition(":")[0]
    return request.query_params.get("write_key")


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON: {exc}", "body") from None


def batch_items(data: Any, max_events: int, field: str = "events") -> list[Any]:
    items = data.get(field) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise bad_request(f"body must be an object with an {field!r} array", field)
    if not items:
        raise bad_request(f"{field} is empty", field)
    if len(items) > max_events:
        raise too_large(f"{len(items)} events in one batch; the limit is {max_events}", field)
    return items


def item_results(valid: list[tuple[int, Record]], invalid: list[Rejection], errors: list[Any]) -> dict[str, Any]:
    """errors: per valid item, None (written) or why it was not (a retry may write it)."""
    results = [_item_result(i, record, err) for (i, record), err in zip(valid, errors)]
    failed = sum(r["status"] == "failed" for r in results) if any(errors) else 0
    if invalid:
        results += [rejection.result() for rejection in invalid]
        results.sort(key=lambda r: r["index"])
    return {"accepted": len(results) - len(invalid) - failed, "rejected": len(invalid), "failed": failed, "results": results}


def _item_result(index: int, record: Record, err: Any) -> dict[str, Any]:
    if err is None:
        return {"index": index, "status": "accepted", "id": record.id, "timestamp_adjusted": record.timestamp_adjusted}
    return {"index": index, "status": "failed", "id": record.id, "error": str(err), "field": "kafka"}


async def ingest_items(ing: Ingestion, endpoint: str, valid: list[tuple[int, Record]], invalid: list[Rejection],
                       extra: dict[str, Any] | None = None) -> Response:
    """Write the items that are valid and within the record limit, and answer with per-item results: 503 when one was
    not written and may be on retry, else 202 when any was written, else the first rejection's status (400, 413).
    Nothing is produced for an item rejected here, and a rejected item never stops its siblings."""
    valid, oversize = record_size.split(valid, ing.max_event_bytes)
    written: list[Any] = []
    if valid:
        try:
            written = await ing.produce([r for _, r in valid])
        except IngestError as exc:
            exc.extra = item_results(valid, sorted(invalid + oversize, key=attrgetter("index")), [exc.error] * len(valid))
            raise
        valid, written, refused = kafka_rejections(ing, valid, written)
        oversize += refused
    invalid = sorted(invalid + oversize, key=attrgetter("index"))
    count_rejections(ing, invalid)
    body = item_results(valid, invalid, written)
    ing.metrics.accepted_total.labels(endpoint).inc(body["accepted"])
    ing.metrics.adjusted_total.inc(sum(r.timestamp_adjusted for (_, r), err in zip(valid, written) if err is None))
    if body["failed"]:
        ing.metrics.rejected("unavailable", body["failed"])
        retry = str(ing.limits.retry_after_seconds)
        return json_response(503, {"error": "Kafka did not acknowledge every event", "field": "kafka", **body}, {"Retry-After": retry})
    if not body["accepted"]:
        first = invalid[0]
        return json_response(first.status, {"error": f"no valid events; first problem: {first.error}", "field": first.field, **body})
    return json_response(202, {**body, **(extra or {})})


def kafka_rejections(ing: Ingestion, valid: list[tuple[int, Record]], errors: list[Any]) -> tuple[list, list, list[Rejection]]:
    """Items Kafka refused for what they are leave (valid, errors) as rejections: a retry cannot write them."""
    if not any(errors):
        return valid, errors, []
    kept, kept_errors, refused = [], [], []
    for (i, record), err in zip(valid, errors):
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


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request and returns the Response itself.

    FastAPI's per-request dependency solving and response-model handling are skipped (a third of a
    single-event request's CPU); the OpenAPI entry is declared as for any route, and exceptions still
    reach the app's exception handlers.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        return self.endpoint


def direct_post(app: FastAPI, path: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """Like @app.post(path, ...), registering a DirectRoute."""

    def register(endpoint: Callable) -> Callable:
        app.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=DirectRoute, **kwargs)
        return endpoint

    return register


class IngestionApp(FastAPI):
    """The app, with a short path for POSTs to the event routes.

    Starlette sends every request through its middleware stack (error, telemetry, body-limit, metrics,
    exception and exit-stack layers, each wrapping receive and send). For the DirectRoute endpoints that
    stack only adds CPU, so they are called directly here, and what the skipped layers do for them is done
    here: the HTTP metrics, IngestError as its JSON error, a crash as a logged 500. Browser requests when
    CORS is configured (they carry Origin), and every other route, take the full stack.
    """

    hot_routes: dict[str, APIRoute] = {}
    cors_configured = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = self.hot_routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None or (self.cors_configured and any(name == b"origin" for name, _ in scope["headers"])):
            await super().__call__(scope, receive, send)
            return
        scope["app"], scope["route"] = self, route
        started = time.perf_counter()
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request)
        except IngestError as exc:
            response = await ingest_error_handler(request, exc)
        except ClientDisconnect:  # nobody to answer; counted, not an error of ours
            count_client_disconnect(self)
            record_http(scope, CLIENT_CLOSED, time.perf_counter() - started)
            return
        except Exception:  # what Starlette's error middleware would answer, with the JSON error shape
            log.exception("ingestion request failed", path=scope["path"])
            response = json_response(500, {"error": "internal error", "field": "body"})
        record_http(scope, response.status_code, time.perf_counter() - started)
        await response(scope, receive, send)


def count_client_disconnect(app: FastAPI) -> None:
    app.state.ingestion.metrics.rejected("client_disconnect")
    log.debug("client disconnected before its body was read")


async def client_disconnect_handler(request: Request, _exc: ClientDisconnect) -> Response:
    """The full middleware stack's answer (never sent: the client is gone), counted as CLIENT_CLOSED, not as a 5xx."""
    count_client_disconnect(request.app)
    return Response(status_code=CLIENT_CLOSED)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ing = Ingestion(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ing.producer.start()
        beats = asyncio.create_task(ing.heartbeats())
        gc.freeze()  # startup objects (modules, schemas, routes) leave the cyclic GC's scans: ~20% of a batch's CPU
        log.info("ingestion started", port=settings.ingestion.port, topic=EVENTS.name)
        yield
        beats.cancel()
        with suppress(asyncio.CancelledError):
            await beats
        await asyncio.to_thread(ing.producer.close)

    app = IngestionApp(title="rtap ingestion", version="1", lifespan=lifespan, telemetry=NO_OPENTELEMETRY,
                  description="Validated analytics events into Kafka; 202 means durably written (acks=all).")
    app.state.ingestion = ing
    app.add_exception_handler(IngestError, ingest_error_handler)
    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_exception_handler(ClientDisconnect, client_disconnect_handler)
    if settings.ingestion.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.ingestion.cors_origins, allow_methods=["POST", "GET", "OPTIONS"],
                           allow_headers=["Content-Type", "Content-Encoding", KEY_HEADER, "Authorization"], max_age=600)
    app.add_middleware(HttpMetrics)
    add_event_routes(app, ing)
    add_segment_routes(app, ing)
    add_ops_routes(app, ing)
    app.router.routes.sort(key=lambda route: not isinstance(route, DirectRoute))  # hot routes matched first (stable sort)
    app.hot_routes = {route.path: route for route in app.router.routes if isinstance(route, DirectRoute)}
    app.cors_configured = bool(settings.ingestion.cors_origins)
    app.openapi = lambda: _openapi(app)
    return app


def _body_schema(model: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}, "text/plain": {"schema": ref}}}}


def add_event_routes(app: FastAPI, ing: Ingestion) -> None:
    limits = ing.limits
    track_seconds, batch_seconds = ing.metrics.request_seconds.labels("track"), ing.metrics.request_seconds.labels("batch")
    track_accepted = ing.metrics.accepted_total.labels("track")

    @direct_post(app, "/v1/analytics/track", status_code=202, tags=["events"], openapi_extra=_body_schema("TrackEvent"),
                 responses={202: {"model": TrackAccepted, "description": "durably written to Kafka"}, **ERRORS,
                            503: {"model": TrackUnavailable, "description": "not written; retry with its `id` after Retry-After seconds"}})
    async def track(request: Request) -> Response:
        """One event. 202 once Kafka acknowledged it (acks=all); a 503 carries the event's id, to retry it with."""
        started = time.perf_counter()
        try:
            ing.check_key(request)
            record = track_record(ing, await read_body(request, limits.max_body_bytes))
            record_size.check(record, ing.max_event_bytes)
            await produce_one(ing, record)
            track_accepted.inc()
            if record.timestamp_adjusted:
                ing.metrics.adjusted_total.inc()
            return json_response(202, {"status": "accepted", "id": record.id, "timestamp_adjusted": record.timestamp_adjusted})
        finally:
            track_seconds.observe(time.perf_counter() - started)

    @direct_post(app, "/v1/analytics/batch", status_code=202, tags=["events"], openapi_extra=_body_schema("BatchRequest"),
                 responses={202: {"model": BatchResult, "description": "every valid item durably written; invalid items rejected"},
                            **ERRORS, 400: {"model": Union[BatchRejected, ErrorBody], "description": "malformed body, or no valid item (with results)"},
                            503: {"model": BatchRejected, "description": "Kafka unavailable; nothing (or not everything) written"}})
    async def batch(request: Request) -> Response:
        """Many events with per-item results; a valid item is never dropped because a sibling is bad."""
        started = time.perf_counter()
        try:
            ing.check_key(request)
            valid, invalid = batch_records(ing, await read_body(request, limits.max_body_bytes))
            return await ingest_items(ing, "batch", valid, invalid)
        finally:
            batch_seconds.observe(time.perf_counter() - started)


async def produce_one(ing: Ingestion, record: Record) -> None:
    """Write one event, or raise its IngestError (a 503 carries the id it was given, so a retry keeps it single)."""
    try:
        [err] = await ing.produce([record])
        if err is not None:
            raise kafka_refusal(err, ing.limits.retry_after_seconds)
    except IngestError as exc:
        if exc.status == 503:
            exc.extra = {"id": record.id}
        raise


def track_record(ing: Ingestion, body: bytes) -> Record:
    """Fast path: msgspec. A body it refuses is validated by pydantic, which names the offending field."""
    received = now_ms()
    fast = fast_batch.record(body, received, ing.policy)
    if fast is not None:
        return fast
    try:
        return to_record(TRACK_EVENT.validate_json(body), received, ing.policy)
    except ValidationError as exc:
        raise bad_request(*first_error(exc)) from None


def batch_records(ing: Ingestion, body: bytes) -> tuple[list, list]:
    """Fast path: the whole batch valid in one msgspec call. Otherwise item by item with pydantic, naming each bad field."""
    received = now_ms()
    fast = fast_batch.records(body, ing.limits.max_batch_events, received, ing.policy)
    if fast is not None:
        return list(enumerate(fast)), []
    items = batch_items(parse_json(body), ing.limits.max_batch_events)
    valid, invalid = [], []
    for i, item in enumerate(items):
        try:
            valid.append((i, to_record(TRACK_EVENT.validate_python(item), received, ing.policy)))
        except ValidationError as exc:
            invalid.append(Rejection(i, *first_error(exc)))
    return valid, invalid


def segment_records(ing: Ingestion, messages: list[Any], sent_at: Any) -> tuple[list, list]:
    """Each message mapped to our record on its own; one that cannot be mapped is rejected with its reason."""
    received = now_ms()
    valid, invalid = [], []
    for i, raw in enumerate(messages):
        try:
            msg = SegmentMessage.model_validate(raw)
            valid.append((i, to_record(to_track_event(msg, sent_at, received), received, ing.policy)))
        except ValidationError as exc:
            invalid.append(Rejection(i, *first_error(exc)))
        except SegmentMappingError as exc:
            invalid.append(Rejection(i, str(exc), exc.field))
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a case the mapping does not name yet
            log.warning("segment message not mapped", index=i, error=repr(exc)[:200])
            invalid.append(Rejection(i, f"message cannot be mapped: {exc}", "body"))
    return valid, invalid


def add_segment_routes(app: FastAPI, ing: Ingestion) -> None:
    limits = ing.limits
    responses = {200: {"model": SegmentResult, "description": "every valid message durably written"}, **ERRORS}

    @direct_post(app, "/v1/batch", tags=["segment"], openapi_extra=_body_schema("SegmentBatch"), responses=responses)
    async def segment_batch(request: Request) -> Response:
        """Segment-compatible batch (what Segment's libraries send).

        Write key: a key outside the body (Basic auth username as Segment's libraries send it, X-Write-Key, Bearer,
        ?write_key=) is checked before the body is read, and a wrong one is a 401 with nothing parsed. Only a request
        without one has its body parsed for Segment's body `writeKey`, which is then checked before anything else
        of the body is validated.
        """
        header_key_ok = ing.header_key_checked(request)
        data = parse_json(await read_body(request, limits.max_body_bytes))
        if not header_key_ok:
            ing.check_body_key(body_write_key(data, strict=True))
        try:
            envelope = SegmentBatch.model_validate(data if isinstance(data, dict) else {})
        except ValidationError as exc:
            raise bad_request(*first_error(exc)) from None
        messages = batch_items(data, limits.max_batch_events, "batch")
        return _segment_status(await ingest_items(ing, "segment", *segment_records(ing, messages, envelope.sentAt), {"success": True}))

    @direct_post(app, "/v1/track", tags=["segment"], openapi_extra=_body_schema("SegmentMessage"), responses=responses)
    async def segment_track(request: Request) -> Response:
        """One Segment track/page/screen message. Write key as for /v1/batch: one outside the body is checked before
        the body is read; only without one is the body parsed, for its `writeKey`."""
        header_key_ok = ing.header_key_checked(request)
        data = parse_json(await read_body(request, limits.max_body_bytes))
        if not header_key_ok:
            ing.check_body_key(body_write_key(data, strict=False))
        return _segment_status(await ingest_items(ing, "segment", *segment_records(ing, [data], None), {"success": True}))


def body_write_key(data: Any, strict: bool) -> str | None:
    """Segment's body writeKey. Not a string: 400 when strict (the batch envelope's schema says string), else no key."""
    key = data.get("writeKey") if isinstance(data, dict) else None
    if key is None or isinstance(key, str):
        return key
    if strict:
        raise bad_request("writeKey: must be a string", "writeKey")
    return None


def _segment_status(response: Response) -> Response:
    """Segment's API answers 200 on success; errors keep their status."""
    if response.status_code == 202:
        response.status_code = 200
    return response


def add_ops_routes(app: FastAPI, ing: Ingestion) -> None:
    @app.get("/healthz", tags=["ops"], response_model=Health, response_model_exclude_none=True)
    @app.get("/v1/healthz", tags=["ops"], response_model=Health, response_model_exclude_none=True)
    async def healthz() -> dict[str, Any]:
        """The process is up (does not touch Kafka)."""
        return {"status": "ok"}

    @app.get("/v1/readyz", tags=["ops"], response_model=Health, responses={503: {"model": Health, "description": "Kafka unreachable"}})
    async def readyz() -> Response:
        """Kafka reachable and the events topic known."""
        try:
            partitions = await asyncio.to_thread(ing.producer.partitions, 2.0)
        except Exception as exc:  # any Kafka failure means not ready
            return json_response(503, {"status": "unavailable", "error": str(exc)}, {"Retry-After": str(ing.limits.retry_after_seconds)})
        return json_response(200, {"status": "ready", "partitions": partitions})

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus exposition."""
        METRICS.queue_depth.set(ing.producer.queue_depth())
        data, content_type = METRICS.exposition()
        return Response(data, media_type=content_type)

    @app.get("/v1/schema/event.json", tags=["schema"])
    async def event_schema() -> Response:
        """JSON Schema (versioned) of the event record in Kafka topic analytics_events."""
        return json_response(200, event_json_schema())


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    ref = "#/components/schemas/{model}"
    _, defs = models_json_schema([(m, "validation") for m in (BatchRequest, SegmentBatch, SegmentMessage)], ref_template=ref)
    track = TRACK_EVENT.json_schema(ref_template=ref)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update({**defs.get("$defs", {}), **track.pop("$defs", {}), "TrackEvent": track})
    max_items = app.state.ingestion.limits.max_batch_events  # this deployment's limit; more is a 413
    components["BatchRequest"]["properties"]["events"]["maxItems"] = max_items
    components["SegmentBatch"]["properties"]["batch"]["maxItems"] = max_items
    app.openapi_schema = schema
    return schema
