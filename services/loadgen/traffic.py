"""Realistic traffic as deterministic functions of a seed: users in sessions walking a shop funnel.

A Traffic object holds a seeded random generator and the open sessions; `events(n)` returns the
next n events (the request body items of POST /v1/analytics/batch), each with a client-supplied
event.id and an explicit epoch-ms timestamp, so a run can be recomputed from its manifest.
Timestamps follow a planned schedule (start_ms + i / rate), then optionally move back by up to
out_of_order_ms (shuffling the order within that bound) and, for late_fraction of the events,
by late_ms more. A sender that falls behind its schedule moves it forward (`catch_up`), as a real client
stamps an event when it happens: otherwise a lagging sender's events fall behind the watermark that the
other senders and ingestion's heartbeats move with the clock.

Identity: a login_fraction of the people's sessions start anonymous (user.id = user.anonymous_id = the
session's anonymous id) and log in part-way with an identify call (items of the same batch in our own shape,
services/ingestion/identity.py), after which their events carry the user id beside the anonymous id; an
alias_fraction stay anonymous and end with an alias call linking their anonymous id to a user. Identity calls
count among the n items of `events(n)`.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from services.loadgen.agents import AGENTS, CATEGORY_WEIGHTS, Agent
from shared.events import ENRICHMENT_KEYS

EVENT_TYPES = ("page_view", "click", "product_view", "add_to_cart", "remove_from_cart", "purchase")
IDENTITY_CALLS = ("identify", "alias")
SHOP = "https://shop.example"
PAGES = ("/", "/search", "/category/shoes", "/category/bags", "/deals", "/help", "/account")
SHOP_HOST = "shop.example"


@dataclass(frozen=True)
class Source:
    """Where a visit comes from, and the enrichment the pipeline must derive from it (referrer_class by
    the rules of docs/api.md, read by a person; referrer_host lower case without www.)."""

    referrer: str | None
    utm: tuple[tuple[str, str], ...]  # the page URL's utm_* parameters, in order
    referrer_class: str
    referrer_host: str | None


SOURCES = (
    Source(None, (), "direct", None),
    Source(None, (), "direct", None),
    Source("https://www.google.com/", (), "search", "google.com"),
    Source("https://www.bing.com/search?q=shoes", (), "search", "bing.com"),
    Source("https://duckduckgo.com/", (), "search", "duckduckgo.com"),
    Source("https://t.co/x", (), "social", "t.co"),
    Source(
        "https://www.facebook.com/",
        (("utm_source", "facebook"), ("utm_medium", "social")),
        "social",
        "facebook.com",
    ),
    Source(
        "https://mail.google.com/mail/u/0/",
        (("utm_source", "newsletter"), ("utm_medium", "email"), ("utm_campaign", "spring sale")),
        "email",
        "mail.google.com",
    ),
    Source(
        "https://www.google.com/",
        (
            ("utm_source", "google"),
            ("utm_medium", "cpc"),
            ("utm_campaign", "brand"),
            ("utm_term", "running shoes"),
            ("utm_content", "ad-1"),
        ),
        "paid",
        "google.com",
    ),
    Source(None, (("utm_source", "partner"), ("utm_medium", "paid_social")), "paid", None),
    Source(f"https://www.{SHOP_HOST}/category/shoes", (), "internal", SHOP_HOST),
    Source(
        "https://news.example/story",
        (("utm_source", "news"), ("utm_medium", "referral")),
        "referral",
        "news.example",
    ),
)
# (first three octets, the country of that block by its registry delegation; None: documentation ranges)
NETWORKS = (
    ("203.0.113", None),
    ("198.51.100", None),
    ("192.0.2", None),
    ("8.8.8", "US"),
    ("1.0.16", "JP"),
)
# lognormal medians (ms) per device category: phones load slowest; sigma gives the long tail
LOAD_MEDIAN_MS = {"mobile": 1400.0, "tablet": 1100.0, "desktop": 700.0, "bot": 300.0}
LOAD_SIGMA = 0.8
INTERACTION_MEDIAN_MS = 250.0
INTERACTION_SIGMA = 0.7


@dataclass(frozen=True)
class TrafficSpec:
    seed: int
    start_ms: int
    rate: float = 1_000.0  # events per second of this generator (sets the timestamp schedule)
    worker: int = 0  # distinguishes the generators of one run (ids, sessions, users)
    out_of_order_ms: int = 0
    late_fraction: float = 0.0
    late_ms: int = 0
    users: int = 2_000
    open_sessions: int = 50
    login_fraction: float = 0.2
    alias_fraction: float = 0.05


@dataclass(frozen=True)
class CartLine:
    product_id: str
    price: float
    quantity: int

    def properties(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "price": self.price, "quantity": self.quantity}


@dataclass
class Session:
    id: str
    user_id: str
    agent: Agent
    steps: list[str]
    network: tuple[str, str | None]
    cart: list[CartLine] = field(default_factory=list)
    page: str = "/"
    anonymous_id: str | None = None  # set: the session started anonymous
    known_user: str | None = None  # the user its identify or alias call names


class Traffic:
    def __init__(self, spec: TrafficSpec):
        self.spec = spec
        self.rng = random.Random(f"{spec.seed}:{spec.worker}")
        self.sessions: list[Session] = []
        self.user_agents: dict[str, Agent] = {}
        self.issued = 0
        self.start_ms = spec.start_ms
        self.session_count = 0
        self.late_ids: set[str] = set()
        # event id -> the enrichment and stored IP it must get (popped by the sender into the manifest)
        self.expected: dict[str, dict[str, Any]] = {}

    def events(self, n: int) -> list[dict[str, Any]]:
        return [self.next_event() for _ in range(n)]

    def stream(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_event()

    def next_event(self) -> dict[str, Any]:
        while len(self.sessions) < self.spec.open_sessions:
            self.sessions.append(self.new_session())
        session = self.rng.choice(self.sessions)
        kind = session.steps.pop(0)
        if not session.steps:
            self.sessions.remove(session)
        event = self.build(session, kind)
        self.issued += 1
        return event

    def new_session(self) -> Session:
        rng = self.rng
        user_id = f"u{self.spec.worker}-{rng.randrange(self.spec.users)}"
        agent = self.user_agents.setdefault(user_id, pick_agent(rng))
        self.session_count += 1
        session_id = f"s{self.spec.seed}-{self.spec.worker}-{self.session_count}"
        session = Session(
            session_id, user_id, agent, session_script(rng, agent.category == "bot"), rng.choice(NETWORKS)
        )
        if agent.category != "bot":
            self.identity_script(session)
        return session

    def identity_script(self, session: Session) -> None:
        """Maybe make the session anonymous, with an identify step part-way or an alias step at its end."""
        roll = self.rng.random()
        if roll >= self.spec.login_fraction + self.spec.alias_fraction:
            return
        session.known_user, session.anonymous_id = session.user_id, f"a{session.id}"
        session.user_id = session.anonymous_id
        if roll < self.spec.login_fraction:
            session.steps.insert(self.rng.randint(1, len(session.steps)), "identify")
        else:
            session.steps.append("alias")

    def build(self, session: Session, kind: str) -> dict[str, Any]:
        if kind in IDENTITY_CALLS:
            return self.identity_call(session, kind)
        rng, agent = self.rng, session.agent
        properties = step_properties(rng, session, kind)
        load_time = (
            lognormal(rng, LOAD_MEDIAN_MS[agent.category], LOAD_SIGMA)
            if kind in ("page_view", "product_view")
            else None
        )
        interaction = lognormal(rng, INTERACTION_MEDIAN_MS, INTERACTION_SIGMA) if load_time is None else None
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        timestamp, late = self.timestamp()
        if late:
            self.late_ids.add(event_id)
        source = rng.choice(SOURCES)
        ip = f"{session.network[0]}.{rng.randrange(1, 255)}"
        self.expected[event_id] = expected_enrichment(source, agent, session.network, ip)
        return {
            "event": {"type": kind, "id": event_id},
            "user": {"id": session.user_id, "anonymous_id": session.anonymous_id},
            "device": {
                "user_agent": agent.user_agent,
                "screen_width": agent.screen_width,
                "screen_height": agent.screen_height,
            },
            "context": {
                "url": SHOP + session.page + (f"?{urlencode(source.utm)}" if source.utm else ""),
                "referrer": source.referrer,
                "ip_address": ip,
                "session_id": session.id,
            },
            "properties": properties,
            "metrics": {"load_time": load_time, "interaction_time": interaction},
            "timestamp": timestamp,
        }

    def identity_call(self, session: Session, kind: str) -> dict[str, Any]:
        """An identify (the session is identified from here on) or alias call, as a batch item."""
        assert session.known_user is not None and session.anonymous_id is not None
        call_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        timestamp, late = self.timestamp()
        if late:
            self.late_ids.add(call_id)
        call: dict[str, Any] = {"type": kind, "id": call_id, "user_id": session.known_user}
        if kind == "identify":
            session.user_id = session.known_user
            plan = self.rng.choice(("free", "pro", "team"))
            call |= {
                "anonymous_id": session.anonymous_id,
                "traits": {"plan": plan, "seats": len(session.steps)},
            }
        else:
            call["previous_id"] = session.anonymous_id
        return call | {"session_id": session.id, "timestamp": timestamp}

    def planned_ms(self) -> int:
        """The next event's time on the schedule, before any jitter or lateness."""
        return self.start_ms + int(self.issued * 1000 / self.spec.rate)

    def catch_up(self, now_ms: int) -> None:
        """Move the rest of the schedule forward so that the next event is planned no earlier than now_ms."""
        self.start_ms += max(0, now_ms - self.planned_ms())

    def timestamp(self) -> tuple[int, bool]:
        """(event time, whether it was made late)."""
        spec, rng = self.spec, self.rng
        planned = self.planned_ms()
        jitter = rng.randint(0, spec.out_of_order_ms) if spec.out_of_order_ms else 0
        late = spec.late_ms if spec.late_fraction and rng.random() < spec.late_fraction else 0
        return max(0, planned - jitter - late), bool(late)


