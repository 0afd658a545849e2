"""The fast path of the event endpoints: msgspec decodes a valid track body or an all-valid batch into
structs and encodes their Kafka values, for less CPU per event than pydantic dicts plus orjson
(benchmarks/batch_validation.py).

The event schema stays defined once, as the pydantic TypedDicts of shared/events.py; the msgspec structs
are derived from them here, at import, with the defaults shared.events.complete() fills in. The fast
decoder may be stricter than pydantic, never looser: a body it refuses (5.0 for an integer, a reserved
event type, any invalid item) takes the pydantic path, which names the offending field.
tests/ingestion/test_fast_batch.py runs both paths on generated events and compares the Kafka values.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Annotated, Any, NotRequired, Union, get_args, get_origin, get_type_hints

import annotated_types as at
import msgspec
from pydantic.fields import FieldInfo
from pydantic.functional_validators import AfterValidator, BeforeValidator
from pydantic.types import Strict
from typing_extensions import TypedDict, is_typeddict

from services.ingestion.enrichment import Enricher
from services.ingestion.records import Record, SkewPolicy, make_record, new_event_id
from shared import events

CONSTRAINTS = {
    at.MinLen: "min_length",
    at.MaxLen: "max_length",
    at.Ge: "ge",
    at.Le: "le",
    at.Gt: "gt",
    at.Lt: "lt",
}
# Validators of shared/events.py and why the fast path may skip them. A new validator fails the import
# until it is listed here, so the fast path can never silently accept what pydantic refuses.
COVERED_VALIDATORS: dict[Callable[..., Any], str] = {
    events._json_number: "msgspec never converts strings or booleans to numbers",
    events._not_reserved: "decode() sends batches with a reserved event type to the pydantic path",
}


def _constraints(metadata: tuple[Any, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(tuple(item.metadata)))
        elif type(item) in CONSTRAINTS:
            name = CONSTRAINTS[type(item)]
            found[name] = getattr(item, name)
        elif isinstance(item, (AfterValidator, BeforeValidator)):
            if item.func not in COVERED_VALIDATORS:
                raise TypeError(
                    f"validator {item.func.__qualname__} has no fast-path equivalent: "
                    "list it in COVERED_VALIDATORS"
                )
        elif not isinstance(item, Strict):
            raise TypeError(f"no fast-path equivalent for the constraint {item!r}")
    return found


def msgspec_type(tp: Any) -> Any:
    """The msgspec type accepting at most what pydantic accepts for `tp`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        constraints = _constraints(tuple(tp.__metadata__))
        base = msgspec_type(args[0])
        return _constrain(base, msgspec.Meta(**constraints)) if constraints else base
    if origin is NotRequired:
        return NotRequired[msgspec_type(args[0])]
    if origin in (Union, types.UnionType):
        return Union[*(msgspec_type(arg) for arg in args)]
    if origin in (dict, list):
        return origin[tuple(msgspec_type(arg) for arg in args)]
    if is_typeddict(tp):
        return _struct(tp)
    if tp in (str, int, float, bool, type(None)):
        return tp
    raise TypeError(f"no fast-path equivalent for the type {tp!r}")


def _constrain(tp: Any, meta: msgspec.Meta) -> Any:
    """pydantic applies Optional[float] >= 0 to the float; msgspec wants the constraint on the member."""
    if get_origin(tp) is Union:
        return Union[*(arg if arg is type(None) else _constrain(arg, meta) for arg in get_args(tp))]
    return Annotated[tp, meta]


def _check_config(cls: type) -> None:
    """msgspec ignores unknown keys and refuses out-of-range numbers;
    any other model setting has no equivalent here."""
    declared = getattr(cls, "__pydantic_config__", None) or {}
    config = dict(declared)
    if config.pop("extra", "ignore") != "ignore" or set(config) - {
        "allow_inf_nan",
        "title",
        "json_schema_extra",
    }:
        raise TypeError(f"{cls.__name__}'s pydantic config {declared} has no fast-path equivalent")


