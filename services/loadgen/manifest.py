"""The manifest of a load run and the metrics expected from it, recomputed independently of the pipeline.

A manifest is JSON lines, one object per distinct event id:
  id, type, user_id, session_id, timestamp (epoch ms sent), page (the URL sent, without query and fragment),
  device_category (from the agent table),
  load_time, interaction_time, revenue (purchases, else null), cart_items and cart_value (what the event
  adds to the session's cart: quantity and price x quantity, negative for remove_from_cart, else 0),
  late (sent with an old timestamp),
  sends (how many times it was posted: duplicate sends and retries), duplicate (sends > 1),
  failed_sends (posts not answered "accepted": no answer, 5xx, 503 while Kafka was down),
  accepted (some send was answered "accepted"), status (HTTP status of the last send, 0 = no answer),
  timestamp_adjusted (ingestion replaced the timestamp by its receive time; such events cannot be
  placed in a window from the manifest), enrichment (the enrichment columns the raw table must hold for
  the event and its IP truncated to its network, `ip_network`, from the generator's own tables; null for
  events the generator did not make), anonymous_id (user.anonymous_id, else null).
Bots: session_metrics, top_pages and traffic_sources leave out device_category = bot events unless asked to
include them (RTAP_PROCESSING__SESSION_BOTS); event_metrics and performance_metrics count them in their own
bot rows.
An identity call (identify, alias) has an entry too: its type is the raw event's reserved type, user_id and
anonymous_id as ingestion maps them (services/ingestion/identity.py), traits (identify), no device or metrics.
The jobs' expectations leave identity calls out; persons(), identity_links() and resolved_sessions() recompute
the identity tables and the sessions' resolved users.
Every function here is pure: entries in, plain dicts out.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from services.loadgen.agents import expected_category
from shared.events import ALIAS_TYPE, IDENTIFY_TYPE

Entry = dict[str, Any]
PERCENTILES = (0.5, 0.95, 0.99)


IDENTITY_TYPES = {"identify": IDENTIFY_TYPE, "alias": ALIAS_TYPE}  # the raw events' reserved types


def entry_for(event: dict[str, Any], late: bool = False, enrichment: dict[str, Any] | None = None) -> Entry:
    """The manifest entry of a generated event or identity call, before it is sent (enrichment: what the
    generator expects)."""
    if "event" not in event:
        return identity_entry(event, late)
    device, props = event["device"], event.get("properties") or {}
    metrics = event.get("metrics") or {}
    return {
        "id": event["event"]["id"],
        "type": event["event"]["type"],
        "user_id": event["user"]["id"],
        "anonymous_id": event["user"].get("anonymous_id"),
        "session_id": event["context"]["session_id"],
        "timestamp": event["timestamp"],
        "page": re.split("[?#]", event["context"]["url"], maxsplit=1)[0],
        "device_category": expected_category(
            device["user_agent"], device["screen_width"], device["screen_height"]
        ),
        "load_time": metrics.get("load_time"),
        "interaction_time": metrics.get("interaction_time"),
        "revenue": props.get("revenue") if event["event"]["type"] == "purchase" else None,
        **cart_change(event["event"]["type"], props),
        "enrichment": enrichment,
        **unsent(late),
    }


def identity_entry(call: dict[str, Any], late: bool) -> Entry:
    """identify: user_id the user, anonymous_id the linked id; alias: anonymous_id the previous id."""
    anonymous = call.get("previous_id") if call["type"] == "alias" else call.get("anonymous_id")
    return {
        "id": call["id"],
        "type": IDENTITY_TYPES[call["type"]],
        "user_id": call["user_id"],
        "anonymous_id": anonymous,
        "session_id": call["session_id"],
        "timestamp": call["timestamp"],
        "traits": call.get("traits", {}),
        **unsent(late),
    }


def unsent(late: bool) -> Entry:
    return {
        "late": late,
        "sends": 0,
        "duplicate": False,
        "failed_sends": 0,
        "accepted": False,
        "status": 0,
        "timestamp_adjusted": False,
    }


def cart_change(event_type: str, properties: dict[str, Any]) -> dict[str, Any]:
    """What an event adds to its session's cart: add_to_cart adds, remove_from_cart takes away, quantity 1
    unless given."""
    sign = {"add_to_cart": 1, "remove_from_cart": -1}.get(event_type, 0)
    quantity = sign * properties.get("quantity", 1)
    return {"cart_items": quantity, "cart_value": quantity * properties.get("price", 0.0)}


def record_send(entry: Entry, status: int, accepted: bool, adjusted: bool = False) -> None:
    entry["sends"] += 1
    entry["duplicate"] = entry["sends"] > 1
    entry["failed_sends"] += not accepted
    entry["status"] = status
    entry["accepted"] = entry["accepted"] or accepted
    entry["timestamp_adjusted"] = entry["timestamp_adjusted"] or (accepted and adjusted)


def write_manifest(path: Path, entries: Iterable[Entry]) -> int:
    count = 0
    with path.open("wb") as out:
        for entry in entries:
            out.write(orjson.dumps(entry) + b"\n")
            count += 1
    return count


def read_manifest(path: Path) -> list[Entry]:
    with path.open("rb") as lines:
        return [orjson.loads(line) for line in lines if line.strip()]


def accepted(entries: Iterable[Entry]) -> Iterator[Entry]:
    """Accepted events, each id once (duplicate sends are one event)."""
    seen: set[str] = set()
    for e in entries:
        if e["accepted"] and e["id"] not in seen:
            seen.add(e["id"])
            yield e


def counted(entries: Iterable[Entry]) -> Iterator[Entry]:
    """The accepted events the jobs count: identity calls are not events."""
    return (e for e in accepted(entries) if e["type"] not in IDENTITY_TYPES.values())


def window_start(timestamp: int, window_ms: int) -> int:
    """Tumbling windows aligned to the epoch, as Flink's TUMBLE (offset 0)."""
    return timestamp - timestamp % window_ms