def expected_enrichment(
    source: Source, agent: Agent, network: tuple[str, str | None], ip: str
) -> dict[str, Any]:
    """The enrichment columns of an event from this generator's tables, the IP sent (`ip_sent`) and the IP
    truncated to its network (`ip_network`, for RTAP_INGESTION__IP_TRUNCATION=network)."""
    utm = dict(source.utm)
    software = agent.software
    return {
        **{key: utm.get(key) for key in ENRICHMENT_KEYS if key.startswith("utm_")},
        "referrer_host": source.referrer_host,
        "referrer_class": source.referrer_class,
        "browser": software.browser,
        "browser_version": software.browser_version,
        "os": software.os,
        "os_version": software.os_version,
        "country": network[1],
        "ip_sent": ip,
        "ip_network": f"{network[0]}.0",
    }


def item_id(item: dict[str, Any]) -> str:
    """The id of a batch item: an event's event.id, an identity call's id."""
    return str(item["event"]["id"] if "event" in item else item["id"])


def pick_agent(rng: random.Random) -> Agent:
    category = rng.choices(list(CATEGORY_WEIGHTS), weights=list(CATEGORY_WEIGHTS.values()))[0]
    return rng.choice(AGENTS[category])


def lognormal(rng: random.Random, median_ms: float, sigma: float) -> float:
    return round(rng.lognormvariate(math.log(median_ms), sigma), 1)


