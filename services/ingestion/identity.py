"""Identity calls (identify, alias, group) as records of analytics_events, from our API and from Segment's.

Our own shape: POST /v1/analytics/identify, /alias or /group with one call, or an item of
/v1/analytics/batch carrying `"type": "identify" | "alias" | "group"` (an item without `type` is an event):

    {"type"?, "id"?, "user_id"?, "anonymous_id"?, "previous_id"?, "group_id"?,
     "traits"?: {name: string | number | boolean}, "session_id"?, "timestamp"? (epoch ms)}

Every call becomes a raw event of a reserved type (shared/events.py, IDENTITY_TYPES), whichever API sent it:

    identify  user_id or anonymous_id required  user.id = user_id, else anonymous_id;
                                                user.anonymous_id = anonymous_id; properties = traits
    alias     user_id and previous_id required  user.id = user_id; user.anonymous_id = previous_id
    group     group_id and user_id or           user.id and user.anonymous_id as for identify;
              anonymous_id required             context.group_id = group_id; properties = traits

The session (the Kafka key) is session_id, else the anonymous (or previous) id, else the user id, as for
Segment's events; the device and the URL are empty. Validation, limits, the clock-skew policy and the
per-item results are those of events.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import (
    ALIAS_TYPE,
    GROUP_TYPE,
    IDENTIFY_TYPE,
    TRACK_EVENT,
    EpochMs,
    EventId,
    GroupId,
    Properties,
    TrackEvent,
    UserId,
)

IdentityKind = Literal["identify", "alias", "group"]
RESERVED_TYPE: dict[str, str] = {"identify": IDENTIFY_TYPE, "alias": ALIAS_TYPE, "group": GROUP_TYPE}
MAX_TRAITS = 256
PLACEHOLDER_TYPE = "identity"  # validated as an event type, then replaced by the reserved one


class MappingError(ValueError):
    """A call that validates but cannot become a record; `field` names what is missing or wrong."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


class IdentityCall(BaseModel):
    """One identity call in our own API's shape (the module docstring)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    type: IdentityKind
    id: EventId | None = None
    user_id: UserId | None = None
    anonymous_id: UserId | None = None
    previous_id: UserId | None = None
    group_id: GroupId | None = None
    traits: Properties = Field(default_factory=dict, max_length=MAX_TRAITS)
    session_id: str | None = Field(None, min_length=1, max_length=256)
    timestamp: EpochMs | None = None


def identity_user(
    kind: str, user_id: str | None, anonymous_id: str | None, previous_id: str | None
) -> dict[str, Any]:
    """The raw event's `user` for a call, or MappingError naming the missing id (fields in our snake_case)."""
    if kind == "alias":
        if not user_id:
            raise MappingError("alias needs user_id (the id the previous one becomes)", "user_id")
        if not previous_id:
            raise MappingError("alias needs previous_id (the id being linked)", "previous_id")
        return {"id": user_id, "anonymous_id": previous_id}
    if not (user_id or anonymous_id):
        raise MappingError(f"{kind} needs user_id or anonymous_id", "user_id")
    return {"id": user_id or anonymous_id, "anonymous_id": anonymous_id}


def identity_event(
    kind: str,
    user: dict[str, Any],
    group_id: str | None,
    traits: dict[str, Any],
    common: dict[str, Any],
) -> TrackEvent:
    """The validated raw event of a call. common: event id, device, context (its session id set) and
    timestamp as for an event; raises pydantic's ValidationError naming a bad value, MappingError for a group
    call without its group id."""
    if kind == "group" and not group_id:
        raise MappingError("group needs group_id", "group_id")
    context = {**common["context"], "group_id": group_id}
    event = TRACK_EVENT.validate_python(
        {
            **common,
            "event": {"type": PLACEHOLDER_TYPE, "id": common.get("event_id")},
            "user": user,
            "context": context,
            "properties": traits if kind != "alias" else {},
        }
    )
    event["event"]["type"] = RESERVED_TYPE[kind]
    return event


def from_call(call: IdentityCall) -> TrackEvent:
    """Our own API's call as its raw event (the module docstring)."""
    user = identity_user(call.type, call.user_id, call.anonymous_id, call.previous_id)
    session = call.session_id or user["anonymous_id"] or user["id"]
    common = {
        "event_id": call.id,
        "device": {"user_agent": "", "screen_width": 0, "screen_height": 0},
        "context": {"url": "", "session_id": session},
        "timestamp": call.timestamp,
    }
    return identity_event(call.type, user, call.group_id, call.traits, common)


def is_identity_item(item: Any) -> bool:
    """A batch item that is an identity call: an object with a `type` and no `event`."""
    return isinstance(item, dict) and "type" in item and "event" not in item