def _struct(cls: type, *extra: tuple[str, type, Any]) -> Any:
    """A struct with the TypedDict's fields in order;
    an optional key defaults to what complete() puts there."""
    _check_config(cls)
    hints = get_type_hints(cls, include_extras=True)
    fields = [_field(name, msgspec_type(hint)) for name, hint in hints.items()]
    # gc=False: decoded JSON forms no reference cycles, so the collector need not visit every decoded struct
    return msgspec.defstruct(cls.__name__, [*fields, *extra], kw_only=True, gc=False)


def _field(name: str, tp: Any) -> tuple[str, Any] | tuple[str, Any, Any]:
    if get_origin(tp) is not NotRequired:
        return name, tp
    tp = get_args(tp)[0]
    base = get_args(tp)[0] if get_origin(tp) is Annotated else tp
    if type(None) in get_args(base):
        return name, tp, None
    if get_origin(base) is dict:
        return name, tp, msgspec.field(default_factory=dict)
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return name, tp, msgspec.field(default_factory=base)  # fails here unless all its fields are optional
    raise TypeError(f"no fast-path default for the optional key {name!r} of type {tp!r}")


# received_at and enrichment: set by _record (a client's keys of those names are overwritten; a client's
# enrichment is kept as raw JSON until then, never decoded into objects)
FastEvent: Any = _struct(
    events.TrackEvent, ("received_at", int, 0), ("enrichment", msgspec.Raw, msgspec.Raw(b"null"))
)
EVENTS: Any = list[FastEvent]
BATCH_DECODER = msgspec.json.Decoder(TypedDict("BatchEnvelope", {"events": EVENTS}) | EVENTS)  # type: ignore[operator]
ENCODE = msgspec.json.Encoder().encode
EVENT_DECODER = msgspec.json.Decoder(FastEvent)


def decode(body: bytes, max_events: int) -> list[Any] | None:
    """The batch's events when every one is valid and the count is within limits; None means: use pydantic."""
    try:
        decoded = BATCH_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):  # too deep: pydantic names it
        return None
    items = decoded if isinstance(decoded, list) else decoded["events"]
    if not 0 < len(items) <= max_events or any(item.event.type in events.RESERVED_TYPES for item in items):
        return None
    return items


def records(
    body: bytes, max_events: int, received_at: int, policy: SkewPolicy, enricher: Enricher
) -> list[Record] | None:
    """The Kafka records of an all-valid batch, as records.to_record() builds them;
    None means: use pydantic."""
    decoded = decode(body, max_events)
    if decoded is None:
        return None
    return [_record(event, received_at, policy, enricher) for event in decoded]


RAW_ITEMS_DECODER = msgspec.json.Decoder(
    TypedDict("RawEnvelope", {"events": list[msgspec.Raw]}) | list[msgspec.Raw]  # type: ignore[operator]
)


def each_record(
    body: bytes, max_events: int, received_at: int, policy: SkewPolicy, enricher: Enricher
) -> list[tuple[bytes, Record | None]] | None:
    """Per item of a batch the fast path refused as a whole (an identity call or an invalid event among
    valid events): its JSON text and its record when it is a valid event, else None (pydantic decides). None
    when msgspec cannot split the body into 1 to max_events items (pydantic names the problem)."""
    try:
        decoded = RAW_ITEMS_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    items = decoded if isinstance(decoded, list) else decoded["events"]
    if not 0 < len(items) <= max_events:
        return None
    return [(bytes(item), record(bytes(item), received_at, policy, enricher)) for item in items]


def record(body: bytes, received_at: int, policy: SkewPolicy, enricher: Enricher) -> Record | None:
    """The Kafka record of one valid event (POST /v1/analytics/track); None means: use pydantic."""
    try:
        event = EVENT_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None
    return (
        None if event.event.type in events.RESERVED_TYPES else _record(event, received_at, policy, enricher)
    )


def _record(event: Any, received_at: int, policy: SkewPolicy, enricher: Enricher) -> Record:
    info, context = event.event, event.context
    info.id = info.id or new_event_id()
    client_timestamp = event.timestamp
    event.timestamp, adjusted = policy.bound(client_timestamp, received_at)
    event.received_at = received_at
    enrichment, context.ip_address = enricher(
        context.url, context.referrer, event.device.user_agent, context.ip_address
    )
    event.enrichment = msgspec.Raw(enrichment)
    return make_record(info.id, context.session_id, ENCODE(event), client_timestamp, adjusted)