def session_script(rng: random.Random, bot: bool) -> list[str]:
    """The event types of one session in order: bots crawl pages; people browse, look at products, buy."""
    if bot:
        return ["page_view"] * rng.randint(1, 8)
    steps: list[str] = []
    in_cart = 0
    for _ in range(1 + min(int(rng.expovariate(1 / 3)), 15)):
        steps.append("page_view")
        steps += ["click"] * rng.choices((0, 1, 2), weights=(0.4, 0.4, 0.2))[0]
        if rng.random() < 0.5:
            steps.append("product_view")
            if rng.random() < 0.3:
                steps.append("add_to_cart")
                in_cart += 1
                if rng.random() < 0.15:
                    steps.append("remove_from_cart")
                    in_cart -= 1
    if in_cart and rng.random() < 0.35:
        steps.append("purchase")
    return steps


def step_properties(rng: random.Random, session: Session, kind: str) -> dict[str, Any]:
    if kind == "page_view":
        session.page = rng.choice(PAGES)
        return {"path": session.page, "title": session.page.strip("/") or "home"}
    if kind == "click":
        return {"element": rng.choice(("nav", "banner", "search", "filter", "footer")), "path": session.page}
    if kind == "product_view":
        product = f"p-{rng.randrange(500)}"
        session.page = f"/product/{product}"
        return {
            "product_id": product,
            "price": round(rng.uniform(5, 300), 2),
            "category": rng.choice(("shoes", "bags", "hats")),
        }
    if kind == "add_to_cart":
        line = CartLine(f"p-{rng.randrange(500)}", round(rng.uniform(5, 300), 2), rng.choice((1, 1, 1, 2, 3)))
        session.cart.append(line)
        return line.properties()
    if kind == "remove_from_cart":
        return session.cart.pop().properties()
    revenue = round(sum(line.price * line.quantity for line in session.cart), 2)
    return {"order_id": f"o-{session.id}", "revenue": revenue, "items": len(session.cart), "currency": "USD"}
