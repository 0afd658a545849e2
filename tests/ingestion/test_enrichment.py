"""Enrichment's pure logic on the real libraries and their data (ua-parser with its builtin rules, Snowplow's
referrer database, iptocc's registry data): real user agents, real referrers, hostile input."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingestion import enrichment
from services.ingestion.enrichment import (
    Enricher,
    agent_fields,
    country,
    enrich,
    referrer_class,
    truncate_ip,
    url_host,
    utm_fields,
)
from shared.events import EVENT, MAX_HOST_CHARS, MAX_UTM_CHARS, REFERRER_CLASSES, Enrichment

PAGE = "https://shop.example/category/shoes"

AGENTS = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        ("Chrome", "124", "Windows", "10"),
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.80",
        ("Edge", "124", "Windows", "10"),
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0",
        ("Firefox", "125", "Windows", "10"),
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.4.1 Safari/605.1.15",
        ("Safari", "17", "Mac OS X", "10"),
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        ("Chrome", "124", "Linux", None),
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        ("Mobile Safari", "17", "iOS", "17"),
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "CriOS/124.0.6367.111 Mobile/15E148 Safari/604.1",
        ("Chrome Mobile iOS", "124", "iOS", "17"),
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.6367.179 Mobile Safari/537.36",
        ("Chrome Mobile", "124", "Android", "14"),
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        ("Samsung Internet", "23", "Android", "13"),
    ),
    (
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
        ("Firefox Mobile", "125", "Android", "14"),
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1",
        ("Mobile Safari", "17", "iOS", "17"),
    ),
    (
        "Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.3.1 "
        "like Chrome/124.0.6367.179 Safari/537.36",
        ("Amazon Silk", "124", "Android", "9"),
    ),
    (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ("Googlebot", "2", "Other", None),
    ),
    (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        ("bingbot", "2", "Other", None),
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/124.0.6367.60 Safari/537.36",
        ("HeadlessChrome", "124", "Linux", None),
    ),
    (
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        ("FacebookBot", "1", "Other", None),
    ),
    ("curl/8.5.0", ("curl", "8", "Other", None)),
    ("", ("Other", None, "Other", None)),
    ("definitely not a browser", ("Other", None, "Other", None)),
]

REFERRERS = [
    (None, None, "direct"),
    ("", None, "direct"),
    ("not a url", None, "direct"),
    ("http://[::1", None, "direct"),
    ("https://www.google.com/", "google.com", "search"),
    ("https://www.google.co.uk/search?q=shoes", "google.co.uk", "search"),
    ("https://www.bing.com/search?q=bags", "bing.com", "search"),
    ("https://duckduckgo.com/", "duckduckgo.com", "search"),
    ("https://search.yahoo.com/search?p=hats", "search.yahoo.com", "search"),
    ("https://yandex.ru/search/?text=x", "yandex.ru", "search"),
    ("https://t.co/x", "t.co", "social"),
    ("https://www.facebook.com/", "facebook.com", "social"),
    ("https://l.facebook.com/l.php?u=x", "l.facebook.com", "social"),
    ("https://www.linkedin.com/feed/", "linkedin.com", "social"),
    ("https://www.reddit.com/r/shoes/", "reddit.com", "social"),
    ("https://mail.google.com/mail/u/0/", "mail.google.com", "email"),
    ("https://outlook.live.com/mail/0/", "outlook.live.com", "email"),
    ("https://WWW.Shop.Example/cart", "shop.example", "internal"),
    ("https://shop.example/", "shop.example", "internal"),
    ("https://news.example/story", "news.example", "referral"),
    ("https://blog.example.org/post?id=1", "blog.example.org", "referral"),
]


@pytest.mark.parametrize(("agent", "expected"), AGENTS)
def test_real_user_agents_give_browser_and_os_families_and_major_versions(agent, expected):
    assert agent_fields(agent) == expected


@pytest.mark.parametrize(("referrer", "host", "klass"), REFERRERS)
def test_real_referrers_give_their_host_and_class(referrer, host, klass):
    found = enrich(PAGE, referrer, "", None)
    assert (found["referrer_host"], found["referrer_class"]) == (host, klass)


@pytest.mark.parametrize("medium", ["cpc", "PPC", "paid_social", "paidsearch"])
def test_a_paid_medium_is_paid_whatever_the_referrer(medium):
    url = f"{PAGE}?utm_source=google&utm_medium={medium}"
    for referrer in (None, "https://www.google.com/", "https://shop.example/"):
        assert enrich(url, referrer, "", None)["referrer_class"] == "paid"


def test_a_medium_that_is_not_paid_leaves_the_referrer_to_decide():
    url = f"{PAGE}?utm_source=newsletter&utm_medium=email"
    assert enrich(url, None, "", None)["referrer_class"] == "direct"
    assert enrich(url, "https://news.example/", "", None)["referrer_class"] == "referral"


def test_utm_fields_come_from_the_query_decoded_first_value_bounded():
    url = (
        "https://shop.example/p?utm_source=news%20letter&utm_medium=email&utm_campaign=spring+sale"
        "&utm_term=&utm_source=second&utm_content=" + "x" * 5_000 + "#utm_term=fragment"
    )
    assert utm_fields(url) == {
        "utm_source": "news letter",
        "utm_medium": "email",
        "utm_campaign": "spring sale",
        "utm_term": None,
        "utm_content": "x" * MAX_UTM_CHARS,
    }
    assert utm_fields("https://shop.example/") == dict.fromkeys(enrichment.UTM_KEYS)
    assert utm_fields("https://shop.example/?utm_source=%ff%fe")["utm_source"] == "\ufffd\ufffd"


def test_countries_come_from_the_registry_data_before_truncation():
    assert country("8.8.8.8") == "US"
    assert country("1.0.16.1") == "JP"
    assert country("2001:4860:4860::8888") == "US"
    for private_or_bad in ("10.0.0.1", "192.168.1.1", "203.0.113.9", "::1", "", "x" * 64, "1.2.3.4.5"):
        assert country(private_or_bad) is None
    encoded, stored = Enricher("network")(PAGE, None, "", "8.8.8.8")
    assert (orjson.loads(encoded)["country"], stored) == ("US", "8.8.8.0")


def test_the_enricher_writes_what_enrich_derives_cached_or_not():
    enricher = Enricher("none")
    long_url = PAGE + "?utm_source=x&pad=" + "p" * 2_000  # past the cached size: derived every time
    for url in (PAGE + "?utm_source=mail&utm_medium=email", long_url):
        encoded, stored = enricher(url, "https://t.co/x", AGENTS[0][0], "1.0.16.1")
        assert orjson.loads(encoded) == enrich(url, "https://t.co/x", AGENTS[0][0], "1.0.16.1")
        assert list(orjson.loads(encoded)) == list(enrichment.ENRICHMENT_KEYS) and stored == "1.0.16.1"


@pytest.mark.parametrize(
    ("ip", "truncated"),
    [
        ("203.0.113.9", "203.0.113.0"),
        (" 203.0.113.9 ", "203.0.113.0"),
        ("2001:db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::"),
        ("fe80::1%eth0", "fe80::"),
        ("::1", "::"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("01.2.3.4", None),  # a leading zero: ipaddress refuses it, so does the fast path
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("not an ip", None),
        ("", None),
        (None, None),
    ],
)
def test_network_truncation_zeroes_the_host_part_and_drops_what_is_not_an_address(ip, truncated):
    assert truncate_ip(ip, "network") == truncated
    assert truncate_ip(ip, "none") == ip


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    url=st.text(max_size=300),
    referrer=st.none() | st.text(max_size=300),
    agent=st.text(max_size=300),
    ip=st.none() | st.text(max_size=64),
)
def test_any_input_gives_a_valid_enrichment(url, referrer, agent, ip):
    found = enrich(url, referrer, agent, ip)
    assert set(found) == set(Enrichment.__annotations__)
    assert found["referrer_class"] in REFERRER_CLASSES
    assert all(found[k] is None or len(found[k]) <= MAX_UTM_CHARS for k in enrichment.UTM_KEYS)
    assert found["referrer_host"] is None or len(found["referrer_host"]) <= MAX_HOST_CHARS
    assert isinstance(found["browser"], str) and isinstance(found["os"], str)
    truncate_ip(ip, "network")


def test_hostile_sizes_stay_within_bounds_and_the_caches_stay_bounded():
    huge_agent = "Mozilla/5.0 (" + "(" * 2_000 + "Chrome/1" * 250
    assert agent_fields(huge_agent[:4096])[0]
    long_host = "https://" + "a." * 2_000 + "example/"
    assert len(url_host(long_host) or "") <= MAX_HOST_CHARS
    for i in range(enrichment.USER_AGENT_CACHE + 10):
        agent_fields(f"agent {i}")
    assert agent_fields.cache_info().currsize <= enrichment.USER_AGENT_CACHE
    assert url_host.cache_info().maxsize == enrichment.URL_CACHE
    assert enrichment.cached_enrichment_json.cache_info().maxsize == enrichment.VISIT_CACHE


def test_the_referrer_class_order_paid_direct_internal_database():
    assert referrer_class(None, None, PAGE, "cpc") == "paid"
    assert referrer_class(None, None, PAGE, None) == "direct"
    assert referrer_class("shop.example", "https://shop.example/", PAGE, None) == "internal"
    assert referrer_class("google.com", "https://google.com/", PAGE, "email") == "search"


def test_every_enrichment_key_is_a_declared_column_of_the_raw_event():
    columns = {f.path.split(".", 1)[1] for f in EVENT.fields if f.path.startswith("enrichment.")}
    assert columns == set(enrich(PAGE, None, "", None))