def event_metrics(entries: Iterable[Entry], window_ms: int) -> dict[tuple[int, str, str], dict[str, int]]:
    """(window_start, event_type, device_category) -> {events, unique_users} over accepted events."""
    users: dict[tuple[int, str, str], set[str]] = defaultdict(set)
    counts: dict[tuple[int, str, str], int] = defaultdict(int)
    for e in counted(entries):
        key = (window_start(e["timestamp"], window_ms), e["type"], e["device_category"])
        counts[key] += 1
        users[key].add(e["user_id"])
    return {key: {"events": n, "unique_users": len(users[key])} for key, n in counts.items()}


def performance_metrics(entries: Iterable[Entry], window_ms: int) -> dict[tuple[int, str], dict[str, Any]]:
    """(window_start, device_category) -> events and count/avg/p50/p95/p99 of load_time and
    interaction_time."""
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for e in counted(entries):
        groups[(window_start(e["timestamp"], window_ms), e["device_category"])].append(e)
    return {
        key: {"events": len(rows), **stats(rows, "load_time"), **stats(rows, "interaction_time")}
        for key, rows in groups.items()
    }


def top_pages(
    entries: Iterable[Entry], window_ms: int, places: int, bots: bool = False
) -> dict[tuple[int, int], dict[str, Any]]:
    """(window_start, place) -> page, page_views, unique_users: per window the `places` pages with the most
    page_view events (not of bots unless `bots`), ties in page text order."""
    viewers: dict[tuple[int, str], list[str]] = defaultdict(list)
    for e in counted(entries):
        if e["type"] == "page_view" and (bots or e["device_category"] != "bot"):
            viewers[(window_start(e["timestamp"], window_ms), e["page"])].append(e["user_id"])
    by_window: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for (window, page), users in viewers.items():
        by_window[window].append((-len(users), page))
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for window, ranked in by_window.items():
        for place, (_, page) in enumerate(sorted(ranked)[:places], start=1):
            users = viewers[(window, page)]
            out[(window, place)] = {"page": page, "page_views": len(users), "unique_users": len(set(users))}
    return out


def traffic_sources(
    entries: Iterable[Entry], window_ms: int, bots: bool = False
) -> dict[tuple[int, str, str, str, str], dict[str, int]]:
    """(window_start, source, medium, campaign, referrer_class) -> events, sessions, users, over events not of
    bots unless `bots`: source is utm_source, else the referrer's host, else (direct); medium utm_medium, else
    the referrer class; campaign utm_campaign, else (none). Events without an expected enrichment (not made by
    the generator) have referrer class (unknown)."""
    groups: dict[tuple[int, str, str, str, str], list[Entry]] = defaultdict(list)
    for e in counted(entries):
        if not bots and e["device_category"] == "bot":
            continue
        x = e.get("enrichment") or {}
        referrer_class = x.get("referrer_class") or "(unknown)"
        source = first_present(x.get("utm_source"), x.get("referrer_host"), "(direct)")
        medium = first_present(x.get("utm_medium"), referrer_class)
        campaign = first_present(x.get("utm_campaign"), "(none)")
        groups[(window_start(e["timestamp"], window_ms), source, medium, campaign, referrer_class)].append(e)
    return {
        key: {
            "events": len(rows),
            "sessions": len({e["session_id"] for e in rows}),
            "users": len({e["user_id"] for e in rows}),
        }
        for key, rows in groups.items()
    }


def first_present(*values: str | None) -> str:
    """The first value that is not None (SQL's COALESCE: an empty string counts)."""
    return next(v for v in values if v is not None)


def session_metrics(
    entries: Iterable[Entry], gap_ms: int, bots: bool = False
) -> dict[tuple[int, str], dict[str, Any]]:
    """(window_start, session_id) -> the session job's columns, over events not of bots unless `bots`. A
    session's events split where the next event comes more than gap_ms after the previous one: each event
    opens [ts, ts + gap), and Flink merges session windows that overlap or only touch."""
    by_session: dict[str, list[Entry]] = defaultdict(list)
    for e in counted(entries):
        if bots or e["device_category"] != "bot":
            by_session[e["session_id"]].append(e)
    out: dict[tuple[int, str], dict[str, Any]] = {}
    for session_id, rows in by_session.items():
        for part in split_sessions(sorted(rows, key=lambda e: e["timestamp"]), gap_ms):
            out[(part[0]["timestamp"], session_id)] = session_row(part, gap_ms)
    return out


def split_sessions(rows: Sequence[Entry], gap_ms: int) -> list[list[Entry]]:
    parts: list[list[Entry]] = []
    for e in rows:
        if parts and e["timestamp"] <= parts[-1][-1]["timestamp"] + gap_ms:
            parts[-1].append(e)
        else:
            parts.append([e])
    return parts


def session_row(rows: Sequence[Entry], gap_ms: int) -> dict[str, Any]:
    first, last = rows[0]["timestamp"], rows[-1]["timestamp"]
    types = [e["type"] for e in rows]
    return {
        "window_end": last + gap_ms,
        "user_id": session_user(rows),
        "device_category": max(e["device_category"] for e in rows),
        "duration_ms": last - first,
        "page_views": types.count("page_view"),
        "events": len(rows),
        "products_viewed": types.count("product_view"),
        "cart_adds": types.count("add_to_cart"),
        "purchases": types.count("purchase"),
        "revenue": sum(e["revenue"] or 0.0 for e in rows if e["type"] == "purchase"),
        "cart_items": sum(e["cart_items"] for e in rows),
        "cart_value": sum(e["cart_value"] for e in rows),
    }


def session_user(rows: Sequence[Entry]) -> str:
    """The identified user (an event whose user id is not its anonymous id; the greatest if several), else
    the greatest user id."""
    identified = [e["user_id"] for e in rows if e.get("anonymous_id") and e["user_id"] != e["anonymous_id"]]
    return str(max(identified or [e["user_id"] for e in rows]))


def latest(entries: Iterable[Entry]) -> Entry:
    """The entry of the latest event time, then the greatest id (storage breaks a tie at one millisecond by
    hashed id: the generator never puts two identity calls of one person in one millisecond)."""
    return max(entries, key=lambda e: (e["timestamp"], e["id"]))


def persons(entries: Iterable[Entry]) -> dict[str, dict[str, str]]:
    """user id -> each trait's value from the latest identify call that set it (values as text)."""
    setters: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for e in accepted(entries):
        if e["type"] == IDENTIFY_TYPE:
            for trait in e["traits"]:
                setters[(e["user_id"], trait)].append(e)
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for (user, trait), calls in setters.items():
        out[user][trait] = trait_text(latest(calls)["traits"][trait])
    return dict(out)


def trait_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def identity_links(entries: Iterable[Entry]) -> dict[str, str]:
    """anonymous id -> the user of its latest identify or alias call (ids equal to the user's: no link)."""
    calls: dict[str, list[Entry]] = defaultdict(list)
    for e in accepted(entries):
        linked = e["type"] in IDENTITY_TYPES.values() and e["anonymous_id"]
        if linked and e["anonymous_id"] != e["user_id"]:
            calls[e["anonymous_id"]].append(e)
    return {anonymous: latest(found)["user_id"] for anonymous, found in calls.items()}


def resolved_sessions(entries: Sequence[Entry], gap_ms: int) -> dict[tuple[int, str], str]:
    """(window_start, session_id) -> the session's user, or the user its user id is linked to."""
    links = identity_links(entries)
    return {
        key: links.get(row["user_id"], row["user_id"])
        for key, row in session_metrics(entries, gap_ms).items()
    }


def stats(rows: Sequence[Entry], column: str) -> dict[str, Any]:
    values = [r[column] for r in rows if r[column] is not None]
    out: dict[str, Any] = {
        f"{column}_count": len(values),
        f"{column}_avg": sum(values) / len(values) if values else None,
    }
    for q in PERCENTILES:
        out[f"{column}_p{round(q * 100)}"] = percentile(values, q) if values else None
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Continuous percentile with linear interpolation between the two nearest values (Flink's PERCENTILE,
    numpy's 'linear'): position q * (n - 1) in the sorted values."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be within [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(entries: Sequence[Entry]) -> dict[str, int]:
    return {
        "events": len(entries),
        "accepted": sum(e["accepted"] for e in entries),
        "not_accepted": sum(not e["accepted"] for e in entries),
        "duplicates": sum(e["duplicate"] for e in entries),
        "sends": sum(e["sends"] for e in entries),
        "late": sum(e["late"] for e in entries),
    }
